"""The worker: one device, one model runner; sizes the KV cache.

Named after vLLM's GPU worker; it runs on the CPU too (then the KV cache is
sized from ``cpu_kv_cache_space_gib`` instead of free GPU memory). With
tensor parallelism there is one worker per rank, each in its own process
(rank r on GPU r), all running the same steps; the ranks agree on the
smallest number of KV blocks any of them can hold.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.distributed.parallel_state import all_reduce_min, init_distributed_environment
from folovllm.utils.common import cdiv, set_random_seed
from folovllm.utils.compile_ahead import can_compile_ahead, compile_threads
from folovllm.utils.device import get_gpu_memory_info
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.utils.triton_variants import total_compiled_variants
from folovllm.worker.cuda_graph_runner import MAX_MIXED_GRAPH_TOKENS
from folovllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

# Memory CUDA graphs and the allocator may still take after profiling.
_GPU_HEADROOM_BYTES = 256 * 2**20


@dataclass
class MemorySnapshot:
    """One CUDA device's memory as this process sees it."""

    free: int
    total: int
    allocated: int  # by this process's live tensors (every engine in it)
    reserved: int  # by this process's caching allocator (allocated + cached)

    @classmethod
    def take(cls, device: torch.device) -> MemorySnapshot:
        free, total = get_gpu_memory_info(device)
        return cls(free, total, torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))

    @property
    def non_torch(self) -> int:
        """Used outside this process's allocator: the CUDA context, NCCL, other processes."""
        return self.total - self.free - self.reserved


class Worker:
    def __init__(
        self, config: EngineConfig, rank: int = 0, distributed_init_method: str | None = None, local_rank: int | None = None
    ) -> None:
        """``distributed_init_method``: the tensor-parallel group's rendezvous (None: one rank, no group);
        ``local_rank``: the GPU index on this node (default: ``rank``)."""
        self.config = config
        self.rank = rank
        self.device = config.device_obj
        if self.device.type == "cuda" and distributed_init_method is not None:
            self.device = torch.device("cuda", rank if local_rank is None else local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            gc.collect()  # an engine dropped earlier in this process may still hold its KV cache in a cycle
            torch.cuda.empty_cache()
            # The KV budget counts what this worker adds from here on, as vLLM does: tensors of
            # other engines (or of the user's script) in the process are not this engine's.
            self.memory_at_start = MemorySnapshot.take(self.device)
        if distributed_init_method is not None:
            world_size = config.parallel_config.tensor_parallel_size
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            init_distributed_environment(world_size, rank, distributed_init_method, backend)
        set_random_seed(config.model_config.seed)  # the same on every rank: they sample identically
        self.model_runner = ModelRunner(config, self.device)
        # Seconds each start-up phase took, in order (the engine logs them; bench_all prints them).
        self.startup_seconds: dict[str, float] = {}
        # Triton variants compiled by ``compile_kernels``' parallel pass (None: no such pass), and
        # after it by the warm-up and graph capture (variants the pass did not reach).
        self.variants_compiled_ahead: int | None = None
        self.variants_compiled_late: int | None = None
        self.compile_threads = compile_threads()  # read once: the pass and its log line agree

    @contextlib.contextmanager
    def timed_phase(self, name: str) -> Iterator[None]:
        """Time one start-up phase into ``startup_seconds``, the device's queue drained at its end."""
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.startup_seconds[name] = time.perf_counter() - start

    def load_model(self) -> None:
        self.model_runner.load_model()

    def compile_kernels(self) -> None:
        """On a GPU, compile the Triton variants start-up will launch, on ``compile_threads()``
        threads at once, before the steps that launch them (``ModelRunner.compile_kernels``)."""
        if self.device.type != "cuda" or self.compile_threads < 2 or not can_compile_ahead():
            return
        before = total_compiled_variants()
        with self.timed_phase("compile kernels"):
            try:
                self.model_runner.compile_kernels(self.compile_threads)
            except Exception:  # a start-up speed-up must not stop the engine: the warm-up compiles them as before
                logger.warning("The parallel compile pass failed; the warm-up will compile each kernel variant as it "
                               "comes (FOLOVLLM_COMPILE_THREADS=0 skips the pass)", exc_info=True)  # fmt: skip
                return
        self.variants_compiled_ahead = total_compiled_variants() - before

    def determine_num_kv_blocks(self) -> int:
        cache = self.config.cache_config
        per_block = self.model_runner.get_kv_cache_bytes_per_block()
        if cache.num_gpu_blocks_override is not None:
            num_blocks = cache.num_gpu_blocks_override
        elif self.device.type == "cuda":
            num_blocks = self._profile_gpu_blocks(per_block)
        else:
            num_blocks = int(cache.cpu_kv_cache_space_gib * 2**30) // per_block
            # More blocks than max_num_seqs full-length sequences can never be used.
            useful = self.config.scheduler_config.max_num_seqs * cdiv(self.model_runner.max_model_len, cache.block_size)
            num_blocks = min(num_blocks, useful)
        num_blocks = all_reduce_min(num_blocks, self.device)
        if num_blocks <= 0:
            raise ValueError(
                "No memory left for the KV cache; raise gpu_memory_utilization (or cpu_kv_cache_space_gib) "
                "or lower max_num_batched_tokens / max_num_seqs"
            )
        return num_blocks

    def _profile_gpu_blocks(self, per_block: int) -> int:
        """Blocks that fit this engine's share of the GPU: ``gpu_memory_utilization`` of its memory,
        less what loading the model, a profile step and the CUDA graphs take."""
        start = self.memory_at_start
        utilization = self.config.cache_config.gpu_memory_utilization
        requested = start.total * utilization
        if start.free < requested:
            raise ValueError(
                f"Free memory on device ({start.free / 2**30:.2f}/{start.total / 2**30:.2f} GiB) on startup is less "
                f"than desired GPU memory utilization ({utilization}, {requested / 2**30:.2f} GiB). Decrease "
                "gpu_memory_utilization or reduce GPU memory used by other processes (or other engines in this one)."
            )
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        loaded = MemorySnapshot.take(self.device)
        weights = loaded.allocated - start.allocated
        non_torch = max(0, loaded.non_torch - start.non_torch)  # e.g. NCCL's buffers
        # The profile's throw-away cache is counted in `peak`; take it back out.
        profile_cache = self.model_runner.profile_run()
        peak = torch.cuda.max_memory_allocated(self.device)
        activations = max(0, peak - loaded.allocated - profile_cache)
        torch.cuda.empty_cache()
        graphs = self._cuda_graph_pool_estimate(activations)
        budget = requested - non_torch - weights - activations - graphs - _GPU_HEADROOM_BYTES
        logger.info(
            "GPU memory: total %.2f GiB, weights %.2f GiB, peak activations %.2f GiB, CUDA graphs ~%.2f GiB, KV budget %.2f GiB",
            start.total / 2**30, weights / 2**30, activations / 2**30, graphs / 2**30, budget / 2**30,
        )  # fmt: skip
        return int(budget // per_block)

    def _cuda_graph_pool_estimate(self, activations: int) -> int:
        """Memory the graphs' private pool will hold on to: the largest mixed-step graph's activations.

        The pool is not shared with eager steps, which may still reach the
        profiled peak, so it comes on top. Activations grow with the tokens of
        a step: scale the profiled peak down to the largest graph's tokens.
        """
        if self.config.enforce_eager:
            return 0
        return int(activations * min(1.0, MAX_MIXED_GRAPH_TOKENS / self.model_runner.profile_num_tokens()))

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)

    def compile_or_warm_up_model(self) -> None:
        before = total_compiled_variants() if self.variants_compiled_ahead is not None else 0
        with self.timed_phase("warm-up"):
            if self.device.type == "cuda":  # on the CPU nothing compiles: no Triton kernel runs there
                self.model_runner.warm_up()
        with self.timed_phase("CUDA graphs"):
            self.model_runner.capture_model()
        if self.variants_compiled_ahead is not None:
            self.variants_compiled_late = total_compiled_variants() - before
            logger.info(
                "Triton kernel variants: %d compiled (or loaded from Triton's cache) on %d threads, %d more one by one in the warm-up and graph capture",
                self.variants_compiled_ahead, self.compile_threads, self.variants_compiled_late,
            )  # fmt: skip

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
