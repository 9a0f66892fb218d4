"""Triton kernel: write the step's new K/V rows into their paged-cache slots.

An FP8 cache (float8 e4m3, scale 1.0) stores each value rounded, saturated at
+-448 (the format's largest finite value), as ``torch``'s cast does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def to_cache_dtype(x, cache_ptr):
    """``x`` as the cache stores it: an FP8 cache saturates at +-448 (e4m3's largest finite value) first.
    The cache pointer's element type is known when the kernel compiles, so the test costs nothing."""
    if cache_ptr.dtype.element_ty == tl.float8e4nv:
        x = tl.clamp(x.to(tl.float32), -448.0, 448.0)
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _store_kv_cache_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_k,
    stride_v,
    ROW: tl.constexpr,  # num_kv_heads * head_dim
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    limit = tl.where(slot >= 0, ROW, 0)  # slot -1: a padding token, write nothing
    mask = offs < limit
    k = tl.load(k_ptr + t * stride_k + offs, mask=mask)
    v = tl.load(v_ptr + t * stride_v + offs, mask=mask)
    tl.store(k_cache_ptr + slot * ROW + offs, to_cache_dtype(k, k_cache_ptr), mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, to_cache_dtype(v, v_cache_ptr), mask=mask)


def store_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """k, v: [T, KVH, D] (rows may be strided); caches: [num_blocks, block_size, KVH, D]."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert k.stride(-1) == 1 and k.stride(-2) == head_dim and v.stride(-1) == 1 and v.stride(-2) == head_dim
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    row = num_kv_heads * head_dim
    _store_kv_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0), ROW=row, BLOCK=triton.next_power_of_2(row),
    )
