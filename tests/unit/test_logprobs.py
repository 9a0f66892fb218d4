"""FlatLogprobs reads back exactly what the list-of-dicts layout holds, and stays append-only."""

from __future__ import annotations

import pytest

from folovllm.logprobs import (
    FlatLogprobs,
    Logprob,
    append_logprobs_for_next_position,
    create_prompt_logprobs,
    create_sample_logprobs,
)

# (token ids: the chosen one first, then the top k; their logprobs; the chosen one's rank)
POSITIONS = [
    ([7, 3, 7, 9], [-2.0, -0.5, -2.0, -2.5], 2),  # the chosen token is also the second best
    ([11, 3, 4, 5], [-4.0, -0.1, -1.0, -3.0], 6),  # the chosen token is outside the top 3
    ([3, 3, 8, 1], [-0.2, -0.2, -1.5, -3.5], 1),
]


def _fill(entries, k: int = 3):
    for ids, lps, rank in POSITIONS:
        append_logprobs_for_next_position(entries, ids, lps, [f"<{t}>" for t in ids], rank, k)
    return entries


def test_flat_and_list_layouts_hold_the_same_entries():
    as_list, flat = _fill(create_sample_logprobs(False)), _fill(create_sample_logprobs(True))
    assert isinstance(as_list, list) and isinstance(flat, FlatLogprobs)
    assert len(flat) == len(as_list) == 3
    assert list(flat) == as_list and [flat[i] for i in range(-3, 3)] == as_list + as_list
    # vLLM's entry: the chosen token first, with its rank; once only when it is also a top token.
    assert as_list[0] == {7: Logprob(-2.0, 2, "<7>"), 3: Logprob(-0.5, 1, "<3>"), 9: Logprob(-2.5, 3, "<9>")}
    assert list(as_list[1]) == [11, 3, 4, 5] and as_list[1][11].rank == 6
    assert list(flat[0]) == [7, 3, 9]
    with pytest.raises(IndexError):
        flat[3]


def test_slices_are_independent_copies():
    as_list, flat = _fill([]), _fill(FlatLogprobs())
    for s in (slice(1, None), slice(0, 2), slice(None, None, 2), slice(2, 1), slice(-1, None)):
        part = flat[s]
        assert isinstance(part, FlatLogprobs) and list(part) == as_list[s], s
    tail = flat[1:]
    flat.append({99: Logprob(-1.0, 1, "x")})
    assert len(tail) == 2 and len(flat) == 4 and flat[-1] == {99: Logprob(-1.0, 1, "x")}
    tail.append(None)
    assert flat[1:3] == tail[:2] and tail[2] == {}


def test_extend_takes_positions_or_another_flat_container():
    as_list = _fill([])
    grown = FlatLogprobs()
    grown.extend(as_list[:1])
    grown.extend(_fill(FlatLogprobs())[1:])  # placed after the entries already there
    assert list(grown) == as_list
    assert grown.start_indices == [0, 3, 7] and grown.end_indices == [3, 7, 11]


def test_prompt_logprobs_start_with_an_empty_first_position():
    assert create_prompt_logprobs(False) == [None]
    flat = create_prompt_logprobs(True)
    assert len(flat) == 1 and flat[0] == {}


@pytest.mark.parametrize(
    "change",
    [lambda f: f.__setitem__(0, {}), lambda f: f.__delitem__(0), lambda f: f.insert(0, {}), lambda f: f.pop(), lambda f: f.reverse()],
)
def test_flat_logprobs_are_append_only(change):
    flat = _fill(FlatLogprobs())
    with pytest.raises(TypeError):
        change(flat)
    assert len(flat) == 3


def test_extend_takes_a_container_whose_entries_do_not_start_at_zero():
    whole = _fill(FlatLogprobs())
    tail = FlatLogprobs(whole.start_indices[1:], whole.end_indices[1:], whole.token_ids, whole.logprobs,
                        whole.ranks, whole.decoded_tokens)  # fmt: skip
    grown = FlatLogprobs()
    grown.append(None)
    grown.extend(tail)
    assert list(grown) == [{}] + list(whole)[1:] and grown.start_indices == [0, 0, 4]
