"""Turn a user's prompt + SamplingParams into a validated ``Request``.

This is the edge of the engine: everything a request could get wrong is
rejected here, before anything is queued, with a ``ValueError`` (bad value)
or ``TypeError`` (wrong kind of argument) that says what was expected and
what was given. Anything that passes must be safe to run: a request that
could only fail inside a step would take its whole batch down with it.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from folovllm.request import Request
from folovllm.sampling_params import SamplingParams

# A str, token ids, or vLLM's TextPrompt {"prompt": str} / TokensPrompt {"prompt_token_ids": [...]}.
PromptType = Union[str, list[int], dict[str, Any]]


def _describe(value) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def pair_prompts_with_params(prompts, sampling_params) -> list[tuple[PromptType, Optional[SamplingParams]]]:
    """generate()'s arguments -> one (prompt, params) pair per prompt; TypeError/ValueError on a wrong shape."""
    if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    elif not isinstance(prompts, (list, tuple)):
        raise TypeError(
            "prompts must be a str, a list of token ids, a prompt dict, or a list of those; "
            f"got {_describe(prompts)}" + (" (use .tolist() for an array of token ids)" if hasattr(prompts, "tolist") else "")
        )
    prompts = list(prompts)
    if sampling_params is None or isinstance(sampling_params, SamplingParams):
        return [(p, sampling_params) for p in prompts]
    if not isinstance(sampling_params, (list, tuple)):
        raise TypeError(f"sampling_params must be a SamplingParams, a list of them, or None; got {_describe(sampling_params)}")
    bad = [i for i, p in enumerate(sampling_params) if p is not None and not isinstance(p, SamplingParams)]
    if bad:
        raise TypeError(f"sampling_params[{bad[0]}] must be a SamplingParams, got {_describe(sampling_params[bad[0]])}")
    if len(sampling_params) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(sampling_params)} sampling_params; pass one or one per prompt")
    return list(zip(prompts, sampling_params))


class Processor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int, max_logprobs: int, eos_token_ids: set[int]) -> None:
        self.tokenizer = tokenizer  # None with skip_tokenizer_init=True: token-id prompts only
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.eos_token_ids = eos_token_ids

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer, and the engine was started with skip_tokenizer_init=True; "
                             "pass token ids ({'prompt_token_ids': [...]})")  # fmt: skip
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"the prompt is not valid Unicode text ({exc.reason} at character {exc.start})") from None
        return self.tokenizer.encode(text)

    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, str):
            return prompt, self._encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self._encode(prompt["prompt"])
            raise ValueError(f"a prompt dict needs 'prompt_token_ids' or 'prompt' (a str), got keys {sorted(prompt)}")
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(prompt)
        raise ValueError(f"a prompt must be a str, a list of token ids or a dict, got {_describe(prompt)}")

    @staticmethod
    def _check_ids(ids) -> list[int]:
        # set(map(type, ...)) runs in C; the per-item test only for other int subclasses (bool is not a token)
        if not isinstance(ids, (list, tuple)) or (
            not set(map(type, ids)) <= {int} and any(isinstance(t, bool) or not isinstance(t, int) for t in ids)
        ):
            raise ValueError(f"prompt_token_ids must be a list of ints, got {_describe(ids)}")
        return list(ids)

    def _check_params(self, params: SamplingParams) -> None:
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and k > self.max_logprobs:
                raise ValueError(
                    f"requested {name}={k}, more than max_logprobs={self.max_logprobs} "
                    "(raise max_logprobs when creating the engine)"
                )
            if k is not None and k > self.vocab_size:
                raise ValueError(f"requested {name}={k}, more than the vocabulary ({self.vocab_size} tokens)")
        bad = [t for t in params.stop_token_ids if t >= self.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids {bad} are out of vocabulary (valid ids are 0..{self.vocab_size - 1})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and the engine was started with skip_tokenizer_init=True")

    def process_inputs(self, request_id: str, prompt: PromptType, params: SamplingParams, first_seq_id: int) -> Request:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {_describe(params)}")
        self._check_params(params)
        text, ids = self._tokenize(prompt)
        if not ids:
            raise ValueError("the prompt is empty (no tokens)")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            bad = next(t for t in ids if t < 0 or t >= self.vocab_size)
            raise ValueError(f"token id {bad} is out of vocabulary (valid ids are 0..{self.vocab_size - 1})")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, which leaves no room to generate under "
                f"max_model_len={self.max_model_len} (the KV cache also holds at most that many per sequence)"
            )
        params = params.clone()
        params.update_from_generation_config(self.eos_token_ids)
        return Request(request_id, text, ids, params, first_seq_id)
