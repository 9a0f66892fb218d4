"""Whether a tensor's ops may take the fused Triton kernels (CUDA tensors, triton installed)."""

import torch

from folovllm.utils.device import HAS_TRITON

# Up to this many tokens, a norm or the MLP gate runs inside the matmul after it (triton_gemv).
SMALL_BATCH_MAX_TOKENS = 16


def use_fused_kernels(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda
