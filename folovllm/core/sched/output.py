"""What crosses from the scheduler to the worker each step: plain data only.

Nothing here refers to a live scheduler object, so a ``SchedulerOutput`` can
be pickled and sent to another process (a tensor-parallel rank) unchanged.
As in vLLM v1, a sequence is described in full only once, the first time it
is scheduled (``NewRequestData``). The worker keeps its own copy of that
state; every later step sends only what changed (``CachedRequestData``):
the blocks the sequence gained, where its new tokens start, and the tokens
the scheduler appended since it last sent the sequence.

Sequences are keyed by ``seq_id`` (``req_id`` here, in vLLM's words): a
request with ``n > 1`` has ``n`` independent sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from folovllm.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A sequence the worker has not seen before."""

    req_id: int
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    # Tokens whose K/V are already in the cache (the position of the first new token).
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    """Deltas for sequences the worker already holds, as parallel lists."""

    req_ids: list[int] = field(default_factory=list)
    # Output tokens sampled since the worker last heard of the sequence.
    new_token_ids: list[list[int]] = field(default_factory=list)
    # Blocks the sequence gained this step (all of them when it resumes after preemption).
    new_block_ids: list[list[int]] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    # req_id -> tokens this step, in batch order (the flattened batch follows it).
    num_scheduled_tokens: dict[int, int]
    total_num_scheduled_tokens: int
    # Preempted this step: their blocks are gone; the worker keeps their tokens and generator.
    preempted_req_ids: list[int] = field(default_factory=list)
    # Finished since the last step: the worker drops everything it holds for them.
    finished_req_ids: set[int] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0
