"""Attention over the paged KV cache: metadata, backends, and the kernels behind them."""

from folovllm.attention.backends.abstract import AttentionBackend, AttentionMetadata
from folovllm.attention.selector import get_attn_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "get_attn_backend"]
