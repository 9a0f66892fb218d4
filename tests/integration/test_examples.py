"""The README's runnable example works on a machine with no model hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_inference_example_builds_a_demo_model(tmp_path):
    env = {**os.environ, "FOLOVLLM_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "examples/offline_inference.py", "--max-tokens", "5", "--prompt", "hello", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "finish=length tokens=5" in res.stdout
    assert (tmp_path / "demo-tiny" / "config.json").is_file()


def test_streaming_engine_example_streams_deltas_and_aborts(tmp_path):
    env = {**os.environ, "FOLOVLLM_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "examples/streaming_engine.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    deltas = [line for line in lines if " a: +1 token(s) " in line]
    assert len(deltas) == 24 and deltas[-1].endswith("finish_reason=length")  # one new token per output
    assert any(" b: " in line and "finish_reason=abort" in line for line in lines)
    assert any(" c: " in line and "finish_reason=length" in line for line in lines)
