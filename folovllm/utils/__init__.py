"""Small helpers shared by every layer: seeding, counters, devices, GPU memory, the CLI parser."""

from folovllm.utils.argparse_utils import FlexibleArgumentParser
from folovllm.utils.common import Counter, cdiv, set_random_seed
from folovllm.utils.device import get_gpu_memory_info, resolve_device

__all__ = [
    "Counter",
    "FlexibleArgumentParser",
    "cdiv",
    "set_random_seed",
    "get_gpu_memory_info",
    "resolve_device",
]
