"""The persistent step-input buffers: what a copy writes, and when a step may write the host side again."""

from __future__ import annotations

import numpy as np
import torch

from folovllm import LLM, SamplingParams
from folovllm.worker.input_buffers import CpuGpuBuffer


def test_copy_to_gpu_writes_the_values_then_pads_or_keeps_what_follows():
    buf = CpuGpuBuffer(8, dtype=torch.int64, device=torch.device("cpu"), pin_memory=False)
    assert buf.copy_to_gpu(np.arange(1, 6)).tolist() == [1, 2, 3, 4, 5]
    assert buf.copy_to_gpu(np.array([7, 8]), size=4).tolist() == [7, 8, 3, 4]  # an earlier step's 3, 4 stay
    assert buf.copy_to_gpu(np.array([9]), size=3, fill=-1).tolist() == [9, -1, -1]
    assert buf.gpu.data_ptr() != buf.cpu.data_ptr() and buf.gpu[:5].tolist() == [9, -1, -1, 4, 5]


class _OrderedEvent:
    """Stands in for the CUDA event: logs when the runner waits for it and records it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def synchronize(self) -> None:
        self.log.append("wait")

    def record(self) -> None:
        self.log.append("record")


def test_a_step_writes_the_host_buffers_only_after_the_last_steps_copies_ran(tiny_model, monkeypatch):
    """On a GPU the copies from the pinned host buffers run after the host has gone on, and the
    next step writes the same memory: each step must wait for the event before its first write
    and record it after its last copy."""
    llm = LLM(str(tiny_model), device="cpu", async_scheduling=True)
    runner = llm.llm_engine.executor.worker.model_runner
    log = []
    runner.inputs_copied = _OrderedEvent(log)
    copy = CpuGpuBuffer.copy_to_gpu
    monkeypatch.setattr(CpuGpuBuffer, "copy_to_gpu", lambda self, *a, **k: log.append("copy") or copy(self, *a, **k))
    prompts = [list(range(10, 10 + n)) for n in (3, 20)]
    params = [SamplingParams(temperature=0, max_tokens=4), SamplingParams(temperature=0.7, top_p=0.9, seed=1, max_tokens=4)]
    llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    before_first_wait, *steps = "".join("w" if e == "wait" else "r" if e == "record" else "c" for e in log).split("w")
    assert before_first_wait == "" and len(steps) >= 4, log
    assert all(s.strip("c") == "r" and s.endswith("r") for s in steps), log  # copies (writes), then the record
    # The sampling settings are among those copies: their tensors live in the buffers too.
    md = runner.sampling_cache[1]
    for name in ("temperature", "greedy_mask", "top_p"):
        assert getattr(md, name).data_ptr() == runner.buffers.sampling[name].gpu.data_ptr(), name
