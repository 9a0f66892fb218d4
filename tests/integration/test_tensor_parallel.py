"""Tensor parallelism end to end on the CPU (gloo): identical to one rank and to HF; process lifecycle.

Every engine here is shut down explicitly (``_closing``): a tensor-parallel
engine left alive would hold this process's process group, and later tests'
engines would refuse to start.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time

import pytest

from folovllm import LLM, LLMEngine, SamplingParams
from tests.integration.hf_reference import hf_greedy

PROMPTS = [[5, 17, 300, 42, 9], list(range(100, 160)), [7], [64] * 33, list(range(400, 420))]


@contextlib.contextmanager
def _closing(llm: LLM):
    try:
        yield llm
    finally:
        llm.llm_engine.executor.shutdown()


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()


def _run(llm: LLM, params: SamplingParams):
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0] for o in outs]


def _assert_same(tp_outs, ref_outs):
    for tp, ref in zip(tp_outs, ref_outs):
        assert tp.token_ids == ref.token_ids
        for tok, a, b in zip(tp.token_ids, tp.logprobs, ref.logprobs):
            assert abs(a[tok].logprob - b[tok].logprob) < 1e-4


def test_tp2_equals_one_rank_and_hf_with_chunking_preemption_and_the_step_api(tiny_model):
    # 16-token steps chunk every long prompt; 9 blocks of 8 tokens force preemption.
    options = dict(device="cpu", max_num_batched_tokens=16, max_num_seqs=4, block_size=8, num_gpu_blocks_override=9, max_model_len=72)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    ref_llm = LLM(str(tiny_model), **options)
    ref = _run(ref_llm, params)
    del ref_llm
    with _closing(LLM(str(tiny_model), tensor_parallel_size=2, **options)) as llm:
        _assert_same(_run(llm, params), ref)
        assert [o.token_ids for o in ref] == hf_greedy(tiny_model, PROMPTS, 12)
        assert llm.llm_engine.get_stats()["num_preemptions"] > 0
        # the step API: add two requests, abort one, run the other to the end
        engine: LLMEngine = llm.llm_engine
        engine.add_request("keep", {"prompt_token_ids": PROMPTS[1]}, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        engine.add_request("drop", {"prompt_token_ids": PROMPTS[3]}, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        engine.step()
        engine.abort_request("drop")
        finished = {}
        while engine.has_unfinished_requests():
            finished.update({o.request_id: o for o in engine.step() if o.finished})
        assert finished["keep"].outputs[0].token_ids == ref[1].token_ids


def test_tp4_with_kv_heads_replicated_and_an_untied_head(tiny_model_factory):
    """8 query heads, 2 kv heads: at 4 ranks each kv head lives on two ranks."""
    from tests.fixtures.tiny_models import SHAPES

    path = tiny_model_factory(**SHAPES["gqa4_untied"])
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    ref_llm = LLM(str(path), device="cpu")
    ref = _run(ref_llm, params)
    del ref_llm
    with _closing(LLM(str(path), device="cpu", tensor_parallel_size=4)) as llm:
        assert len(llm.llm_engine.executor.worker_pids) == 3
        _assert_same(_run(llm, params), ref)
    assert [o.token_ids for o in ref] == hf_greedy(path, PROMPTS, 10)


def test_a_killed_worker_makes_the_next_call_raise_quickly(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", tensor_parallel_size=2)
    with _closing(llm):
        params = SamplingParams(temperature=0, max_tokens=4)
        assert llm.generate({"prompt_token_ids": PROMPTS[0]}, params, use_tqdm=False)[0].outputs[0].token_ids
        (pid,) = llm.llm_engine.executor.worker_pids
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"worker rank 1 \(pid {pid}\) exited with code -9"):
            llm.generate({"prompt_token_ids": PROMPTS[0]}, params, use_tqdm=False)
        assert time.monotonic() - start < 10
        with pytest.raises(RuntimeError, match="can no longer run"):
            llm.generate({"prompt_token_ids": PROMPTS[1]}, params, use_tqdm=False)
        assert not _alive(pid)


def test_engines_one_after_another_and_no_child_outlives_its_llm(tiny_model):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outputs, pids = [], []
    for _ in range(2):  # the second engine needs a fresh port and process group
        llm = LLM(str(tiny_model), device="cpu", tensor_parallel_size=2)
        pids += llm.llm_engine.executor.worker_pids
        outputs.append(llm.generate({"prompt_token_ids": PROMPTS[2]}, params, use_tqdm=False)[0].outputs[0].token_ids)
        del llm
        gc.collect()
        assert not any(_alive(pid) for pid in pids)
    assert outputs[0] == outputs[1]
    # and a one-rank engine may follow in the same process
    assert LLM(str(tiny_model), device="cpu").generate({"prompt_token_ids": PROMPTS[2]}, params, use_tqdm=False)[0].outputs[0].token_ids == outputs[0]


def test_a_second_tensor_parallel_engine_is_refused_while_one_lives(tiny_model):
    with _closing(LLM(str(tiny_model), device="cpu", tensor_parallel_size=2)):
        with pytest.raises(RuntimeError, match="already running in this process"):
            LLM(str(tiny_model), device="cpu", tensor_parallel_size=2)
        with pytest.raises(RuntimeError, match="already running in this process"):
            LLM(str(tiny_model), device="cpu")


def test_a_script_that_never_deletes_its_llm_exits_cleanly(tiny_model, tmp_path):
    """No `if __name__ == "__main__"` guard, no `del`: the interpreter's exit stops the children."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from folovllm import LLM, SamplingParams\n"
        f"llm = LLM({str(tiny_model)!r}, device='cpu', tensor_parallel_size=2)\n"
        "out = llm.generate('def f(', SamplingParams(max_tokens=3), use_tqdm=False)\n"
        "print('PIDS', *llm.llm_engine.executor.worker_pids, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split("PIDS", 1)[1].split()]
    time.sleep(0.5)
    assert pids and not any(_alive(pid) for pid in pids)


def test_torchrun_external_launcher_ranks_agree_with_one_rank(tiny_model, tmp_path):
    """vLLM's torchrun mode: every process is one rank and runs the whole engine on the same prompts."""
    import json
    import subprocess
    import sys

    script = tmp_path / "torchrun_generate.py"
    script.write_text(
        "import json, os\n"
        "from folovllm import LLM, SamplingParams\n"
        f"llm = LLM({str(tiny_model)!r}, device='cpu', tensor_parallel_size=2, distributed_executor_backend='external_launcher')\n"
        f"outs = llm.generate([{{'prompt_token_ids': p}} for p in {PROMPTS!r}], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)\n"
        f"open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK']), 'w').write(json.dumps([o.outputs[0].token_ids for o in outs]))\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = hf_greedy(tiny_model, PROMPTS, 8)
    assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [expected, expected]


@pytest.mark.parametrize("case", ["4bit_g32", "4bit_g32_act_order", "8bit_per_channel_asym"])
def test_tp2_runs_gptq_checkpoints_like_one_rank(tiny_model, tmp_path, case):
    """Row-parallel GPTQ layers: groups split with the rows, or (act order, per-channel) kept whole."""
    from folovllm.quantize.gptq_checkpoint import GPTQRecipe, quantize_checkpoint
    from tests.integration.test_gptq import CASES

    gptq_dir = quantize_checkpoint(str(tiny_model), str(tmp_path / "gptq"), GPTQRecipe(num_samples=8, seq_len=64, **CASES[case]), progress=False)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=1)
    ref_llm = LLM(str(gptq_dir), device="cpu")
    ref = _run(ref_llm, params)
    del ref_llm
    with _closing(LLM(str(gptq_dir), device="cpu", tensor_parallel_size=2)) as llm:
        _assert_same(_run(llm, params), ref)


def test_tp2_async_random_sampling_ignores_the_users_global_rng(tiny_model):
    """With async scheduling each rank feeds the next step its *own* sampled tokens, so the ranks
    must draw the same numbers even if the user's script uses torch's global generator meanwhile."""
    import torch

    params = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)  # unseeded

    def run(llm: LLM) -> list[list[int]]:
        engine = llm.llm_engine
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
        done = {}
        while engine.has_unfinished_requests():
            torch.rand(5)  # the user's own randomness, between steps
            done.update({o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished})
        return [done[f"r{i}"] for i in range(len(PROMPTS))]

    one = LLM(str(tiny_model), device="cpu", async_scheduling=True, seed=7)
    expected = run(one)
    del one
    with _closing(LLM(str(tiny_model), device="cpu", async_scheduling=True, seed=7, tensor_parallel_size=2)) as llm:
        assert run(llm) == expected


def test_workers_exit_when_the_driver_is_killed(tiny_model, tmp_path):
    """No orphans: a child waiting for its next step sees the driver's socket close and exits."""
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(
        "import time\n"
        "from folovllm import LLM\n"
        f"llm = LLM({str(tiny_model)!r}, device='cpu', tensor_parallel_size=2)\n"
        "print('PIDS', *llm.llm_engine.executor.worker_pids, flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = next(line for line in driver.stdout if line.startswith("PIDS"))
        (pid,) = [int(p) for p in line.split()[1:]]
        assert _alive(pid)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
