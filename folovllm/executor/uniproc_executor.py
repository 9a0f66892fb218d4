"""The single-process executor: one worker in this process.

The engine talks to an executor, never to a worker directly: tensor
parallelism (``MultiprocExecutor``) is another executor, with the same two
members the engine uses (``num_kv_blocks``, ``execute_model``).
"""

from __future__ import annotations

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.worker.gpu_worker import Worker


def start_worker(worker: Worker) -> int:
    """Load the model, size and allocate the KV cache, capture graphs; returns the number of KV blocks.

    Every rank of a tensor-parallel group runs exactly these steps, in this order (they meet in collectives).
    """
    worker.load_model()
    num_blocks = worker.determine_num_kv_blocks()
    worker.initialize_kv_cache(num_blocks)
    worker.compile_or_warm_up_model()
    return num_blocks


class UniProcExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.worker = Worker(config)
        self.num_kv_blocks = start_worker(self.worker)

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)
