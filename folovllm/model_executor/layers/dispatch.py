"""Whether a tensor's ops may take the fused Triton kernels (CUDA tensors, triton installed)."""

import torch

from folovllm.utils.device import HAS_TRITON


def use_fused_kernels(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda
