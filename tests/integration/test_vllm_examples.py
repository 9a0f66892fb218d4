"""vLLM's offline examples, adapted only in the import (see tests/vllm_examples/README.md), run as
a user would: each in its own process against a tiny local checkpoint, exit code 0, outputs printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "vllm_examples"
ENGINE_FLAGS = ["--device", "cpu", "--max_model_len", "256"]  # snake case on purpose: FlexibleArgumentParser


def run(script: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, cwd=script.parent)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def with_model(tmp_path: Path, name: str, model: Path) -> Path:
    """A copy of an example whose one model string points at ``model``."""
    source = (EXAMPLES / name).read_text()
    assert source.count('model="Qwen/Qwen3-0.6B"') == 1
    copy = tmp_path / name
    copy.write_text(source.replace('model="Qwen/Qwen3-0.6B"', f"model={str(model)!r}"))
    return copy


def test_basic(tiny_model, tmp_path):
    out = run(with_model(tmp_path, "basic.py", tiny_model))
    assert len(re.findall(r"^Prompt: 'Hello, my name is', Generated text: '.+'$", out, re.M)) == 1
    assert out.count("Generated text:") == 4


def test_generate_with_engine_args_on_the_command_line(tiny_model):
    args = ["--model", str(tiny_model), *ENGINE_FLAGS, "--max-tokens", "8", "--temperature", "0"]
    out = run(EXAMPLES / "generate.py", *args)
    assert out.count("Generated text:") == 4
    # vLLM's flag for tensor parallelism: two processes (gloo on the CPU), the same greedy text
    tp2 = run(EXAMPLES / "generate.py", *args, "--tensor-parallel-size", "2")
    generated = lambda text: [line for line in text.splitlines() if "Generated text:" in line]  # noqa: E731
    assert generated(tp2) == generated(out)


def test_chat_single_and_batched(tiny_model, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    out = run(EXAMPLES / "chat.py", "--model", str(tiny_model), *ENGINE_FLAGS, "--max-tokens", "8", "--chat-template-path", str(template))
    assert out.count("Generated text:") == 1 + 10 + 10
    assert "[system] You are a helpful assistant" in out  # the custom template was used


def test_llm_engine_example_prints_request_outputs(tiny_model):
    out = run(EXAMPLES / "llm_engine_example.py", "--model", str(tiny_model), *ENGINE_FLAGS)
    outputs = [line for line in out.splitlines() if line.startswith("RequestOutput(")]
    assert len(outputs) == 3
    first = next(line for line in outputs if line.startswith("RequestOutput(request_id=0,"))
    assert "prompt_logprobs=[None, {" in first and "logprobs=[{" in first  # prompt_logprobs=1, logprobs=1
    assert "finish_reason=" in first and "num_cached_tokens=" in first
    third = next(line for line in outputs if line.startswith("RequestOutput(request_id=2,"))
    assert third.count("CompletionOutput(index=") == 2  # n=2


def test_automatic_prefix_caching(tiny_model, tmp_path):
    out = run(with_model(tmp_path, "automatic_prefix_caching.py", tiny_model))
    cached = [int(n) for n in re.findall(r"Cached prompt tokens: (\d+)", out)]
    assert len(cached) == 2 and cached[0] == 0 and cached[1] >= 64  # the table's blocks were reused
    assert out.count("Generation time:") == 2


@pytest.mark.parametrize("script", ["generate.py", "chat.py", "llm_engine_example.py"])
def test_unsupported_vllm_flags_are_refused_by_name(tiny_model, script):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--model", str(tiny_model), "--pipeline-parallel-size", "2"],
                          capture_output=True, text=True, timeout=120, cwd=EXAMPLES)  # fmt: skip
    assert proc.returncode == 2 and "--pipeline-parallel-size" in proc.stderr
