"""``LLM``: vLLM's offline facade over ``LLMEngine``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from folovllm.engine.arg_utils import EngineArgs
from folovllm.engine.llm_engine import LLMEngine
from folovllm.engine.processor import PromptType
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams


class LLM:
    """Load a model once, then ``generate()`` / ``chat()`` as often as you like.

    Every config field is a keyword: ``dtype``, ``device``, ``max_model_len``,
    ``seed``, ``block_size``, ``max_num_seqs``, ``max_num_batched_tokens``,
    ``gpu_memory_utilization``, ``num_gpu_blocks_override``,
    ``enable_chunked_prefill``, ``enable_prefix_caching``, ``enforce_eager``, ``skip_tokenizer_init``,
    ``max_logprobs``, ... (see ``EngineArgs``). An unknown keyword is a
    ``TypeError``.

    Threads: one ``LLM`` runs one batch at a time. Calls from several threads
    are safe but serialized (a second ``generate`` waits for the first to
    finish); for more throughput, put all prompts in one call instead.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        args = EngineArgs.from_kwargs(model, caller="LLM", **kwargs)
        self.llm_engine = LLMEngine(args.create_engine_config())

    def get_tokenizer(self):
        """The HF tokenizer (None when started with ``skip_tokenizer_init=True``)."""
        return self.llm_engine.tokenizer

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (False, nothing done, while requests are unfinished)."""
        return self.llm_engine.reset_prefix_cache()

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        return self.llm_engine.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat(
        self,
        messages: Union[list[dict[str, str]], list[list[dict[str, str]]]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: Optional[str] = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the tokenizer's chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError("chat() needs a tokenizer for its chat template; the engine was started with skip_tokenizer_init=True")
        prompts = [
            tokenizer.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
            )
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
