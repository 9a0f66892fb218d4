"""The token embedding and the LM head: both a ``[vocab, hidden]`` matrix.

Qwen3-0.6B ties them (one tensor serves both ends of the model); larger
models keep a separate ``lm_head.weight`` of the same shape, so an untied
head is a second ``VocabEmbedding`` whose weight only the logits read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

