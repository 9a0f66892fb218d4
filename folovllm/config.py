"""Engine configuration: what model, how much KV cache, how big a step.

Every user-facing knob lives in one of four dataclasses. They validate their
own fields at construction (a bad value is a ``ValueError`` naming the field
and the value) so that nothing deeper in the engine has to re-check them.
``EngineConfig`` composes the other three and keeps shared values in sync.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from folovllm.model_executor.layers.quantization import get_quantization_config
from folovllm.model_loader import get_head_dim, get_hf_config, read_quantization_config
from folovllm.utils.device import resolve_device

logger = logging.getLogger(__name__)

DTYPE_CHOICES = {
    "auto": None,
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
    "float32": torch.float32,
}
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
# kv_cache_dtype -> the cache tensor's dtype (None: the model's). FP8 is e4m3 with scale 1.0,
# vLLM's default when a checkpoint ships no KV scales.
KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}
# vLLM's offline (``LLM`` class) batch limits, (token budget, sequences), by device
# (vLLM's ``EngineArgs.get_batch_defaults``): a GPU of 70 GiB or more that is not an A100 (an H100,
# an H200) gets the large ones, any other GPU the small ones (vLLM measured the large budget slower
# on an A100). FoloVLLM's CPU path, which vLLM's CPU backend does not share, keeps the large budget
# with 256 sequences. See docs/dev/milestone_5.md and docs/dev/performance.md section 28.
LARGE_GPU_BATCH_DEFAULTS = (16384, 1024)
GPU_BATCH_DEFAULTS = (8192, 256)
CPU_BATCH_DEFAULTS = (16384, 256)
LARGE_GPU_MEMORY = 70 * 2**30


def batch_defaults(device: Optional[torch.device]) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) where the user set neither; ``device`` None: not known."""
    if device is None or device.type != "cuda":
        return CPU_BATCH_DEFAULTS
    props = torch.cuda.get_device_properties(device)
    large = props.total_memory >= LARGE_GPU_MEMORY and "a100" not in props.name.lower()
    return LARGE_GPU_BATCH_DEFAULTS if large else GPU_BATCH_DEFAULTS


def _bad(field_name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{field_name} {why}, got {value!r}")


@dataclass
class ModelConfig:
    """Which checkpoint to run and in what numeric format.

    The HF config of ``model`` is read at construction (``hf_config``), so a
    missing model fails here, and ``max_model_len`` can be checked against the
    model's context window.
    """

    model: str
    tokenizer: Optional[str] = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    seed: int = 0
    revision: Optional[str] = None
    # Most logprobs a request may ask for (vLLM's default: 20).
    max_logprobs: int = 20
    # No tokenizer: prompts must be token ids, outputs carry no text (vLLM's flag).
    skip_tokenizer_init: bool = False
    # Weight format: None follows the checkpoint's quantization_config; "gptq" insists on it.
    quantization: Optional[str] = None
    hf_config: Any = field(init=False, repr=False)
    quant_config: Any = field(init=False, repr=False)  # e.g. GPTQConfig, or None for float weights

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise _bad("model", self.model, "must be a non-empty path or hub id")
        if self.tokenizer is None:
            self.tokenizer = self.model
        if self.tokenizer_mode not in ("auto", "slow"):
            raise _bad("tokenizer_mode", self.tokenizer_mode, "must be 'auto' or 'slow'")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_CHOICES:
            raise _bad("dtype", self.dtype, f"must be one of {sorted(DTYPE_CHOICES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise _bad("seed", self.seed, "must be a non-negative integer")
        if not isinstance(self.max_logprobs, int) or isinstance(self.max_logprobs, bool) or self.max_logprobs < 0:
            raise _bad("max_logprobs", self.max_logprobs, "must be a non-negative integer")

        self.hf_config = get_hf_config(self.model, self.revision, self.trust_remote_code)
        checkpoint_quant = read_quantization_config(self.model, self.hf_config, self.revision)
        self.quant_config = get_quantization_config(self.quantization, checkpoint_quant, self.model)
        if self.quant_config is not None:
            self.quantization = self.quant_config.get_name()
        model_max = self.get_model_context_len()
        if self.max_model_len is None:
            self.max_model_len = model_max
        elif not isinstance(self.max_model_len, int) or self.max_model_len <= 0:
            raise _bad("max_model_len", self.max_model_len, "must be a positive integer")
        elif self.max_model_len > model_max:
            raise ValueError(
                f"max_model_len={self.max_model_len} is larger than the model's context window "
                f"(max_position_embeddings={model_max}) in {self.model!r}"
            )

    def get_model_context_len(self) -> int:
        return int(getattr(self.hf_config, "max_position_embeddings", 2048))

    def get_torch_dtype(self, device: torch.device) -> torch.dtype:
        """Resolve ``dtype``: "auto" is the checkpoint's dtype on a GPU, float32 on the CPU."""
        explicit = DTYPE_CHOICES[self.dtype]
        if explicit is not None:
            return explicit
        if device.type == "cpu":
            return torch.float32
        ckpt = getattr(self.hf_config, "dtype", None) or getattr(self.hf_config, "torch_dtype", None)
        if isinstance(ckpt, str):
            ckpt = getattr(torch, ckpt, None)
        return ckpt if isinstance(ckpt, torch.dtype) else torch.bfloat16

    # Shape helpers used by the KV cache and the model runner.
    def get_num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    def get_total_num_kv_heads(self) -> int:
        return getattr(self.hf_config, "num_key_value_heads", self.hf_config.num_attention_heads)

    def get_head_dim(self) -> int:
        return get_head_dim(self.hf_config)

    def get_vocab_size(self) -> int:
        return self.hf_config.vocab_size


@dataclass
class CacheConfig:
    """How the paged KV cache is sized.

    On a GPU the number of blocks comes from ``gpu_memory_utilization``; on the
    CPU from ``cpu_kv_cache_space_gib``. ``num_gpu_blocks_override`` beats both.
    """

    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    cache_dtype: str = "auto"  # vLLM's kv_cache_dtype
    swap_space: float = 4.0
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: Optional[int] = None
    cpu_kv_cache_space_gib: float = 1.0

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise _bad("block_size", self.block_size, f"must be one of {BLOCK_SIZES}")
        if self.cache_dtype not in KV_CACHE_DTYPES:
            raise _bad("kv_cache_dtype", self.cache_dtype, f"must be one of {sorted(KV_CACHE_DTYPES)}")
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not (
            0.0 < self.gpu_memory_utilization <= 1.0
        ):
            raise _bad("gpu_memory_utilization", self.gpu_memory_utilization, "must be in (0, 1]")
        if not isinstance(self.swap_space, (int, float)) or self.swap_space < 0:
            raise _bad("swap_space", self.swap_space, "must be >= 0 (GiB)")
        if not isinstance(self.enable_prefix_caching, bool):
            raise _bad("enable_prefix_caching", self.enable_prefix_caching, "must be True or False")
        if self.num_gpu_blocks_override is not None and (
            not isinstance(self.num_gpu_blocks_override, int) or self.num_gpu_blocks_override <= 0
        ):
            raise _bad("num_gpu_blocks_override", self.num_gpu_blocks_override, "must be a positive integer")
        if not isinstance(self.cpu_kv_cache_space_gib, (int, float)) or self.cpu_kv_cache_space_gib <= 0:
            raise _bad("cpu_kv_cache_space_gib", self.cpu_kv_cache_space_gib, "must be > 0 (GiB)")


@dataclass
class SchedulerConfig:
    """Limits of one engine step: how many sequences and tokens it may carry."""

    # None: ``batch_defaults`` for the engine's device, as vLLM sets them (the budget no more than
    # max_num_seqs full-length sequences hold, the sequences no more than the budget)
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: Optional[int] = None
    max_model_len: Optional[int] = None
    enable_chunked_prefill: bool = True
    # Launch step N+1 before step N's tokens reach the host (see LLMEngine).
    # None, the default, means on, as in vLLM: nothing FoloVLLM supports is incompatible with it.
    async_scheduling: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.max_num_seqs is not None and (not isinstance(self.max_num_seqs, int) or self.max_num_seqs <= 0):
            raise _bad("max_num_seqs", self.max_num_seqs, "must be a positive integer")
        if self.max_num_batched_tokens is not None and (
            not isinstance(self.max_num_batched_tokens, int) or self.max_num_batched_tokens <= 0
        ):
            raise _bad("max_num_batched_tokens", self.max_num_batched_tokens, "must be a positive integer")
        if self.async_scheduling is None:
            self.async_scheduling = True
        elif not isinstance(self.async_scheduling, bool):
            raise _bad("async_scheduling", self.async_scheduling, "must be True, False or None (on)")
        if self.max_model_len is not None:
            self.set_max_model_len(self.max_model_len)

    def set_max_model_len(self, max_model_len: int, device: Optional[torch.device] = None) -> None:
        """Adopt the model's length limit, fill in the batch limits the user left unset (the defaults
        of ``device``), and check them."""
        self.max_model_len = max_model_len
        default_tokens, default_seqs = batch_defaults(device)
        seqs = self.max_num_seqs or default_seqs
        if self.max_num_batched_tokens is None:
            # Without chunking, a whole prompt must fit in one step; no step holds more than
            # max_num_seqs full-length sequences.
            tokens = default_tokens if self.enable_chunked_prefill else max(max_model_len, default_tokens)
            self.max_num_batched_tokens = min(tokens, seqs * max_model_len)
        if self.max_num_seqs is None:
            self.max_num_seqs = min(default_seqs, self.max_num_batched_tokens)
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than "
                f"max_model_len ({max_model_len}): a long prompt could never be scheduled. "
                "Raise max_num_batched_tokens, lower max_model_len, or enable_chunked_prefill=True."
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs})"
            )


DISTRIBUTED_EXECUTOR_BACKENDS = (None, "mp", "uni", "external_launcher")


@dataclass
class ParallelConfig:
    """How many devices share one model (tensor parallelism) and which executor runs them.

    ``distributed_executor_backend``: "mp" (one process per extra rank, the
    default when ``tensor_parallel_size > 1``), "uni" (this process only,
    the default for one rank) or "external_launcher" (``torchrun`` started
    one process per rank, each running the whole engine on the same inputs).
    """

    tensor_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise _bad("tensor_parallel_size", tp, "must be a positive integer")
        if self.distributed_executor_backend not in DISTRIBUTED_EXECUTOR_BACKENDS:
            raise _bad("distributed_executor_backend", self.distributed_executor_backend,
                       f"must be one of {DISTRIBUTED_EXECUTOR_BACKENDS}")  # fmt: skip
        if self.distributed_executor_backend is None:
            self.distributed_executor_backend = "mp" if tp > 1 else "uni"
        if self.distributed_executor_backend == "uni" and tp > 1:
            raise ValueError(f"distributed_executor_backend='uni' runs one rank only, but tensor_parallel_size={tp}; use 'mp'")

    def check_model(self, model_config: ModelConfig, device: torch.device) -> None:
        """The model's heads, MLP and device count must split over the ranks."""
        tp, hf = self.tensor_parallel_size, model_config.hf_config
        if tp == 1:
            return
        heads, kv_heads = hf.num_attention_heads, model_config.get_total_num_kv_heads()
        if heads % tp:
            raise ValueError(f"tensor_parallel_size={tp} must divide num_attention_heads={heads}")
        if kv_heads % tp and tp % kv_heads:
            raise ValueError(
                f"tensor_parallel_size={tp} and num_key_value_heads={kv_heads}: one must divide the other "
                "(kv heads are split over ranks, or replicated when there are fewer than ranks)"
            )
        if hf.intermediate_size % tp:
            raise ValueError(f"tensor_parallel_size={tp} must divide intermediate_size={hf.intermediate_size}")
        if device.type == "cuda" and tp > torch.cuda.device_count():
            raise ValueError(f"tensor_parallel_size={tp} needs {tp} GPUs, but {torch.cuda.device_count()} are visible")


def check_kv_cache_dtype_on_device(cache_dtype: str, device: torch.device) -> None:
    """An FP8 cache on a GPU needs compute capability 8.9 or later: Triton converts float8_e4m3fn
    from there on, and its kernels would fail to compile at start-up on an older GPU (an A100)."""
    if KV_CACHE_DTYPES[cache_dtype] is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise _bad("kv_cache_dtype", cache_dtype, f"needs a GPU of compute capability 8.9 or later; this one is {major}.{minor}")


@dataclass
class EngineConfig:
    """Everything the engine needs, composed; resolves device and dtype."""

    model_config: ModelConfig
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: str = "auto"
    enforce_eager: bool = False
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        self.device_obj = resolve_device(self.device)
        check_kv_cache_dtype_on_device(self.cache_config.cache_dtype, self.device_obj)
        self.dtype = self.model_config.get_torch_dtype(self.device_obj)
        self.scheduler_config.set_max_model_len(self.model_config.max_model_len, self.device_obj)
        self.parallel_config.check_model(self.model_config, self.device_obj)

    def get_kv_cache_dtype(self) -> torch.dtype:
        return KV_CACHE_DTYPES[self.cache_config.cache_dtype] or self.dtype

    def get_num_kv_heads(self) -> int:
        """KV heads one rank holds: its share, or one replicated head when there are fewer heads than ranks."""
        return max(1, self.model_config.get_total_num_kv_heads() // self.parallel_config.tensor_parallel_size)
