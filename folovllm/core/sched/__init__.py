from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.scheduler import Scheduler

__all__ = ["Scheduler", "SchedulerOutput"]
