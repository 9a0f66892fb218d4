"""prompt_logprobs against HF's log_softmax of the prompt, through chunking, preemption and caching."""

from __future__ import annotations

import pytest

from folovllm import LLM, SamplingParams
from tests.integration.hf_reference import hf_logprobs

PROMPT = list(range(300, 341))  # 41 tokens: five full blocks of 8 and one


def check(prompt_logprobs, path, prompt=PROMPT, k=2):
    # Row i: HF's log_softmax at position i, which predicts prompt token i + 1.
    ref = hf_logprobs(path, prompt[:1], prompt[1:])
    assert len(prompt_logprobs) == len(prompt) and prompt_logprobs[0] is None
    for i, entry in enumerate(prompt_logprobs[1:]):
        token, row = prompt[i + 1], ref[i]
        top = row.topk(k).indices.tolist()
        assert set(entry) == set(top) | {token}
        assert [entry[t].rank for t in top] == list(range(1, k + 1))
        assert entry[token].rank == int((row > row[token]).sum()) + 1
        for t, lp in entry.items():
            assert abs(lp.logprob - row[t].item()) < 1e-4


def params(k=2, **kw):
    return SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, prompt_logprobs=k, **kw)


@pytest.mark.parametrize(
    "engine_kw",
    [
        dict(),
        dict(max_num_batched_tokens=16, max_num_seqs=4),  # the prompt arrives in chunks of 16
        dict(max_num_batched_tokens=16, max_num_seqs=4, async_scheduling=True),
        dict(num_gpu_blocks_override=16, max_num_seqs=4),  # preempted and recomputed
    ],
    ids=["whole", "chunked", "chunked_async", "preemption"],
)
def test_prompt_logprobs_match_hf(tiny_model, engine_kw):
    llm = LLM(str(tiny_model), device="cpu", block_size=8, max_model_len=128, **engine_kw)
    prompts = [{"prompt_token_ids": PROMPT}] * 4
    outs = llm.generate(prompts, [params(), params(k=0), SamplingParams(max_tokens=30, ignore_eos=True), params(k=5)], use_tqdm=False)
    check(outs[0].prompt_logprobs, tiny_model, k=2)
    check(outs[1].prompt_logprobs, tiny_model, k=0)
    assert outs[2].prompt_logprobs is None
    check(outs[3].prompt_logprobs, tiny_model, k=5)
    if "num_gpu_blocks_override" in engine_kw:
        assert llm.llm_engine.get_stats()["num_preemptions"] > 0


def test_a_request_with_prompt_logprobs_skips_the_prefix_cache(tiny_model):
    """vLLM v1's rule: cached blocks have no logits, so such a request computes its whole prompt."""
    llm = LLM(str(tiny_model), device="cpu", block_size=8, max_model_len=128)
    prompt = {"prompt_token_ids": PROMPT}
    assert llm.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)[0].num_cached_tokens == 0
    with_lp = llm.generate(prompt, params(), use_tqdm=False)[0]
    assert with_lp.num_cached_tokens == 0
    check(with_lp.prompt_logprobs, tiny_model)
    assert llm.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)[0].num_cached_tokens == 40


def test_n_siblings_report_one_prompt_logprobs_list(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", block_size=8, max_model_len=128)
    out = llm.generate({"prompt_token_ids": PROMPT}, params(n=3), use_tqdm=False)[0]
    check(out.prompt_logprobs, tiny_model)
    assert len(out.outputs) == 3
    # Siblings 1 and 2 do not compute prompt logprobs, so they may hit sibling 0's blocks.
    assert llm.llm_engine.get_stats()["prefix_cache_hits"] == 2 * 40


def test_too_many_prompt_logprobs_are_refused(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=64)
    with pytest.raises(ValueError, match="prompt_logprobs=21, more than max_logprobs=20"):
        llm.generate("x", SamplingParams(prompt_logprobs=21), use_tqdm=False)


def test_a_long_prompt_is_computed_in_slices(tiny_model):
    """300 prompt positions in one step: the runner computes them 128 at a time."""
    prompt = [(7 * i) % 1000 + 3 for i in range(300)]
    llm = LLM(str(tiny_model), device="cpu", max_model_len=512)
    out = llm.generate({"prompt_token_ids": prompt}, params(k=1), use_tqdm=False)[0]
    check(out.prompt_logprobs, tiny_model, prompt=prompt, k=1)


def test_flat_logprobs_hold_what_the_list_layout_holds(tiny_model):
    from folovllm.logprobs import FlatLogprobs

    llm = LLM(str(tiny_model), device="cpu", max_model_len=128)
    outs = {}
    for flat in (False, True):
        p = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3, prompt_logprobs=2, flat_logprobs=flat)
        outs[flat] = llm.generate([{"prompt_token_ids": PROMPT}], p, use_tqdm=False)[0]  # each computes its prompt
    as_list, flat = outs[False], outs[True]
    assert isinstance(flat.prompt_logprobs, FlatLogprobs) and isinstance(flat.outputs[0].logprobs, FlatLogprobs)
    assert flat.prompt_logprobs[0] == {} and [None, *flat.prompt_logprobs[1:]] == as_list.prompt_logprobs
    assert list(flat.outputs[0].logprobs) == as_list.outputs[0].logprobs and len(as_list.outputs[0].logprobs) == 8
    check(as_list.prompt_logprobs, tiny_model)
