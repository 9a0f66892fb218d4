"""Flat keyword arguments (as ``LLM(...)`` takes them) -> an ``EngineConfig``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from folovllm.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig


@dataclass
class EngineArgs:
    model: str
    tokenizer: Optional[str] = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    seed: int = 0
    revision: Optional[str] = None
    max_logprobs: int = 20
    skip_tokenizer_init: bool = False
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    swap_space: float = 4.0
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: Optional[int] = None
    cpu_kv_cache_space_gib: float = 1.0
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    async_scheduling: bool = False
    device: str = "auto"
    enforce_eager: bool = False

    @classmethod
    def from_kwargs(cls, model: str, caller: str = "LLM", **kwargs) -> "EngineArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}; known: {sorted(known)}")
        return cls(model=model, **kwargs)

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
        )
        cache_config = CacheConfig(
            block_size=self.block_size,
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
        return EngineConfig(model_config, cache_config, scheduler_config, self.device, self.enforce_eager)
