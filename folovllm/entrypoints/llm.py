"""``LLM``: vLLM's offline facade over ``LLMEngine``."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from folovllm.engine.arg_utils import EngineArgs
from folovllm.engine.llm_engine import LLMEngine
from folovllm.engine.processor import PromptType
from folovllm.model_loader import get_sampling_defaults
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams

Conversation = list[dict[str, Any]]


class LLM:
    """Load a model once, then ``generate()`` / ``chat()`` as often as you like.

    Every engine option is a keyword: ``dtype``, ``device``, ``max_model_len``,
    ``seed``, ``block_size``, ``max_num_seqs``, ``max_num_batched_tokens``,
    ``gpu_memory_utilization``, ``num_gpu_blocks_override``,
    ``enable_chunked_prefill``, ``enable_prefix_caching``, ``enforce_eager``,
    ``skip_tokenizer_init``, ``max_logprobs``, ... (see ``EngineArgs``). An
    unknown keyword is a ``TypeError``; a vLLM option FoloVLLM lacks is
    accepted only at its vLLM default, and a ``ValueError`` otherwise.

    Threads: one ``LLM`` runs one batch at a time. Calls from several threads
    are safe but serialized (a second ``generate`` waits for the first to
    finish); for more throughput, put all prompts in one call instead.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        args = EngineArgs.from_kwargs(model, caller="LLM", **kwargs)
        self.llm_engine = LLMEngine(args.create_engine_config())
        self.default_sampling_params: Optional[dict[str, Any]] = None

    def get_tokenizer(self):
        """The HF tokenizer (None when started with ``skip_tokenizer_init=True``)."""
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """``SamplingParams`` with the checkpoint's generation_config.json defaults, as vLLM builds them.

        temperature, top_p, top_k, min_p, repetition_penalty and max_new_tokens
        (as max_tokens) are taken when the file sets them; the rest keep
        ``SamplingParams``' own defaults. A new object each call.
        """
        if self.default_sampling_params is None:
            mc = self.llm_engine.config.model_config
            self.default_sampling_params = get_sampling_defaults(mc.model, mc.revision)
        return SamplingParams(**self.default_sampling_params)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (False, nothing done, while requests are unfinished)."""
        return self.llm_engine.reset_prefix_cache()

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: Union[bool, Callable] = True,
    ) -> list[RequestOutput]:
        """Outputs in prompt order. ``sampling_params`` None: ``get_default_sampling_params()``."""
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        return self.llm_engine.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat(
        self,
        messages: Union[Conversation, Sequence[Conversation]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: Union[bool, Callable] = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the chat template, then generate.

        ``messages`` is one conversation (a list of ``{"role", "content"}``
        dicts) or a list of them. ``chat_template`` (a Jinja string) replaces
        the tokenizer's; ``chat_template_kwargs`` go to the template (e.g.
        Qwen3's ``{"enable_thinking": False}``).
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError("chat() needs a tokenizer for its chat template; the engine was started with skip_tokenizer_init=True")
        if chat_template is None and tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; pass chat_template=<a Jinja template string>")
        prompts = [
            tokenizer.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template,
                **(chat_template_kwargs or {}),
            )  # fmt: skip
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
