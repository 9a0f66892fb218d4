"""Small-batch matmuls that also do the op before them: RMSNorm, or SiLU-and-mul.

At decode batch sizes a linear layer reads its whole weight to produce a few
rows; it is bound by memory and, for Qwen3-0.6B's 4-12 MB weights, by the
fixed cost of a kernel. The RMSNorm before q/k/v and gate/up, and the gate
before the down projection, are each one more small kernel per layer. Here
the matmul kernel applies them to its input tiles as it loads them, so each
of those pairs is one launch:

* ``norm_linear``: ``(linear(rms_norm(x + residual)), x + residual)``;
* ``silu_mul_linear``: ``linear(silu(gate) * up)`` of the merged gate/up.

Grid: one program per ``BLOCK_N`` output columns, all rows (at most
``BLOCK_M``) at once, so each weight element is read once. For the norm,
every program computes the rows' statistics itself (a ``[rows, K]`` read that
costs little beside its ``[BLOCK_N, K]`` weight slice); program 0 writes the
new residual. The prologues round where the separate kernels round (the
normalised or gated input is cast to the model dtype before the product), so
the only difference from norm-then-cuBLAS is the order of the float32 sums.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from folovllm.model_executor.layers.dispatch import SMALL_BATCH_MAX_TOKENS

MAX_ROWS = SMALL_BATCH_MAX_TOKENS  # the kernel's BLOCK_M


@triton.jit(do_not_specialize=["M"])  # the step's token count: one variant serves 1..MAX_ROWS
def _prologue_gemv_kernel(
    x_ptr, res_ptr, norm_w_ptr, w_ptr, bias_ptr, out_ptr, res_out_ptr,
    M, N, K, stride_x, stride_r, stride_w, eps,  # N, K plain ints: q/k/v and gate/up share one compiled variant
    SILU_MUL: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m[:, None] * stride_x
    r_rows = res_ptr + offs_m[:, None] * stride_r

    if not SILU_MUL:  # the rows' RMS, over all of K, before any tile is normalised
        sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = m_mask[:, None] & (offs_k[None, :] < K)
            h = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
            if HAS_RESIDUAL:
                h = h + tl.load(r_rows + offs_k[None, :], mask=mask, other=0.0)
                if pid_n == 0:
                    tl.store(res_out_ptr + offs_m[:, None] * K + offs_k[None, :], h, mask=mask)
            hf = h.to(tl.float32)
            sum_sq += tl.sum(hf * hf, 1)
        rstd = tl.rsqrt(sum_sq / K + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        mask = m_mask[:, None] & k_mask[None, :]
        if SILU_MUL:  # x is the merged [gate | up], each K wide
            gate = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
            up = tl.load(x_rows + K + offs_k[None, :], mask=mask, other=0.0)
            g = gate.to(tl.float32)
            a = (g / (1.0 + tl.exp(-g))).to(gate.dtype) * up
        else:
            a = tl.load(x_rows + offs_k[None, :], mask=mask, other=0.0)
            if HAS_RESIDUAL:
                a = a + tl.load(r_rows + offs_k[None, :], mask=mask, other=0.0)
            norm_w = tl.load(norm_w_ptr + offs_k, mask=k_mask, other=0.0)
            a = norm_w[None, :] * (a.to(tl.float32) * rstd[:, None]).to(a.dtype)
        w = tl.load(w_ptr + offs_n[:, None] * stride_w + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


class GemvConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def gemv_config(n: int, elem_size: int) -> GemvConfig:
    """The widest column block that still gives >= 128 programs (an H100 has 132 SMs), at least 16
    (tl.dot's minimum). With 16-wide blocks (few columns, e.g. down's 1024) fewer programs share the
    weight, so each loads longer K tiles (1 KiB of each weight row) to keep as many bytes in flight;
    for float32 that is 256 columns, as 512 would need more shared memory than an H100 has."""
    for block in (64, 32):
        if triton.cdiv(n, block) >= 128:
            return GemvConfig(block, 128)
    return GemvConfig(16, 1024 // elem_size)


def _launch(x, residual, norm_weight, eps, weight, bias, silu_mul: bool, k: int):
    m = x.shape[0]
    n = weight.shape[0]
    assert m <= MAX_ROWS and weight.shape[1] == k, (x.shape, weight.shape)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty(m, k, dtype=x.dtype, device=x.device) if residual is not None else out
    cfg = gemv_config(n, x.element_size())
    _prologue_gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else weight,
        weight, bias if bias is not None else weight, out, res_out,
        m, n, k, x.stride(0), residual.stride(0) if residual is not None else 0, weight.stride(0), eps,
        SILU_MUL=silu_mul, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # float32 models: no TF32 rounding
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, res_out


def norm_linear(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
    weight: torch.Tensor, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(rms_norm(h) @ weight.T + bias, h)`` with ``h = x + residual`` (``h = x`` without one); at most ``MAX_ROWS`` rows."""
    out, res_out = _launch(x, residual, norm_weight, eps, weight, bias, False, x.shape[1])
    return out, (res_out if residual is not None else x)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(silu(gate) * up) @ weight.T + bias`` for ``gate_up = [gate | up]``; at most ``MAX_ROWS`` rows."""
    return _launch(gate_up, None, None, 0.0, weight, bias, True, gate_up.shape[1] // 2)[0]
