"""The worker: one device, one model runner; sizes the KV cache.

Named after vLLM's GPU worker; it runs on the CPU too (then the KV cache is
sized from ``cpu_kv_cache_space_gib`` instead of free GPU memory). With
tensor parallelism there is one worker per rank, each in its own process
(rank r on GPU r), all running the same steps; the ranks agree on the
smallest number of KV blocks any of them can hold.
"""

from __future__ import annotations

import logging

import torch

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.distributed.parallel_state import all_reduce_min, init_distributed_environment
from folovllm.utils.common import cdiv, set_random_seed
from folovllm.utils.device import get_gpu_memory_info
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.worker.cuda_graph_runner import MAX_MIXED_GRAPH_TOKENS
from folovllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

# Memory CUDA graphs and the allocator may still take after profiling.
_GPU_HEADROOM_BYTES = 256 * 2**20


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
        if distributed_init_method is not None:
            world_size = config.parallel_config.tensor_parallel_size
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            init_distributed_environment(world_size, rank, distributed_init_method, backend)
        set_random_seed(config.model_config.seed)  # the same on every rank: they sample identically
        self.model_runner = ModelRunner(config, self.device)

    def load_model(self) -> None:
        self.model_runner.load_model()

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
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        free_before, total = get_gpu_memory_info(self.device)
        non_torch = (total - free_before) - torch.cuda.memory_reserved(self.device)
        weights = torch.cuda.memory_allocated(self.device)
        # The profile's throw-away cache is counted in `peak`; take it back out.
        profile_cache = self.model_runner.profile_run()
        peak = torch.cuda.max_memory_allocated(self.device)
        activations = max(0, peak - weights - profile_cache)
        torch.cuda.empty_cache()
        graphs = self._cuda_graph_pool_estimate(activations)
        budget = (
            total * self.config.cache_config.gpu_memory_utilization
            - non_torch - weights - activations - graphs - _GPU_HEADROOM_BYTES
        )  # fmt: skip
        logger.info(
            "GPU memory: total %.2f GiB, weights %.2f GiB, peak activations %.2f GiB, CUDA graphs ~%.2f GiB, KV budget %.2f GiB",
            total / 2**30, weights / 2**30, activations / 2**30, graphs / 2**30, budget / 2**30,
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
        if self.device.type == "cuda":  # on the CPU nothing compiles: no Triton kernel runs there
            self.model_runner.warm_up()
        self.model_runner.capture_model()

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
