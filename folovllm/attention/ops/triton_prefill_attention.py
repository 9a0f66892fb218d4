"""Triton paged prefill attention (flash attention over a varlen, paged context).

The host lists the step's work as tiles, one per BLOCK_M query rows of one
sequence (``prefill_tiles``); a work item is a tile and one query head. A
program takes an item and streams that sequence's keys/values out of the paged
cache in BLOCK_N tiles, keeping a running max and sum (online softmax, in base
2), so the score matrix never exists in memory. Only the key tiles on the
causal diagonal pay for the mask; the ones wholly before the tile's first query
run a loop without it. Because it reads the context from the cache, the same
kernel serves fresh prompts, later chunks of a chunked prefill, and mixed
batches that also hold decode tokens.

A decode row in a mixed step is a 64-row tile with one live row, once per query
head: 64 rows of arithmetic for one, and a kv head's keys fetched once per
query head. With ``DECODES_BY_KV_HEAD`` the list marks such a row (query tile
-1) and one item per kv head takes it instead, the group's query heads as the
rows of a 16-row tile, as the decode kernel does (docs/dev/performance.md
sections 27-28: a run of 1,000 prompts reads 21% of its decoding K/V in such
steps with vLLM's 1,024 sequences a step on an H100, 28% with 256). Off until an H100 has timed it
(``bench_kernels.py``'s mixed rows).

The tile list is what lets a CUDA graph hold this kernel: a graph's list is as
long as a batch of T tokens can need (``max_prefill_tiles``), its unused rows
(-1, -1) at the end. The grid is at most two programs per SM, whatever the
list's length, and each program walks the items in rounds until it meets one of
those rows: a padding row costs one load, not a program. (One program per item,
the earlier grid, launched 4,352 programs for a 1024-token prompt in its graph,
4,096 of them padding, each holding one of an SM's two slots for a few loads.)
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from folovllm.attention.ops.triton_paged_kv import kv_compute_dtype, load_kv_tile, online_softmax_step, query_for_products
from folovllm.utils.common import cdiv
from folovllm.utils.device import dot_precision, num_sms
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel


# Mixed steps' one-token rows as one work item per kv head, the group's query heads as a tile's rows
# (see the module docstring); the work list and the kernel must agree, so both read this.
DECODES_BY_KV_HEAD = False

# The engine's tile shapes hold two programs per SM on an H100 (registers and shared memory;
# scripts/check_triton_compile.py checks it for sm_90): a grid of two per SM runs in one wave.
PROGRAMS_PER_SM = 2


# The block table's width (stride_bt) and the number of work items change from step to step;
# specialising on them would compile new variants while requests run.
@triton.jit(do_not_specialize=["stride_bt", "num_items"])
def _prefill_kernel(
    tiles_ptr,  # int32 [num_tiles, 2]: (sequence, query tile); the unused rows (-1, -1) come last
    num_items,  # num_tiles * NUM_HEADS
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_table_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_bt,
    stride_cb,
    stride_cs,
    stride_ch,
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    DECODE_ITEMS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    USE_PDL: tl.constexpr,
    FP8_QUERY: tl.constexpr,  # an FP8 cache: q rounded to FP8, q.K taken in FP8
):
    wait_for_previous_kernel(USE_PDL)
    # Item w is (tile w // NUM_HEADS, head w % NUM_HEADS): a tile's heads are neighbours, so the list's
    # heaviest-first order holds across heads, and heads that share a kv head run side by side. Round r
    # hands the programs items r * P .. r * P + P - 1, in reverse on odd rounds, so that no program
    # gets the heaviest item of every round.
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    w = pid
    r = pid * 0 + 1  # (a tensor from the start: loop-carried values keep their type)
    b = tl.load(tiles_ptr + 2 * (w // NUM_HEADS), mask=w < num_items, other=-1)
    while b >= 0:
        m_block, h = tl.load(tiles_ptr + 2 * (w // NUM_HEADS) + 1), w % NUM_HEADS
        if m_block >= 0:  # (always, unless DECODE_ITEMS)
            _prefill_item(
                b, m_block, h, q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, query_start_loc_ptr, seq_lens_ptr,
                out_ptr, scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_cs, stride_ch,
                GROUP, HEAD_DIM, BLOCK_D, PAGE_SIZE, BLOCK_M, BLOCK_N, DOT_PRECISION, COMPUTE_DTYPE, FP8_QUERY,
            )  # fmt: skip
        if DECODE_ITEMS:
            # a marked one-token row: the item of each group's first query head does the whole group
            if (m_block < 0) & (h % GROUP == 0):
                _decode_item(
                    b, h, q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
                    scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_cs, stride_ch,
                    GROUP, HEAD_DIM, BLOCK_D, PAGE_SIZE, BLOCK_G, BLOCK_N, DOT_PRECISION, COMPUTE_DTYPE, FP8_QUERY,
                )  # fmt: skip
        w = r * num_programs + tl.where(r % 2 == 0, pid, num_programs - 1 - pid)
        r += 1
        b = tl.load(tiles_ptr + 2 * (w // NUM_HEADS), mask=w < num_items, other=-1)


@triton.jit
def _prefill_item(
    b, m_block, h, q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
    scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_cs, stride_ch,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    FP8_QUERY: tl.constexpr,
):  # fmt: skip
    """Query tile ``m_block`` of sequence ``b``, head ``h``: its rows' attention over the cached context."""
    kvh = h // GROUP
    q_start = tl.load(query_start_loc_ptr + b)
    query_len = tl.load(query_start_loc_ptr + b + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + b)
    context_before = seq_len - query_len  # tokens cached before this step

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < query_len
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    q = query_for_products(q, k_cache_ptr, COMPUTE_DTYPE, FP8_QUERY)
    q_pos = context_before + offs_m

    # Causal: this tile's last query sees keys up to its own position. Key tiles that end before
    # its first query position are visible to every row and need no mask; only the tiles that
    # overlap the diagonal do.
    end = tl.minimum(seq_len, context_before + (m_block + 1) * BLOCK_M)
    unmasked_end = tl.minimum((context_before + m_block * BLOCK_M) // BLOCK_N * BLOCK_N, end)
    out = _attend_context(
        q, q_pos, scale, unmasked_end, end, k_cache_ptr, v_cache_ptr, block_table_ptr + b * stride_bt, kvh, offs_d,
        d_mask, stride_cb, stride_cs, stride_ch, PAGE_SIZE=PAGE_SIZE, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION,
        COMPUTE_DTYPE=COMPUTE_DTYPE,
    )  # fmt: skip
    tl.store(
        out_ptr + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _decode_item(
    b, h, q_ptr, k_cache_ptr, v_cache_ptr, block_table_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
    scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_cs, stride_ch,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    FP8_QUERY: tl.constexpr,
):  # fmt: skip
    """The one query token of sequence ``b``, query heads h .. h + GROUP - 1 (one kv head) as the
    rows of a tile: its attention over the whole context, each key read once for the group."""
    q_start = tl.load(query_start_loc_ptr + b)
    seq_len = tl.load(seq_lens_ptr + b)
    heads = h + tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = heads < h + GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + q_start * stride_qt + heads[:, None] * stride_qh + offs_d[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    q = query_for_products(q, k_cache_ptr, COMPUTE_DTYPE, FP8_QUERY)
    q_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + seq_len - 1  # every row is the last token: it sees every key
    unmasked_end = seq_len // BLOCK_N * BLOCK_N
    out = _attend_context(
        q, q_pos, scale, unmasked_end, seq_len, k_cache_ptr, v_cache_ptr, block_table_ptr + b * stride_bt, h // GROUP,
        offs_d, d_mask, stride_cb, stride_cs, stride_ch, PAGE_SIZE=PAGE_SIZE, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION,
        COMPUTE_DTYPE=COMPUTE_DTYPE,
    )  # fmt: skip
    tl.store(
        out_ptr + q_start * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=g_mask[:, None] & d_mask[None, :],
    )


@triton.jit
def _attend_context(
    q, q_pos, scale, unmasked_end, end, k_cache_ptr, v_cache_ptr, block_table_row_ptr, kvh, offs_d, d_mask,
    stride_cb, stride_cs, stride_ch, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):  # fmt: skip
    """The attention output of the rows of ``q`` (at positions ``q_pos``) over keys 0 .. end - 1 of kv
    head ``kvh``: the key tiles before ``unmasked_end`` without a mask, the rest with it."""
    qk_scale = scale * 1.4426950408889634  # log2(e): the softmax in base 2, exp2(x * log2(e)) = exp(x)
    m_i = tl.full([q.shape[0]], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([q.shape[0]], dtype=tl.float32)
    acc = tl.zeros(q.shape, dtype=tl.float32)
    for n0 in range(0, unmasked_end, BLOCK_N):
        acc, l_i, m_i = _attend_key_tile(
            acc, l_i, m_i, q, q_pos, qk_scale, n0, unmasked_end, k_cache_ptr, v_cache_ptr, block_table_row_ptr, kvh,
            offs_d, d_mask, stride_cb, stride_cs, stride_ch,
            PAGE_SIZE=PAGE_SIZE, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION, COMPUTE_DTYPE=COMPUTE_DTYPE, CAUSAL_MASK=False,
        )  # fmt: skip
    for n0 in range(unmasked_end, end, BLOCK_N):
        acc, l_i, m_i = _attend_key_tile(
            acc, l_i, m_i, q, q_pos, qk_scale, n0, end, k_cache_ptr, v_cache_ptr, block_table_row_ptr, kvh,
            offs_d, d_mask, stride_cb, stride_cs, stride_ch,
            PAGE_SIZE=PAGE_SIZE, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION, COMPUTE_DTYPE=COMPUTE_DTYPE, CAUSAL_MASK=True,
        )  # fmt: skip
    return acc / l_i[:, None]  # every row saw at least key 0, so l_i > 0


@triton.jit
def _attend_key_tile(
    acc, l_i, m_i, q, q_pos, qk_scale, n0, end,
    k_cache_ptr, v_cache_ptr, block_table_row_ptr, kvh, offs_d, d_mask, stride_cb, stride_cs, stride_ch,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    CAUSAL_MASK: tl.constexpr,
):  # fmt: skip
    """One step of the online softmax: the keys and values at positions n0 .. n0 + BLOCK_N (< end)."""
    pos = n0 + tl.arange(0, BLOCK_N)
    # The unmasked loop stops at a multiple of BLOCK_N at or below `end`: its positions need no check.
    in_range = pos < end if CAUSAL_MASK else None
    k, v = load_kv_tile(
        k_cache_ptr, v_cache_ptr, block_table_row_ptr, pos, in_range, kvh, offs_d, d_mask,
        stride_cb, stride_cs, stride_ch, PAGE_SIZE,
    )  # fmt: skip
    # An FP8 cache is upcast here, V always, K unless q is in FP8 too (FP8_QUERY); otherwise no-ops.
    k, v = k.to(q.dtype), v.to(COMPUTE_DTYPE)
    if q.dtype == tl.float8e4nv:
        qk = tl.dot(q, tl.trans(k))
    else:
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if CAUSAL_MASK:
        # pos <= q_pos also keeps every stored row off the positions past `end` (q_pos < end there);
        # the rows past the query, never stored, may see those zeros.
        qk = tl.where(pos[None, :] <= q_pos[:, None], qk, float("-inf"))
    # The first tile a row sees holds key 0, which every row may see: m_new is finite from then on.
    p, alpha, m_new, l_i = online_softmax_step(qk, m_i, l_i, qk_scale, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(COMPUTE_DTYPE), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


def prefill_block_sizes(head_dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a head size: smaller tiles for big heads, to fit the registers."""
    return (64, 64) if head_dim <= 128 else (32, 32)


def prefill_tiles(query_lens, block_m: int, heaviest_first: bool = False, seq_lens=None, decode_rows: bool = False) -> np.ndarray:
    """The work list of a batch: int32 [num_tiles, 2] rows (sequence, query tile), by default in batch order.

    Under the causal mask a tile reads its sequence's cached context and its own prompt's keys up
    to its last row: ``seq_len - query_len + min((tile + 1) * block_m, query_len)`` keys, so a
    prompt's later tiles, and the rows of a long context, do more work. ``heaviest_first`` orders
    the list by that count, most first (``seq_lens`` default to ``query_lens``: fresh prompts, where
    it is the tile index, highest first), so the longest work starts first and the short tiles fill
    in at the end; the kernel's programs take the list in rounds (see ``_prefill_kernel``), which
    balances only over a list in that order. The engine uses it. Not settled: ``bench_kernels.py``'s
    sweep (a program per item, not the engine's rounds) timed it faster than batch order on an H100
    for 16 1024-token prompts in all 20 tile shapes in one session (64 x 64, the engine's tile: 276
    -> 283 TFLOP/s) and slower in all 20 in a later one (267 -> 218); it now also times the
    engine's own launch in both orders.
    """
    query_lens = np.asarray(query_lens, dtype=np.int64)
    per_seq = cdiv(query_lens, block_m)
    seqs = np.repeat(np.arange(len(query_lens)), per_seq)
    first = np.repeat(np.cumsum(per_seq) - per_seq, per_seq)
    tiles = np.stack([seqs, np.arange(len(seqs)) - first], axis=1).astype(np.int32)
    if heaviest_first:
        context = np.asarray(seq_lens, dtype=np.int64) - query_lens if seq_lens is not None else np.zeros_like(query_lens)
        keys = context[seqs] + np.minimum((tiles[:, 1] + 1) * block_m, query_lens[seqs])
        tiles = tiles[np.argsort(-keys, kind="stable")]
    if decode_rows:  # one-token rows as one item per kv head (DECODES_BY_KV_HEAD): query tile -1
        tiles[query_lens[tiles[:, 0]] == 1, 1] = -1
    return tiles


def max_prefill_tiles(num_tokens: int, max_num_seqs: int, block_m: int) -> int:
    """The most tiles any batch of ``num_tokens`` tokens over at most ``max_num_seqs`` sequences needs."""
    return num_tokens // block_m + min(max_num_seqs, num_tokens)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    max_programs: int | None = None,
    decode_items: bool | None = None,
    fp8_query: bool = False,
) -> torch.Tensor:
    """q: [T, H, D] flattened over sequences -> [T, H, D] (causal, context from the cache).

    ``tiles``: ``prefill_tiles(query_lens, block_m)`` on the device, possibly
    followed by (-1, -1) rows (none before a live one); ``block_m`` must be the
    one it was built with (default: ``prefill_block_sizes(head_dim)``). The
    tile and launch options other than the defaults, and ``max_programs`` (the
    most programs launched; default two per SM), are for tests and
    ``bench_kernels.py``'s sweep. ``decode_items`` (default ``DECODES_BY_KV_HEAD``): the list
    may mark one-token rows (``prefill_tiles(..., decode_rows=True)``); a marked row is skipped
    without it. ``fp8_query`` (an FP8 cache only): the query rounded to e4m3 as the cache's values
    are, q.K in FP8 (``abstract.FP8_QUERY``).
    """
    assert k_cache.dtype == torch.float8_e4m3fn or not fp8_query, "fp8_query reads an FP8 cache"
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(head_dim))
    default_m, default_n = prefill_block_sizes(head_dim)
    num_items = tiles.shape[0] * num_heads
    num_programs = min(num_items, max_programs or PROGRAMS_PER_SM * num_sms(q.device))
    _prefill_kernel[(num_programs,)](
        tiles, num_items, q, k_cache, v_cache, block_table, query_start_loc, seq_lens, out, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_heads, GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, PAGE_SIZE=page_size,
        BLOCK_M=block_m or default_m, BLOCK_N=block_n or default_n, DOT_PRECISION=dot_precision(q.dtype),
        COMPUTE_DTYPE=kv_compute_dtype(q.dtype, k_cache.dtype),
        DECODE_ITEMS=DECODES_BY_KV_HEAD if decode_items is None else decode_items,
        BLOCK_G=max(16, triton.next_power_of_2(num_heads // num_kv_heads)), **pdl_launch_args(q), FP8_QUERY=fp8_query,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
