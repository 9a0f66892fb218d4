"""Pick the attention backend for a device: Triton kernels on CUDA, plain torch elsewhere."""

from __future__ import annotations

import logging

import torch

from folovllm.attention.backends.abstract import AttentionBackend
from folovllm.utils.device import HAS_TRITON

logger = logging.getLogger(__name__)


def get_attn_backend(device: torch.device) -> AttentionBackend:
    if device.type == "cuda" and HAS_TRITON:
        from folovllm.attention.backends.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    if device.type == "cuda":
        logger.warning("triton is not installed; using the slow plain-torch attention on the GPU")
    from folovllm.attention.backends.torch_ref import TorchAttentionBackend

    return TorchAttentionBackend()
