"""SamplingParams: vLLM's defaults, and every validation rule both ways."""

from __future__ import annotations

import pytest

from folovllm import SamplingParams, SamplingType


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.best_of, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1, 1.0, 1.0, 0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.repetition_penalty, p.ignore_eos) == (16, 0, 1.0, False)
    assert p.stop == [] and p.stop_token_ids == [] and p.skip_special_tokens and p.logprobs is None


def test_sampling_type():
    assert SamplingParams(temperature=0).sampling_type == SamplingType.GREEDY
    assert SamplingParams(temperature=5e-6).sampling_type == SamplingType.GREEDY
    assert SamplingParams(temperature=0.7).sampling_type == SamplingType.RANDOM
    assert SamplingParams(temperature=0.7, seed=3).sampling_type == SamplingType.RANDOM_SEED


def test_greedy_neutralizes_filters_and_normalizes_inputs():
    p = SamplingParams(temperature=0, top_p=0.5, top_k=3, min_p=0.2, stop="###")
    assert (p.top_p, p.top_k, p.min_p) == (1.0, 0, 0.0)
    assert p.stop == ["###"]
    assert SamplingParams(top_k=-1).top_k == 0


VALID = [
    ("n", 3), ("presence_penalty", -2.0), ("frequency_penalty", 2.0), ("repetition_penalty", 0.5),
    ("temperature", 0.0), ("top_p", 0.01), ("top_k", 5), ("min_p", 1.0), ("seed", 42),
    ("max_tokens", 1), ("max_tokens", None), ("min_tokens", 4), ("logprobs", 0), ("logprobs", 5),
    ("stop", ["a", "bc"]), ("stop_token_ids", [0, 7]),
]  # fmt: skip
INVALID = [
    ("n", 0), ("best_of", 0), ("presence_penalty", 2.5), ("frequency_penalty", -3.0),
    ("repetition_penalty", 0.0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.1),
    ("top_k", -2), ("min_p", 1.5), ("seed", 1.5), ("max_tokens", 0), ("min_tokens", -1),
    ("min_tokens", 17), ("logprobs", -1), ("stop", [""]), ("stop_token_ids", [-1]),
    ("prompt_logprobs", -1),
]  # fmt: skip


@pytest.mark.parametrize("field,value", VALID)
def test_accepts(field, value):
    SamplingParams(**{field: value})


@pytest.mark.parametrize("field,value", INVALID)
def test_rejects_with_field_and_value_in_message(field, value):
    with pytest.raises(ValueError, match=field) as info:
        SamplingParams(**{field: value})
    assert repr(value) in str(info.value) or field == "stop"


def test_best_of_different_from_n_is_rejected():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=1, best_of=2)


def test_generation_config_eos_joins_stop_ids_unless_ignore_eos():
    p = SamplingParams(stop_token_ids=[9])
    p.update_from_generation_config({2, 3})
    assert p.all_stop_token_ids == {2, 3, 9}
    q = SamplingParams(ignore_eos=True, stop_token_ids=[9])
    q.update_from_generation_config({2, 3})
    assert q.all_stop_token_ids == {9}


def test_clone_equals_the_original_and_shares_no_container():
    import dataclasses

    p = SamplingParams(temperature=0.5, stop=["x", "yz"], stop_token_ids=[9], logprobs=2, seed=4)
    p.update_from_generation_config({2})
    q = p.clone()
    assert dataclasses.asdict(q) == dataclasses.asdict(p)
    q.stop.append("w")
    q.stop_token_ids.append(7)
    q.update_from_generation_config({3})
    assert (p.stop, p.stop_token_ids, p.all_stop_token_ids) == (["x", "yz"], [9], {2, 9})
