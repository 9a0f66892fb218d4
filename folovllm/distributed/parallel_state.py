"""This process's place in the tensor-parallel group, and the two collectives the layers need.

One process per rank; each holds ``1 / world_size`` of every sharded layer.
Until ``init_distributed_environment`` runs (the one-rank executor never
calls it) the world is this process alone: rank 0 of 1, and the collectives
return their input untouched, so single-device code pays nothing for them.

The group is torch.distributed's default group: gloo on the CPU, NCCL on
GPUs. Rendezvous is ``init_method`` (``tcp://host:port``, chosen by the
executor) or, under ``torchrun``, ``env://`` (MASTER_ADDR / MASTER_PORT /
RANK / WORLD_SIZE).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

_world_size = 1
_rank = 0


def ensure_no_model_parallel_group() -> None:
    """Refuse to build a second engine while a tensor-parallel one lives in this process:
    its layers would be built for that engine's ranks (the group is process-wide)."""
    if _world_size != 1 or dist.is_initialized():
        raise RuntimeError(
            "a tensor-parallel engine is already running in this process; delete it (del llm) before creating another"
        )


def init_distributed_environment(world_size: int, rank: int, init_method: str, backend: str) -> None:
    global _world_size, _rank
    ensure_no_model_parallel_group()
    timeout = datetime.timedelta(seconds=float(os.environ.get("FOLOVLLM_DIST_TIMEOUT_S", "300")))
    dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout)
    _world_size, _rank = world_size, rank


def destroy_distributed_environment() -> None:
    global _world_size, _rank
    if dist.is_initialized():
        dist.destroy_process_group()
    _world_size, _rank = 1, 0


def get_tensor_model_parallel_world_size() -> int:
    return _world_size


def get_tensor_model_parallel_rank() -> int:
    return _rank


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the ranks, in place; every rank gets the sum."""
    if _world_size == 1:
        return x
    dist.all_reduce(x)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` (rank order); every rank gets the whole."""
    if _world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def all_reduce_min(value: int, device: torch.device) -> int:
    """The smallest of every rank's ``value`` (ranks agree on sizes, e.g. KV-cache blocks)."""
    if _world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
