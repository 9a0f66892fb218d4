"""Whether a tensor's ops may take the fused Triton kernels (CUDA tensors, triton installed)."""

import importlib.util

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None


def use_fused_kernels(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda
