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
    assert compile_threads() == min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
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


_COMPILE_IN_A_FRESH_PROCESS = """
import sys
sys.path.insert(0, "scripts")
import torch, triton, triton.language as tl
from check_triton_compile import _TargetOnlyDriver
from folovllm.utils.compile_ahead import compile_in_parallel
from folovllm.utils.triton_variants import num_compiled_variants

@triton.jit
def copy(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs))

@triton.jit
def broken(x_ptr, N: tl.constexpr):
    tl.static_assert(N < 0)

triton.runtime.driver.set_active(_TargetOnlyDriver(90))
x = torch.zeros(16)
with compile_in_parallel(2, ignore_errors=True):
    for _ in range(3):  # a variant launched again while its compile is under way
        copy[(1,)](x, x, N=16)
    copy[(1,)](x, x, N=32)
    broken[(1,)](x, N=16)
caches = [next(iter(f.device_caches.values()))[0] for f in (copy, broken)]
print(num_compiled_variants(copy), num_compiled_variants(broken), sorted({type(k).__name__ for k in caches[0].values()}))
try:
    with compile_in_parallel(2):
        broken[(1,)](x, N=8)
except Exception as exc:
    print("raised", num_compiled_variants(broken))
"""


def test_the_pass_files_each_compiled_variant_once_and_leaves_no_placeholder_of_a_failed_one(tmp_path):
    """Compiled for an H100 in a fresh process (the interpreter compiles nothing): a variant launched
    three times in the block compiles once, two variants are two compiled kernels afterwards, a
    kernel that fails to compile leaves nothing in its cache, and without ``ignore_errors`` the
    failure is raised when the block ends."""
    pytest.importorskip("triton")
    from tests.fixtures.python_process import python_prints

    script = tmp_path / "compile_in_parallel.py"  # Triton reads a kernel's source from its file
    script.write_text(_COMPILE_IN_A_FRESH_PROCESS)
    lines = python_prints(f"import runpy; runpy.run_path({str(script)!r})", {"TRITON_INTERPRET": None}).splitlines()
    assert lines[-2:] == ["2 0 ['CompiledKernel']", "raised 0"], lines


def test_a_failing_compile_pass_leaves_the_engine_starting_as_without_it(tiny_model, monkeypatch, caplog):
    """The pass only speeds start-up up: if it fails (here its second dummy step raises), the worker
    says so and goes on, the failed step's dummy requests gone and the sampler's generators as they
    were, and the engine's tokens are those of an engine that never tried."""
    import contextlib

    import torch

    from folovllm import LLM, SamplingParams
    from folovllm.worker import gpu_worker, model_runner

    llm = LLM(str(tiny_model), device="cpu", seed=3)
    worker = llm.llm_engine.executor.worker
    runner = worker.model_runner
    prompts = [{"prompt_token_ids": list(range(10, 10 + n))} for n in (3, 17)]
    params = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)
    generator_state = runner.sampler.generator.get_state()
    execute, steps = runner.execute_model, []

    def second_step_fails(so):
        steps.append(so)
        out = execute(so)  # the step's requests are in the batch by now
        if len(steps) == 2:
            raise RuntimeError("injected compile failure")
        return out

    monkeypatch.setattr(runner, "execute_model", second_step_fails)
    monkeypatch.setattr(gpu_worker, "can_compile_ahead", lambda: True)
    monkeypatch.setattr(runner, "initialize_kv_cache", lambda n: None)  # keep the engine's cache
    monkeypatch.setattr(runner, "_drop_kv_cache", lambda: None)
    monkeypatch.setattr(worker, "device", torch.device("cuda"))  # as on a GPU (nothing here touches one)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(runner, "profile_run", lambda: runner._dummy_run([4], params))
    monkeypatch.setattr(model_runner, "compile_in_parallel", lambda threads: contextlib.nullcontext())  # steps run as they are
    monkeypatch.setattr(worker, "compile_threads", 2)  # FOLOVLLM_COMPILE_THREADS=2 when it started
    with caplog.at_level("WARNING"):
        worker.compile_kernels()
    assert "The parallel compile pass failed" in caplog.text and "injected compile failure" in caplog.text
    assert len(steps) == 2 and worker.variants_compiled_ahead is None
    assert not runner.input_batch.requests and runner.prev_sampled is None
    assert torch.equal(runner.sampler.generator.get_state(), generator_state)
    monkeypatch.undo()
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    fresh = LLM(str(tiny_model), device="cpu", seed=3)
    assert got == [o.outputs[0].token_ids for o in fresh.generate(prompts, params, use_tqdm=False)]
