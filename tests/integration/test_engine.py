"""LLM / LLMEngine behaviour: stop rules, n > 1, seeds, metrics, chat, bad input."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from folovllm import LLM, LLMEngine, SamplingParams

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model), device="cpu", max_model_len=128)


def gen(llm, prompt, **kw):
    return llm.generate(prompt, SamplingParams(**kw), use_tqdm=False)[0].outputs[0]


def test_max_tokens_gives_length(llm):
    out = gen(llm, [1, 2, 3], max_tokens=7, **GREEDY)
    assert len(out.token_ids) == 7 and out.finish_reason == "length" and out.stop_reason is None


def test_max_model_len_caps_generation(tiny_model):
    small = LLM(str(tiny_model), device="cpu", max_model_len=40)
    out = gen(small, list(range(1, 31)), max_tokens=100, **GREEDY)
    assert len(out.token_ids) == 10 and out.finish_reason == "length"


def test_stop_token_ids(llm):
    free = gen(llm, [9, 8, 7], max_tokens=30, **GREEDY).token_ids
    stop_id = free[5]
    first = free.index(stop_id)
    out = gen(llm, [9, 8, 7], max_tokens=30, stop_token_ids=[stop_id], **GREEDY)
    assert out.token_ids == free[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_min_tokens_defers_stop_tokens(llm):
    free = gen(llm, [9, 8, 7], max_tokens=30, **GREEDY).token_ids
    stop_id = free[1]
    out = gen(llm, [9, 8, 7], max_tokens=30, stop_token_ids=[stop_id], min_tokens=6, **GREEDY)
    assert stop_id not in out.token_ids[:6] and len(out.token_ids) >= 6
    assert out.finish_reason == "length" or (out.token_ids[-1] == stop_id and out.finish_reason == "stop")


def test_eos_from_generation_config_stops_unless_ignore_eos(tiny_model, tmp_path, llm):
    free = gen(llm, [4, 5, 6], max_tokens=20, **GREEDY).token_ids
    eos = free[4]
    model = tmp_path / "eos_model"
    shutil.copytree(tiny_model, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos]}))
    eos_llm = LLM(str(model), device="cpu", max_model_len=128)
    out = gen(eos_llm, [4, 5, 6], max_tokens=20, temperature=0)
    assert out.token_ids == free[: free.index(eos) + 1]
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert gen(eos_llm, [4, 5, 6], max_tokens=20, **GREEDY).token_ids == free


def _clean_stop_string(llm, prompt):
    """A 2-character stop string that spans a token boundary of the greedy text."""
    out = gen(llm, prompt, max_tokens=40, **GREEDY)
    tok = llm.get_tokenizer()
    text = out.text
    for k in range(2, len(out.token_ids)):
        before = tok.decode(out.token_ids[:k])
        if not text.startswith(before) or len(before) < 1 or len(before) >= len(text):
            continue  # the boundary falls inside a character
        s = text[len(before) - 1 : len(before) + 1]
        if s.isprintable() and s.strip() and "\ufffd" not in s:
            return text, s
    pytest.skip("no clean token boundary in this random text")


def test_stop_strings_spanning_tokens(llm):
    prompt = "def fibonacci(n):"
    text, stop = _clean_stop_string(llm, prompt)
    idx = text.find(stop)
    out = gen(llm, prompt, max_tokens=40, stop=[stop], **GREEDY)
    assert out.text == text[:idx] and out.finish_reason == "stop" and out.stop_reason == stop
    out = gen(llm, prompt, max_tokens=40, stop=stop, include_stop_str_in_output=True, **GREEDY)
    assert out.text == text[: idx + len(stop)]


def test_n_greater_than_one(llm):
    outs = llm.generate([[1, 2, 3]], SamplingParams(n=3, temperature=1.0, seed=0, max_tokens=12, ignore_eos=True), use_tqdm=False)[0].outputs
    assert [o.index for o in outs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs}) == 3  # siblings draw different streams
    greedy = llm.generate([[1, 2, 3]], SamplingParams(n=2, max_tokens=12, **GREEDY), use_tqdm=False)[0].outputs
    assert greedy[0].token_ids == greedy[1].token_ids == gen(llm, [1, 2, 3], max_tokens=12, **GREEDY).token_ids


def test_seeded_output_independent_of_batch_composition(llm):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=20, ignore_eos=True)
    alone = llm.generate([[3, 1, 4, 1, 5]], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=n, ignore_eos=True) for n in (5, 25, 13)]
    mixed = llm.generate([[2, 7], [3, 1, 4, 1, 5], [9] * 30, [6, 6]], [others[0], seeded, others[1], others[2]], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == alone
    assert llm.generate([[3, 1, 4, 1, 5]], seeded, use_tqdm=False)[0].outputs[0].token_ids == alone


def test_outputs_in_input_order_with_metrics(llm):
    prompts = [[1] * 30, [2], [3] * 10]
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in (3, 20, 8)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == prompts
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 20, 8]
    for o in outs:
        m = o.metrics
        assert o.finished and m.time_to_first_token > 0 and m.e2e_latency >= m.time_to_first_token
        assert m.first_scheduled_time >= m.arrival_time
    assert outs[1].metrics.mean_time_per_output_token > 0


def test_chat_applies_the_template(llm):
    out = llm.chat([{"role": "user", "content": "hello"}], SamplingParams(max_tokens=5, **GREEDY), use_tqdm=False)[0]
    assert out.prompt.endswith("<|im_start|>assistant\n") and "hello" in out.prompt
    assert out.prompt_token_ids == llm.get_tokenizer().encode(out.prompt)


def test_llm_passes_config_keywords_and_rejects_unknown(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", block_size=8, max_num_seqs=3, max_num_batched_tokens=256,
              num_gpu_blocks_override=40, seed=5, max_model_len=200)  # fmt: skip
    cfg = llm.llm_engine.config
    assert (cfg.cache_config.block_size, cfg.scheduler_config.max_num_seqs, cfg.scheduler_config.max_num_batched_tokens) == (8, 3, 256)
    assert llm.llm_engine.get_stats()["num_total_blocks"] == 40
    with pytest.raises(TypeError, match="unexpected keyword.*tensor_parallel_sizee"):
        LLM(str(tiny_model), tensor_parallel_sizee=2)
    with pytest.raises(ValueError, match="block_size"):
        LLM(str(tiny_model), block_size=12)


@pytest.mark.parametrize(
    "prompt,match",
    [
        ("", "prompt is empty"),
        ([], "prompt is empty"),
        ([1, 2, 5000], "token id 5000 is out of vocabulary"),
        ([1, -3], "token id -3 is out of vocabulary"),
        (list(range(1, 130)), "129 tokens, which leaves no room"),
        ({"foo": 1}, "needs 'prompt_token_ids' or 'prompt'"),
        (3.5, "prompt must be"),
    ],
)
def test_bad_prompts_are_rejected_and_the_engine_survives(llm, prompt, match):
    with pytest.raises(ValueError, match=match):
        llm.generate([[1, 2, 3], prompt], SamplingParams(max_tokens=3), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()  # the good prompt was not queued either
    assert len(gen(llm, [1, 2, 3], max_tokens=3, **GREEDY).token_ids) == 3


def test_mismatched_sampling_params_list(llm):
    with pytest.raises(ValueError, match="2 prompts but 3 sampling_params"):
        llm.generate([[1], [2]], [SamplingParams()] * 3, use_tqdm=False)


def test_step_api_streams_and_rejects_duplicate_ids(tiny_model):
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=128)
    engine.add_request("x", [1, 2, 3], SamplingParams(max_tokens=5, **GREEDY))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("x", [4, 5], SamplingParams())
    with pytest.raises(ValueError, match="out of vocabulary"):
        engine.add_request("y", [10**6], SamplingParams())
    seen = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen.append((len(out.outputs[0].token_ids), out.finished, out.outputs[0].text))
    assert [n for n, _, _ in seen] == [1, 2, 3, 4, 5] and [f for _, f, _ in seen] == [False] * 4 + [True]
    assert seen[-1][2] == engine.get_tokenizer().decode(out.outputs[0].token_ids, skip_special_tokens=True)
    stats = engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_running"] == stats["num_waiting"] == 0


def test_startup_logs_cache_size_and_concurrency(tiny_model):
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect()
    logging.getLogger("folovllm").addHandler(handler)
    try:
        start = time.perf_counter()
        llm = LLM(str(tiny_model), device="cpu", block_size=8, num_gpu_blocks_override=32, max_model_len=128)
        elapsed = time.perf_counter() - start
    finally:
        logging.getLogger("folovllm").removeHandler(handler)
    assert any("32 blocks x 8 tokens = 256 tokens" in r and "max concurrency at max_model_len=128: 2.00x" in r for r in records)
    # The start-up phases, in the order they ran, each timed once, together within the whole LLM(...).
    phases = llm.llm_engine.startup_seconds
    assert list(phases) == ["tokenizer", "load model", "memory profile", "KV cache", "warm-up", "CUDA graphs"]
    assert all(secs >= 0 for secs in phases.values()) and sum(phases.values()) <= elapsed
    assert phases["load model"] > 0
    assert any(r.startswith("Engine started in ") and "load model " in r for r in records)
