"""Triton kernels that fuse the decoder's small element-wise ops.

Unfused, one decoder layer launches ~60 tiny kernels (casts, pow, mean,
rsqrt, gathers of cos/sin, rotate-half, the KV-cache write, ...); at decode
batch sizes each is far shorter than its launch cost, even inside a CUDA
graph. These three kernels bring that to three launches:

* ``fused_add_rms_norm``: residual add + RMSNorm (one read, two writes);
* ``fused_qk_norm_rope_store``: Qwen3's per-head RMSNorm of q and k + RoPE,
  and the write of this step's k and v into their paged-cache slots (what
  ``triton_kv_store`` does on its own for other callers, with its ``to_cache_dtype``);
* ``silu_and_mul``: the MLP gate.

They follow the rounding of the plain-torch layers (statistics in float32,
results cast back to the model dtype at the same points), and are tested
against them under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.attention.ops.triton_kv_store import to_cache_dtype
from folovllm.utils.pdl import launch_next_kernel, pdl_launch_args, wait_for_previous_kernel


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, stride_x, stride_r, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    w = tl.load(w_ptr + offs, mask=mask)  # before any store (see _qk_norm_rope_store_kernel)
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
        tl.store(res_out_ptr + row * N + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, 0) / N
    normed = (xf * tl.rsqrt(var + eps)).to(x.dtype)
    tl.store(out_ptr + row * N + offs, w * normed, mask=mask)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """``norm(x)`` or ``(norm(x + residual), x + residual)`` for 2-D ``x``."""
    num_rows, n = x.shape
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    _add_rms_norm_kernel[(num_rows,)](
        x, residual if residual is not None else x, weight, out, res_out,
        x.stride(0), residual.stride(0) if residual is not None else 0, eps,
        N=n, BLOCK=triton.next_power_of_2(n), HAS_RESIDUAL=residual is not None, **pdl_launch_args(x), num_warps=4,
    )  # fmt: skip
    return out if residual is None else (out, res_out)


@triton.jit
def _load_halves(src, offs, mask, HEAD_DIM: tl.constexpr):
    """The two halves ([heads, half] each) of the heads whose first elements ``src`` points at ([heads, 1])."""
    half = HEAD_DIM // 2
    return tl.load(src + offs, mask=mask, other=0.0), tl.load(src + half + offs, mask=mask, other=0.0)


@triton.jit
def _norm_rope_heads(x1, x2, w_ptr, cos, sin, eps, offs, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr):
    """Per-head RMSNorm, then RoPE, of heads given as their two halves ``x1``, ``x2`` [heads, half].

    ``offs`` [1, half] runs over a head's first half; ``cos``, ``sin`` [1, half] are the token's.
    Returns the two rotated halves in the model dtype, rounded where the unfused layers round.
    """
    half = HEAD_DIM // 2
    if HAS_NORM:
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        inv = tl.rsqrt((tl.sum(f1 * f1, 1) + tl.sum(f2 * f2, 1)) / HEAD_DIM + eps)[:, None]
        x1 = tl.load(w_ptr + offs, mask=offs < half) * (f1 * inv).to(x1.dtype)
        x2 = tl.load(w_ptr + half + offs, mask=offs < half) * (f2 * inv).to(x2.dtype)
    y1 = (x1.to(tl.float32) * cos - x2.to(tl.float32) * sin).to(x1.dtype)
    y2 = (x2.to(tl.float32) * cos + x1.to(tl.float32) * sin).to(x1.dtype)
    return y1, y2


@triton.jit
def _qk_norm_rope_store_kernel(
    q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    stride_qt, stride_kt, stride_vt, eps,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, Q_HEADS_BLOCK: tl.constexpr,
    KV_HEADS_BLOCK: tl.constexpr, HALF_BLOCK: tl.constexpr, HEAD_BLOCK: tl.constexpr, HAS_NORM: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    # One program per token, all its heads at once: the token's cos/sin are read once, and a
    # 1024-token prompt is 1,024 programs (one wave on an H100), not 24,576 one-head ones.
    # Every load comes before the first store: the compiler keeps a load after a store it cannot
    # tell apart from it, so loads of k and v placed after q's stores would each start one more
    # round trip to memory late (at one token, 2.4 us against 1.6 for one program per head).
    launch_next_kernel(USE_PDL)
    # The position, the slot and the position's cos/sin are no kernel's output (the host copies the
    # first two in, the table never changes): read before the wait, with PDL the two round trips of
    # position, then cos/sin, overlap the end of the kernel before instead of following it.
    t = tl.program_id(0)
    half = HEAD_DIM // 2
    offs = tl.arange(0, HALF_BLOCK)[None, :]
    pos = tl.load(pos_ptr + t)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    cos = tl.load(cos_ptr + pos * HEAD_DIM + offs, mask=offs < half, other=0.0)
    sin = tl.load(sin_ptr + pos * HEAD_DIM + offs, mask=offs < half, other=0.0)
    wait_for_previous_kernel(USE_PDL, LAUNCHED=True)
    qh = tl.arange(0, Q_HEADS_BLOCK)[:, None]
    q_mask = (qh < NUM_Q_HEADS) & (offs < half)
    q1, q2 = _load_halves(q_ptr + t * stride_qt + qh * HEAD_DIM, offs, q_mask, HEAD_DIM)
    kvh = tl.arange(0, KV_HEADS_BLOCK)[:, None]
    k_mask = (kvh < NUM_KV_HEADS) & (offs < half)
    k1, k2 = _load_halves(k_ptr + t * stride_kt + kvh * HEAD_DIM, offs, k_mask, HEAD_DIM)
    d = tl.arange(0, HEAD_BLOCK)[None, :]
    v_mask = (kvh < NUM_KV_HEADS) & (d < HEAD_DIM)
    v = tl.load(v_ptr + t * stride_vt + kvh * HEAD_DIM + d, mask=v_mask)

    y1, y2 = _norm_rope_heads(q1, q2, qw_ptr, cos, sin, eps, offs, HEAD_DIM, HAS_NORM)
    ky1, ky2 = _norm_rope_heads(k1, k2, kw_ptr, cos, sin, eps, offs, HEAD_DIM, HAS_NORM)
    dst = q_out_ptr + (t * NUM_Q_HEADS + qh) * HEAD_DIM
    tl.store(dst + offs, y1, mask=q_mask)
    tl.store(dst + half + offs, y2, mask=q_mask)
    cached = kvh < tl.where(slot >= 0, NUM_KV_HEADS, 0)  # slot -1: a padding token, nothing to cache
    k_dst = k_cache_ptr + slot * (NUM_KV_HEADS * HEAD_DIM) + kvh * HEAD_DIM
    tl.store(k_dst + offs, to_cache_dtype(ky1, k_cache_ptr), mask=cached & (offs < half))
    tl.store(k_dst + half + offs, to_cache_dtype(ky2, k_cache_ptr), mask=cached & (offs < half))
    v_dst = v_cache_ptr + slot * (NUM_KV_HEADS * HEAD_DIM) + kvh * HEAD_DIM + d
    tl.store(v_dst, to_cache_dtype(v, v_cache_ptr), mask=cached & (d < HEAD_DIM))


def fused_qk_norm_rope_store(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
    cos_cache: torch.Tensor, sin_cache: torch.Tensor, positions: torch.Tensor, eps: float,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """q [T, H, D], k and v [T, KVH, D] (rows may be strided; heads contiguous) -> the new contiguous q.

    k (normed and rotated) and v go straight into the paged caches
    ``[num_blocks, block_size, KVH, D]`` at ``slot_mapping`` (-1: skipped).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert k.stride(1) == v.stride(1) == head_dim and k_cache.is_contiguous() and v_cache.is_contiguous()
    q_out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    has_norm = q_weight is not None
    _qk_norm_rope_store_kernel[(num_tokens,)](
        q, k, v, q_weight if has_norm else q, k_weight if has_norm else k, cos_cache, sin_cache, positions, slot_mapping,
        q_out, k_cache, v_cache, q.stride(0), k.stride(0), v.stride(0), eps,
        NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        Q_HEADS_BLOCK=triton.next_power_of_2(num_heads), KV_HEADS_BLOCK=triton.next_power_of_2(num_kv_heads),
        HALF_BLOCK=triton.next_power_of_2(head_dim // 2), HEAD_BLOCK=triton.next_power_of_2(head_dim),
        HAS_NORM=has_norm, **pdl_launch_args(q), num_warps=4,
    )  # fmt: skip
    return q_out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, N: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + N + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    tl.store(out_ptr + row * N + offs, act * up, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    num_rows, two_n = x.shape
    n = two_n // 2
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(n, block))](
        x, out, x.stride(0), N=n, BLOCK=block, **pdl_launch_args(x), num_warps=4
    )
    return out
