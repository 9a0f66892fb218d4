"""An RMSNorm or the MLP gate, then a linear layer: one kernel for a few tokens, two otherwise.

The decoder feeds q/k/v and gate/up through their norm, and down through the
SiLU gate. For a step of at most ``SMALL_BATCH_MAX_TOKENS`` tokens on a GPU,
with float weights, each pair runs as one ``triton_gemv`` kernel (three
launches fewer per layer at decode batch sizes, where launches, not bytes,
set the time). Larger steps, GPTQ weights and the CPU run the two layers
one after the other, as before.
"""

from __future__ import annotations

import torch

from folovllm.model_executor.layers.activation import SiluAndMul
from folovllm.model_executor.layers.dispatch import SMALL_BATCH_MAX_TOKENS, use_fused_kernels
from folovllm.model_executor.layers.layernorm import RMSNorm
from folovllm.model_executor.layers.linear import LinearBase, RowParallelLinear, UnquantizedLinearMethod


def _fusable(x: torch.Tensor, linear: LinearBase) -> bool:
    return use_fused_kernels(x) and x.shape[0] <= SMALL_BATCH_MAX_TOKENS and type(linear.quant_method) is UnquantizedLinearMethod


def norm_then_linear(
    norm: RMSNorm, linear: LinearBase, x: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(linear(norm(x + residual)), x + residual)``; with no residual yet (the first layer), ``x`` is it."""
    if _fusable(x, linear):
        from folovllm.model_executor.layers.triton_gemv import norm_linear

        return norm_linear(x, residual, norm.weight, norm.eps, linear.weight, linear.bias)
    if residual is None:
        return linear(norm(x)), x
    hidden, residual = norm(x, residual)
    return linear(hidden), residual


def silu_mul_then_linear(act: SiluAndMul, linear: RowParallelLinear, gate_up: torch.Tensor) -> torch.Tensor:
    """``linear(act(gate_up))``: the MLP's down projection of its gated activations."""
    if _fusable(gate_up, linear):
        from folovllm.model_executor.layers.triton_gemv import silu_mul_linear

        return linear.sum_over_ranks(lambda bias: silu_mul_linear(gate_up, linear.weight, bias))
    return linear(act(gate_up))
