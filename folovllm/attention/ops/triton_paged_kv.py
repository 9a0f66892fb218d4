"""Shared Triton helpers of the attention kernels: gather a tile of K and V rows out of the paged
cache, and the dtype their products are taken in (the query's too)."""

import torch
import triton
import triton.language as tl

from folovllm.attention.ops.triton_kv_store import to_cache_dtype


_TRITON_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def kv_compute_dtype(q_dtype: torch.dtype, cache_dtype: torch.dtype):
    """The dtype the kernels multiply queries, keys and values in: the query's, except beside an FP8
    cache in a bfloat16 model, which computes in float16. e4m3 converts to float16 exactly, two
    values per instruction on Hopper; to bfloat16 it goes through float32, and those conversions
    made the FP8 decode kernel's loop twice as long as bfloat16's (934 SASS instructions against
    465, triton 3.6, sm_90). float16 also keeps 3 more mantissa bits of the query and the
    probabilities than bfloat16 does."""
    if cache_dtype == torch.float8_e4m3fn and q_dtype == torch.bfloat16:
        return tl.float16
    return _TRITON_DTYPES[q_dtype]


@triton.jit
def to_compute_dtype(q, COMPUTE_DTYPE: tl.constexpr):
    """The query in the dtype of the products (``kv_compute_dtype``). bfloat16 -> float16 saturates
    at float16's largest value, 65504, rather than overflowing (no query of a normed Qwen3 head
    comes near it)."""
    if q.dtype != COMPUTE_DTYPE:
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(COMPUTE_DTYPE)
    return q


@triton.jit
def query_for_products(q, k_cache_ptr, COMPUTE_DTYPE: tl.constexpr, FP8_QUERY: tl.constexpr):
    """The query as q.K takes it: rounded to FP8 as the cache's values are (``FP8_QUERY``, an FP8
    cache: the product in FP8, a warpgroup MMA on Hopper where 64 rows allow), else in the compute
    dtype."""
    if FP8_QUERY:
        q = to_cache_dtype(q, k_cache_ptr)
    else:
        q = to_compute_dtype(q, COMPUTE_DTYPE)
    return q


@triton.jit
def online_softmax_step(s, m_i, l_i, qk_scale, AXIS: tl.constexpr):
    """One key tile of the online softmax, in base 2: ``s`` the tile's scores before the scale (the
    keys along ``AXIS``, masked ones -inf), ``m_i`` and ``l_i`` each query row's running max (scaled,
    base-2 units) and sum. ``qk_scale`` is the softmax scale times log2(e), so a score costs one FMA
    (the scale is positive, so it may follow the max). Returns the tile's probabilities, the factor
    that rescales the running output, the new max and the new sum."""
    m_new = tl.maximum(m_i, tl.max(s, AXIS) * qk_scale)
    p = tl.exp2(s * qk_scale - tl.expand_dims(m_new, AXIS))
    alpha = tl.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, AXIS)


@triton.jit
def kv_row_offsets(block_table_row_ptr, pos, valid, kvh, stride_cb, stride_cs, stride_ch, PAGE_SIZE: tl.constexpr):
    """Where kv head ``kvh``'s K (or V) rows of token positions ``pos`` of one sequence start in the
    paged cache, in elements: position p lives in block ``block_table[p // PAGE_SIZE]`` at offset
    ``p % PAGE_SIZE``. ``valid`` masks the block-table reads (None: all in range)."""
    if valid is None:
        block_ids = tl.load(block_table_row_ptr + pos // PAGE_SIZE)
    else:
        block_ids = tl.load(block_table_row_ptr + pos // PAGE_SIZE, mask=valid, other=0)
    return block_ids.to(tl.int64) * stride_cb + (pos % PAGE_SIZE) * stride_cs + kvh * stride_ch


@triton.jit
def load_kv_tile(
    k_cache_ptr, v_cache_ptr, block_table_row_ptr, pos, valid, kvh, offs_d, d_mask,
    stride_cb, stride_cs, stride_ch, PAGE_SIZE: tl.constexpr,
):  # fmt: skip
    """K and V for token positions ``pos`` of one sequence and kv head ``kvh``.

    Position p lives in block ``block_table[p // PAGE_SIZE]`` at offset
    ``p % PAGE_SIZE``; rows where ``valid`` is false come back as zeros.
    ``valid=None``: every position is in range, and the loads check none of them.
    """
    offs_kv = kv_row_offsets(block_table_row_ptr, pos, valid, kvh, stride_cb, stride_cs, stride_ch, PAGE_SIZE)
    if valid is None:
        kv_mask = tl.broadcast_to(d_mask[None, :], (pos.shape[0], offs_d.shape[0]))
    else:
        kv_mask = valid[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + offs_kv[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + offs_kv[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v
