"""What the engine hands back to the user: vLLM's RequestOutput family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from folovllm.logprobs import PromptLogprobs, SampleLogprobs


@dataclass
class RequestMetrics:
    """Wall-clock times of a request (seconds since the epoch) and the derived latencies."""

    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    num_generated_tokens: int = 0

    @property
    def time_to_first_token(self) -> Optional[float]:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def mean_time_per_output_token(self) -> Optional[float]:
        """Mean gap between consecutive output tokens (TPOT), after the first."""
        if self.first_token_time is None or self.last_token_time is None or self.num_generated_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_generated_tokens - 1)

    @property
    def e2e_latency(self) -> Optional[float]:
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class CompletionOutput:
    """One generated sequence of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float] = None
    logprobs: Optional[SampleLogprobs] = None  # a list of dicts, or FlatLogprobs (SamplingParams.flat_logprobs)
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or stop token id that fired

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:  # vLLM's format
        return (
            f"CompletionOutput(index={self.index}, text={self.text!r}, token_ids={self.token_ids}, "
            f"cumulative_logprob={self.cumulative_logprob}, logprobs={self.logprobs}, "
            f"finish_reason={self.finish_reason}, stop_reason={self.stop_reason})"
        )


@dataclass
class RequestOutput:
    """Everything generated for one request so far (or in total, when finished)."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    prompt_logprobs: Optional[PromptLogprobs] = None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    metrics: Optional[RequestMetrics] = None
    num_cached_tokens: int = 0

    def __repr__(self) -> str:  # vLLM's format, less the fields of features we lack (encoder, LoRA, multimodal)
        return (
            f"RequestOutput(request_id={self.request_id}, prompt={self.prompt!r}, "
            f"prompt_token_ids={self.prompt_token_ids}, prompt_logprobs={self.prompt_logprobs}, "
            f"outputs={self.outputs}, finished={self.finished}, metrics={self.metrics}, "
            f"num_cached_tokens={self.num_cached_tokens})"
        )
