"""Shared Triton helper: gather a tile of K and V rows out of the paged cache."""

import triton
import triton.language as tl


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
    if valid is None:
        block_ids = tl.load(block_table_row_ptr + pos // PAGE_SIZE)
        kv_mask = tl.broadcast_to(d_mask[None, :], (pos.shape[0], offs_d.shape[0]))
    else:
        block_ids = tl.load(block_table_row_ptr + pos // PAGE_SIZE, mask=valid, other=0)
        kv_mask = valid[:, None] & d_mask[None, :]
    offs_kv = block_ids.to(tl.int64) * stride_cb + (pos % PAGE_SIZE) * stride_cs + kvh * stride_ch
    k = tl.load(k_cache_ptr + offs_kv[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + offs_kv[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v
