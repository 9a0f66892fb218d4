"""Requests and the sequences they generate.

A ``Request`` is what a user submitted: one prompt and its ``SamplingParams``.
It owns ``n`` ``Sequence``s (``fork`` makes the extra ones), each an
independent stream of generated tokens with its own status. The scheduler and
the KV cache work on sequences; outputs are reported per request.

Status life cycle of a sequence::

    WAITING -> RUNNING -> FINISHED_{STOPPED, LENGTH_CAPPED, ABORTED}
                  |  ^
                  v  |
               PREEMPTED        (KV blocks freed; recomputed on resume)

    WAITING / PREEMPTED -> FINISHED_ABORTED or FINISHED_IGNORED
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional

from folovllm.outputs import Logprob, RequestMetrics
from folovllm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Everything after PREEMPTED is a finished state.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()
    FINISHED_IGNORED = enum.auto()

    @staticmethod
    def is_finished(status: "RequestStatus") -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def get_finished_reason(status: "RequestStatus") -> Optional[str]:
        return _FINISH_REASONS.get(status)


# A sequence moves through the same states as a request.
SequenceStatus = RequestStatus

_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_IGNORED: "length",
}
_ABORTABLE = {RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_IGNORED}
_ALLOWED = {
    RequestStatus.WAITING: {RequestStatus.RUNNING, *_ABORTABLE},
    # With async scheduling a preempted sequence may still receive the token of
    # a step that was already in flight, and that token may end it.
    RequestStatus.PREEMPTED: {
        RequestStatus.RUNNING,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH_CAPPED,
        *_ABORTABLE,
    },
    RequestStatus.RUNNING: {
        RequestStatus.PREEMPTED,
        RequestStatus.FINISHED_STOPPED,
        RequestStatus.FINISHED_LENGTH_CAPPED,
        RequestStatus.FINISHED_ABORTED,
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

    def get_last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

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
        eos_token_id: Optional[int] = None,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index
        self.data = SequenceData(list(prompt_token_ids))
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.status = RequestStatus.WAITING
        # Tokens whose K/V are in (or being written to) the cache; reset to 0 on preemption.
        self.num_computed_tokens = 0
        # Tokens sampled by steps in flight but not yet appended (async scheduling).
        self.num_output_placeholders = 0
        self.num_preemptions = 0
        # Filled while generating.
        self.output_text = ""
        self.stop_reason: int | str | None = None
        self.cumulative_logprob = 0.0
        self.output_logprobs: list[dict[int, Logprob]] = []

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
    def num_prompt_tokens(self) -> int:
        return self.data.get_prompt_len()

    @property
    def num_output_tokens(self) -> int:
        return self.data.get_output_len()

    def get_token_ids(self) -> list[int]:
        return self.data.get_token_ids()

    def token_id_at(self, position: int) -> int:
        n_prompt = self.num_prompt_tokens
        if position < n_prompt:
            return self.data.prompt_token_ids[position]
        return self.data.output_token_ids[position - n_prompt]

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

    def fork(self, new_seq_id: int, index: int) -> "Sequence":
        """A sibling with the same prompt (and the same tokens so far)."""
        child = Sequence(
            new_seq_id,
            self.request_id,
            self.prompt_token_ids,
            self.sampling_params,
            index=index,
            eos_token_id=self.eos_token_id,
        )
        child.data.output_token_ids = list(self.output_token_ids)
        child.output_text = self.output_text
        child.cumulative_logprob = self.cumulative_logprob
        child.output_logprobs = list(self.output_logprobs)
        return child

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
        arrival_time: Optional[float] = None,
        eos_token_id: Optional[int] = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        first = Sequence(first_seq_id, request_id, self.prompt_token_ids, sampling_params, 0, eos_token_id)
        self.seqs = [first] + [first.fork(first_seq_id + i, i) for i in range(1, sampling_params.n)]

    def get_seqs(self, status: Optional[RequestStatus] = None) -> list[Sequence]:
        if status is None:
            return list(self.seqs)
        return [s for s in self.seqs if s.status == status]

    def get_num_seqs(self, status: Optional[RequestStatus] = None) -> int:
        return len(self.get_seqs(status))

    @property
    def status(self) -> RequestStatus:
        """RUNNING if any sequence runs; finished once all are; else the first's."""
        statuses = [s.status for s in self.seqs]
        if RequestStatus.RUNNING in statuses:
            return RequestStatus.RUNNING
        if all(RequestStatus.is_finished(s) for s in statuses):
            return statuses[0]
        return next(s for s in statuses if not RequestStatus.is_finished(s))

    def is_finished(self) -> bool:
        return all(s.is_finished() for s in self.seqs)
