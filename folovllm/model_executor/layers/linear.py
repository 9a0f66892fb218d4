"""Linear layers whose weights may be stitched together from several checkpoint tensors.

``MergedLinear`` runs q/k/v (or gate/up) as one matmul; its ``weight_loader``
copies each checkpoint tensor into its row range of the merged weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MergedLinear(nn.Module):
    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__()
        self.output_sizes = list(output_sizes)
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]
        total = sum(output_sizes)
        self.weight = nn.Parameter(torch.empty(total, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(total), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:  # a checkpoint that already stores the merged tensor
            param.data.copy_(loaded)
            return
        start, size = self.offsets[shard_id], self.output_sizes[shard_id]
        if loaded.shape[0] != size:
            raise ValueError(f"shard {shard_id}: expected {size} rows, checkpoint has {loaded.shape[0]}")
        param.data[start : start + size].copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Linear(MergedLinear):
    """A plain linear layer (one shard)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(input_size, [output_size], bias)


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)
