"""Small helpers shared by every layer: seeding, ids, devices, GPU memory."""

from folovllm.utils.common import Counter, cdiv, random_uuid, set_random_seed
from folovllm.utils.device import get_gpu_memory_info, resolve_device

__all__ = [
    "Counter",
    "cdiv",
    "random_uuid",
    "set_random_seed",
    "get_gpu_memory_info",
    "resolve_device",
]
