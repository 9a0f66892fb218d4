"""Per-row sampling settings of one step, as tensors (vLLM v1's SamplingMetadata).

Row i describes the i-th sequence that samples this step. Optional tensors
are None when no row needs them, so the common case (plain greedy or plain
temperature sampling) skips that work entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # float32 [B]; rows that are greedy hold 1.0 (unused)
    all_greedy: bool
    all_random: bool
    greedy_mask: Optional[torch.Tensor]  # bool [B], when the batch mixes greedy and random
    top_p: Optional[torch.Tensor]  # float32 [B]
    top_k: Optional[torch.Tensor]  # int64 [B]; vocab size where disabled
    # The largest top-k among the rows that draw at random (the vocabulary size where one sets none,
    # 0 where none draws): on the host, it picks the filtering kernel without a sync.
    max_top_k: int
    min_p: Optional[torch.Tensor]  # float32 [B]
    generators: dict[int, torch.Generator]  # row -> the seeded request's own generator
    # Penalties (None when every row has neutral penalties).
    prompt_token_ids: Optional[torch.Tensor]  # int64 [B, max_prompt_len], padded with vocab_size
    output_token_ids: Optional[torch.Tensor]  # int64 [B, max_output_len], padded with vocab_size
    presence_penalties: Optional[torch.Tensor]
    frequency_penalties: Optional[torch.Tensor]
    repetition_penalties: Optional[torch.Tensor]
    # min_tokens: row -> token ids that must not be sampled yet.
    min_tokens_stop_ids: dict[int, list[int]]
    max_num_logprobs: Optional[int]  # None: no logprobs wanted by any row

    def select_rows(self, rows: list[int], index: torch.Tensor) -> SamplingMetadata:
        """The settings of ``rows`` alone (``index``: the same rows on the settings' device), renumbered
        from 0, for drawing them by themselves (the sampler's seeded rows beside the fused kernels).
        Only what a draw reads: min_tokens and the penalties have been applied to the logits by then,
        logprobs are gathered for the whole batch."""

        def pick(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t[index]

        return replace(
            self,
            temperature=self.temperature[index],
            greedy_mask=pick(self.greedy_mask),
            all_greedy=self.all_greedy,  # else False even where these rows are: greedy_mask has them
            top_p=pick(self.top_p),
            top_k=pick(self.top_k),
            min_p=pick(self.min_p),
            generators={new: self.generators[old] for new, old in enumerate(rows) if old in self.generators},
            prompt_token_ids=None,
            output_token_ids=None,
            presence_penalties=None,
            frequency_penalties=None,
            repetition_penalties=None,
            min_tokens_stop_ids={},
            max_num_logprobs=None,
        )
