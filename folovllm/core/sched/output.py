"""What one scheduling decision hands to the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from folovllm.request import Sequence


@dataclass
class SchedulerOutput:
    # Sequences to run this step, in batch order, and how many tokens each gets.
    scheduled_seqs: list[Sequence]
    num_scheduled_tokens: dict[int, int]  # seq_id -> tokens this step
    total_num_scheduled_tokens: int
    # Per scheduled sequence (batch order): its computed tokens before this
    # step (= position of its first new token) and whether it samples.
    num_computed_tokens: list[int] = field(default_factory=list)
    sampling: list[bool] = field(default_factory=list)
    # seq_id -> the KV blocks it owns (the block table rows), for scheduled sequences.
    block_ids: dict[int, list[int]] = field(default_factory=dict)
    preempted_seq_ids: list[int] = field(default_factory=list)
    # Sequences that finished since the last step (the runner drops their state).
    finished_seq_ids: set[int] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0
