"""Which kernel a layer's op takes: the fused Triton kernels for CUDA tensors (triton installed),
and for an unquantized matmul of one to four rows, the Triton GEMV where it was measured faster;
at one row with the RMSNorm or SiLU-and-mul before it inside, where that was measured faster than
the two kernels; of 5 to 256 rows, the Triton skinny GEMM where that was measured faster than cuBLAS."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from folovllm.utils.device import HAS_TRITON


def use_fused_kernels(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda


def _triton_matmul_may_run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """What both Triton matmuls need: a 16-bit weight (they were measured in bfloat16), no bias, the GPU."""
    return bias is None and weight.element_size() == 2 and use_fused_kernels(x)


def gemv_config(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, fused: bool = False
) -> tuple[int, int, int] | None:  # fmt: skip
    """The Triton GEMV's configuration for ``x @ weight.T + bias``, or None where ``F.linear`` runs it.
    The GEMV takes one row (a single sequence's decode step) of a 16-bit model on the GPU, without a
    bias, where ``triton_gemv.GEMV_CONFIGS`` has the weight's shape (where it beat cuBLAS on an H100,
    in bfloat16), and 2-4 rows where ``FEW_ROWS_GEMV_CONFIGS`` has the shape and the row count
    rounded up to a power of two; with ``fused``, one row only, the GEMV with the op before it
    inside, from ``FUSED_GEMV_CONFIGS``."""
    rows = x.shape[0]
    if rows <= 4 and _triton_matmul_may_run(x, weight, bias):
        import triton

        from folovllm.model_executor.layers import triton_gemv

        if rows == 1:
            return (triton_gemv.FUSED_GEMV_CONFIGS if fused else triton_gemv.GEMV_CONFIGS).get(tuple(weight.shape))
        if not fused:  # the rows as the kernel's BLOCK_M rounds them
            return triton_gemv.FEW_ROWS_GEMV_CONFIGS.get((*weight.shape, triton.next_power_of_2(rows)))
    return None


def skinny_gemm_config(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[int, ...] | None:
    """The Triton skinny GEMM's configuration for ``x @ weight.T + bias``, or None where ``F.linear``
    runs it: 5 to 256 rows of a 16-bit model on the GPU, without a bias, where
    ``triton_skinny_gemm.SKINNY_GEMM_CONFIGS`` has the weight's shape and the rows' power-of-two bucket."""
    if _triton_matmul_may_run(x, weight, bias):
        from folovllm.model_executor.layers import triton_skinny_gemm as skinny

        if skinny.MIN_ROWS <= x.shape[0] <= skinny.MAX_ROWS:
            return skinny.SKINNY_GEMM_CONFIGS.get((*weight.shape, skinny.rows_bucket(x.shape[0])))
    return None


def unquantized_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: the Triton GEMV where ``gemv_config`` gives it one, the skinny GEMM
    where ``skinny_gemm_config`` does, else ``F.linear``."""
    config = gemv_config(x, weight, bias)
    if config is not None:
        from folovllm.model_executor.layers.triton_gemv import gemv

        return gemv(x, weight, config)
    skinny = skinny_gemm_config(x, weight, bias)
    if skinny is not None:
        from folovllm.model_executor.layers.triton_skinny_gemm import skinny_gemm

        return skinny_gemm(x, weight, skinny)
    return F.linear(x, weight, bias)


def rms_norm_then_linear(norm, linear, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(linear(norm(x + residual)), x + residual)``; without ``residual``, ``(linear(norm(x)), x)``.
    One kernel (the GEMV, the norm its prologue) where ``linear.fused_gemv_config`` gives one; else
    the norm and the matmul run one after the other."""
    config = linear.fused_gemv_config(x)
    if config is not None:
        from folovllm.model_executor.layers.triton_gemv import gemv_add_rms_norm

        return gemv_add_rms_norm(x, residual, norm.weight, norm.eps, linear.weight, config)
    if residual is None:
        return linear(norm(x)), x
    x, residual = norm(x, residual)
    return linear(x), residual


def silu_and_mul_then_linear(act, linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(act(x))`` for ``act`` SiLU-and-mul: one kernel where ``linear.fused_gemv_config`` gives one."""
    config = linear.fused_gemv_config(x)
    if config is not None:
        from folovllm.model_executor.layers.triton_gemv import gemv_silu_and_mul

        return gemv_silu_and_mul(x, linear.weight, config)
    return linear(act(x))
