"""Async scheduling (step N+1 launched before step N's tokens reach the host)
must produce exactly what synchronous stepping produces."""

from __future__ import annotations

import pytest

from folovllm import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3], list(range(40, 90)), [7] * 21, [300], list(range(200, 333, 2)), [9, 8, 7]]


def _params(stop_id: int, stop_str: str):
    return [
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=7, top_p=0.9, max_tokens=25, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[stop_id], ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=40, stop=[stop_str], ignore_eos=True),
        SamplingParams(temperature=0.7, seed=11, top_k=5, max_tokens=20, logprobs=2, ignore_eos=True),
    ]


def _run(model, async_scheduling, params, **kw):
    llm = LLM(str(model), device="cpu", max_model_len=200, async_scheduling=async_scheduling, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in o.outputs] for o in outs], stats


def _stop_string_of(text: str) -> str:
    """A 2-character piece of the latter half of ``text`` (clean printable characters)."""
    for i in range(len(text) // 2, len(text) - 1):
        piece = text[i : i + 2]
        if piece.isprintable() and piece.strip() == piece and "\ufffd" not in piece:
            return piece
    pytest.skip("no clean stop string in this random text")


@pytest.mark.parametrize("cache", [{}, {"block_size": 8, "num_gpu_blocks_override": 25, "max_num_seqs": 5}])
def test_async_equals_sync(tiny_model, cache):
    probe = LLM(str(tiny_model), device="cpu", max_model_len=200)
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    free2, free4 = [o.outputs[0] for o in probe.generate([{"prompt_token_ids": PROMPTS[i]} for i in (2, 4)], greedy, use_tqdm=False)]
    stop_str = _stop_string_of(free4.text)
    params = _params(free2.token_ids[9], stop_str)
    sync, _ = _run(tiny_model, False, params, **cache)
    asynch, stats = _run(tiny_model, True, params, **cache)
    assert asynch == sync
    # Both stop rules really fired (and cut where they should).
    assert sync[2][0][2] == "stop" and sync[2][0][0][-1] == free2.token_ids[9] and sync[2][0][3] == free2.token_ids[9]
    _, text, finish, reason = sync[4][0]
    assert (finish, reason) == ("stop", stop_str) and text == free4.text[: free4.text.find(stop_str)]
    if cache:
        assert stats["num_preemptions"] > 0


def test_history_dependent_sampling_falls_back_to_sync_steps(tiny_model):
    params = [SamplingParams(temperature=0, max_tokens=15, repetition_penalty=1.3, min_tokens=10, ignore_eos=True)] * len(PROMPTS)
    sync, _ = _run(tiny_model, False, params)
    asynch, _ = _run(tiny_model, True, params)
    assert asynch == sync
