"""Triton paged decode attention (one query token per sequence), flash-decoding style.

Grid: (sequence, kv head, split). Each program reads one contiguous share of
the sequence's context, for all the query heads that share that kv head (GQA:
K/V are read once per group, not once per query head). With more than one
split, stage 1 leaves a partial output and its log-sum-exp per split, and
stage 2 merges them. Splitting matters when there are few sequences: batch 1
of a model with 8 kv heads would otherwise keep only 8 SMs busy. The split
count is a plain argument, so two compiled variants (split or not) serve
every batch size; stage 2 merges up to MAX_KV_SPLITS in one fixed block.

With a ``seq_order`` (longest first, ``LONGEST_FIRST``), the grid is (kv head, row, split) and
row i works on sequence ``seq_order[i]``: the GPU starts programs in grid order, so a batch of
uneven contexts starts its longest sequences' programs first and its shortest last, where batch
order can start a long one last and leave it running alone at the end of the kernel.

With ``fp8_query`` (``abstract.FP8_QUERY``, an FP8 cache only), the query is rounded to FP8 as
the cache's values are, and the loop turns round: ``K @ q^T`` and ``V^T @ P`` put the keys (then the
head dimension) in the products' rows, which lets Hopper take both as warpgroup MMAs, q.K in FP8
straight from the cache's bytes (``_attend_keys_by_heads``). Compiled for sm_90 (triton 3.6), its
loop over 128 keys is 701 SASS instructions against 1,027 (half the e4m3 conversions, no operand
copies), at 2 programs per SM instead of 3; split, 419 against 545 per 64 keys.

Both loops take the softmax in base 2 with the scale folded in (one FMA a score, as the prefill
kernel does) and hand back the running max in natural-log units for the merge: 419 instructions
per 64 keys of a bf16 cache against 465 with ``exp`` and a separate scale.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from folovllm.attention.backends.abstract import MAX_KV_SPLITS
from folovllm.attention.ops.triton_kv_store import to_cache_dtype
from folovllm.attention.ops.triton_paged_kv import kv_compute_dtype, kv_row_offsets, load_kv_tile, online_softmax_step, query_for_products
from folovllm.utils.device import dot_precision
from folovllm.utils.pdl import launch_next_kernel, pdl_launch_args, prefetch_rows, wait_for_previous_kernel


# Whether the engine's decode steps pass a longest-first ``seq_order`` (read when an attention
# backend is made). A model of the GPU's program starts (the dev log's section 22) had batch order
# lose 2-9% of the kernel at uneven lengths; on an H200 (2026-11-28, section 32) longest first took
# the kernel from 234 to 209 us at 192 sequences of 200-2,048 tokens and the throughput workload
# from 24.2k to 25.8k output tok/s, with the same greedy tokens.
LONGEST_FIRST = True

# Which decode steps hand this kernel the step's raw q, k and v (``NewTokenKV``) instead of running
# the q/k norm + RoPE + cache-write kernel before it, one kernel less per layer: False, none; True,
# every one; "split", those whose kernel splits each sequence's keys (few sequences: the steps
# where a kernel's latency, not its work, sets the time). On an H200 (section 32 of the dev log)
# fusing took 2.2% off a batch-1 step but made the kernel 3% slower at 256 sequences; off until a
# second round decides between True and "split".
FUSE_NEW_TOKEN: bool | str = False


class NewTokenKV(NamedTuple):
    """What the q/k norm + RoPE + cache-write kernel would do before a decode step, for the decode
    kernel to do itself: ``k``, ``v`` [B, KVH, D] are this step's raw rows (strided views of the
    q/k/v projection), normed (with ``k_weight``; None for no norm), rotated and written to
    ``slot_mapping``'s slots by the split that holds each sequence's last position."""

    k: torch.Tensor
    v: torch.Tensor
    q_weight: torch.Tensor | None
    k_weight: torch.Tensor | None
    cos_cache: torch.Tensor
    sin_cache: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    eps: float


@triton.jit
def _norm_rope(x, x_rot, w, w_rot, cos, sin, sign, eps, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr):
    """Per-head RMSNorm, then RoPE, of heads given whole ([rows, D]) and rotated by half a head
    (``x_rot[d] = x[(d + D/2) % D]``, the weight likewise): the rounding of ``_norm_rope_heads`` in
    fused_kernels.py, which takes the two halves apart (the RMS may differ in its last bit: its sum
    runs over each half, then adds them)."""
    if HAS_NORM:
        inv = tl.rsqrt(tl.sum(x.to(tl.float32) * x.to(tl.float32), 1) / HEAD_DIM + eps)[:, None]
        x_rot = w_rot * (x_rot.to(tl.float32) * inv).to(x_rot.dtype)
        x = w * (x.to(tl.float32) * inv).to(x.dtype)
    return (x.to(tl.float32) * cos + sign * x_rot.to(tl.float32) * sin).to(x.dtype)


@triton.jit
def _attend_heads_by_keys(
    q, k_cache_ptr, v_cache_ptr, block_table_row_ptr, start, last, kvh, offs_d, d_mask,
    stride_cb, stride_cs, stride_ch, scale, DOT_PRECISION: tl.constexpr, V_VIA_REGISTERS: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The key loop over keys ``start:last`` of one sequence and kv head, its query heads ``q``
    [BLOCK_G, BLOCK_D] (in the compute dtype) as the products' rows: the online softmax's max and
    sum per query head and the unnormalised output [BLOCK_G, BLOCK_D].

    The softmax runs in base 2 (``online_softmax_step``, the prefill kernel's too); the max goes back
    in natural-log units, as the merge and the fused new token's score take it."""
    qk_scale = scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, last, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < last
        k, v = load_kv_tile(
            k_cache_ptr, v_cache_ptr, block_table_row_ptr, pos, valid, kvh, offs_d, d_mask, stride_cb, stride_cs, stride_ch, PAGE_SIZE,
        )  # fmt: skip
        k, v = k.to(q.dtype), v.to(q.dtype)  # an FP8 cache is upcast here (q is in the compute dtype); otherwise a no-op
        if V_VIA_REGISTERS:
            # A no-op product (masked rows are 0 already) that has Triton widen an FP8 V tile in
            # registers and transpose it with ldmatrix, instead of gathering each thread's keys for
            # P @ V from shared memory one byte at a time (no transposing load for 8 bits on sm_90):
            # 1,065 SASS instructions per 128 keys against 1,404 (triton 3.6); on an H100 at batch
            # 256, context 1024: 220 us against 266 at 64 keys, 219 against 251 at 128 (3 stages).
            v = v * tl.where(valid, 1.0, 0.0).to(v.dtype)[:, None]
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        qk = tl.where(valid[None, :], qk, float("-inf"))
        p, alpha, m_new, l_i = online_softmax_step(qk, m_i, l_i, qk_scale, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i * 0.6931471805599453, l_i, acc  # ln(2): the max in natural-log units


@triton.jit
def _attend_keys_by_heads(
    q8, k_cache_ptr, v_cache_ptr, block_table_row_ptr, start, last, kvh, offs_d, d_mask,
    stride_cb, stride_cs, stride_ch, scale, COMPUTE_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """``_attend_heads_by_keys`` with the query in FP8 (``q8``), the products turned round.

    The scores are taken as ``K @ q8^T`` [keys, heads], the output as ``V^T @ P`` [dims, heads]: a
    Hopper warpgroup MMA needs 64 rows, which the keys and the head dimension have and a kv head's
    query heads (16 rows, mostly padding) do not; so q.K is one FP8 MMA on the cache's bytes, with no
    conversion of K, and only V is widened (to the compute dtype). The softmax as there."""
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_D, BLOCK_G], dtype=tl.float32)
    for n0 in range(start, last, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < last
        k, v = load_kv_tile(
            k_cache_ptr, v_cache_ptr, block_table_row_ptr, pos, valid, kvh, offs_d, d_mask, stride_cb, stride_cs, stride_ch, PAGE_SIZE,
        )  # fmt: skip
        s = tl.dot(k, tl.trans(q8))
        s = tl.where(valid[:, None], s, float("-inf"))
        p, alpha, m_new, l_i = online_softmax_step(s, m_i, l_i, qk_scale, 0)
        # the no-op mask product of V_VIA_REGISTERS (see there): 793 instructions against 949 without (exp)
        v = v.to(COMPUTE_DTYPE) * tl.where(valid, 1.0, 0.0).to(COMPUTE_DTYPE)[:, None]
        acc_t = acc_t * alpha[None, :] + tl.dot(tl.trans(v), p.to(COMPUTE_DTYPE), input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i * 0.6931471805599453, l_i, tl.trans(acc_t)


# Per-step values, not specialised on (a variant compiled for one would recompile for another):
# the block table's width (eager steps) and the split count (it follows the batch size).
@triton.jit(do_not_specialize=["stride_bt", "num_splits"])
def _decode_stage1_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_table_ptr,
    seq_lens_ptr,
    seq_order_ptr,  # [B] int32, the sequence of each grid row (ORDERED only)
    out_ptr,  # [B, H, D] when not SPLIT, else partial out [B, H, num_splits, D]
    lse_ptr,  # [B, H, num_splits] (unused when not SPLIT)
    scale,
    num_splits,
    stride_qt,
    stride_qh,
    stride_bt,
    stride_cb,
    stride_cs,
    stride_ch,
    k_new_ptr,  # FUSED: this step's raw k and v rows, [B, KVH, D] with row strides stride_kt, stride_vt
    v_new_ptr,
    stride_kt,
    stride_vt,
    qw_ptr,  # FUSED and HAS_NORM: the q and k RMSNorm weights [D]
    kw_ptr,
    cos_ptr,  # FUSED: the RoPE tables [max_position, D], each sequence's position and cache slot [B]
    sin_ptr,
    pos_ptr,
    slot_ptr,
    eps,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    V_VIA_REGISTERS: tl.constexpr,
    ORDERED: tl.constexpr,
    USE_PDL: tl.constexpr,
    LINE: tl.constexpr,  # cache elements per 128-byte line
    LINES_PER_ROW: tl.constexpr,  # lines per key row of one kv head
    FUSED: tl.constexpr,  # q, k_new, v_new raw: norm, rotate and cache this step's token here (NewTokenKV)
    HAS_NORM: tl.constexpr,
    FP8_QUERY: tl.constexpr,  # an FP8 cache: q rounded to FP8, the loop as _attend_keys_by_heads
):
    launch_next_kernel(USE_PDL)
    if ORDERED:
        kvh = tl.program_id(0)
        b = tl.load(seq_order_ptr + tl.program_id(1))
    else:
        b = tl.program_id(0)
        kvh = tl.program_id(1)
    split = tl.program_id(2)

    # The sequence's length (and order) are no kernel's output (the host copies them in): read before
    # the wait, so that with PDL their round trips overlap the kernel before (which writes q and this
    # step's K/V).
    seq_len = tl.load(seq_lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    last = end  # the loop's keys end here
    if FUSED:
        # The split holding the last position reads this step's key from registers, not the cache.
        owner = (start < end) & (end == seq_len)
        last = tl.where(owner, end - 1, end)
        half = HEAD_DIM // 2
        rot = tl.where(offs_d < half, offs_d + half, offs_d - half)  # each dim's RoPE partner
        sign = tl.where(offs_d < half, -1.0, 1.0)[None, :]
        token_pos = tl.load(pos_ptr + b)
        slot = tl.load(slot_ptr + b).to(tl.int64)
        cos = tl.load(cos_ptr + token_pos * HEAD_DIM + offs_d, mask=d_mask, other=0.0)[None, :]
        sin = tl.load(sin_ptr + token_pos * HEAD_DIM + offs_d, mask=d_mask, other=0.0)[None, :]
    if USE_PDL:
        if start < end:
            # The first key tile's K and V start coming into L2 while the kernel before still runs. No
            # kernel writes the block table; the kernel before does write this step's own K/V row, but
            # into L2, which the prefetch only fills: the loads after the wait read the written row.
            pos = tl.minimum(start + tl.arange(0, BLOCK_N), end - 1)
            rows = kv_row_offsets(block_table_ptr + b * stride_bt, pos, None, kvh, stride_cb, stride_cs, stride_ch, PAGE_SIZE)
            prefetch_rows(k_cache_ptr + rows, 0, HEAD_DIM - 1, LINES_PER_ROW, LINE)
            prefetch_rows(v_cache_ptr + rows, 0, HEAD_DIM - 1, LINES_PER_ROW, LINE)
    wait_for_previous_kernel(USE_PDL, LAUNCHED=True)

    offs_g = tl.arange(0, BLOCK_G)
    heads = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    q_rows = q_ptr + b * stride_qt + heads[:, None] * stride_qh
    q_mask = g_mask[:, None] & d_mask[None, :]
    q = tl.load(q_rows + offs_d[None, :], mask=q_mask, other=0.0)
    if FUSED:
        # q as the norm + RoPE kernel would have left it
        q_rot = tl.load(q_rows + rot[None, :], mask=q_mask, other=0.0)
        qw = 1.0
        qw_rot = 1.0
        kw = 1.0
        kw_rot = 1.0
        if HAS_NORM:
            qw, qw_rot = tl.load(qw_ptr + offs_d, mask=d_mask)[None, :], tl.load(qw_ptr + rot, mask=d_mask)[None, :]
            kw, kw_rot = tl.load(kw_ptr + offs_d, mask=d_mask)[None, :], tl.load(kw_ptr + rot, mask=d_mask)[None, :]
        q = _norm_rope(q, q_rot, qw, qw_rot, cos, sin, sign, eps, HEAD_DIM, HAS_NORM)
    q = query_for_products(q, k_cache_ptr, COMPUTE_DTYPE, FP8_QUERY)
    if FUSED:
        # This step's k and v as the cache will hold them, and the new key's scores, here, before the
        # loop: used after it, q would be held in a second layout through the loop (168 registers
        # against 94 in a bf16 model, 3 programs per SM instead of 5).
        k_row = k_new_ptr + b * stride_kt + kvh * HEAD_DIM
        k_new = tl.load(k_row + offs_d, mask=d_mask, other=0.0)[None, :]
        k_new = _norm_rope(k_new, tl.load(k_row + rot, mask=d_mask, other=0.0)[None, :], kw, kw_rot, cos, sin, sign, eps, HEAD_DIM,
                           HAS_NORM)  # fmt: skip
        k_new = to_cache_dtype(k_new, k_cache_ptr)
        v_new = to_cache_dtype(tl.load(v_new_ptr + b * stride_vt + kvh * HEAD_DIM + offs_d, mask=d_mask, other=0.0)[None, :], v_cache_ptr)
        qk_new = tl.sum(q.to(tl.float32) * k_new.to(q.dtype).to(tl.float32), 1) * scale

    if FP8_QUERY:
        m_i, l_i, acc = _attend_keys_by_heads(
            q, k_cache_ptr, v_cache_ptr, block_table_ptr + b * stride_bt, start, last, kvh, offs_d, d_mask,
            stride_cb, stride_cs, stride_ch, scale, COMPUTE_DTYPE, DOT_PRECISION, PAGE_SIZE, BLOCK_N, BLOCK_G, BLOCK_D,
        )  # fmt: skip
    else:
        m_i, l_i, acc = _attend_heads_by_keys(
            q, k_cache_ptr, v_cache_ptr, block_table_ptr + b * stride_bt, start, last, kvh, offs_d, d_mask,
            stride_cb, stride_cs, stride_ch, scale, DOT_PRECISION, V_VIA_REGISTERS, PAGE_SIZE, BLOCK_N, BLOCK_G, BLOCK_D,
        )  # fmt: skip
    if FUSED:  # written after the loop's loads (a load after a store would wait for it)
        dst = slot * stride_cs + kvh * stride_ch + offs_d[None, :]  # a contiguous cache: slot = block * PAGE_SIZE + offset
        cached = offs_d[None, :] < tl.where((slot >= 0) & owner, HEAD_DIM, 0)  # slot -1: a padding row
        tl.store(k_cache_ptr + dst, k_new, mask=cached)
        tl.store(v_cache_ptr + dst, v_new, mask=cached)
        if owner:  # the new key: one more key of the online softmax
            m_new = tl.maximum(m_i, qk_new)
            p = tl.exp(qk_new - m_new)
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p.to(COMPUTE_DTYPE).to(tl.float32)[:, None] * v_new.to(COMPUTE_DTYPE).to(tl.float32)
            m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # empty split or padding row
    out = acc / l_safe[:, None]
    store_mask = g_mask[:, None] & d_mask[None, :]
    if not SPLIT:
        o_ptrs = out_ptr + (b * NUM_HEADS + heads[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        row = (b * NUM_HEADS + heads) * num_splits + split
        tl.store(out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=store_mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
        tl.store(lse_ptr + row, lse, mask=g_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_stage2_kernel(
    partial_ptr,  # [B, H, num_splits, D] float32
    lse_ptr,  # [B, H, num_splits]
    out_ptr,  # [B, H, D]
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,  # MAX_KV_SPLITS, so that one variant serves every split count
    USE_PDL: tl.constexpr,
):
    wait_for_previous_kernel(USE_PDL)
    bh = tl.program_id(0)  # one (sequence, head) row of the output
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    lse = tl.load(lse_ptr + bh * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # all splits empty (padding row)
    w = tl.exp(lse - lse_max)
    parts = tl.load(
        partial_ptr + (bh * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
        mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    w_sum = tl.sum(w, 0)
    w_sum = tl.where(w_sum == 0.0, 1.0, w_sum)
    out = tl.sum(parts * w[:, None], 0) / w_sum
    tl.store(out_ptr + bh * HEAD_DIM + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_kv_splits: int = 1,
    out: torch.Tensor | None = None,
    num_stages: int | None = None,
    block_n: int | None = None,
    v_via_registers: bool | None = None,
    num_warps: int = 4,
    fp8_query: bool = False,
    seq_order: torch.Tensor | None = None,
    new_token: NewTokenKV | None = None,
) -> torch.Tensor:
    """q: [B, H, D] (one token per sequence) -> [B, H, D]. ``seq_order``: int32 [B], a permutation of
    the sequences, the order in which their programs start (see the module). ``new_token``: q is raw
    (before its norm and RoPE) and this step's K/V are not in the cache yet (``NewTokenKV``).
    ``fp8_query`` (an FP8 cache only): q.K in FP8, the query rounded to e4m3 as the cache's values
    are (see the module). ``num_stages``, ``block_n`` (keys per iteration, a multiple of the page
    size), ``v_via_registers`` (see the kernel) and ``num_warps`` other than the defaults are for
    ``bench_kernels.py``'s sweep of the FP8 cache's loop."""
    assert 1 <= num_kv_splits <= MAX_KV_SPLITS, num_kv_splits
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty(num_seqs, num_heads, head_dim, dtype=q.dtype, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_g = max(16, triton.next_power_of_2(group))
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    assert fp8 or not fp8_query, "fp8_query reads an FP8 cache"
    # An FP8 cache widens V in registers, and unsplit takes 128 keys per iteration in 3 stages (an
    # H100 at batch 256, context 1024, 2026-11-27: 219 us against 251 for 128 keys in 2 stages
    # without; 64 keys in 2 stages: 220 against 266). Split, 64 keys keep a short split from
    # reading a mostly empty tile.
    wide = fp8 and num_kv_splits == 1 and page_size <= 128
    if block_n is None:
        block_n = 128 if wide else max(64, page_size)
    if num_stages is None:
        num_stages = 3 if wide and block_n == 128 else 2
    if v_via_registers is None:
        v_via_registers = fp8
    if num_kv_splits > 1:
        target = torch.empty(num_seqs, num_heads, num_kv_splits, head_dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(num_seqs, num_heads, num_kv_splits, dtype=torch.float32, device=q.device)
    else:
        target, lse = out, out  # lse unused
    pdl = pdl_launch_args(q)
    ordered = seq_order is not None
    grid = (num_kv_heads, num_seqs, num_kv_splits) if ordered else (num_seqs, num_kv_heads, num_kv_splits)
    nt = new_token
    fused = nt is not None
    has_norm = fused and nt.q_weight is not None
    if fused:
        assert nt.k.stride(1) == nt.v.stride(1) == head_dim and q.stride(2) == 1 and k_cache.is_contiguous(), "heads contiguous"
    _decode_stage1_kernel[grid](
        q, k_cache, v_cache, block_table, seq_lens, seq_order if ordered else seq_lens, target, lse,
        scale, num_kv_splits,
        q.stride(0), q.stride(1), block_table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        *((nt.k, nt.v, nt.k.stride(0), nt.v.stride(0), nt.q_weight if has_norm else q, nt.k_weight if has_norm else q,
           nt.cos_cache, nt.sin_cache, nt.positions, nt.slot_mapping, nt.eps) if fused else (q, q, 0, 0, q, q, q, q, q, q, 0.0)),
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim, BLOCK_D=block_d,
        PAGE_SIZE=page_size, BLOCK_N=block_n,
        SPLIT=num_kv_splits > 1, NUM_HEADS=num_heads, DOT_PRECISION=dot_precision(q.dtype),
        COMPUTE_DTYPE=kv_compute_dtype(q.dtype, k_cache.dtype), V_VIA_REGISTERS=v_via_registers, ORDERED=ordered, **pdl,
        LINE=128 // k_cache.element_size(), LINES_PER_ROW=triton.cdiv(head_dim * k_cache.element_size(), 128),
        FUSED=fused, HAS_NORM=has_norm, FP8_QUERY=fp8_query,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if num_kv_splits > 1:
        _decode_stage2_kernel[(num_seqs * num_heads,)](
            target, lse, out, num_kv_splits, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=MAX_KV_SPLITS, **pdl,
        )  # fmt: skip
    return out
