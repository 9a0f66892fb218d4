"""Model registry: HF ``architectures`` name -> our implementation."""

from folovllm.model_executor.models.qwen3 import Qwen2ForCausalLM, Qwen3ForCausalLM

_MODELS = {
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
}


def get_model_class(hf_config):
    archs = getattr(hf_config, "architectures", None) or []
    for arch in archs:
        if arch in _MODELS:
            return _MODELS[arch]
    raise ValueError(f"Model architectures {archs} are not supported; supported: {sorted(_MODELS)}")
