"""Per-request generation knobs, with vLLM v1's names, defaults and checks."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Optional, Union

_SAMPLING_EPS = 1e-5  # temperatures below this mean greedy decoding
_MIN_SEED, _MAX_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_list(name: str, value, item_type: type) -> list:
    """None, one item, or an iterable of items -> a list; anything else is a ValueError."""
    if value is None:
        return []
    if item_type is str and isinstance(value, str):
        return [value]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of {item_type.__name__}, got {value!r}")
    items = list(value)
    check = _is_int if item_type is int else (lambda v: isinstance(v, item_type))
    if not all(check(v) for v in items):
        raise ValueError(f"{name} must contain only {item_type.__name__} values, got {value!r}")
    return items


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


class RequestOutputKind(Enum):
    """What ``LLMEngine.step()`` reports for an unfinished request."""

    CUMULATIVE = 0  # everything generated so far (the default)
    DELTA = 1  # only what is new since the request's last output
    FINAL_ONLY = 2  # nothing until the request finishes (what generate() uses)


@dataclass
class SamplingParams:
    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    # Logprobs (and prompt logprobs) in a FlatLogprobs instead of a list of dicts: the same
    # entries on reading, far fewer Python objects to build and to garbage-collect.
    flat_logprobs: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # EOS ids of the model, filled in by the engine (not a user knob).
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.best_of is None:
            self.best_of = self.n
        self.stop = _as_list("stop", self.stop, str)
        self.stop_token_ids = _as_list("stop_token_ids", self.stop_token_ids, int)
        if self.top_k == -1:  # vLLM accepts -1 for "disabled" too
            self.top_k = 0
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the filters below cannot change an argmax.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        self.all_stop_token_ids = set(self.stop_token_ids)

    def _verify_args(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p"):
            if not _is_number(getattr(self, name)):
                raise bad(name, f"must be a number, not {type(getattr(self, name)).__name__}")
        for name in ("n", "best_of", "top_k", "min_tokens"):
            if not _is_int(getattr(self, name)):
                raise bad(name, f"must be an int, not {type(getattr(self, name)).__name__}")
        for name in ("seed", "max_tokens", "logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None and not _is_int(getattr(self, name)):
                raise bad(name, f"must be an int or None, not {type(getattr(self, name)).__name__}")
        if self.n < 1:
            raise bad("n", "must be at least 1")
        if self.best_of < self.n:
            raise bad("best_of", f"must be an integer >= n ({self.n})")
        if self.best_of != self.n:
            raise bad("best_of", "different from n is not supported (as in vLLM v1)")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", "must be in [-2, 2]")
        if not self.repetition_penalty > 0.0:
            raise bad("repetition_penalty", "must be greater than zero")
        if not self.temperature >= 0.0:
            raise bad("temperature", "must be non-negative")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if self.top_k < 0:
            raise bad("top_k", "must be 0 or -1 (disabled) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        # Sibling i of a request with n > 1 draws from seed + i; torch generators take
        # seeds in [-2**63, 2**64 - 1].
        if self.seed is not None and not _MIN_SEED <= self.seed <= _MAX_SEED - (self.n - 1):
            raise bad("seed", f"must be in [{_MIN_SEED}, {_MAX_SEED} - (n - 1)] (siblings use seed + index)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "must be at least 1")
        if self.min_tokens < 0:
            raise bad("min_tokens", "must be greater than or equal to 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be less than or equal to max_tokens={self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise bad("logprobs", "must be a non-negative integer")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise bad("prompt_logprobs", "must be a non-negative integer")
        if any(not s for s in self.stop):
            raise bad("stop", "must contain only non-empty strings")
        if any(t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must contain only non-negative integers")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise bad("output_kind", "must be a RequestOutputKind")

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def has_penalties(self) -> bool:
        """Whether the repetition, frequency or presence penalty is active."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def update_from_generation_config(self, eos_token_ids: set[int]) -> None:
        """Let the model's EOS ids stop generation too (unless ignore_eos)."""
        if not self.ignore_eos:
            self.all_stop_token_ids.update(eos_token_ids)

    def clone(self) -> "SamplingParams":
        """An independent copy (every request gets one). The fields are scalars or flat containers
        of ints and strs, so copying the containers is a deep copy, at a tenth of deepcopy's cost."""
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, (list, set, dict)):
                setattr(new, name, value.copy())
        return new
