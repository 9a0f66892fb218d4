"""FoloVLLM: a small, readable re-implementation of vLLM v1's offline engine.

Data flow of one ``LLM.generate`` call::

    prompts -> engine.Processor (tokenize, validate) -> Request / Sequence
            -> core.Scheduler (token budget, KV blocks)  -> SchedulerOutput (plain data)
            -> executor -> worker -> ModelRunner (InputBatch, flattened batch, Qwen3, Sampler)
            -> ModelRunnerOutput (plain data) -> Scheduler.update_from_output (token stop rules)
            -> engine.OutputProcessor (detokenize, stop strings) -> RequestOutput
"""

__version__ = "0.4.0"

import os

# Triton 3.9 warns that from 3.10 on its kernels compile without fused multiply-adds unless a
# launch asks for them; FoloVLLM's kernels are written with them in mind (the prefill softmax's
# scale joins its subtraction as one FMA). Keep them, unless the user chose otherwise. (vLLM's
# env_override.py also sets other libraries' process-wide defaults when it is imported.)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from folovllm.logger import configure_logging

configure_logging()

from folovllm.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from folovllm.engine.arg_utils import EngineArgs
from folovllm.engine.llm_engine import LLMEngine
from folovllm.entrypoints.llm import LLM
from folovllm.inputs import TextPrompt, TokensPrompt
from folovllm.logprobs import Logprob
from folovllm.outputs import CompletionOutput, RequestOutput
from folovllm.sampling_params import RequestOutputKind, SamplingParams, SamplingType

__all__ = [
    "CacheConfig",
    "CompletionOutput",
    "EngineArgs",
    "EngineConfig",
    "LLM",
    "LLMEngine",
    "Logprob",
    "ModelConfig",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "SamplingType",
    "SchedulerConfig",
    "TextPrompt",
    "TokensPrompt",
]
