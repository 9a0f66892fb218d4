"""Continuous batching over the paged cache: arrivals, preemption, chunking, aborts."""

from __future__ import annotations

import pytest

from folovllm import LLM, LLMEngine, SamplingParams
from tests.integration.hf_reference import hf_greedy

PROMPTS = [list(range(10, 10 + n)) for n in (3, 17, 30, 8, 45, 21, 12)]
MAX_TOKENS = [20, 35, 12, 40, 25, 30, 18]


def run_engine(engine, arrivals):
    """arrivals: step index -> list of (request_id, prompt, params). Returns id -> token ids."""
    done, step = {}, 0
    while arrivals or engine.has_unfinished_requests():
        for rid, prompt, params in arrivals.pop(step, []):
            engine.add_request(rid, prompt, params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = [o.token_ids for o in out.outputs]
        step += 1
    return done


@pytest.fixture(scope="module")
def expected(tiny_model):
    return hf_greedy(tiny_model, PROMPTS, max(MAX_TOKENS))


def params(i, n=1):
    return SamplingParams(temperature=0, ignore_eos=True, max_tokens=MAX_TOKENS[i], n=n)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_requests_arriving_while_others_run_match_hf(tiny_model, expected, async_scheduling):
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_num_seqs=4, max_model_len=128, async_scheduling=async_scheduling)
    arrivals = {0: [("0", PROMPTS[0], params(0)), ("1", PROMPTS[1], params(1))],
                3: [("2", PROMPTS[2], params(2)), ("3", PROMPTS[3], params(3, n=2))],
                7: [(str(i), PROMPTS[i], params(i)) for i in range(4, 7)]}  # fmt: skip
    done = run_engine(engine, arrivals)
    for i in range(7):
        for toks in done[str(i)]:
            assert toks == expected[i][: MAX_TOKENS[i]]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_preemption_under_a_tiny_cache_keeps_outputs_identical(tiny_model, expected, async_scheduling):
    llm = LLM(str(tiny_model), device="cpu", block_size=8, num_gpu_blocks_override=12, max_model_len=96, max_num_seqs=6, async_scheduling=async_scheduling)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], [params(i) for i in range(7)], use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats["num_preemptions"] > 0
    assert [o.outputs[0].token_ids for o in outs] == [e[: MAX_TOKENS[i]] for i, e in enumerate(expected)]
    assert stats["num_free_blocks"] == stats["num_total_blocks"] == 12


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_chunked_prefill_matches(tiny_model, expected, async_scheduling):
    llm = LLM(str(tiny_model), device="cpu", enable_chunked_prefill=True, max_num_batched_tokens=16, max_num_seqs=4, max_model_len=128, async_scheduling=async_scheduling)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], [params(i) for i in range(7)], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [e[: MAX_TOKENS[i]] for i, e in enumerate(expected)]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_abort_mid_generation_leaves_others_unchanged(tiny_model, expected, async_scheduling):
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=128, async_scheduling=async_scheduling)
    for i in range(4):
        engine.add_request(str(i), PROMPTS[i], params(i))
    done, step, aborted = {}, 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished and out.outputs[0].finish_reason == "abort":
                assert step == 5 and out.request_id not in aborted  # reported once, at the next step
                aborted[out.request_id] = len(out.outputs[0].token_ids)
            elif out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        step += 1
        if step == 5:
            engine.abort_request("1")
            engine.abort_request(["2", "no-such-id"])
    assert set(done) == {"0", "3"} and set(aborted) == {"1", "2"}
    assert 0 < aborted["1"] < MAX_TOKENS[1]  # a final output of what it had generated so far
    assert done["0"] == expected[0][: MAX_TOKENS[0]] and done["3"] == expected[3][: MAX_TOKENS[3]]
    stats = engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_prompt_that_can_never_fit_fails_at_once(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", block_size=8, num_gpu_blocks_override=8, max_model_len=64)
    with pytest.raises(ValueError, match="70 tokens, which leaves no room"):
        llm.generate({"prompt_token_ids": list(range(70))}, SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        LLM(str(tiny_model), device="cpu", block_size=8, num_gpu_blocks_override=7, max_model_len=64)
