"""The vLLM API surface: CLI args, EngineArgs, default sampling params, chat, repr, progress bar."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tqdm import tqdm

from folovllm import LLM, EngineArgs, LLMEngine, SamplingParams, TextPrompt, TokensPrompt
from folovllm.utils import FlexibleArgumentParser


def parser() -> FlexibleArgumentParser:
    p = FlexibleArgumentParser()
    assert EngineArgs.add_cli_args(p.add_argument_group("engine")) is not None
    return p


def test_flexible_parser_takes_snake_and_kebab_spellings():
    p = FlexibleArgumentParser()
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--prompt")
    assert p.parse_args(["--max_model_len", "7", "--prompt", "a_b"]) == p.parse_args(["--max-model-len=7", "--prompt=a_b"])
    assert p.parse_args(["--prompt=a_b"]).prompt == "a_b"


def _other_value(f: dataclasses.Field, kind) -> tuple[str, object]:
    """A non-default value for field ``f`` and how to write it on the command line."""
    if f.metadata.get("choices"):
        value = next(c for c in f.metadata["choices"] if c != f.default)
        return str(value), value
    if kind is bool:
        return "", not f.default
    if kind is int:
        return "3", 3
    if kind is float:
        return "0.5", 0.5
    return "some-value", "some-value"


@pytest.mark.parametrize("spelling", ["kebab", "snake"])
def test_every_engine_arg_round_trips_through_the_cli(spelling):
    import typing

    hints = typing.get_type_hints(EngineArgs)
    for f in dataclasses.fields(EngineArgs):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        text, value = _other_value(f, kind)
        name = f.name.replace("_", "-") if spelling == "kebab" else f.name
        argv = ([f"--{name}"] if value else [f"--no-{name}"]) if kind is bool else [f"--{name}", text]
        args = EngineArgs.from_cli_args(parser().parse_args(argv))
        assert getattr(args, f.name) == value, f.name
        assert dataclasses.replace(args, **{f.name: f.default}) == EngineArgs(), f.name  # nothing else moved
        assert f.metadata["help"], f.name


def test_engine_from_engine_args_and_llm_from_a_namespace(tiny_model):
    args = parser().parse_args(["--model", str(tiny_model), "--device", "cpu", "--max-model-len", "64"])
    engine = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
    assert engine.config.model_config.max_model_len == 64
    assert LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64).config.model_config.max_model_len == 64
    with pytest.raises(TypeError, match="not both"):
        LLMEngine.from_engine_args(EngineArgs(model=str(tiny_model)), device="cpu")
    llm = LLM(**vars(args))
    assert llm.generate("def f(", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids


def test_vllm_options_we_lack_are_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match=r"pipeline_parallel_size=2 is not supported by FoloVLLM"):
        LLM(str(tiny_model), device="cpu", pipeline_parallel_size=2)
    with pytest.raises(ValueError, match=r"enable_lora=True is not supported by FoloVLLM"):
        LLM(str(tiny_model), device="cpu", enable_lora=True)
    with pytest.raises(TypeError, match="'enable_sleep_mode'"):
        LLM(str(tiny_model), device="cpu", enable_sleep_mode=True)
    # At vLLM's default value they ask for nothing we lack.
    LLM(str(tiny_model), device="cpu", max_model_len=64, pipeline_parallel_size=1, quantization=None, disable_log_stats=True)


def test_default_sampling_params_come_from_generation_config(tiny_model, tiny_model_copy):
    assert LLM(str(tiny_model), device="cpu").get_default_sampling_params() == SamplingParams()
    path = tiny_model_copy / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(temperature=0.6, top_p=0.95, top_k=20, repetition_penalty=1.1, max_new_tokens=5, do_sample=True)
    path.write_text(json.dumps(config))
    llm = LLM(str(tiny_model_copy), device="cpu")
    params = llm.get_default_sampling_params()
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (0.6, 0.95, 20, 1.1, 5)
    assert params.min_p == SamplingParams().min_p
    params.max_tokens = 1
    assert llm.get_default_sampling_params().max_tokens == 5  # a fresh object each time
    # generate() without sampling params uses them.
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, use_tqdm=False)[0]
    assert 1 <= len(out.outputs[0].token_ids) <= 5


def test_chat_batches_templates_and_template_kwargs(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=128)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if shout %}!!{% endif %}"
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "bye"}]]
    params = SamplingParams(max_tokens=2)
    outs = llm.chat(convs, params, use_tqdm=False, chat_template=template, chat_template_kwargs={"shout": True})
    assert [o.prompt for o in outs] == ["hi!!", "bye!!"]
    assert llm.chat(convs[0], params, use_tqdm=False, chat_template=template)[0].prompt == "hi"
    default = llm.chat(convs[0], params, use_tqdm=False, add_generation_prompt=False)[0].prompt
    assert default.startswith("<|im_start|>user\nhi") and not default.endswith("assistant\n")


def test_prompt_dicts_and_keyword_generate(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=64)
    outs = llm.generate(prompts=[TextPrompt(prompt="def f("), TokensPrompt(prompt_token_ids=[5, 6])],
                        sampling_params=SamplingParams(max_tokens=2), use_tqdm=False)  # fmt: skip
    assert outs[0].prompt == "def f(" and outs[1].prompt_token_ids == [5, 6]


def test_use_tqdm_may_be_a_tqdm_class_and_the_bar_shows_speed(tiny_model):
    bars = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    llm = LLM(str(tiny_model), device="cpu", max_model_len=64)
    llm.generate(["a", "b", "c"], SamplingParams(max_tokens=3), use_tqdm=RecordingBar)
    assert len(bars) == 1 and bars[0].n == 3
    assert "est. speed input:" in bars[0].postfix and "output:" in bars[0].postfix


def test_use_tqdm_false_makes_no_bar_at_all(tiny_model, monkeypatch):
    """Not even a disabled one: its ~20 us fall on every one-token request's latency."""
    import folovllm.engine.llm_engine as llm_engine

    made = []
    monkeypatch.setattr(llm_engine, "tqdm", lambda *args, **kwargs: made.append(kwargs) or tqdm(*args, **kwargs))
    llm = LLM(str(tiny_model), device="cpu", max_model_len=64)
    llm.generate(["a", "b"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert made == []
    llm.generate(["a"], SamplingParams(max_tokens=2))  # the default draws one
    assert len(made) == 1


def test_request_output_repr_reads_like_vllms(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=64)
    text = repr(llm.generate({"prompt_token_ids": [5, 6]}, SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)[0])
    fields = ["request_id=0,", "prompt=None,", "prompt_token_ids=[5, 6],", "prompt_logprobs=None,",
              "outputs=[CompletionOutput(index=0, text=", "finish_reason=length, stop_reason=None)]",
              "finished=True,", "metrics=RequestMetrics(", "num_cached_tokens=0)"]  # fmt: skip
    positions = [text.index(f) for f in fields]
    assert positions == sorted(positions)
