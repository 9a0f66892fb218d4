"""The token embedding and the LM head: a ``[vocab, hidden]`` matrix, its rows split over ranks.

Qwen3-0.6B ties them (one tensor serves both ends of the model); larger
models keep a separate ``lm_head.weight`` of the same shape (``ParallelLMHead``),
which only the logits read.

With tensor parallelism rank r holds vocabulary rows ``[r * n, (r + 1) * n)``
(the last rank's slice padded with zero rows when the vocabulary does not
divide). An embedding lookup finds each token on one rank only: the others
contribute zeros and an all-reduce sums them. Logits are computed per slice
and gathered, so every rank holds the full ``[tokens, vocab]`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from folovllm.model_executor.layers.dispatch import unquantized_gemm
from folovllm.utils.common import cdiv


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_embeddings = num_embeddings
        rows = cdiv(num_embeddings, self.tp_size)
        self.vocab_start = min(get_tensor_model_parallel_rank() * rows, num_embeddings)
        self.vocab_end = min(self.vocab_start + rows, num_embeddings)
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape != (self.num_embeddings, param.shape[1]):
            raise ValueError(f"expected shape {(self.num_embeddings, param.shape[1])}, checkpoint tensor has {tuple(loaded.shape)}")
        rows = self.vocab_end - self.vocab_start
        param.data[:rows].copy_(loaded[self.vocab_start : self.vocab_end])
        param.data[rows:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = torch.where(mine, input_ids - self.vocab_start, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(~mine.unsqueeze(-1), 0)
        return tensor_model_parallel_all_reduce(out)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ W.T`` over the whole vocabulary, on every rank."""
        logits = unquantized_gemm(hidden, self.weight)
        if self.tp_size == 1:
            return logits
        return tensor_model_parallel_all_gather(logits, dim=-1)[:, : self.num_embeddings]


class ParallelLMHead(VocabParallelEmbedding):
    """An untied LM head: the same split as the embedding, used only for logits."""
