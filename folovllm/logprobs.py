"""Logprob containers: the per-token entries a request collects, in one of two layouts.

The default is vLLM's ``list[dict[int, Logprob]]``: one dict per position, one
``Logprob`` object per candidate. With ``SamplingParams(flat_logprobs=True)``
the same entries go into a ``FlatLogprobs``: six flat lists for the whole
request, whatever its length. Reading it gives the same dicts (built on
access); writing it makes no Python object per candidate, which matters when
hundreds of sequences each add ``k + 1`` candidates per step: fewer allocations,
and nothing new for the garbage collector to walk.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, MutableSequence
from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class Logprob:
    """Log-probability of one candidate token (vLLM's ``Logprob``)."""

    logprob: float
    rank: Optional[int] = None  # 1 = most likely
    decoded_token: Optional[str] = None


LogprobsOnePosition = dict[int, Logprob]


@dataclass
class FlatLogprobs(MutableSequence):
    """Logprob entries of many positions in flat lists (vLLM's ``FlatLogprobs``).

    Position ``p``'s candidates are entries ``start_indices[p]:end_indices[p]``
    of the four per-entry lists. Indexing returns the position's dict (an empty
    one for a position stored as None, like a prompt's first token); slicing
    returns a ``FlatLogprobs``. Entries are only ever appended: assigning,
    deleting or inserting raises ``TypeError``.
    """

    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[Optional[int]] = field(default_factory=list)
    decoded_tokens: list[Optional[str]] = field(default_factory=list)

    def append(self, logprobs_one_position: Optional[LogprobsOnePosition]) -> None:
        items = (logprobs_one_position or {}).items()
        self.append_fast(
            [token_id for token_id, _ in items],
            [lp.logprob for _, lp in items],
            [lp.rank for _, lp in items],
            [lp.decoded_token for _, lp in items],
        )

    def append_fast(
        self,
        token_ids: Iterable[int],
        logprobs: Iterable[float],
        ranks: Iterable[Optional[int]],
        decoded_tokens: Iterable[Optional[str]],
    ) -> None:
        """Add one position's candidates without building a dict (the engine's path)."""
        self.start_indices.append(len(self.token_ids))
        self.token_ids.extend(token_ids)
        self.logprobs.extend(logprobs)
        self.ranks.extend(ranks)
        self.decoded_tokens.extend(decoded_tokens)
        self.end_indices.append(len(self.token_ids))

    def extend(self, positions: Iterable[Optional[LogprobsOnePosition]]) -> None:
        if not isinstance(positions, FlatLogprobs):
            for position in positions:
                self.append(position)
            return
        fields = (self.start_indices, self.end_indices, self.token_ids, self.logprobs, self.ranks, self.decoded_tokens)
        for mine, theirs in zip(fields, positions._fields_of(0, len(positions), first_entry=len(self.token_ids))):
            mine += theirs

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:  # the engine's path: each streamed DELTA output carries such a copy
                return FlatLogprobs(*self._fields_of(start, max(start, stop), first_entry=0))
            sliced = FlatLogprobs()
            sliced.extend(self[p] for p in range(start, stop, step))
            return sliced
        begin, end = self.start_indices[index], self.end_indices[index]  # IndexError past the end, as a list
        return {
            self.token_ids[i]: Logprob(self.logprobs[i], self.ranks[i], self.decoded_tokens[i]) for i in range(begin, end)
        }

    def _fields_of(self, start: int, stop: int, first_entry: int) -> tuple[list, ...]:
        """New lists for the six fields of positions ``start:stop`` (start <= stop), with their
        entries renumbered to begin at ``first_entry`` (a container built from its fields need not
        number its entries from 0)."""
        starts, ends = self.start_indices[start:stop], self.end_indices[start:stop]
        begin, end = (starts[0], ends[-1]) if starts else (0, 0)
        if shift := first_entry - begin:
            starts, ends = [i + shift for i in starts], [i + shift for i in ends]
        entries = slice(begin, end)
        return starts, ends, self.token_ids[entries], self.logprobs[entries], self.ranks[entries], self.decoded_tokens[entries]

    def __iter__(self) -> Iterator[LogprobsOnePosition]:
        for p in range(len(self)):
            yield self[p]

    def __setitem__(self, index, value) -> None:
        raise TypeError("FlatLogprobs is append-only: its positions cannot be assigned")

    def __delitem__(self, index) -> None:
        raise TypeError("FlatLogprobs is append-only: its positions cannot be deleted")

    def insert(self, index: int, value) -> None:
        raise TypeError("FlatLogprobs is append-only: use append")


PromptLogprobs = Union[FlatLogprobs, list[Optional[LogprobsOnePosition]]]
SampleLogprobs = Union[FlatLogprobs, list[LogprobsOnePosition]]


def create_prompt_logprobs(flat_logprobs: bool) -> PromptLogprobs:
    """A request's prompt logprobs: position 0 is None (nothing predicts the first prompt token)."""
    logprobs: PromptLogprobs = FlatLogprobs() if flat_logprobs else []
    logprobs.append(None)
    return logprobs


def create_sample_logprobs(flat_logprobs: bool) -> SampleLogprobs:
    return FlatLogprobs() if flat_logprobs else []


def append_logprobs_for_next_position(
    request_logprobs: Union[PromptLogprobs, SampleLogprobs],
    token_ids: list[int],
    logprobs: list[float],
    decoded_tokens: Iterable[Optional[str]],
    rank: int,
    num_logprobs: int,
) -> None:
    """Add one position: ``token_ids[0]`` is the chosen (or prompt) token, of rank ``rank``; the
    rest are the top ``num_logprobs``, ranks 1, 2, ... As in vLLM, the chosen token comes first in
    the dict; when it is also among the top ones, the dict keeps one entry (with the same values)."""
    ranks = itertools.chain((rank,), range(1, num_logprobs + 1))
    if isinstance(request_logprobs, FlatLogprobs):
        request_logprobs.append_fast(token_ids, logprobs, ranks, decoded_tokens)
    else:
        request_logprobs.append(
            {tid: Logprob(lp, r, text) for tid, lp, r, text in zip(token_ids, logprobs, ranks, decoded_tokens)}
        )
