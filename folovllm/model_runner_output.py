"""What a worker step hands back to the engine: plain data keyed by sequence id.

Shared by both sides of the worker boundary (the worker fills it, the
scheduler and the output processor read it), so it lives in neither. Rows
are lists aligned with ``req_ids``; only sequences that sampled this step
have a row (a partial prefill samples nothing). Prompt logprobs come per
sequence, for the prompt tokens the step computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LogprobsLists:
    """Per row: the sampled token first, then the ``max_num_logprobs`` most likely ones.

    A request that asked for ``k`` logprobs reads the first ``1 + k`` entries
    of its row (vLLM's layout).
    """

    logprob_token_ids: list[list[int]]
    logprobs: list[list[float]]
    sampled_token_ranks: list[int]  # 1 = the most likely token


@dataclass
class PromptLogprobs:
    """One step's prompt logprobs of a sequence: row j is about prompt token ``start + 1 + j``
    (predicted at position ``start + j``), in ``LogprobsLists``' layout with that token first."""

    start: int
    lists: LogprobsLists


@dataclass
class ModelRunnerOutput:
    req_ids: list[int] = field(default_factory=list)
    sampled_token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[LogprobsLists] = None  # None when no row asked for logprobs
    # Sequences that asked for prompt_logprobs and computed prompt tokens this step (sampling or not).
    prompt_logprobs_dict: dict[int, PromptLogprobs] = field(default_factory=dict)


class AsyncModelRunnerOutput(ABC):
    """A step's results on their way to the host; ``get()`` waits for them."""

    @abstractmethod
    def get(self) -> ModelRunnerOutput: ...
