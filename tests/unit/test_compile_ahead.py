"""Start-up's parallel compile pass: its settings, its switch, and what it leaves behind.

That the pass compiles exactly the variants the launches then need is checked for an H100 by
``scripts/check_triton_compile.py`` (tests/unit/test_triton_compile.py), and in the engine by the
GPU test ``test_gpu_start_up_compiles_every_variant_in_its_parallel_pass``.
"""

from __future__ import annotations

import os

import pytest

from folovllm.utils.compile_ahead import can_compile_ahead, compile_in_parallel, compile_threads


def test_compile_threads_reads_its_variable_or_takes_one_per_cpu_up_to_16(monkeypatch):
    monkeypatch.delenv("FOLOVLLM_COMPILE_THREADS", raising=False)
    assert compile_threads() == min(16, os.cpu_count() or 1)
    monkeypatch.setenv("FOLOVLLM_COMPILE_THREADS", "0")
    assert compile_threads() == 0
    monkeypatch.setenv("FOLOVLLM_COMPILE_THREADS", "lots")
    with pytest.raises(ValueError, match="FOLOVLLM_COMPILE_THREADS.*'lots'"):
        compile_threads()


def test_nothing_compiles_ahead_under_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not can_compile_ahead()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton

    assert can_compile_ahead() == hasattr(triton, "AsyncCompileMode")


def test_launches_are_compile_requests_only_inside_the_block_even_when_it_fails():
    triton = pytest.importorskip("triton")
    if not hasattr(triton, "AsyncCompileMode"):
        pytest.skip("this Triton has no AsyncCompileMode")
    from triton.runtime.jit import JITFunction

    launch = JITFunction.run
    with pytest.raises(RuntimeError, match="a step failed"):
        with compile_in_parallel(2):
            assert JITFunction.run is not launch
            raise RuntimeError("a step failed")
    assert JITFunction.run is launch


def test_a_cpu_worker_has_no_compile_pass(tiny_model):
    from folovllm import LLM

    worker = LLM(str(tiny_model), device="cpu").llm_engine.executor.worker
    assert worker.variants_compiled_ahead is None and worker.variants_compiled_late is None
    assert "compile kernels" not in worker.startup_seconds
