"""Linear layers, and the one seam through which their weights are made and loaded.

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
a checkpoint tensor, or one shard of a merged q/k/v or gate/up tensor, in its
place whatever the format, and a tensor-parallel loader can slice a rank's
part along the same dims.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


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
        return F.linear(x, layer.weight, bias)


class LinearBase(nn.Module):
    """A linear layer whose outputs may be several checkpoint tensors side by side.

    ``output_sizes`` lists the parts (one for a plain layer; q, k, v or gate,
    up for a merged one); the checkpoint tensor of part ``i`` is loaded with
    ``shard_id=i``.
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        quant_config=None,
    ) -> None:
        super().__init__()
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

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
        """Copy ``loaded`` into ``param``, or into shard ``shard_id``'s slice along its output dim.

        A parameter without an ``output_dim`` (e.g. GPTQ's per-input ``g_idx``)
        is the same for every shard and is copied whole.
        """
        output_dim = getattr(param, "output_dim", None)
        target = param.data
        if shard_id is not None and output_dim is not None:
            offset, size = self.shard_offsets[shard_id], self.output_sizes[shard_id]
            if getattr(param, "packed_dim", None) == output_dim:
                offset, size = offset // param.pack_factor, size // param.pack_factor
            target = target.narrow(output_dim, offset, size)
        if target.shape != loaded.shape:
            where = "" if shard_id is None else f" (shard {shard_id})"
            raise ValueError(f"expected shape {tuple(target.shape)}{where}, checkpoint tensor has {tuple(loaded.shape)}")
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)


class ReplicatedLinear(LinearBase):
    """A plain linear layer: one checkpoint tensor."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, quant_config=None) -> None:
        super().__init__(input_size, [output_size], bias, quant_config)


class MergedReplicatedLinear(LinearBase):
    """Several projections of the same input run as one matmul (q/k/v, gate/up)."""
