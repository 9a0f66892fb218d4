"""The attention layer: hands q/k/v and its KV cache to the selected backend.

The layer owns no cache of its own. The model runner finds every
``Attention`` module of the model, in order, and binds its ``kv_cache`` (a
view of this layer's slice of the one big paged KV tensor) after allocation.
"""

from __future__ import annotations

import torch
from torch import nn

from folovllm.attention.backends.abstract import AttentionBackend, AttentionMetadata


class Attention(nn.Module):
    def __init__(self, scale: float, backend: AttentionBackend) -> None:
        super().__init__()
        self.scale = scale
        self.backend = backend
        self.kv_cache: torch.Tensor | None = None  # [2, num_blocks, block_size, num_kv_heads, head_dim]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """q: [T, H, D], k/v: [T, KVH, D] -> [T, H, D]. k = v = None: the caller has written them into the cache."""
        assert self.kv_cache is not None, "KV cache not bound; call ModelRunner.initialize_kv_cache first"
        return self.backend.forward(q, k, v, self.kv_cache[0], self.kv_cache[1], attn_metadata, self.scale)

    def decode_with_new_token(self, q: torch.Tensor, new_token, attn_metadata: AttentionMetadata) -> torch.Tensor:
        """A decode step from the raw q, k and v (``AttentionBackend.fuses_new_token_in``): the backend norms,
        rotates and caches this step's k and v itself (``new_token``: a ``NewTokenKV``)."""
        return self.backend.decode_with_new_token(q, new_token, self.kv_cache[0], self.kv_cache[1], attn_metadata, self.scale)
