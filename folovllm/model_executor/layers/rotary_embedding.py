"""Rotary position embedding (the "neox" rotate-half layout that Qwen uses).

cos/sin for every position up to ``max_position`` are computed once; a step
only gathers the rows of its ``positions``, which is what lets tokens of many
sequences at different offsets share one flattened batch.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        t = torch.arange(max_position, dtype=torch.float)
        freqs = torch.outer(t, inv_freq)
        # [max_position, head_dim]: cos of both halves, then sin of both halves.
        self.register_buffer("cos_cache", torch.cat([freqs, freqs], dim=-1).cos(), persistent=False)
        self.register_buffer("sin_cache", torch.cat([freqs, freqs], dim=-1).sin(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, num_heads, head_dim], k: [T, num_kv_heads, head_dim]."""
        cos = self.cos_cache[positions].unsqueeze(1)
        sin = self.sin_cache[positions].unsqueeze(1)
        q_out = (q.float() * cos + self._rotate_half(q.float()) * sin).to(q.dtype)
        k_out = (k.float() * cos + self._rotate_half(k.float()) * sin).to(k.dtype)
        return q_out, k_out


def get_rope(head_dim: int, max_position: int, hf_config) -> RotaryEmbedding:
    """Build the RoPE of an HF config (transformers 4.x or 5.x field layout)."""
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (only the default RoPE)")
    base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return RotaryEmbedding(head_dim, max_position, float(base))
