"""The single-process executors: one worker in this process.

The engine talks to an executor, never to a worker directly: tensor
parallelism (``MultiprocExecutor``) is another executor, with the same two
members the engine uses (``num_kv_blocks``, ``execute_model``).
``ExecutorWithExternalLauncher`` is one rank of a group that ``torchrun``
started (vLLM's ``external_launcher``).
"""

from __future__ import annotations

import os
import weakref

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.distributed.parallel_state import destroy_distributed_environment, ensure_no_model_parallel_group
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.worker.gpu_worker import Worker


def start_worker(worker: Worker) -> int:
    """Load the model, compile its kernels, size and allocate the KV cache, capture graphs; returns the number of KV blocks.

    Every rank of a tensor-parallel group runs exactly these steps, in this order (they meet in collectives).
    """
    with worker.timed_phase("load model"):
        worker.load_model()
    worker.compile_kernels()  # on a GPU; times itself
    with worker.timed_phase("memory profile"):
        num_blocks = worker.determine_num_kv_blocks()
    with worker.timed_phase("KV cache"):
        worker.initialize_kv_cache(num_blocks)
    worker.compile_or_warm_up_model()  # times its warm-up and its graph capture
    return num_blocks


class UniProcExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        ensure_no_model_parallel_group()
        self.worker = self._make_worker(config)
        self.num_kv_blocks = start_worker(self.worker)

    def _make_worker(self, config: EngineConfig) -> Worker:
        return Worker(config)

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)


class ExecutorWithExternalLauncher(UniProcExecutor):
    """This process is one rank of a tensor-parallel group started by ``torchrun``.

    Every rank runs the whole engine (tokenizer, scheduler, sampler) on the
    same prompts in the same order; the schedule is deterministic, so all
    ranks run the same steps and meet in the same collectives, with nothing
    to send between them. Rendezvous is ``env://`` (torchrun's MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE), which also spans nodes.
    """

    def _make_worker(self, config: EngineConfig) -> Worker:
        tp = config.parallel_config.tensor_parallel_size
        try:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except KeyError as exc:
            raise ValueError(f"distributed_executor_backend='external_launcher' needs torchrun's {exc.args[0]} variable") from None
        if world_size != tp:
            raise ValueError(f"torchrun started {world_size} processes but tensor_parallel_size={tp}")
        worker = Worker(config, rank, "env://", int(os.environ.get("LOCAL_RANK", rank)))
        # Leave the group when this executor goes (or at exit): a live gloo group aborts the interpreter's exit.
        self.shutdown = weakref.finalize(self, destroy_distributed_environment)
        return worker
