"""Bad input is refused at the door with a clear error; a failing step never wedges the engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from folovllm import LLM, LLMEngine, SamplingParams
from folovllm.model_loader import ModelLoadError

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model), device="cpu", max_model_len=128)


def _tokens(llm, prompt, **kw):
    return llm.generate([prompt], SamplingParams(**{**GREEDY, **kw}), use_tqdm=False)[0].outputs[0].token_ids


def _check_idle(engine):
    stats = engine.get_stats()
    assert not engine.has_unfinished_requests()
    assert stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_running"] == stats["num_waiting"] == 0


# -- refused at submit ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(logprobs=5000), "more than max_logprobs=20"),
        (dict(logprobs=21), "more than max_logprobs=20"),
        (dict(stop_token_ids=[10**6], min_tokens=2), r"stop_token_ids \[1000000\] are out of vocabulary"),
        (dict(stop_token_ids=[1024]), "out of vocabulary"),
    ],
)
def test_settings_that_would_crash_a_step_are_refused_at_submit(llm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(["hi", "there"], SamplingParams(max_tokens=3, **kwargs), use_tqdm=False)
    _check_idle(llm.llm_engine)
    assert len(_tokens(llm, [1, 2, 3], max_tokens=3)) == 3


def test_max_logprobs_can_be_raised_but_not_past_the_vocabulary(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=64, max_logprobs=2000)
    out = llm.generate([[1, 2]], SamplingParams(max_tokens=2, logprobs=30, **GREEDY), use_tqdm=False)[0].outputs[0]
    assert all(len(entry) >= 30 for entry in out.logprobs)
    with pytest.raises(ValueError, match="more than the vocabulary"):
        llm.generate([[1, 2]], SamplingParams(logprobs=1500), use_tqdm=False)


@pytest.mark.parametrize("seed,n", [(2**64, 1), (2**64 - 1, 2), (-(2**63) - 1, 1)])
def test_seeds_the_generator_cannot_take_are_refused(seed, n):
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=seed, n=n)


@pytest.mark.parametrize("seed,n", [(2**64 - 1, 1), (2**64 - 2, 2), (-(2**63), 1)])
def test_extreme_seeds_within_range_work(llm, seed, n):
    outs = llm.generate([[1, 2, 3]], SamplingParams(temperature=1.0, seed=seed, n=n, max_tokens=3), use_tqdm=False)
    assert [len(c.token_ids) for c in outs[0].outputs] == [3] * n


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature="0.5"), r"temperature must be a number, not str, got '0.5'"),
        (dict(n=2.0), r"n must be an int, not float, got 2.0"),
        (dict(top_k=True), "top_k must be an int"),
        (dict(max_tokens="8"), "max_tokens must be an int or None"),
        (dict(stop=5), r"stop must be a list of str, got 5"),
        (dict(stop_token_ids=5), "stop_token_ids must be a list of int"),
        (dict(stop_token_ids=[1.0]), "stop_token_ids must contain only int"),
        (dict(temperature=float("nan")), "temperature must be non-negative"),
    ],
)
def test_sampling_params_of_the_wrong_type_say_what_was_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "prompts,error,match",
    [
        (5, TypeError, r"prompts must be a str, a list of token ids.*got 5 \(int\)"),
        (None, TypeError, "prompts must be"),
        (b"hi", TypeError, r"got b'hi' \(bytes\)"),
        (np.array([1, 2, 3]), TypeError, r"\(ndarray\).*tolist"),
        (["ok", np.array([1, 2])], ValueError, r"prompt 1: a prompt must be a str.*\(ndarray\)"),
        (["ok", None], ValueError, r"prompt 1: a prompt must be a str.*None \(NoneType\)"),
        (["ok", b"x"], ValueError, r"prompt 1: .*\(bytes\)"),
        (["ok", "bad \ud800 text"], ValueError, r"prompt 1: the prompt is not valid Unicode text \(surrogates not allowed at character 4\)"),
        (["ok", ""], ValueError, "prompt 1: the prompt is empty"),
        ([[1, 2], [3, True]], ValueError, "prompt 1: prompt_token_ids must be a list of ints"),
    ],
)
def test_bad_prompts_name_their_position(llm, prompts, error, match):
    with pytest.raises(error, match=match):
        llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
    _check_idle(llm.llm_engine)


def test_tuple_of_token_ids_is_a_prompt(llm):
    assert _tokens(llm, (1, 2, 3), max_tokens=4) == _tokens(llm, [1, 2, 3], max_tokens=4)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"temperature": 0}, r"sampling_params must be a SamplingParams, a list of them, or None; got \{'temperature': 0\} \(dict\)"),
        ("greedy", r"got 'greedy' \(str\)"),
        ([SamplingParams(), {"n": 1}], r"sampling_params\[1\] must be a SamplingParams, got \{'n': 1\} \(dict\)"),
    ],
)
def test_bad_sampling_params_arguments(llm, params, match):
    with pytest.raises(TypeError, match=match):
        llm.generate(["a", "b"], params, use_tqdm=False)


def test_abort_request_takes_ids_as_str(llm):
    with pytest.raises(TypeError, match=r"request_id must be a str or a list of str, got 123 \(int\)"):
        llm.llm_engine.abort_request(123)
    llm.llm_engine.abort_request(["no-such-id"])  # unknown ids are fine


def test_generate_ids_skip_ids_chosen_by_step_api_users(tiny_model):
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64)
    engine.add_request("2", [5, 6, 7], SamplingParams(max_tokens=4, **GREEDY))
    outs = engine.generate([[1], [2], [3], [4]], SamplingParams(max_tokens=3, **GREEDY), use_tqdm=False)
    assert len(outs) == 4 and "2" not in {o.request_id for o in outs}
    # The step-API request ran along; its final output is kept for the next step().
    finals = [o for o in engine.step() if o.finished]
    assert [o.request_id for o in finals] == ["2"] and len(finals[0].outputs[0].token_ids) == 4
    _check_idle(engine)


# -- tokenizers ---------------------------------------------------------------------------


def _remove_tokenizer(path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (path / name).unlink(missing_ok=True)


def test_checkpoint_without_tokenizer_files_is_refused(tiny_model_copy):
    _remove_tokenizer(tiny_model_copy)
    with pytest.raises(ModelLoadError, match="No tokenizer files in .*tokenizer.json.*skip_tokenizer_init=True"):
        LLM(str(tiny_model_copy), device="cpu", max_model_len=64)


def test_skip_tokenizer_init_serves_token_ids_without_text(tiny_model_copy, llm):
    expected = _tokens(llm, [1, 2, 3], max_tokens=5, logprobs=2)
    _remove_tokenizer(tiny_model_copy)
    bare = LLM(str(tiny_model_copy), device="cpu", max_model_len=128, skip_tokenizer_init=True)
    assert bare.get_tokenizer() is None
    out = bare.generate([[1, 2, 3]], SamplingParams(max_tokens=5, logprobs=2, **GREEDY), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == expected and out.text == ""
    assert all(lp.decoded_token is None for entry in out.logprobs for lp in entry.values())
    engine = bare.llm_engine
    engine.add_request("s", [1, 2, 3], SamplingParams(max_tokens=2, **GREEDY))  # streaming needs no text either
    while engine.has_unfinished_requests():
        engine.step()
    with pytest.raises(ValueError, match="prompt 0: text prompts need a tokenizer"):
        bare.generate(["hello"], use_tqdm=False)
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        bare.generate([[1, 2]], SamplingParams(stop=["x"]), use_tqdm=False)
    with pytest.raises(ValueError, match="chat\\(\\) needs a tokenizer"):
        bare.chat([{"role": "user", "content": "hi"}], use_tqdm=False)


def test_tokenizer_larger_than_the_embedding_is_refused(tiny_model_copy):
    """A checkpoint whose embedding has 512 rows, beside the shared 1,000-token test tokenizer."""
    from safetensors.torch import load_file, save_file

    config = json.loads((tiny_model_copy / "config.json").read_text())
    config["vocab_size"] = 512
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(tiny_model_copy / "model.safetensors"))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:512].clone()
    save_file(tensors, str(tiny_model_copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="tokenizer .* has 1000 tokens, more than the model's vocab_size=512"):
        LLM(str(tiny_model_copy), device="cpu", max_model_len=64)


# -- a failing step -------------------------------------------------------------------------


class _Boom(RuntimeError):
    pass


def _fail_next_calls(monkeypatch, obj, name, times=1):
    """Make ``obj.name`` raise on its next ``times`` calls, then behave again."""
    real = getattr(obj, name)
    left = [times]

    def maybe_fail(*args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise _Boom("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, maybe_fail)


def _drain(engine) -> dict[str, tuple[str, list[int]]]:
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (out.outputs[0].finish_reason, out.outputs[0].token_ids)
    return done


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("where", ["runner", "before_the_worker"])
def test_a_failing_step_fails_its_requests_and_the_engine_serves_the_rest(tiny_model, monkeypatch, async_scheduling, where):
    ref = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=96)
    ref.add_request("c", list(range(30, 50)), SamplingParams(max_tokens=12, **GREEDY))
    expected_c = _drain(ref)["c"]

    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=96, max_num_seqs=2,
                                        block_size=8, num_gpu_blocks_override=16, async_scheduling=async_scheduling)  # fmt: skip
    for rid in ("a", "b"):
        engine.add_request(rid, list(range(1, 30)), SamplingParams(max_tokens=40, **GREEDY))
    engine.step()
    engine.step()
    if where == "runner":  # the model ran into an error (say, a CUDA fault surfacing in a kernel)
        _fail_next_calls(monkeypatch, engine.executor.worker.model_runner.model, "compute_logits")
    else:  # the step never reached the worker (its SchedulerOutput is lost)
        _fail_next_calls(monkeypatch, engine.executor, "execute_model")
    with pytest.raises(_Boom):
        engine.step()
    assert engine.get_stats()["num_free_blocks"] == engine.get_stats()["num_total_blocks"]
    engine.add_request("c", list(range(30, 50)), SamplingParams(max_tokens=12, **GREEDY))
    done = _drain(engine)
    assert done["a"][0] == done["b"][0] == "error"  # reported once, as final outputs
    assert done["c"] == expected_c
    _check_idle(engine)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_repeated_failures_leak_nothing(tiny_model, monkeypatch, async_scheduling):
    """More failed and aborted sequences than the worker has rows; each failing step is lost before
    the worker hears of it, and carries the news that the aborted ones finished."""
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64, max_num_seqs=4,
                                        async_scheduling=async_scheduling)  # fmt: skip
    done = {}
    for i in range(5):
        engine.add_request(f"x{i}", [1, 2, 3, i], SamplingParams(max_tokens=30, **GREEDY))
        engine.add_request(f"z{i}", [3, 2, 1, i], SamplingParams(max_tokens=30, n=2, **GREEDY))
        done.update((o.request_id, (o.outputs[0].finish_reason, None)) for o in engine.step() if o.finished)
        engine.abort_request(f"z{i}")  # the worker learns of it in the next step...
        _fail_next_calls(monkeypatch, engine.executor, "execute_model")  # ...which is lost
        with pytest.raises(_Boom):
            engine.step()
        monkeypatch.undo()
    for i in range(6):
        engine.add_request(f"y{i}", [4, 5, i], SamplingParams(max_tokens=5, n=2, **GREEDY))
    done.update(_drain(engine))
    assert all(done[f"y{i}"][0] == "length" for i in range(6))
    assert all(done[f"x{i}"][0] == "error" and done[f"z{i}"][0] == "abort" for i in range(5))
    _check_idle(engine)


def test_two_threads_calling_generate_both_get_their_results(llm):
    prompts = {t: [[t, 2, 3], [t, 7]] for t in (11, 12)}
    expected = {t: [o.outputs[0].token_ids for o in llm.generate(p, SamplingParams(max_tokens=20, **GREEDY), use_tqdm=False)] for t, p in prompts.items()}
    got, errors = {}, []

    def run(t):
        try:
            outs = llm.generate(prompts[t], SamplingParams(max_tokens=20, **GREEDY), use_tqdm=False)
            got[t] = [o.outputs[0].token_ids for o in outs]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in prompts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a generate() call hung"
    assert not errors and got == expected


# -- the CLI --------------------------------------------------------------------------------


def _cli(*args, tmp_path):
    env = {"FOLOVLLM_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "folovllm", *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip


@pytest.mark.parametrize(
    "args,code,match",
    [
        (["--model", "/no/such/model/dir", "--device", "cpu"], 1, "error: Could not find model '/no/such/model/dir'"),
        (["--temperature", "-1"], 2, "error: temperature must be non-negative, got -1.0"),
        (["--max-tokens", "many"], 2, "invalid int value: 'many'"),
    ],
)
def test_cli_errors_are_one_line_with_usage_or_runtime_exit_codes(tmp_path, args, code, match):
    res = _cli(*args, tmp_path=tmp_path)
    assert res.returncode == code
    assert match in res.stderr and "Traceback" not in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error") or "error:" in line]) == 1

