"""A Triton matmul for the decode steps' few rows (5 to 256), tiled over rows and outputs and,
for the projections with few outputs, split along K; used for the weight shapes and row counts
in ``SKINNY_GEMM_CONFIGS`` only, empty until an H100 has measured it faster than cuBLAS.

On an H100 (`docs/benchmarks.md`, 2026-11-27) cuBLAS took 6.8 us for Qwen3-0.6B's o projection at
256 rows and 4.9 us at 1 row, replaying it from a graph with its 4 MB weight in L2: far from the
~1.5 us its arithmetic and its bytes need. The o and down projections have only 1,024 outputs; in
tiles of 128 x 128 a 256-row product is 16 programs, each walking all of K alone while most SMs
wait. The first version of this kernel (whole K, 16-32 outputs a program, at most 64 rows) had
the programs but read the [M, K] input once per 16-32 outputs from L2 and lost to cuBLAS almost
everywhere. This one keeps tiles big enough for the tensor cores' data reuse (BLOCK_M x BLOCK_N,
16 to 128 each) and gets its programs from a third grid axis instead: SPLIT_K programs per tile
each take a contiguous share of K. Each stores its fp32 partial tile, and the program that
arrives last at the tile (``arrival_count.arrived_last``) adds all SPLIT_K partials, in split
order whatever the order of arrival (so the result does not depend on timing), and writes the
output: no second kernel, no atomics on the data. With SPLIT_K = 1 the programs write their tile
directly.

`benchmarks/bench_kernels.py` times ``sweep_configs(rows)`` beside cuBLAS and cuBLASLt at each
row count the table is keyed by and prints where one wins (what the table takes);
`benchmarks/bench_switches.py` measures the engine with it on against off.
``dispatch.unquantized_gemm`` routes to it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from folovllm.utils.arrival_count import arrived_last
from folovllm.utils.device import dot_precision
from folovllm.utils.fit_stages import launch_fitting_stages
from folovllm.utils.pdl import launch_next_kernel, pdl_launch_args, prefetch_rows, wait_for_previous_kernel

# The rows it serves: below, the one-row / few-row GEMV or cuBLAS; above, a batch is compute-heavy
# enough for cuBLAS's big tiles.
MIN_ROWS, MAX_ROWS = 5, 256

# (N, K, rows rounded up to a power of two, at least 8) -> (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K,
# warps, stages), where bench_kernels.py measured it faster than every library on an H100.
SKINNY_GEMM_CONFIGS: dict[tuple[int, int, int], tuple[int, int, int, int, int, int]] = {}


def rows_bucket(m: int) -> int:
    """The row count ``SKINNY_GEMM_CONFIGS`` keys ``m`` rows by: m rounded up to a power of two, at least 8."""
    return max(8, triton.next_power_of_2(m))


def sweep_configs(rows: int) -> list[tuple[int, int, int, int, int, int]]:
    """The configurations bench_kernels.py times at ``rows`` rows (a power of two): row tiles of the
    rows (at least the tensor cores' 16, at most 128; also half of that from 128 rows up), 64 or 128
    outputs a tile (also 32 up to 64 rows), K in steps of 64 (4 stages) or 128 (3 stages), split
    1, 2, 4 or 8 ways; 8 warps for tiles of 128 x 128, 4 below."""
    block_ms = {min(128, max(16, rows))} | ({64} if rows >= 128 else set())
    block_ns = (32, 64, 128) if rows <= 64 else (64, 128)
    return [
        (bm, bn, bk, split, 8 if bm * bn >= 128 * 128 else 4, stages)
        for bm in sorted(block_ms)
        for bn in block_ns
        for bk, stages in ((64, 4), (128, 3))
        for split in (1, 2, 4, 8)
    ]


@functools.lru_cache(maxsize=None)
def _tile_counters(device: torch.device, size: int) -> torch.Tensor:
    """The split programs' int32 count per output tile, zeroed once and shared by every call on
    ``device`` with at most ``size`` tiles (each call leaves them at zero)."""
    return torch.zeros(size, dtype=torch.int32, device=device)


@triton.jit(do_not_specialize=["M", "k_steps_per_split", "num_splits"])
def _skinny_gemm_kernel(
    x_ptr, w_ptr, out_ptr, partial_ptr, counter_ptr, M, N, K, k_steps_per_split, num_splits, stride_xm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr, LINE: tl.constexpr,
):  # fmt: skip
    launch_next_kernel(USE_PDL)
    pid_n, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask, m_mask = offs_n < N, offs_m < M
    # this split's share of K: whole BLOCK_K steps (so the compiler knows its loads' alignment and
    # masks only against K, of which it knows the divisibility: 8-wide vector loads)
    k_start = split * k_steps_per_split * BLOCK_K
    if USE_PDL:
        # As the GEMV does: no kernel writes the weights, so the first 8 lines (LINE elements each)
        # of this program's weight rows start coming into L2 while the kernel before still runs.
        prefetch_rows(w_ptr + tl.minimum(offs_n, N - 1) * stride_wn, k_start, K - 1, 8, LINE)
    wait_for_previous_kernel(USE_PDL, LAUNCHED=True)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, tl.minimum(K, k_start + k_steps_per_split * BLOCK_K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if num_splits == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tile = offs_m[:, None] * N + offs_n[None, :]  # partials: [num_splits, M, N], float32
        tl.store(partial_ptr + split * M * N + tile, acc, mask=out_mask)
        if arrived_last(counter_ptr + pid_m * tl.num_programs(0) + pid_n, num_splits):
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in range(num_splits):
                total += tl.load(partial_ptr + s * M * N + tile, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=out_mask)


def skinny_gemm(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int, int, int]) -> torch.Tensor:
    """``x @ w.T`` for x [M, K] and w [N, K] (an nn.Linear weight), float32 accumulation, in
    ``config`` = (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages). K is split into at most
    SPLIT_K shares of whole BLOCK_K steps."""
    m, k = x.shape
    n = w.shape[0]
    assert w.shape[1] == k and x.stride(1) == 1 and w.stride(1) == 1, (x.shape, w.shape)
    block_m, block_n, block_k, split_k, warps, stages = config
    k_steps_per_split = triton.cdiv(triton.cdiv(k, block_k), split_k)
    num_splits = triton.cdiv(triton.cdiv(k, block_k), k_steps_per_split)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), num_splits)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    partials = torch.empty(num_splits if num_splits > 1 else 0, m, n, dtype=torch.float32, device=x.device)
    launch_fitting_stages(
        _skinny_gemm_kernel, grid, x, w, out, partials, _tile_counters(x.device, max(4096, triton.next_power_of_2(grid[0] * grid[1]))), m, n, k, k_steps_per_split, num_splits, x.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=dot_precision(x.dtype), **pdl_launch_args(x),
        LINE=128 // w.element_size(), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
