"""The single-process executor: one worker in this process.

The engine talks to an executor, never to a worker directly, so tensor
parallelism can later slot in here (one worker per GPU) without touching
the engine or the scheduler.
"""

from __future__ import annotations

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.worker.gpu_worker import Worker


class UniProcExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.worker = Worker(config)
        self.worker.load_model()
        self.num_kv_blocks = self.worker.determine_num_kv_blocks()
        self.worker.initialize_kv_cache(self.num_kv_blocks)
        self.worker.compile_or_warm_up_model()

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        return self.worker.execute_model(scheduler_output)
