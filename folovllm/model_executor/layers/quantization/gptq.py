"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum): their config and the linear method that runs them.

``GPTQConfig`` reads a checkpoint's ``quantization_config``; its
``get_quant_method`` hands every linear layer a ``GPTQLinearMethod``, which
creates ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` on the layer (see
``gptq_packing`` for the layout) and multiplies by them: with the Triton
kernel on a GPU, with the plain-torch reference elsewhere. Embeddings, norms
and the LM head stay in float.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from folovllm.model_executor.layers.dispatch import use_fused_kernels
from folovllm.model_executor.layers.linear import LinearMethodBase, set_weight_attrs
from folovllm.model_executor.layers.quantization.gptq_packing import SUPPORTED_BITS, gptq_matmul_reference

GROUP_SIZES = (-1, 32, 64, 128)
# checkpoint_format -> what the reader adds to every stored zero point
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


@dataclass(frozen=True)
class GPTQConfig:
    weight_bits: int
    group_size: int
    desc_act: bool
    sym: bool
    checkpoint_format: str = "gptq"

    def __post_init__(self) -> None:
        if self.weight_bits not in SUPPORTED_BITS:
            raise ValueError(f"GPTQ bits must be one of {SUPPORTED_BITS}, got {self.weight_bits!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"GPTQ group_size must be one of {GROUP_SIZES}, got {self.group_size!r}")
        if self.checkpoint_format not in ZERO_OFFSETS:
            raise ValueError(f"GPTQ checkpoint_format must be one of {sorted(ZERO_OFFSETS)}, got {self.checkpoint_format!r}")

    @classmethod
    def get_name(cls) -> str:
        return "gptq"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GPTQConfig":
        """From a checkpoint's ``quantization_config`` (or ``quantize_config.json``) dict."""
        if config.get("lm_head", False):
            raise ValueError("GPTQ checkpoints with a quantized lm_head (lm_head: true) are not supported")
        fmt = config.get("checkpoint_format") or config.get("format") or "gptq"
        return cls(
            weight_bits=config.get("bits"),
            group_size=config.get("group_size", -1),
            desc_act=bool(config.get("desc_act", False)),
            sym=bool(config.get("sym", True)),
            checkpoint_format=fmt,
        )

    @property
    def pack_factor(self) -> int:
        return 32 // self.weight_bits

    @property
    def zero_offset(self) -> int:
        return ZERO_OFFSETS[self.checkpoint_format]

    def check_layer_shape(self, input_size: int, output_sizes: list[int], grouped_rows: int, where: str = "") -> None:
        """A layer this format can store: ``group_size`` divides the rows its groups cover, and the
        packed dims divide by the pack factor (``ValueError`` naming the sizes otherwise)."""
        if self.group_size != -1 and grouped_rows % self.group_size:
            raise ValueError(f"GPTQ group_size {self.group_size} does not divide the layer's input size{where} {grouped_rows}")
        if input_size % self.pack_factor:
            raise ValueError(f"a {self.weight_bits}-bit GPTQ layer needs an input size divisible by {self.pack_factor}, got {input_size}")
        if any(size % self.pack_factor for size in output_sizes):
            raise ValueError(
                f"a {self.weight_bits}-bit GPTQ layer needs output sizes divisible by {self.pack_factor}, got {output_sizes}"
            )

    def get_quant_method(self, layer: nn.Module) -> "GPTQLinearMethod":
        return GPTQLinearMethod(self)


class GPTQLinearMethod(LinearMethodBase):
    def __init__(self, quant_config: GPTQConfig) -> None:
        self.quant_config = quant_config

    def create_weights(self, layer, input_size, output_sizes, params_dtype) -> None:
        qc = self.quant_config
        # A row-parallel layer holds 1/tp of the input rows (``input_size`` is this rank's share).
        # Its groups split with the rows, unless there is one group (per-channel) or act order put
        # this rank's rows in any group: then the rank keeps every group's scales and zeros, and
        # g_idx keeps the checkpoint's group numbers.
        sharded = layer.input_is_sharded and layer.tp_size > 1
        per_channel = qc.group_size == -1
        split_groups = sharded and not per_channel and not qc.desc_act
        grouped_rows = input_size if split_groups or not sharded else input_size * layer.tp_size
        qc.check_layer_shape(input_size, output_sizes, grouped_rows, " per rank" if split_groups else "")
        output_size = sum(output_sizes)
        num_groups = 1 if per_channel else grouped_rows // qc.group_size
        group_attrs = {"input_dim": 0} if split_groups else {}

        def param(name: str, shape: tuple[int, ...], dtype: torch.dtype, attrs: dict[str, Any]) -> None:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, attrs)
            layer.register_parameter(name, p)

        param("qweight", (input_size // qc.pack_factor, output_size), torch.int32,
              {"input_dim": 0, "output_dim": 1, "packed_dim": 0, "pack_factor": qc.pack_factor})  # fmt: skip
        param("qzeros", (num_groups, output_size // qc.pack_factor), torch.int32,
              {"output_dim": 1, "packed_dim": 1, "pack_factor": qc.pack_factor, **group_attrs})  # fmt: skip
        param("scales", (num_groups, output_size), torch.float16, {"output_dim": 1, **group_attrs})
        param("g_idx", (input_size,), torch.int32, {"input_dim": 0})
        layer.g_idx.weight_loader = functools.partial(_load_g_idx, layer, num_groups if split_groups else 0)
        layer.group_size = input_size if per_channel else qc.group_size  # rows per group, as the kernel walks them
        layer.use_kernel = False  # decided once the weights are loaded and placed
        layer.input_perm = None  # set when the kernel needs the rows sorted by group
        layer.kernel_g_idx = None  # set when the kernel looks up each row's group

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """On a GPU, choose how the Triton kernel reads this layer, re-laying rows once if needed.

        Contiguous groups (no act order) are read as they are; act-order rows are sorted into
        contiguous groups; rows that still do not form equal groups (a row-parallel shard of an
        act-order layer) are read with a per-row group lookup.
        """
        from folovllm.model_executor.layers.quantization.triton_gptq_gemm import kernel_block_k, reorder_for_kernel

        if not use_fused_kernels(layer.qweight):
            return
        g_idx = layer.g_idx.long()
        contiguous = torch.arange(layer.input_size, device=g_idx.device) // layer.group_size
        tiles_fit_groups = kernel_block_k(layer.group_size) is not None
        if tiles_fit_groups and torch.equal(g_idx, contiguous):
            pass
        elif tiles_fit_groups and torch.equal(torch.sort(g_idx).values, contiguous):
            qweight, perm = reorder_for_kernel(layer.qweight.data, layer.g_idx, self.quant_config.weight_bits)
            layer.qweight.data = qweight
            layer.input_perm = perm
        elif kernel_block_k(layer.input_size) is not None:
            layer.kernel_g_idx = layer.g_idx
        else:
            return  # shapes the kernel cannot tile: the reference path
        layer.use_kernel = True

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        qc = self.quant_config
        if not layer.use_kernel:
            return gptq_matmul_reference(
                x, layer.qweight, layer.qzeros, layer.scales, layer.g_idx, qc.weight_bits, qc.zero_offset, bias
            )
        from folovllm.model_executor.layers.quantization.triton_gptq_gemm import gptq_gemm

        if layer.input_perm is not None:
            x = x[:, layer.input_perm]
        out = gptq_gemm(
            x, layer.qweight, layer.qzeros, layer.scales, qc.weight_bits, layer.group_size, qc.zero_offset, layer.kernel_g_idx
        )
        return out if bias is None else out + bias


def _load_g_idx(layer: nn.Module, groups_per_rank: int, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
    """This rank's rows of ``g_idx``, renumbered to this rank's groups when the groups were split.

    One ``g_idx`` serves all parts of a merged layer: GPTQ gives q/k/v (gate/up) one activation
    order, since they multiply the same input. A checkpoint whose parts disagree is refused.
    """
    rows = param.shape[0]
    expected = rows * layer.tp_size if layer.input_is_sharded else rows
    if loaded.shape != (expected,):
        raise ValueError(f"expected shape {(expected,)}, checkpoint tensor has {tuple(loaded.shape)}")
    if expected != rows:
        loaded = loaded.narrow(0, layer.tp_rank * rows, rows) - layer.tp_rank * groups_per_rank
    if getattr(param, "loaded", False) and not torch.equal(param.data.cpu(), loaded.to(param.dtype).cpu()):
        raise ValueError(f"g_idx of shard {shard_id} differs from the other parts of this merged layer; they must share one")
    param.data.copy_(loaded)
    param.loaded = True
