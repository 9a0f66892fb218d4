"""Triton W4A16 / W8A16 GEMM for GPTQ weights: dequantize tiles in registers, multiply on tensor cores.

One kernel serves both shapes the engine runs:

* prefill-sized M: a tiled GEMM (64 rows per program, no split);
* decode-sized M (<= 64): few output tiles would leave most SMs idle, so the
  input dim is split over ``SPLIT_K`` programs; each writes a float32 partial
  and the partials are summed afterwards (deterministic, unlike atomics).

A K-tile never crosses a group boundary (``BLOCK_K`` divides the group size),
so each tile reads one row of scales and one row of packed zeros. With
``desc_act`` the groups are not contiguous in the checkpoint's row order;
``reorder_for_kernel`` sorts the rows by group once at load time and the
activations are permuted to match (one gather per layer per step), as the
exllama and Marlin kernels do. When even sorted rows do not form equal groups
(a row-parallel shard of an act-order layer), the kernel looks up each row's
group in ``g_idx`` instead (``ROW_GROUPS``: a scale and zero per element,
slower, any order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.model_executor.layers.quantization.gptq_packing import pack_rows, unpack_rows
from folovllm.utils.device import dot_precision, num_sms
from folovllm.utils.fit_stages import launch_fitting_stages

# Decode batches up to this many rows take the split-K configuration.
_SPLIT_K_MAX_M = 64


@triton.jit(do_not_specialize=["M", "k_per_split"])  # per-step sizes: one compiled variant for all
def _gptq_gemm_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, g_idx_ptr, out_ptr, M, N, K, stride_xm, k_per_split,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROW_GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    PACK: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    zero_shift = (offs_n % PACK) * BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        packed = tl.load(qweight_ptr + (offs_k[:, None] // PACK) * N + offs_n[None, :], mask=n_mask[None, :], other=0)
        codes = (packed >> ((offs_k[:, None] % PACK) * BITS)) & MAXQ
        if ROW_GROUPS:  # [BLOCK_K, BLOCK_N] scales and zeros, one group per row
            groups = tl.load(g_idx_ptr + offs_k)[:, None]
            scales = tl.load(scales_ptr + groups * N + offs_n[None, :], mask=n_mask[None, :], other=0.0).to(tl.float32)
            packed_zeros = tl.load(qzeros_ptr + groups * (N // PACK) + offs_n[None, :] // PACK, mask=n_mask[None, :], other=0)
            zeros = ((packed_zeros >> zero_shift[None, :]) & MAXQ) + ZERO_OFFSET
        else:  # one group for the whole tile: a row of scales and zeros
            group = k0 // GROUP_SIZE
            scales = tl.load(scales_ptr + group * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            packed_zeros = tl.load(qzeros_ptr + group * (N // PACK) + offs_n // PACK, mask=n_mask, other=0)
            zeros = (((packed_zeros >> zero_shift) & MAXQ) + ZERO_OFFSET)[None, :]
        w = ((codes - zeros).to(tl.float32) * scales).to(x.dtype)
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=m_mask[:, None] & n_mask[None, :])


def kernel_block_k(group_size: int) -> int | None:
    """The widest K-tile that divides the group size, or None if the kernel cannot take it."""
    for block_k in (128, 64, 32, 16):
        if group_size % block_k == 0:
            return block_k
    return None


def reorder_for_kernel(qweight: torch.Tensor, g_idx: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the input rows by group: ``(qweight with rows sorted, perm)``, where ``x[:, perm]`` matches."""
    perm = torch.argsort(g_idx.long(), stable=True)
    codes = unpack_rows(qweight, bits)[perm]
    return pack_rows(codes, bits), perm


def _split_k(num_tiles: int, k: int, block_k: int, device: torch.device) -> int:
    """Enough programs to cover the SMs twice, in a power of two that divides K into whole tiles."""
    target = 2 * (num_sms(device) if device.type == "cuda" else 8)  # 8: a stand-in, so CPU tests split too
    split = 1
    while split < 16 and num_tiles * split * 2 <= target and k % (split * 2 * block_k) == 0:
        split *= 2
    return split


def gptq_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    bits: int,
    group_size: int,
    zero_offset: int,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x [M, K] @ W [K, N]`` where W's rows are stored in contiguous groups of ``group_size``,
    or, with ``g_idx``, row k belongs to group ``g_idx[k]`` (any order; ``group_size`` unused).

    Without ``g_idx``, ``x`` must already be permuted to the kernel's row order (see ``reorder_for_kernel``).
    """
    m, k = x.shape
    n = qweight.shape[1]
    x = x.contiguous()
    block_k = kernel_block_k(k if g_idx is not None else group_size)
    if m <= _SPLIT_K_MAX_M:
        block_m, block_n, num_warps = max(16, triton.next_power_of_2(m)), 64, 4
    else:
        block_m, block_n, block_k, num_warps = 64, 64, min(block_k, 64), 4
    grid_mn = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    split = _split_k(grid_mn[0] * grid_mn[1], k, block_k, x.device) if m <= _SPLIT_K_MAX_M else 1
    out = torch.empty((split, m, n), dtype=torch.float32 if split > 1 else x.dtype, device=x.device)
    launch_fitting_stages(
        _gptq_gemm_kernel, (*grid_mn, split),
        x, qweight, qzeros, scales, g_idx if g_idx is not None else qzeros, out, m, n, k, x.stride(0), k // split,
        GROUP_SIZE=group_size, BITS=bits, ZERO_OFFSET=zero_offset,
        DOT_PRECISION=dot_precision(x.dtype), ROW_GROUPS=g_idx is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=3,  # Triton's default
    )  # fmt: skip
    return out[0] if split == 1 else out.sum(dim=0).to(x.dtype)
