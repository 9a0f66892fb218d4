"""Quantized weight formats: which one a checkpoint uses, checked against the user's ``quantization``."""

from __future__ import annotations

from typing import Any, Optional

from folovllm.model_executor.layers.quantization.gptq import GPTQConfig

QUANTIZATION_METHODS = {"gptq": GPTQConfig}
# vLLM's names for its other kernels over the same checkpoints; ours is one kernel.
QUANTIZATION_ALIASES = {"gptq_marlin": "gptq"}


def get_quantization_config(
    quantization: Optional[str], checkpoint_config: Optional[dict[str, Any]], model: str
) -> Optional[GPTQConfig]:
    """The quant config to build the model with, or None for float weights.

    ``quantization`` is the user's option (None: follow the checkpoint);
    ``checkpoint_config`` is the checkpoint's ``quantization_config``.
    """
    if quantization is not None and quantization not in QUANTIZATION_METHODS and quantization not in QUANTIZATION_ALIASES:
        accepted = sorted(QUANTIZATION_METHODS) + sorted(QUANTIZATION_ALIASES)
        raise ValueError(f"quantization must be one of {accepted} (or None to follow the checkpoint), got {quantization!r}")
    quantization = QUANTIZATION_ALIASES.get(quantization, quantization)
    if checkpoint_config is None:
        if quantization is not None:
            raise ValueError(
                f"quantization={quantization!r} but {model!r} has no quantization_config "
                "(in config.json or quantize_config.json): it is not a quantized checkpoint"
            )
        return None
    # Old AutoGPTQ quantize_config.json files do not name their method.
    method = checkpoint_config.get("quant_method", "gptq")
    if quantization is not None and method != quantization:
        raise ValueError(
            f"quantization={quantization!r} does not match the checkpoint's quantization_config "
            f"(quant_method={method!r}) in {model!r}"
        )
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"{model!r} is quantized with {method!r}, which FoloVLLM does not support (supported: {sorted(QUANTIZATION_METHODS)})")
    return QUANTIZATION_METHODS[method].from_config(checkpoint_config)
