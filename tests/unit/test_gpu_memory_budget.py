"""The worker's KV budget on a GPU, with the CUDA memory queries faked (runs on the CPU)."""

from __future__ import annotations

import types

import pytest
import torch

from folovllm.worker import gpu_worker
from folovllm.worker.gpu_worker import MemorySnapshot, Worker

GiB = 2**30


class FakeCuda:
    """One device of ``total`` bytes: this process's tensors, its allocator's cache, and what others hold."""

    def __init__(self, total: int, other_processes: int = 0) -> None:
        self.total, self.other_processes = total, other_processes
        self.allocated = self.peak = self.cached = 0

    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes
        self.cached += nbytes

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(gpu_worker, "get_gpu_memory_info", lambda device: (self.total - self.other_processes - self.allocated - self.cached, self.total))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.allocated + self.cached)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: setattr(self, "cached", 0))


def _worker(cuda: FakeCuda, utilization: float, weights: int, activations: int, profile_cache: int) -> Worker:
    """A worker whose model takes ``weights`` bytes and whose profile step peaks at ``activations`` + its cache."""

    def profile_run() -> int:
        cuda.alloc(activations + profile_cache)
        cuda.free(activations + profile_cache)
        return profile_cache

    worker = Worker.__new__(Worker)
    worker.device = torch.device("cuda", 0)
    worker.config = types.SimpleNamespace(
        cache_config=types.SimpleNamespace(gpu_memory_utilization=utilization), enforce_eager=True
    )
    worker.model_runner = types.SimpleNamespace(profile_run=profile_run)
    worker.memory_at_start = MemorySnapshot.take(worker.device)
    cuda.alloc(weights)  # load_model
    return worker


def test_the_budget_is_this_engines_share_less_what_it_adds(monkeypatch):
    cuda = FakeCuda(total=80 * GiB)
    cuda.install(monkeypatch)
    worker = _worker(cuda, 0.5, weights=2 * GiB, activations=1 * GiB, profile_cache=3 * GiB)
    budget = 40 * GiB - 2 * GiB - 1 * GiB - gpu_worker._GPU_HEADROOM_BYTES
    assert worker._profile_gpu_blocks(per_block=GiB // 4) == budget // (GiB // 4)


def test_tensors_another_engine_holds_do_not_shrink_this_ones_budget(monkeypatch):
    """Two engines in one process (a test, a benchmark comparing settings): each gets its share."""
    cuda = FakeCuda(total=80 * GiB)
    cuda.install(monkeypatch)
    cuda.alloc(22 * GiB)  # the first engine's weights and KV cache, still alive
    worker = _worker(cuda, 0.3, weights=1 * GiB, activations=1 * GiB, profile_cache=0)
    budget = 24 * GiB - 1 * GiB - 1 * GiB - gpu_worker._GPU_HEADROOM_BYTES
    assert worker._profile_gpu_blocks(per_block=GiB) == budget // GiB


def test_too_little_free_memory_at_start_is_a_clear_error(monkeypatch):
    cuda = FakeCuda(total=80 * GiB, other_processes=30 * GiB)
    cuda.install(monkeypatch)
    worker = _worker(cuda, 0.9, weights=1 * GiB, activations=0, profile_cache=0)
    with pytest.raises(ValueError, match=r"Free memory on device \(50.00/80.00 GiB\).*0.9, 72.00 GiB"):
        worker._profile_gpu_blocks(per_block=GiB)
