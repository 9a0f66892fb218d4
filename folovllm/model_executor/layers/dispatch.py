"""Which kernel a layer's op takes: the fused Triton kernels for CUDA tensors (triton installed),
and for an unquantized matmul of one row, the Triton GEMV where it was measured faster."""

import torch
import torch.nn.functional as F

from folovllm.utils.device import HAS_TRITON


def use_fused_kernels(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda


def unquantized_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``. One row (a single sequence's decode step) of a 16-bit model on the GPU
    goes to the Triton GEMV when ``triton_gemv.GEMV_CONFIGS`` has the weight's shape (where it beat
    cuBLAS on an H100, in bfloat16); everything else to ``F.linear``."""
    if x.shape[0] == 1 and bias is None and weight.element_size() == 2 and use_fused_kernels(x):
        from folovllm.model_executor.layers.triton_gemv import GEMV_CONFIGS, gemv

        config = GEMV_CONFIGS.get(tuple(weight.shape))
        if config is not None:
            return gemv(x, weight, config)
    return F.linear(x, weight, bias)
