"""A Triton matmul for the decode steps' few rows (8 to 256), for the weight shapes in
``SKINNY_GEMM_CONFIGS`` only; empty until an H100 has measured it faster than cuBLAS.

On an H100 (`docs/benchmarks.md`, 2026-11-27) cuBLAS read the weights of Qwen3-0.6B's o and down
projections, the two with only 1,024 outputs, at 23-34% of copy bandwidth at every batch size
from 1 to 256 rows (down, 6 MB: 6.3 us at 8 rows, 7.7 at 256). A guess at why (cuBLAS's kernels
are closed): 1,024 outputs in tiles of 64-128 columns are only 8-16 blocks, which leave most SMs
waiting at small M. At one row the Triton GEMV won by giving each program a few whole weight rows
(256 programs); this kernel does the same with tensor cores for more rows. Each program owns
BLOCK_N = 16 or 32 outputs (contiguous rows of the [N, K] weight) and BLOCK_M input rows, and
walks all of K (no split, so no partial sums and no second kernel): N = 1024 at BLOCK_N = 16 is
64 column blocks, times ceil(M / BLOCK_M) row blocks. The weight is read once per row block; the
[M, K] input, at most 1.5 MB here, comes from L2. `tl.dot` lets Triton pipeline the loads over
``num_stages`` iterations, which is what keeps bytes in flight.

`benchmarks/bench_kernels.py` times every configuration beside cuBLAS and cuBLASLt at 8-256 rows
and prints the shapes where one wins (what this table takes); `benchmarks/bench_switches.py`
measures the engine with it on against off. ``dispatch.unquantized_gemm`` routes to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.utils.device import dot_precision
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel

# (BLOCK_N, BLOCK_K, warps, stages); BLOCK_M follows the rows (16 to 64)
CONFIGS = [(16, 128, 4, 3), (16, 128, 4, 4), (16, 256, 4, 3), (32, 128, 4, 3), (32, 128, 4, 4), (32, 256, 4, 3)]

# The rows it serves: below, cuBLAS or the one-row GEMV (timed against it only from 8 rows up);
# above, a decode batch is compute-heavy enough for cuBLAS's tiles.
MIN_ROWS, MAX_ROWS = 8, 256

# Weight shape (N, K) -> the configuration the engine uses at MIN_ROWS..MAX_ROWS rows, where
# bench_kernels.py measured it faster than every library on an H100. None measured yet.
SKINNY_GEMM_CONFIGS: dict[tuple[int, int], tuple[int, int, int, int]] = {}


@triton.jit(do_not_specialize=["M"])
def _skinny_gemm_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask, m_mask = offs_n < N, offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


def block_m(m: int) -> int:
    """Rows per program: the rows rounded up to a power of two, at least 16 (the tensor cores' least), at most 64."""
    return min(64, max(16, triton.next_power_of_2(m)))


def skinny_gemm(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int] = CONFIGS[0]) -> torch.Tensor:
    """``x @ w.T`` for x [M, K] and w [N, K] (an nn.Linear weight), float32 accumulation."""
    m, k = x.shape
    n = w.shape[0]
    assert w.shape[1] == k and x.stride(1) == 1 and w.stride(1) == 1, (x.shape, w.shape)
    block_n, block_k, warps, stages = config
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    bm = block_m(m)
    _skinny_gemm_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, bm))](
        x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=dot_precision(x.dtype), **pdl_launch_args(x),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
