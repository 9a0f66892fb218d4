"""Requests and the sequences they generate.

A ``Request`` is what a user submitted: one prompt and its ``SamplingParams``.
It owns ``n`` ``Sequence``s (``fork`` makes the extra ones), each an
independent stream of generated tokens with its own status. The scheduler and
the KV cache work on sequences; outputs are reported per request.

Status life cycle of a sequence::

    WAITING -> RUNNING -> FINISHED_{STOPPED, LENGTH_CAPPED, ABORTED, ERROR}
                  |  ^
                  v  |
               PREEMPTED        (KV blocks freed; recomputed on resume)

    WAITING / PREEMPTED -> FINISHED_ABORTED or FINISHED_ERROR

FINISHED_ERROR: a step that carried the sequence failed (see LLMEngine.step).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional

from folovllm.logprobs import SampleLogprobs, create_sample_logprobs
from folovllm.outputs import RequestMetrics
from folovllm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Everything after PREEMPTED is a finished state.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()
    FINISHED_ERROR = enum.auto()

    @staticmethod
    def is_finished(status: "RequestStatus") -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def get_finished_reason(status: "RequestStatus") -> Optional[str]:
        return _FINISH_REASONS.get(status)

_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}
_ALLOWED = {
    RequestStatus.WAITING: {RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR},
    # With async scheduling a preempted sequence may still receive the token of
    # a step that was already in flight, and that token may end it.
    RequestStatus.PREEMPTED: {
        RequestStatus.RUNNING,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH_CAPPED,
        RequestStatus.FINISHED_ABORTED,
        RequestStatus.FINISHED_ERROR,
    },
    RequestStatus.RUNNING: {
        RequestStatus.PREEMPTED,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH_CAPPED,
        RequestStatus.FINISHED_ABORTED,
        RequestStatus.FINISHED_ERROR,
    },
}


@dataclass
class SequenceData:
    """The token ids of one sequence: the prompt plus what it generated."""

    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)

    def get_len(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def get_prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    def get_output_len(self) -> int:
        return len(self.output_token_ids)

    def get_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def append_token_id(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)


class Sequence:
    """One generated stream, the unit that the scheduler schedules."""

    def __init__(
        self,
        seq_id: int,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        index: int = 0,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index
        self.data = SequenceData(list(prompt_token_ids))
        self.sampling_params = sampling_params
        self.status = RequestStatus.WAITING
        # Tokens whose K/V are in (or being written to) the cache; reset to 0 on preemption.
        self.num_computed_tokens = 0
        # Tokens sampled by steps in flight but not yet appended (async scheduling).
        self.num_output_placeholders = 0
        # Output tokens already sent to the worker (it keeps its own copy of the tokens).
        self.num_output_tokens_sent = 0
        # Prefix caching: the hash of each full block of tokens (see core/kv_cache/kv_cache_utils.py),
        # and how many prompt tokens the cache supplied at first admission (-1: not admitted yet).
        self.block_hashes: list[bytes] = []
        self.num_cached_tokens = -1
        # Filled while generating.
        self.output_text = ""
        self.stop_reason: int | str | None = None
        self.cumulative_logprob = 0.0
        self.output_logprobs: SampleLogprobs = create_sample_logprobs(sampling_params.flat_logprobs)

    # -- token accessors -------------------------------------------------
    @property
    def prompt_token_ids(self) -> list[int]:
        return self.data.prompt_token_ids

    @property
    def output_token_ids(self) -> list[int]:
        return self.data.output_token_ids

    @property
    def num_tokens(self) -> int:
        return self.data.get_len()

    @property
    def num_output_tokens(self) -> int:
        return self.data.get_output_len()

    def get_token_ids(self) -> list[int]:
        return self.data.get_token_ids()

    def append_token_id(self, token_id: int) -> None:
        self.data.append_token_id(token_id)

    # -- status ------------------------------------------------------------
    def set_status(self, status: RequestStatus) -> None:
        if status not in _ALLOWED.get(self.status, ()):
            raise RuntimeError(f"sequence {self.seq_id}: illegal transition {self.status.name} -> {status.name}")
        self.status = status

    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def get_finish_reason(self) -> Optional[str]:
        return RequestStatus.get_finished_reason(self.status)

    def __repr__(self) -> str:
        return (
            f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, status={self.status.name}, "
            f"num_tokens={self.num_tokens}, num_computed_tokens={self.num_computed_tokens})"
        )


class Request:
    """A user's prompt with its sampling parameters and its ``n`` sequences."""

    def __init__(
        self,
        request_id: str,
        prompt: Optional[str],
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        first_seq_id: int,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.metrics = RequestMetrics(arrival_time=time.time())
        self.seqs = [
            Sequence(first_seq_id + i, request_id, self.prompt_token_ids, _sibling_params(sampling_params, i), i)
            for i in range(sampling_params.n)
        ]

    def is_finished(self) -> bool:
        return all(s.is_finished() for s in self.seqs)


def _sibling_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sibling ``index`` of a seeded request draws from seed + index (as vLLM v1 does).

    Prompt logprobs belong to the request and are computed by sibling 0 alone;
    the others share its prompt blocks through the prefix cache.
    """
    if index == 0 or (params.seed is None and params.prompt_logprobs is None):
        return params
    sibling = params.clone()
    if params.seed is not None:
        sibling.seed = params.seed + index
    sibling.prompt_logprobs = None
    return sibling
