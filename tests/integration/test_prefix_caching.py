"""Prefix caching end to end: greedy outputs equal HF (and caching off) in every sharing pattern."""

from __future__ import annotations

import pytest

from folovllm import LLM, LLMEngine, SamplingParams
from tests.integration.hf_reference import hf_greedy

BLOCK = 8
SYSTEM = list(range(300, 337))  # 37 tokens: four full blocks and a partial one
MAX_TOKENS = 12


def greedy(max_tokens=MAX_TOKENS, n=1):
    return SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens, n=n)


def run(model, prompts, caching, params=None, calls=1, **kw):
    """Generate ``calls`` times in one LLM; returns the token ids of every call and the engine stats."""
    kw = dict(device="cpu", block_size=BLOCK, max_model_len=128, enable_prefix_caching=caching) | kw
    llm = LLM(str(model), **kw)
    results = []
    for _ in range(calls):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params or greedy(), use_tqdm=False)
        results.append([[c.token_ids for c in o.outputs] for o in outs])
    return results, llm.llm_engine.get_stats()


SCENARIOS = {
    "shared_system_prompt": ([SYSTEM + [5 + i, 9, 2 * i] for i in range(5)], {}),
    "identical_prompts": ([SYSTEM[:21]] * 4, {}),
    "block_multiple": ([SYSTEM[:32], SYSTEM[:32] + [7], SYSTEM[:24]], {}),
    "preemption": ([SYSTEM[:20] + [i] * 3 for i in range(6)], dict(num_gpu_blocks_override=16, max_num_seqs=6)),
    "chunked_prefill": ([SYSTEM + [i, i + 1] for i in range(4)], dict(max_num_batched_tokens=16, max_num_seqs=4)),
    "async_scheduling": ([SYSTEM + [i, i + 1] for i in range(4)], dict(async_scheduling=True)),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_greedy_outputs_equal_hf_with_and_without_caching(tiny_model, scenario):
    """Two generate() calls in one LLM: the second finds every prompt cached (all but its last token)."""
    prompts, kw = SCENARIOS[scenario]
    expected = [[toks] for toks in hf_greedy(tiny_model, prompts, MAX_TOKENS)]
    on, on_stats = run(tiny_model, prompts, True, calls=2, **kw)
    off, off_stats = run(tiny_model, prompts, False, calls=2, **kw)
    assert on == off == [expected, expected]
    assert on_stats["prefix_cache_hits"] > 0 and off_stats["prefix_cache_queries"] == 0
    assert on_stats["num_free_blocks"] == on_stats["num_total_blocks"]
    if scenario == "preemption":
        assert on_stats["num_preemptions"] > 0 and off_stats["num_preemptions"] > 0


def test_n_siblings_share_their_prompt_blocks(tiny_model):
    prompt = SYSTEM[:33]  # four full blocks and one token
    (outs,), stats = run(tiny_model, [prompt], True, params=greedy(n=4))
    assert outs == [hf_greedy(tiny_model, [prompt], MAX_TOKENS) * 4]
    # The first sibling computes the prompt; the other three find its four blocks.
    assert stats["prefix_cache_hits"] == 3 * 32
    sampled = SamplingParams(temperature=0.8, seed=11, n=4, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert run(tiny_model, [prompt], True, params=sampled)[0] == run(tiny_model, [prompt], False, params=sampled)[0]


def test_cached_tokens_and_hit_counters_are_exact(tiny_model):
    """Three requests share two full blocks; each has its own 5-token tail."""
    prompts = [SYSTEM[:16] + [i] * 5 for i in range(3)]
    llm = LLM(str(tiny_model), device="cpu", block_size=BLOCK, max_model_len=128)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(), use_tqdm=False)
    assert [o.num_cached_tokens for o in outs] == [0, 16, 16]
    stats = llm.llm_engine.get_stats()
    assert (stats["prefix_cache_queries"], stats["prefix_cache_hits"]) == (3 * 21, 32)


def test_reset_prefix_cache(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", block_size=BLOCK, max_model_len=128)
    prompt = [{"prompt_token_ids": SYSTEM}]
    assert llm.generate(prompt, greedy(), use_tqdm=False)[0].num_cached_tokens == 0
    assert llm.generate(prompt, greedy(), use_tqdm=False)[0].num_cached_tokens == 32
    assert llm.reset_prefix_cache() is True
    assert llm.generate(prompt, greedy(), use_tqdm=False)[0].num_cached_tokens == 0
    engine = llm.llm_engine
    engine.add_request("busy", SYSTEM, greedy())
    engine.step()
    assert llm.reset_prefix_cache() is False  # a request holds blocks
    engine.abort_request("busy")
    engine.step()
    assert llm.reset_prefix_cache() is True


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_generated_blocks_are_cached_too(tiny_model, async_scheduling):
    """A follow-up turn that repeats prompt + answer finds the blocks filled while decoding."""
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", block_size=BLOCK, max_model_len=128, async_scheduling=async_scheduling)
    first = engine.generate([{"prompt_token_ids": SYSTEM}], greedy(max_tokens=20), use_tqdm=False)[0]
    follow_up = SYSTEM + first.outputs[0].token_ids + [3, 4]  # 59 tokens: 7 full blocks
    second = engine.generate([{"prompt_token_ids": follow_up}], greedy(), use_tqdm=False)[0]
    # The first run wrote KV for 37 + 19 tokens (its last token was sampled, never fed back): 7 full blocks.
    assert second.num_cached_tokens == 56
    assert second.outputs[0].token_ids == hf_greedy(tiny_model, [follow_up], MAX_TOKENS)[0]
