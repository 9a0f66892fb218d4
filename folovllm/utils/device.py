"""Device selection and GPU queries (memory, SM count)."""

from __future__ import annotations

import functools
import importlib.util

import torch

# Triton kernels back the GPU path; without the package everything runs in plain torch.
HAS_TRITON = importlib.util.find_spec("triton") is not None

DEVICE_CHOICES = ("auto", "cuda", "cpu")


def resolve_device(device: str) -> torch.device:
    """Map "auto" / "cuda" / "cpu" (or "cuda:N") to a torch.device.

    "auto" picks CUDA when it is available, else the CPU. Asking for CUDA on a
    machine without it is an error rather than a silent fall-back.
    """
    base = device.split(":")[0]
    if base not in DEVICE_CHOICES or (":" in device and base != "cuda"):
        raise ValueError(f"device must be one of {DEVICE_CHOICES} (or 'cuda:N'), got {device!r}")
    if base == "auto":
        return resolve_device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for a Triton ``tl.dot`` on ``dtype`` inputs. Triton's default for float32 is
    TF32 (a 10-bit mantissa), which would part a float32 model from HF's float32 on a GPU."""
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" only matters for float32 inputs


def get_gpu_memory_info(device: torch.device | int | None = None) -> tuple[int, int]:
    """(free_bytes, total_bytes) of a CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("get_gpu_memory_info needs a CUDA device")
    return torch.cuda.mem_get_info(device)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 for the CPU), looked up once per device:
    kernels size their grids with it on every step."""
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
