"""Linear layers, tensor-parallel (Megatron style), and the one seam through which their weights are made and loaded.

A linear layer does not decide its weight format: the checkpoint's
``quant_config`` (None for float weights) gives it a ``quant_method``, which
creates the parameters on the layer (``create_weights``), may re-lay them out
once they are loaded (``process_weights_after_loading``) and runs the matmul
(``apply``). The default, ``UnquantizedLinearMethod``, makes one
``weight[out, in]``; a quantized method makes its own tensors on the same
layer (GPTQ: ``qweight``, ``qzeros``, ``scales``, ``g_idx``).

Each parameter carries attributes that say how it lines up with the layer:
``output_dim`` / ``input_dim`` (which of its dims runs along the outputs /
inputs) and, for packed integer tensors, ``packed_dim`` and ``pack_factor``
(several values per element along that dim). So one ``weight_loader`` can put
a checkpoint tensor, or one part of a merged q/k/v or gate/up layer, in its
place whatever the format, and take only this rank's slice of it.

Tensor parallelism splits a pair of layers so that only one all-reduce joins
them: a ``ColumnParallelLinear`` gives each rank a slice of the *outputs*
(q/k/v heads, MLP columns), which the rank consumes locally; the following
``RowParallelLinear`` gives each rank the matching slice of its *inputs*, so
each rank computes a partial sum of the full output and an all-reduce adds
them. With one rank every layer here is a plain linear layer, with no
communication.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
from torch import nn

from folovllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from folovllm.model_executor.layers.dispatch import gemv_config, unquantized_gemm


def set_weight_attrs(param: nn.Parameter, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        setattr(param, key, value)


class LinearMethodBase(ABC):
    @abstractmethod
    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype) -> None:
        """Register the layer's weight parameters (with their dim attributes) on ``layer``."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x @ W.T + bias`` with the layer's weights in this method's format."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every weight is loaded (e.g. to re-lay them out for a kernel)."""


class UnquantizedLinearMethod(LinearMethodBase):
    def create_weights(self, layer, input_size, output_sizes, params_dtype) -> None:
        weight = nn.Parameter(torch.empty(sum(output_sizes), input_size, dtype=params_dtype), requires_grad=False)
        set_weight_attrs(weight, {"output_dim": 0, "input_dim": 1})
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        return unquantized_gemm(x, layer.weight, bias)


class LinearBase(nn.Module):
    """A linear layer whose outputs may be several checkpoint tensors side by side.

    ``input_size`` and ``output_sizes`` are what *this rank* holds;
    ``output_sizes`` lists the parts (one for a plain layer; q, k, v or gate,
    up for a merged one), and the checkpoint tensor of part ``i`` is loaded
    with ``shard_id=i``. A subclass that splits outputs over ranks says where
    this rank's rows of each part start in the checkpoint (``output_start``);
    one that splits inputs sets ``input_is_sharded``.
    """

    input_is_sharded = False

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, quant_config=None) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        self.shard_offsets = [sum(self.output_sizes[:i]) for i in range(len(self.output_sizes))]
        self.quant_method = quant_config.get_quant_method(self) if quant_config else UnquantizedLinearMethod()
        self.quant_method.create_weights(self, input_size, self.output_sizes, torch.get_default_dtype())
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(self.output_sizes)), requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0})
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            if not hasattr(param, "weight_loader"):  # a quant method may bring its own
                param.weight_loader = self.weight_loader

    def output_start(self, part: int) -> Optional[int]:
        """Where this rank's rows of ``part`` begin in the checkpoint tensor (None: the whole part is this rank's)."""
        return None

    def output_full_size(self, part: int) -> int:
        """Rows of ``part`` in the checkpoint tensor."""
        return self.output_sizes[part]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
        """Copy this rank's slice of ``loaded`` into ``param`` (or into part ``shard_id`` of it).

        A parameter without an ``output_dim`` (e.g. GPTQ's per-input ``g_idx``)
        is the same for every part and is copied whole. ``loaded`` must have
        the checkpoint's full shape; a mismatch is a ``ValueError``.
        """
        output_dim = getattr(param, "output_dim", None)
        input_dim = getattr(param, "input_dim", None)
        packed_dim, pack_factor = getattr(param, "packed_dim", None), getattr(param, "pack_factor", 1)
        target = param.data
        expected = list(target.shape)
        slices = []  # (dim, start, size) of this rank's part of `loaded`
        if output_dim is not None:
            part = 0 if shard_id is None else shard_id
            pack = pack_factor if packed_dim == output_dim else 1
            size, offset, start = self.output_sizes[part] // pack, self.shard_offsets[part] // pack, self.output_start(part)
            if shard_id is not None:
                target = target.narrow(output_dim, offset, size)
            expected[output_dim] = self.output_full_size(part) // pack
            if start is not None:
                slices.append((output_dim, start // pack, size))
        if input_dim is not None and self.input_is_sharded and self.tp_size > 1:
            size = target.shape[input_dim]
            expected[input_dim] = size * self.tp_size
            slices.append((input_dim, self.tp_rank * size, size))
        if list(loaded.shape) != expected:
            where = "" if shard_id is None else f" (shard {shard_id})"
            raise ValueError(f"expected shape {tuple(expected)}{where}, checkpoint tensor has {tuple(loaded.shape)}")
        for dim, start, size in slices:
            loaded = loaded.narrow(dim, start, size)
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def fused_gemv_config(self, x: torch.Tensor) -> Optional[tuple[int, int, int]]:
        """The configuration of the Triton GEMV with the op before it inside (``dispatch.gemv_config``
        with ``fused``), where ``forward(x)`` is a plain matmul (unquantized, one rank); else None."""
        if self.tp_size == 1 and isinstance(self.quant_method, UnquantizedLinearMethod):
            return gemv_config(x, self.weight, self.bias, fused=True)
        return None


class ColumnParallelLinear(LinearBase):
    """Outputs split over ranks: rank r computes the r-th ``1 / tp`` of them.

    The result stays split (no gather): the next layer consumes this rank's slice.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None) -> None:
        self._init_split(input_size, [output_size], bias, quant_config)

    def _init_split(self, input_size: int, output_sizes: list[int], bias: bool, quant_config) -> None:
        tp = get_tensor_model_parallel_world_size()
        for size in output_sizes:
            if size % tp:
                raise ValueError(f"output size {size} is not divisible by tensor_parallel_size={tp}")
        LinearBase.__init__(self, input_size, [size // tp for size in output_sizes], bias, quant_config)

    def output_start(self, part: int) -> Optional[int]:
        return self.tp_rank * self.output_sizes[part] if self.tp_size > 1 else None

    def output_full_size(self, part: int) -> int:
        return self.output_sizes[part] * self.tp_size


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input as one matmul (gate/up); each part split over ranks."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, quant_config=None) -> None:
        self._init_split(input_size, output_sizes, bias, quant_config)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections as one matmul, split over ranks by heads.

    With fewer kv heads than ranks, each kv head is replicated on
    ``tp / num_kv_heads`` consecutive ranks (rank r holds kv head
    ``r // (tp / num_kv_heads)``), as vLLM does.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False, quant_config=None) -> None:
        tp = get_tensor_model_parallel_world_size()
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.num_kv_head_replicas = max(1, tp // num_kv_heads)
        q, kv = self.num_heads * head_dim, self.num_kv_heads * head_dim
        LinearBase.__init__(self, hidden_size, [q, kv, kv], bias, quant_config)

    def output_start(self, part: int) -> Optional[int]:
        if self.tp_size == 1:
            return None
        if part == 0:
            return self.tp_rank * self.output_sizes[0]
        return (self.tp_rank // self.num_kv_head_replicas) * self.output_sizes[part]

    def output_full_size(self, part: int) -> int:
        # kv parts: tp / replicas distinct heads-slices make up the checkpoint's kv heads
        return self.output_sizes[part] * (self.tp_size if part == 0 else self.tp_size // self.num_kv_head_replicas)


class RowParallelLinear(LinearBase):
    """Inputs split over ranks (matching the previous column-parallel layer's outputs); partial sums all-reduced.

    The bias is added once, on rank 0, before the sum.
    """

    input_is_sharded = True

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None) -> None:
        tp = get_tensor_model_parallel_world_size()
        if input_size % tp:
            raise ValueError(f"input size {input_size} is not divisible by tensor_parallel_size={tp}")
        super().__init__(input_size // tp, [output_size], bias, quant_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.quant_method.apply(self, x, self.bias if self.tp_rank == 0 else None)
        return tensor_model_parallel_all_reduce(out)
