"""One-row matmuls on the GPU: a Triton matrix-vector product for a single sequence's decode steps.

``dispatch.unquantized_gemm`` (the unquantized linear layers and the LM head) sends a one-row
input here, on CUDA, when the weight's shape has an entry in ``GEMV_CONFIGS``: the shapes where
``bench_kernels.py`` timed this kernel faster than cuBLAS and cuBLASLt at one row; and an input of
2-4 rows where ``FEW_ROWS_GEMV_CONFIGS`` has the shape and row count. Every other call goes to
``F.linear``.

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

At one row the kernels before a matmul are about as short as their launch. This kernel can do the
RMSNorm before q/k/v and gate/up, and SiLU-and-mul before down, as it loads its input (the prologue,
below): seven kernels per layer instead of ten. The decoder layer (``dispatch.rms_norm_then_linear``,
``silu_and_mul_then_linear``) takes that path for the shapes in ``FUSED_GEMV_CONFIGS`` only.

With programmatic dependent launch (``folovllm.utils.pdl``) each program asks L2 for its weight
rows first, and only then waits for the kernel before, which computes its input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.utils.pdl import launch_next_kernel, pdl_launch_args, prefetch_rows, wait_for_previous_kernel

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

# (N, K, rows) -> the configuration at 2 or 4 rows (3 rows run as 4: the kernel rounds its rows up
# to a power of two), where bench_kernels.py's line "... and at 2-4 rows" had the GEMV faster than
# cuBLAS and cuBLASLt on an H100 (2026-11-27): o and down, whose 1,024 outputs cuBLAS reads at
# 21-34% of copy bandwidth at any row count up to 64.
FEW_ROWS_GEMV_CONFIGS: dict[tuple[int, int, int], tuple[int, int, int]] = {
    (1024, 2048, 2): (4, 1024, 4),  # o: 3.0 us, cuBLAS(Lt) 4.8
    (1024, 2048, 4): (4, 512, 8),  # o: 4.3 us, cuBLAS 4.9
    (1024, 3072, 2): (4, 1024, 4),  # down: 3.5 us, cuBLAS 6.1
    (1024, 3072, 4): (4, 512, 8),  # down: 5.2 us, cuBLAS 6.1
}

# Weight shape (N, K) -> the configuration of the GEMV with the op before it inside (the RMSNorm before
# q/k/v and gate/up, SiLU-and-mul before down), for the shapes where bench_kernels.py's line "one-row
# shapes where the fused GEMV beats the two kernels" had it faster on an H100. Not measured yet: until
# then the decoder layer runs the two kernels at every shape. (A launch replayed from a CUDA graph
# costs about a microsecond: removing one pays only if the prologue costs less.)
FUSED_GEMV_CONFIGS: dict[tuple[int, int], tuple[int, int, int]] = {}


# What the kernel does to its input before the product (``prologue``): nothing; the residual add and
# RMSNorm of a decoder layer (``fused_add_rms_norm``) before q/k/v or gate/up; SiLU-and-mul
# (``silu_and_mul``) of gate/up before down. Each program recomputes it for the whole input row, which
# it reads from L2: a few KB against the BLOCK_N x K weight bytes it streams, and one launch fewer.
NONE, ADD_RMS_NORM, SILU_AND_MUL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # (a kernel reads globals only as constexpr)


@triton.jit
def _row_rstd(x_ptr, res_ptr, offs_m, m_mask, K, stride_xm, HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr, eps):
    """1 / RMS of each row of ``x (+ residual)``, and those rows (``x + residual``: the new residual)."""
    offs = tl.arange(0, BLOCK_ROW)
    mask = m_mask[:, None] & (offs[None, :] < K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(res_ptr + offs_m[:, None] * K + offs[None, :], mask=mask, other=0.0)
    xf = x.to(tl.float32)
    return tl.rsqrt(tl.sum(xf * xf, 1) / K + eps), x


@triton.jit
def _load_input(
    x_ptr, res_ptr, norm_w_ptr, rstd, offs_m, offs_k, mask, K, stride_xm,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):  # fmt: skip
    """Columns ``offs_k`` of the matmul's input, rounded as the unfused kernels round them."""
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask, other=0.0)
    if PROLOGUE == ADD_RMS_NORM:
        if HAS_RESIDUAL:
            x = x + tl.load(res_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask, other=0.0)
        normed = (x.to(tl.float32) * rstd[:, None]).to(x.dtype)
        x = tl.load(norm_w_ptr + offs_k, mask=offs_k < K, other=0.0)[None, :] * normed
    elif PROLOGUE == SILU_AND_MUL:  # x holds gate, and up K columns further on
        up = tl.load(x_ptr + offs_m[:, None] * stride_xm + K + offs_k[None, :], mask=mask, other=0.0)
        g = x.to(tl.float32)
        x = (g / (1.0 + tl.exp(-g))).to(x.dtype) * up
    return x


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, res_ptr, norm_w_ptr, res_out_ptr, M, N, K, stride_xm, stride_wn, stride_om, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_ROW: tl.constexpr,
    USE_PDL: tl.constexpr, LINE: tl.constexpr, LINES_PER_ROW: tl.constexpr,
):  # fmt: skip
    launch_next_kernel(USE_PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask, m_mask = offs_n < N, offs_m < M
    if USE_PDL:
        # No kernel writes the weights: this program's rows (LINE elements a 128-byte line) start
        # coming into L2 while the kernel before, which computes the input, is still running.
        prefetch_rows(w_ptr + tl.minimum(offs_n, N - 1) * stride_wn, 0, K - 1, LINES_PER_ROW, LINE)
    wait_for_previous_kernel(USE_PDL, LAUNCHED=True)
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if PROLOGUE == ADD_RMS_NORM:
        rstd, rows = _row_rstd(x_ptr, res_ptr, offs_m, m_mask, K, stride_xm, HAS_RESIDUAL, BLOCK_ROW, eps)
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = _load_input(x_ptr, res_ptr, norm_w_ptr, rstd, offs_m, offs_k, m_mask[:, None] & k_mask[None, :], K, stride_xm,
                        PROLOGUE, HAS_RESIDUAL)  # fmt: skip
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    out = tl.sum(acc, axis=2)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip
    if PROLOGUE == ADD_RMS_NORM and HAS_RESIDUAL:
        # Program 0 writes the new residual last: a store before the loop would hold back the loop's
        # loads (see _qk_norm_rope_store_kernel).
        if tl.program_id(0) == 0:
            offs = tl.arange(0, BLOCK_ROW)
            tl.store(res_out_ptr + offs_m[:, None] * K + offs[None, :], rows, mask=m_mask[:, None] & (offs[None, :] < K))


def fits(m: int, config: tuple[int, int, int]) -> bool:
    """Whether a configuration's float32 accumulator stays within 64 registers per thread at ``m`` rows."""
    block_n, block_k, warps = config
    return triton.next_power_of_2(m) * block_n * block_k <= 64 * 32 * warps


def _launch(x, w, config, k, prologue=NONE, residual=None, norm_weight=None, eps=0.0):
    m, n = x.shape[0], w.shape[0]
    assert w.shape[1] == k and x.stride(1) == 1 and w.stride(1) == 1 and fits(m, config), (x.shape, w.shape, config)
    block_n, block_k, warps = config
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty(m, k, dtype=x.dtype, device=x.device) if residual is not None else out
    pdl = pdl_launch_args(x)
    line = 128 // w.element_size()
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w, out, residual if residual is not None else x, norm_weight if norm_weight is not None else x, res_out,
        m, n, k, x.stride(0), w.stride(0), out.stride(0), eps,
        BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k,
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, BLOCK_ROW=triton.next_power_of_2(k) if prologue == ADD_RMS_NORM else 1,
        LINE=line, LINES_PER_ROW=triton.next_power_of_2(triton.cdiv(k, line)) if pdl["USE_PDL"] else 1, **pdl,
        num_warps=warps,
    )  # fmt: skip
    return out, res_out


def gemv(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int] = CONFIGS[0]) -> torch.Tensor:
    """``x @ w.T`` for x [M, K] with few rows and w [N, K] (an nn.Linear weight), float32 accumulation."""
    return _launch(x, w, config, x.shape[1])[0]


def gemv_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float, w: torch.Tensor,
    config: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(norm(x + residual) @ w.T, x + residual)`` in one kernel (without ``residual``: ``norm(x) @ w.T``
    and ``x``), ``norm`` the RMSNorm of ``fused_add_rms_norm``; rows of ``residual`` contiguous."""
    assert residual is None or residual.is_contiguous()
    out, res_out = _launch(x, w, config, x.shape[1], ADD_RMS_NORM, residual, norm_weight, eps)
    return out, (x if residual is None else res_out)


def gemv_silu_and_mul(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int]) -> torch.Tensor:
    """``silu_and_mul(x) @ w.T`` in one kernel, for x [M, 2K] (gate, then up) and w [N, K]."""
    return _launch(x, w, config, x.shape[1] // 2, SILU_AND_MUL)[0]
