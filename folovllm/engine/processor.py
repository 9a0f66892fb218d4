"""Turn a user's prompt + SamplingParams into a validated ``Request``.

This is the edge of the engine: everything a request could get wrong is
rejected here with a ``ValueError`` before anything is queued.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from folovllm.request import Request
from folovllm.sampling_params import SamplingParams

PromptType = Union[str, list[int], dict[str, Any]]


class Processor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int, eos_token_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids

    def _tokenize(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
            raise ValueError(f"a prompt dict needs 'prompt_token_ids' or 'prompt', got keys {sorted(prompt)}")
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(prompt)
        raise ValueError(f"prompt must be a str, a list of token ids or a dict, got {type(prompt).__name__}")

    @staticmethod
    def _check_ids(ids) -> list[int]:
        if not isinstance(ids, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValueError(f"prompt_token_ids must be a list of ints, got {ids!r:.80}")
        return list(ids)

    def process_inputs(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        first_seq_id: int,
    ) -> Request:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        text, ids = self._tokenize(prompt)
        if not ids:
            raise ValueError(f"request {request_id}: the prompt is empty (no tokens)")
        bad = [t for t in ids if t < 0 or t >= self.vocab_size]
        if bad:
            raise ValueError(
                f"request {request_id}: token id {bad[0]} is out of vocabulary (valid ids are 0..{self.vocab_size - 1})"
            )
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"request {request_id}: the prompt has {len(ids)} tokens, which leaves no room to generate "
                f"under max_model_len={self.max_model_len} (the KV cache also holds at most that many per sequence)"
            )
        params = params.clone()
        params.update_from_generation_config(self.eos_token_ids)
        return Request(request_id, text, ids, params, first_seq_id)
