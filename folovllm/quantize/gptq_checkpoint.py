"""Quantize a float HF checkpoint layer by layer and write it in the GPTQ format.

The decoder layers are quantized in order. Calibration inputs are captured at
the first layer once; each layer then sees the outputs of the layers before
it *after* they were quantized, so the error they introduced is part of what
the next layer compensates for. Within a layer the linears go in the order
they are computed (q/k/v, o, gate/up, down: AutoGPTQ's ``true_sequential``),
re-running the layer between them for the same reason. ``GPTQRecipe(rtn=True)`` skips
calibration and rounds to nearest.

The output is what AutoGPTQ writes (checkpoint_format "gptq", zero points
stored minus one), except for asymmetric quantization, which is written as
"gptq_v2" because v1 cannot store a zero point of 0.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from folovllm.model_executor.layers.quantization.gptq import ZERO_OFFSETS, GPTQConfig
from folovllm.model_executor.layers.quantization.gptq_packing import pack_cols, pack_rows
from folovllm.quantize.gptq_algorithm import GPTQ, QuantizedWeight, rtn_quantize


@dataclass(frozen=True)
class GPTQRecipe:
    """How to quantize: the format (bits, group_size, desc_act, sym) and the calibration."""

    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    rtn: bool = False  # round to nearest: no calibration at all
    num_samples: int = 128
    seq_len: int = 512
    damp_percent: float = 0.01

    @property
    def checkpoint_format(self) -> str:
        return "gptq" if self.sym else "gptq_v2"  # v1 cannot store a zero point of 0

    def quant_config(self) -> GPTQConfig:
        """The loader's view of the checkpoint this recipe writes (refuses bad settings)."""
        return GPTQConfig(self.bits, self.group_size, self.desc_act, self.sym, self.checkpoint_format)


# The linears of a decoder layer in the order they run; each group shares its input.
SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def calibration_samples(tokenizer, num_samples: int, seq_len: int, seed: int = 0) -> list[torch.Tensor]:
    """``num_samples`` random windows of ``seq_len`` tokens from Python's standard-library sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    needed = num_samples * seq_len * 2
    ids: list[int] = []
    for path in sorted(stdlib.glob("*.py")):
        ids.extend(tokenizer(path.read_text(encoding="utf-8", errors="ignore"), add_special_tokens=False)["input_ids"])
        if len(ids) >= needed:
            break
    if len(ids) <= seq_len:
        raise ValueError(f"the calibration corpus has {len(ids)} tokens, fewer than one sample of {seq_len}")
    tokens = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (num_samples,), generator=g)
    return [tokens[s : s + seq_len][None] for s in starts.tolist()]


class _StopForward(Exception):
    pass


def _first_layer_inputs(model, samples: list[torch.Tensor], device) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of the first decoder layer for every sample (hidden states, rotary tables, mask)."""
    captured = []

    def hook(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in samples:
            try:
                model(ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outs = []
    for args, kwargs in inputs:
        out = layer(*args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def _quantize_layer_gptq(layer: nn.Module, inputs, recipe: GPTQRecipe) -> dict[str, QuantizedWeight]:
    linears = dict(layer.named_modules())
    result = {}
    for group in SEQUENTIAL_GROUPS:
        gptqs = {name: GPTQ(linears[name].in_features, linears[name].weight.device) for name in group}
        handles = [
            linears[name].register_forward_hook(lambda m, args, out, g=gptqs[name]: g.add_batch(args[0].detach()))
            for name in group
        ]
        try:
            _run_layer(layer, inputs)
        finally:
            for h in handles:
                h.remove()
        for name in group:
            linear = linears[name]
            q = gptqs[name].quantize(
                linear.weight.data, recipe.bits, recipe.group_size, recipe.sym, recipe.desc_act, recipe.damp_percent
            )
            linear.weight.data = q.dequantize().to(linear.weight)  # later groups and layers see the quantized layer
            result[name] = q
    return result


def quantize_model(model, tokenizer, recipe: GPTQRecipe, progress: bool = True) -> dict[str, QuantizedWeight]:
    """Quantize every decoder linear of an HF causal LM in place; returns ``{module name: QuantizedWeight}``."""
    from tqdm import tqdm

    bits, group_size = recipe.bits, recipe.group_size
    layers = model.model.layers
    quant_config = recipe.quant_config()
    for group in SEQUENTIAL_GROUPS:  # the loader's rules, checked before the slow part
        for name in group:
            linear = layers[0].get_submodule(name)
            try:
                quant_config.check_layer_shape(linear.in_features, [linear.out_features], linear.in_features)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    device = next(model.parameters()).device
    inputs = None
    if not recipe.rtn:
        inputs = _first_layer_inputs(model, calibration_samples(tokenizer, recipe.num_samples, recipe.seq_len), device)
    quantized = {}
    with torch.no_grad():
        for i in tqdm(range(len(layers)), desc="RTN layers" if recipe.rtn else "GPTQ layers", disable=not progress):
            layer = layers[i]
            if recipe.rtn:
                per_layer = {}
                for group in SEQUENTIAL_GROUPS:
                    for name in group:
                        linear = layer.get_submodule(name)
                        per_layer[name] = rtn_quantize(linear.weight.data, bits, group_size, recipe.sym)
                        linear.weight.data = per_layer[name].dequantize().to(linear.weight)
            else:
                per_layer = _quantize_layer_gptq(layer, inputs, recipe)
                hidden = _run_layer(layer, inputs)
                inputs = [((h,) + args[1:], kwargs) for h, (args, kwargs) in zip(hidden, inputs)]
            quantized.update({f"model.layers.{i}.{name}": q for name, q in per_layer.items()})
    return quantized


def gptq_tensors(q: QuantizedWeight, bits: int, checkpoint_format: str) -> dict[str, torch.Tensor]:
    """A layer's ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` as the checkpoint stores them."""
    zeros = q.zeros - ZERO_OFFSETS[checkpoint_format]
    return {
        "qweight": pack_rows(q.codes, bits),
        "qzeros": pack_cols(zeros & (2**bits - 1), bits),
        "scales": q.scales,
        "g_idx": q.g_idx,
    }


def quantize_checkpoint(
    model_dir: str,
    out_dir: str,
    recipe: GPTQRecipe = GPTQRecipe(),
    device: str = "cpu",
    dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> Path:
    """Read a float checkpoint, quantize it and write a GPTQ checkpoint (with tokenizer) to ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe.quant_config()  # refuse bad settings before loading anything
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32).to(device).eval()
    quantized = quantize_model(model, tokenizer, recipe, progress)
    tensors = {}
    for name, tensor in model.state_dict().items():
        module = name.rpartition(".")[0]
        if module in quantized and name.endswith(".weight"):
            for suffix, packed in gptq_tensors(quantized[module], recipe.bits, recipe.checkpoint_format).items():
                tensors[f"{module}.{suffix}"] = packed.contiguous()
        elif not (name == "lm_head.weight" and model.config.tie_word_embeddings):
            tensors[name] = tensor.detach().cpu().contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "gptq",
        "bits": recipe.bits,
        "group_size": recipe.group_size,
        "desc_act": recipe.desc_act,
        "sym": recipe.sym,
        "checkpoint_format": recipe.checkpoint_format,
        "damp_percent": recipe.damp_percent,
        "true_sequential": True,
        "static_groups": False,
        "lm_head": False,
        "quantizer": "folovllm-rtn" if recipe.rtn else "folovllm-gptq",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(out))
    for extra in ("generation_config.json",):
        if (Path(model_dir) / extra).is_file():
            shutil.copy(Path(model_dir) / extra, out / extra)
    return out
