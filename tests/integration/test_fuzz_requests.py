"""Random valid and invalid requests against one engine.

Every value is drawn from a pool labelled valid or invalid here, by hand (not
by asking the library), so the test knows the right answer: a request with
any invalid part must be refused when it is built or submitted, and nothing
else; a valid one must run to a normal finish within its limits. At the end
every KV block is free again.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from folovllm import LLMEngine, SamplingParams

MAX_MODEL_LEN = 64

VALID = {
    "temperature": [0, 0.0, 0.7, 1.5],
    "top_p": [1.0, 0.5],
    "top_k": [0, -1, 1, 50],
    "min_p": [0.0, 0.2],
    "presence_penalty": [0.0, 1.5],
    "repetition_penalty": [1.0, 1.3],
    "seed": [None, 0, 7, -5, 2**64 - 2],
    "n": [1, 2],
    "max_tokens": [1, 4, 9, None],
    "min_tokens": [0, 1],
    "logprobs": [None, 0, 3, 20],
    "prompt_logprobs": [None, 0, 2, 20],
    "stop": [None, "e", ["\n", "xy"]],
    "stop_token_ids": [None, [], [3], [0, 1023]],
    "ignore_eos": [False, True],
}
INVALID = {
    "temperature": [-0.5, "0.5", math.nan],
    "top_p": [0.0, 1.5],
    "top_k": [-2, 2.5],
    "min_p": [-0.1],
    "presence_penalty": [3.0],
    "repetition_penalty": [0.0],
    "seed": [2**64, 1.5, "1"],
    "n": [0, 2.0],
    "max_tokens": [0, "8"],
    "min_tokens": [-1, 1.5],
    "logprobs": [21, -1, 2.0],
    "prompt_logprobs": [21, -1, 1.5],
    "stop": [[""], 5],
    "stop_token_ids": [[1024], [-1], 7],
}
VALID_PROMPTS = ["def f(x):", [1, 2, 3], {"prompt_token_ids": [4, 5]}, {"prompt": "hello"}, list(range(1, 40)), (9, 8)]
_ids = itertools.count()
INVALID_PROMPTS = ["", [], [5000], [-1], None, 3.5, {"foo": 1}, list(range(1, MAX_MODEL_LEN + 6)), "a\udc80b", b"hi"]


@st.composite
def requests(draw):
    """Half the requests are valid; the others have exactly one invalid part, so each rule is tested alone."""
    params = {name: draw(st.sampled_from(VALID[name])) for name in VALID if draw(st.booleans())}
    prompt = draw(st.sampled_from(VALID_PROMPTS))
    bad = draw(st.sampled_from([None] * (len(INVALID) + 1) + sorted(INVALID) + ["prompt"]))
    if bad == "prompt":
        prompt = draw(st.sampled_from(INVALID_PROMPTS))
    elif bad is not None:
        params[bad] = draw(st.sampled_from(INVALID[bad]))
    return prompt, params, bad is not None


@pytest.fixture(scope="module")
def engine(tiny_model):
    # A small cache (80 token slots for up to 4 sequences) so that preemption happens too.
    return LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=MAX_MODEL_LEN, max_num_seqs=4,
                                      block_size=8, num_gpu_blocks_override=10, async_scheduling=True)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(requests(), min_size=1, max_size=6))
def test_random_requests(engine, batch):
    accepted: dict[str, SamplingParams] = {}
    try:
        _check_batch(engine, batch, accepted)
    finally:  # a failed example must not leave requests behind for the next one
        engine.abort_request(list(accepted))
        while engine.has_unfinished_requests():
            engine.step()


def _check_batch(engine, batch, accepted):
    for prompt, kwargs, invalid in batch:
        rid = f"fuzz-{next(_ids)}"
        try:
            params = SamplingParams(**kwargs)
            engine.add_request(rid, prompt, params)
        except (ValueError, TypeError) as exc:
            assert invalid, f"a valid request was refused: {prompt!r} {kwargs}: {exc}"
            continue
        assert not invalid, f"an invalid request was accepted: {prompt!r} {kwargs}"
        accepted[rid] = params
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert set(finished) == set(accepted)
    for rid, out in finished.items():
        params = accepted[rid]
        assert len(out.outputs) == params.n
        for comp in out.outputs:
            assert comp.finish_reason in ("stop", "length"), comp.finish_reason
            n = len(comp.token_ids)
            limit = min(params.max_tokens or MAX_MODEL_LEN, MAX_MODEL_LEN - len(out.prompt_token_ids))
            assert n <= limit
            if comp.finish_reason == "length":
                assert n == limit
            else:
                assert n >= min(params.min_tokens, 1)
            if params.logprobs is not None:
                assert len(comp.logprobs) == n
        if params.prompt_logprobs is None:
            assert out.prompt_logprobs is None
        else:
            assert len(out.prompt_logprobs) == len(out.prompt_token_ids) and out.prompt_logprobs[0] is None
    stats = engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
