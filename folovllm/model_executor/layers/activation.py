"""SiLU-and-multiply, the gate of Qwen's MLP."""

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.model_executor.layers.dispatch import use_fused_kernels


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for the merged gate_up projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused_kernels(x):
            from folovllm.model_executor.layers.fused_kernels import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
