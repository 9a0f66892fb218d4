"""``EngineArgs``: every engine option, flat, as ``LLM(...)`` and the command line take them.

``create_engine_config()`` turns them into the validated ``EngineConfig``.
``add_cli_args`` / ``from_cli_args`` are vLLM's: each field becomes a
``--kebab-case`` flag with its default and help text, so vLLM's example
scripts build their parsers and engines unchanged.

vLLM options that FoloVLLM does not implement are refused by name, except at
their vLLM default value, which asks for nothing we lack (see
``VLLM_OPTIONS_AT_DEFAULT_ONLY``).
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from folovllm.config import BLOCK_SIZES, DTYPE_CHOICES, KV_CACHE_DTYPES, CacheConfig, EngineConfig, ModelConfig, ParallelConfig, SchedulerConfig


def _opt(default: Any, help: str, **argparse_kwargs: Any):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class EngineArgs:
    model: str = _opt("Qwen/Qwen3-0.6B", "Local checkpoint directory or Hugging Face hub id.")
    tokenizer: Optional[str] = _opt(None, "Tokenizer directory or hub id (default: the model's).")
    tokenizer_mode: str = _opt("auto", "'auto' uses the fast tokenizer when there is one; 'slow' never does.", choices=["auto", "slow"])
    trust_remote_code: bool = _opt(False, "Allow the checkpoint's own Python code (HF's trust_remote_code).")
    dtype: str = _opt("auto", "Weight and activation dtype; 'auto' is the checkpoint's on a GPU, float32 on the CPU.",
                      choices=sorted(DTYPE_CHOICES))  # fmt: skip
    max_model_len: Optional[int] = _opt(None, "Longest sequence (prompt + output) in tokens (default: the model's context window).")
    seed: int = _opt(0, "Seed of the engine's random state.")
    revision: Optional[str] = _opt(None, "Hub revision (branch, tag or commit) of the model.")
    max_logprobs: int = _opt(20, "Most logprobs or prompt_logprobs a request may ask for.")
    skip_tokenizer_init: bool = _opt(False, "Load no tokenizer: prompts must be token ids and outputs carry no text.")
    quantization: Optional[str] = _opt(None, "Weight quantization: 'gptq' ('gptq_marlin' is taken as 'gptq'), or None to "
                                       "follow the checkpoint's quantization_config.", choices=["gptq", "gptq_marlin"])  # fmt: skip
    block_size: int = _opt(16, "Tokens per KV-cache block.", choices=list(BLOCK_SIZES))
    kv_cache_dtype: str = _opt("auto", "KV-cache storage: 'auto' (the model's dtype) or 'fp8' / 'fp8_e4m3' (float8 e4m3, scale 1.0).",
                               choices=sorted(KV_CACHE_DTYPES))  # fmt: skip
    gpu_memory_utilization: float = _opt(0.9, "Fraction of GPU memory the engine may use (weights, activations, KV cache).")
    swap_space: float = _opt(4.0, "CPU swap space per GPU in GiB (accepted for vLLM compatibility; like vLLM v1, unused).")
    enable_prefix_caching: bool = _opt(True, "Reuse the KV cache of shared prompt prefixes (automatic prefix caching).")
    num_gpu_blocks_override: Optional[int] = _opt(None, "Use exactly this many KV-cache blocks instead of measuring memory.")
    cpu_kv_cache_space_gib: float = _opt(1.0, "KV-cache size in GiB when running on the CPU.")
    max_num_batched_tokens: Optional[int] = _opt(None, "Token budget of one engine step (default, as vLLM's: 16384 on a GPU "
                                                 "of 70 GiB or more other than an A100, 8192 on other GPUs, 16384 on the CPU).")
    max_num_seqs: Optional[int] = _opt(None, "Most sequences in one engine step (default, as vLLM's: 1024 on a GPU of 70 GiB "
                                       "or more other than an A100, 256 on other GPUs and on the CPU).")  # fmt: skip
    enable_chunked_prefill: bool = _opt(True, "Split long prompts across steps so that decodes keep running.")
    async_scheduling: Optional[bool] = _opt(None, "Schedule the next step while the current one runs on the GPU "
                                            "(default: on; --no-async-scheduling turns it off).")  # fmt: skip
    device: str = _opt("auto", "'auto' (CUDA when available, else the CPU), 'cuda', 'cuda:N' or 'cpu'.")
    tensor_parallel_size: int = _opt(1, "Split every layer over this many devices (GPUs; processes on the CPU).")
    distributed_executor_backend: Optional[str] = _opt(
        None, "'mp' (one process per extra rank; the default with tensor_parallel_size > 1), 'uni' (this process), "
        "'external_launcher' (one rank per process started by torchrun).",
        choices=["mp", "uni", "external_launcher"],
    )
    enforce_eager: bool = _opt(False, "Never capture CUDA graphs.")

    @classmethod
    def from_kwargs(cls, model: str, caller: str = "LLM", **kwargs: Any) -> "EngineArgs":
        """Keyword arguments as ``LLM(...)`` takes them; unknown or unsupported ones are refused by name."""
        known = {f.name for f in fields(cls)}
        for name in sorted(set(kwargs) - known):
            if name not in VLLM_OPTIONS_AT_DEFAULT_ONLY:
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}; known: {sorted(known)}")
            default, why = VLLM_OPTIONS_AT_DEFAULT_ONLY[name]
            if kwargs[name] != default:
                raise ValueError(f"{name}={kwargs[name]!r} is not supported by FoloVLLM ({why}); only {default!r} is accepted")
            del kwargs[name]
        return cls(model=model, **kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add one ``--kebab-case`` flag per field (booleans also get ``--no-...``); returns ``parser``.

        ``parser`` may be an argument group, as in vLLM's examples.
        """
        hints = typing.get_type_hints(EngineArgs)
        for f in fields(EngineArgs):
            kind = _unwrap_optional(hints[f.name])
            extra = {k: v for k, v in f.metadata.items() if k != "help"}
            flag = "--" + f.name.replace("_", "-")
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
            else:
                help = f.metadata["help"] if "default" in f.metadata["help"] else f.metadata["help"] + " (default: %(default)s)"
                parser.add_argument(flag, type=kind, default=f.default, help=help, **extra)
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def create_engine_config(self) -> EngineConfig:
        model_config = ModelConfig(
            model=self.model,
            tokenizer=self.tokenizer,
            tokenizer_mode=self.tokenizer_mode,
            trust_remote_code=self.trust_remote_code,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            seed=self.seed,
            revision=self.revision,
            max_logprobs=self.max_logprobs,
            skip_tokenizer_init=self.skip_tokenizer_init,
            quantization=self.quantization,
        )
        cache_config = CacheConfig(
            block_size=self.block_size,
            cache_dtype=self.kv_cache_dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            swap_space=self.swap_space,
            enable_prefix_caching=self.enable_prefix_caching,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            cpu_kv_cache_space_gib=self.cpu_kv_cache_space_gib,
        )
        scheduler_config = SchedulerConfig(
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
            enable_chunked_prefill=self.enable_chunked_prefill,
            async_scheduling=self.async_scheduling,
        )
        parallel_config = ParallelConfig(self.tensor_parallel_size, self.distributed_executor_backend)
        return EngineConfig(model_config, cache_config, scheduler_config, self.device, self.enforce_eager, parallel_config)


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


# vLLM options FoloVLLM lacks, with the one value that means what FoloVLLM does anyway.
# Any other value is refused (a ValueError naming the option); options not listed are unknown (TypeError).
VLLM_OPTIONS_AT_DEFAULT_ONLY: dict[str, tuple[Any, str]] = {
    "pipeline_parallel_size": (1, "tensor parallelism only"),
    "data_parallel_size": (1, "one engine per process"),
    "load_format": ("auto", "safetensors or PyTorch checkpoints, found automatically"),
    "enable_lora": (False, "no LoRA adapters"),
    "speculative_config": (None, "no speculative decoding"),
    "cpu_offload_gb": (0, "weights stay on the device"),
    "disable_log_stats": (True, "no periodic stats logging; use get_stats()"),
    "download_dir": (None, "the Hugging Face cache is used"),
}
