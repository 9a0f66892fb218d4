"""kv_cache_dtype="fp8": K/V stored as float8 e4m3 (scale 1.0) and read back upcast, on the CPU path.

Random tiny models are sensitive to the 3-bit mantissa (their greedy paths drift apart within a
few tokens), so against the float cache these tests ask for what must hold anyway: the same
first token and close logprobs while the outputs agree. Within FP8 the engine must be exact:
chunking, preemption and async scheduling change nothing.
"""

from __future__ import annotations

import pytest

from folovllm import LLM, SamplingParams

PROMPTS = [[5, 17, 300, 42, 9], list(range(100, 160)), [7], [64] * 33, list(range(400, 420))]
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0)


def _run(path, stats=None, **options):
    llm = LLM(str(path), device="cpu", **options)
    outs = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS, use_tqdm=False)]
    if stats is not None:
        stats.update(llm.llm_engine.get_stats())
    return outs


def _mean_logprob_delta(outs_a, outs_b) -> float:
    """Mean |Δ logprob| of the chosen tokens while two runs' outputs agree."""
    deltas = []
    for a, b in zip(outs_a, outs_b):
        for tok_a, tok_b, lp_a, lp_b in zip(a.token_ids, b.token_ids, a.logprobs, b.logprobs):
            if tok_a != tok_b:
                break
            deltas.append(abs(lp_a[tok_a].logprob - lp_b[tok_b].logprob))
    return sum(deltas) / len(deltas)


def test_fp8_cache_stays_close_to_the_float_cache(tiny_model):
    full, fp8 = _run(tiny_model), _run(tiny_model, kv_cache_dtype="fp8")
    assert [o.token_ids[0] for o in fp8] == [o.token_ids[0] for o in full]
    assert 0 < _mean_logprob_delta(full, fp8) < 0.2  # not identical (it is FP8), not far


def test_fp8_query_rounds_queries_over_an_fp8_cache_only(tiny_model_factory, tiny_model, monkeypatch):
    """``FP8_QUERY``: attention over an FP8 cache rounds its query to e4m3 as well (vLLM's way beside
    an FP8 cache on Hopper). Against the FP8 cache without it: close, not equal (a random model's
    near-tied first token may flip; the logprobs while the outputs agree stay close). Over a cache
    in the model's dtype it changes nothing; nor with heads of 16 (FP8 matrix products take K in
    steps of 32: ``abstract.MIN_FP8_QUERY_HEAD_DIM``), where the kernels would not compile."""
    from folovllm.attention.backends import abstract

    heads_of_32 = tiny_model_factory(head_dim=32)
    plain_fp8, plain = _run(heads_of_32, kv_cache_dtype="fp8"), _run(heads_of_32)
    narrow_fp8 = _run(tiny_model, kv_cache_dtype="fp8")
    monkeypatch.setattr(abstract, "FP8_QUERY", True)
    llm = LLM(str(heads_of_32), device="cpu", kv_cache_dtype="fp8")
    assert llm.llm_engine.executor.worker.model_runner.attn_backend.fp8_query
    rounded = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS, use_tqdm=False)]
    assert sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(rounded, plain_fp8)) >= 4
    assert 0 < _mean_logprob_delta(plain_fp8, rounded) < 0.2
    same = _run(heads_of_32)
    assert [o.token_ids for o in same] == [o.token_ids for o in plain] and _mean_logprob_delta(plain, same) == 0
    narrow = _run(tiny_model, kv_cache_dtype="fp8")
    assert [o.token_ids for o in narrow] == [o.token_ids for o in narrow_fp8] and _mean_logprob_delta(narrow_fp8, narrow) == 0


def test_fp8_cache_is_exact_under_chunking_preemption_and_async(tiny_model):
    plain = [o.token_ids for o in _run(tiny_model, kv_cache_dtype="fp8")]
    stats = {}
    squeezed = _run(tiny_model, stats, kv_cache_dtype="fp8_e4m3", max_num_batched_tokens=16, max_num_seqs=4, block_size=8,
                    num_gpu_blocks_override=11, max_model_len=88, async_scheduling=True)  # fmt: skip
    assert stats["num_preemptions"] > 0
    assert [o.token_ids for o in squeezed] == plain


def test_unknown_kv_cache_dtype_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \['auto', 'fp8', 'fp8_e4m3'\], got 'fp8_e5m2'"):
        LLM(str(tiny_model), device="cpu", kv_cache_dtype="fp8_e5m2")


def test_an_fp8_cache_on_a_gpu_older_than_sm89_is_refused_before_anything_compiles(tiny_model, monkeypatch):
    """Triton's kernels convert float8_e4m3fn from compute capability 8.9 on; on an A100 they would fail
    to compile inside start-up. No GPU here: the device and its capability are made up."""
    import torch

    import folovllm.config
    from folovllm.config import check_kv_cache_dtype_on_device

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    monkeypatch.setattr(folovllm.config, "resolve_device", lambda device: gpu)
    with pytest.raises(ValueError, match=r"kv_cache_dtype needs a GPU of compute capability 8.9 or later; this one is 8.0, got 'fp8'"):
        LLM(str(tiny_model), device="cuda", kv_cache_dtype="fp8")
    check_kv_cache_dtype_on_device("auto", gpu)  # a cache in the model's dtype runs anywhere
    check_kv_cache_dtype_on_device("fp8", torch.device("cpu"))  # torch's reference kernels on the CPU
    for capability in ((8, 9), (9, 0)):  # an L40S, an H100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        check_kv_cache_dtype_on_device("fp8_e4m3", gpu)
