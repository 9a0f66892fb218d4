"""vLLM's prompt dicts: what ``generate()`` accepts besides a plain str or list of token ids."""

from __future__ import annotations

from typing import TypedDict


class TextPrompt(TypedDict):
    """A prompt as text; the engine tokenizes it."""

    prompt: str


class _TokenIds(TypedDict):
    prompt_token_ids: list[int]


class TokensPrompt(_TokenIds, total=False):
    """A prompt as token ids (no tokenizer needed); an optional ``prompt`` is only echoed back in the output."""

    prompt: str


__all__ = ["TextPrompt", "TokensPrompt"]
