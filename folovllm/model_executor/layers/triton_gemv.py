"""One-row matmuls on the GPU: a Triton matrix-vector product for a single sequence's decode steps.

``dispatch.unquantized_gemm`` (the unquantized linear layers and the LM head) sends a one-row
input here, on CUDA, when the weight's shape has an entry in ``GEMV_CONFIGS``: the shapes where
``bench_kernels.py`` timed this kernel faster than cuBLAS and cuBLASLt at one row. Every other
call goes to ``F.linear``.

Why a kernel of its own: at one row cuBLAS read Qwen3-0.6B's o and down weights at 0.75-0.8 TB/s
on an H100 that copies at 3.0 (0.36 ms of a ~1.10 ms batch-1 step). A matrix-vector product is a
pure stream of the weight; it runs at the floor when every SM has enough bytes in flight (at
~3 TB/s and ~0.7 us of memory latency, ~16 KB per SM). Each program owns BLOCK_N output columns
(rows of the [N, K] weight, each contiguous in memory) and walks K in BLOCK_K pieces: N = 1024 at
BLOCK_N = 4 makes 256 programs, two per SM, each loading 4 x BLOCK_K x 2 bytes at a time. No split
over K, so no partial sums to add afterwards; the output is written once, in the input's dtype.
The products accumulate element-wise across the loop and are summed once at the end: with the sum
inside the loop the SASS shuffled partial sums between threads every iteration (265 instructions
per iteration against 153). Triton does not pipeline these loads (they feed no ``tl.dot``), so
what is in flight is one iteration's tile per program: the configurations differ in that.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (BLOCK_N, BLOCK_K, warps) that bench_kernels.py times; the last two are for 2-4 rows, whose
# accumulator the others cannot hold.
CONFIGS = [(4, 1024, 4), (4, 2048, 4), (8, 512, 4), (8, 1024, 4), (8, 1024, 8), (16, 512, 8), (4, 512, 8), (8, 256, 8)]

# Weight shape (N, K) -> the configuration the engine uses at one row: bench_kernels.py's fastest on
# an H100 (2026-11-27, torch 2.11, triton 3.6; 50 calls replayed from a CUDA graph), each faster
# there than cuBLAS and cuBLASLt. Qwen3-0.6B's shapes; any other shape stays with F.linear.
GEMV_CONFIGS: dict[tuple[int, int], tuple[int, int, int]] = {
    (4096, 1024): (8, 512, 4),  # q/k/v: 3.4 us, cuBLAS 3.8
    (1024, 2048): (4, 2048, 4),  # o: 2.6 us, cuBLAS 5.0
    (6144, 1024): (8, 512, 4),  # gate/up: 4.3 us, cuBLAS 4.9
    (1024, 3072): (4, 2048, 4),  # down: 3.2 us, cuBLAS 6.1
    (151936, 1024): (8, 1024, 4),  # the (tied) LM head: 100.4 us, cuBLAS 111.4
}


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask, m_mask = offs_n < N, offs_m < M
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    out = tl.sum(acc, axis=2)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


def fits(m: int, config: tuple[int, int, int]) -> bool:
    """Whether a configuration's float32 accumulator stays within 64 registers per thread at ``m`` rows."""
    block_n, block_k, warps = config
    return triton.next_power_of_2(m) * block_n * block_k <= 64 * 32 * warps


def gemv(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int] = CONFIGS[0]) -> torch.Tensor:
    """``x @ w.T`` for x [M, K] with few rows and w [N, K] (an nn.Linear weight), float32 accumulation."""
    m, k = x.shape
    n = w.shape[0]
    assert w.shape[1] == k and x.stride(1) == 1 and w.stride(1) == 1 and fits(m, config), (x.shape, w.shape, config)
    block_n, block_k, warps = config
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    return out
