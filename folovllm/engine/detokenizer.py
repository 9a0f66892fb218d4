"""Incremental detokenization and stop-string matching.

Decoding one token at a time is wrong for byte-level BPE: a multi-byte UTF-8
character may be split across tokens, and a token's text can depend on its
neighbours. So we decode a small sliding window twice — the text already
emitted (``prefix``) and the window plus the new token — and emit the
difference, holding it back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from typing import Callable, Optional

_CONTEXT_TOKENS = 5  # prompt tokens that seed the window


def make_decode(tokenizer, **decode_kwargs) -> Callable[[list[int]], str]:
    """``tokenizer.decode(ids, **decode_kwargs)``, called the cheapest exact way.

    A fast tokenizer's ``decode`` is the Rust backend's ``decode`` wrapped in
    transformers' input conversion and an optional clean-up pass; the wrapper
    costs about twice the decode itself. Where clean-up is off (Qwen's
    tokenizers), the backend gives the same text, so it is called directly:
    this runs for every new token of every streamed sequence.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: tokenizer.decode(ids, **decode_kwargs)
    skip = decode_kwargs["skip_special_tokens"]  # the only option a fast tokenizer reads
    return lambda ids: backend.decode(ids, skip_special_tokens=skip)


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool, spaces_between_special_tokens: bool = True
    ) -> None:
        # (HF's slow tokenizers honour spaces_between_special_tokens; fast ones decode the same either way, as in vLLM.)
        self._decode = make_decode(
            tokenizer, skip_special_tokens=skip_special_tokens, spaces_between_special_tokens=spaces_between_special_tokens
        )
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add_token(self, token_id: int) -> str:
        """Append one token; return the newly completed text (may be '')."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full_text[len(prefix_text) :]
        return ""


def find_stop_string(text: str, num_new_chars: int, stop: list[str], include: bool) -> Optional[tuple[str, str]]:
    """If a stop string appears in ``text`` overlapping its last ``num_new_chars``
    characters, return (stop string, text truncated at it)."""
    for s in stop:
        start = max(0, len(text) - num_new_chars - len(s) + 1)
        idx = text.find(s, start)
        if idx != -1:
            return s, text[: idx + len(s)] if include else text[:idx]
    return None
