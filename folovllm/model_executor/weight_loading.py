"""Checkpoint tensors -> model parameters, each through its parameter's ``weight_loader``.

A model lists in ``packed_modules_mapping`` the checkpoint modules it merged
into one layer and the shard each becomes (``q_proj -> (qkv_proj, 0)``), so
``...q_proj.weight`` (or GPTQ's ``...q_proj.qweight``) lands in shard 0 of
``...qkv_proj.weight`` (``.qweight``). Every checkpoint tensor must have a
place and every parameter must be filled (a merged one by all its shards):
either failure is a ``ModelLoadError`` that lists the names.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from folovllm.model_loader import ModelLoadError


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"expected shape {tuple(param.shape)}, checkpoint tensor has {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def _param_name(name: str, mapping: dict[str, tuple[str, int]]) -> tuple[str, Optional[int]]:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in mapping:
            merged, shard_id = mapping[part]
            return ".".join(parts[:i] + [merged] + parts[i + 1 :]), shard_id
    return name, None


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return f"{names[:8]}{more}"


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Fill every parameter of ``model`` from ``(name, tensor)`` pairs.

    The model may name checkpoint tensors it does not use on purpose:
    ``skip_prefixes`` (e.g. ``lm_head.`` when tied to the embedding) and
    ``skip_substrs`` (e.g. an old ``rotary_emb.inv_freq`` buffer).
    """
    params = dict(model.named_parameters())
    mapping = getattr(model, "packed_modules_mapping", {})
    skip_prefixes = tuple(getattr(model, "skip_prefixes", ()))
    skip_substrs = getattr(model, "skip_substrs", ())
    shards_loaded: dict[str, set[Optional[int]]] = {}
    unknown = []
    for name, tensor in weights:
        if name.startswith(skip_prefixes) or any(s in name for s in skip_substrs):
            continue
        param_name, shard_id = _param_name(name, mapping)
        param = params.get(param_name)
        if param is None:
            unknown.append(name)
            continue
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            loader(param, tensor) if shard_id is None else loader(param, tensor, shard_id)
        except ValueError as exc:
            raise ModelLoadError(f"checkpoint tensor {name!r} does not fit {param_name!r}: {exc}") from None
        shards_loaded.setdefault(param_name, set()).add(shard_id)
    if unknown:
        raise ModelLoadError(f"the checkpoint has tensors that {type(model).__name__} has no place for: {_listed(unknown)}")
    missing = [name for name in params if not _is_complete(model, name, shards_loaded.get(name, set()))]
    if missing:
        raise ModelLoadError(f"the checkpoint lacks weights for: {_listed(missing)}")


def _is_complete(model: nn.Module, param_name: str, shards: set[Optional[int]]) -> bool:
    if None in shards:  # loaded whole
        return True
    module = model.get_submodule(param_name.rpartition(".")[0])
    return len(shards) == len(getattr(module, "output_sizes", [None]))
