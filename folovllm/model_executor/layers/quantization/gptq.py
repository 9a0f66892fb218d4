"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum): their config and the linear method that runs them.

``GPTQConfig`` reads a checkpoint's ``quantization_config``; its
``get_quant_method`` hands every linear layer a ``GPTQLinearMethod``, which
creates ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` on the layer (see
``gptq_packing`` for the layout) and multiplies by them: with the Triton
kernel on a GPU, with the plain-torch reference elsewhere. Embeddings, norms
and the LM head stay in float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from folovllm.model_executor.layers.dispatch import use_fused_kernels
from folovllm.model_executor.layers.linear import LinearMethodBase, set_weight_attrs
from folovllm.model_executor.layers.quantization.gptq_packing import SUPPORTED_BITS, gptq_matmul_reference

logger = logging.getLogger(__name__)

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

    def get_quant_method(self, layer: nn.Module) -> "GPTQLinearMethod":
        return GPTQLinearMethod(self)


class GPTQLinearMethod(LinearMethodBase):
    def __init__(self, quant_config: GPTQConfig) -> None:
        self.quant_config = quant_config

    def create_weights(self, layer, input_size, output_sizes, params_dtype) -> None:
        qc = self.quant_config
        group_size = qc.group_size if qc.group_size != -1 else input_size
        if input_size % group_size:
            raise ValueError(f"GPTQ group_size {qc.group_size} does not divide the layer's input size {input_size}")
        if input_size % qc.pack_factor:
            raise ValueError(f"a {qc.weight_bits}-bit GPTQ layer needs an input size divisible by {qc.pack_factor}, got {input_size}")
        for size in output_sizes:
            if size % qc.pack_factor:
                raise ValueError(
                    f"a {qc.weight_bits}-bit GPTQ layer needs output sizes divisible by {qc.pack_factor}, got {output_sizes}"
                )
        output_size, num_groups = sum(output_sizes), input_size // group_size

        def param(name: str, shape: tuple[int, ...], dtype: torch.dtype, attrs: dict[str, Any]) -> None:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, attrs)
            layer.register_parameter(name, p)

        param("qweight", (input_size // qc.pack_factor, output_size), torch.int32,
              {"input_dim": 0, "output_dim": 1, "packed_dim": 0, "pack_factor": qc.pack_factor})  # fmt: skip
        param("qzeros", (num_groups, output_size // qc.pack_factor), torch.int32,
              {"output_dim": 1, "packed_dim": 1, "pack_factor": qc.pack_factor})  # fmt: skip
        param("scales", (num_groups, output_size), torch.float16, {"output_dim": 1})
        param("g_idx", (input_size,), torch.int32, {"input_dim": 0, "weight_loader": _load_shared_g_idx})
        layer.group_size = group_size
        layer.use_kernel = False  # decided once the weights are loaded and placed
        layer.input_perm = None  # set when the kernel needs the rows sorted by group

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """On a GPU, put the rows in the kernel's order (contiguous groups) once."""
        from folovllm.model_executor.layers.quantization.triton_gptq_gemm import kernel_block_k, reorder_for_kernel

        layer.use_kernel = use_fused_kernels(layer.qweight) and kernel_block_k(layer.group_size) is not None
        if not layer.use_kernel:
            return
        contiguous = torch.arange(layer.input_size, device=layer.g_idx.device) // layer.group_size
        if torch.equal(layer.g_idx.long(), contiguous):
            return
        if not torch.equal(torch.sort(layer.g_idx.long()).values, contiguous):
            logger.warning("GPTQ g_idx has groups of unequal size; this layer runs the slow reference path")
            layer.use_kernel = False
            return
        qweight, perm = reorder_for_kernel(layer.qweight.data, layer.g_idx, self.quant_config.weight_bits)
        layer.qweight.data = qweight
        layer.input_perm = perm

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        qc = self.quant_config
        if not layer.use_kernel:
            return gptq_matmul_reference(
                x, layer.qweight, layer.qzeros, layer.scales, layer.g_idx, qc.weight_bits, qc.zero_offset, bias
            )
        from folovllm.model_executor.layers.quantization.triton_gptq_gemm import gptq_gemm

        if layer.input_perm is not None:
            x = x[:, layer.input_perm]
        out = gptq_gemm(x, layer.qweight, layer.qzeros, layer.scales, qc.weight_bits, layer.group_size, qc.zero_offset)
        return out if bias is None else out + bias


def _load_shared_g_idx(param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
    """One ``g_idx`` for all parts of a merged layer: GPTQ gives q/k/v (gate/up) one activation
    order, since they multiply the same input. A checkpoint whose parts disagree is refused."""
    if param.shape != loaded.shape:
        raise ValueError(f"expected shape {tuple(param.shape)}, checkpoint tensor has {tuple(loaded.shape)}")
    if getattr(param, "loaded", False) and not torch.equal(param.data.cpu(), loaded.to(param.dtype).cpu()):
        raise ValueError(f"g_idx of shard {shard_id} differs from the other parts of this merged layer; they must share one")
    param.data.copy_(loaded)
    param.loaded = True
