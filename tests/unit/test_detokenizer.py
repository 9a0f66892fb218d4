"""Incremental detokenization equals a full decode; stop strings across tokens."""

from __future__ import annotations

import random

from folovllm.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from folovllm.model_loader import load_tokenizer


def test_incremental_matches_full_decode_including_multibyte(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    texts = ["naïve café 你好，世界 🙂 def f(x): return x", "Grüße こんにちは", "plain ascii text, nothing fancy"]
    rng = random.Random(0)
    for text in texts:
        ids = tok.encode(text)
        for split in range(len(ids)):
            prompt_text = tok.decode(ids[:split])
            if "\ufffd" in prompt_text:
                continue  # the split falls inside a character; no clean reference
            detok = IncrementalDetokenizer(tok, ids[:split] or [tok.pad_token_id], skip_special_tokens=True)
            out = "".join(detok.add_token(t) for t in ids[split:])
            assert prompt_text + out == text
    # random ids: whatever is emitted is a prefix of the full decode with partial characters held back
    ids = [rng.randrange(len(tok)) for _ in range(60)]
    detok = IncrementalDetokenizer(tok, [1, 2, 3], skip_special_tokens=True)
    out = "".join(detok.add_token(t) for t in ids)
    full = tok.decode(ids, skip_special_tokens=True)
    assert full.startswith(out.rstrip("\ufffd")[: max(0, len(out) - 8)])


def test_special_tokens_skipped_or_kept(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    ids = tok.encode("hi") + [tok.eos_token_id] + tok.encode(" there")
    skip = IncrementalDetokenizer(tok, [5], skip_special_tokens=True)
    keep = IncrementalDetokenizer(tok, [5], skip_special_tokens=False)
    assert "".join(skip.add_token(t) for t in ids) == "hi there"
    assert "<|im_end|>" in "".join(keep.add_token(t) for t in ids)


def test_find_stop_string_spanning_new_text():
    assert find_stop_string("hello wor", 3, ["world"], False) is None
    assert find_stop_string("hello world!", 3, ["world"], False) == ("world", "hello ")
    assert find_stop_string("hello world!", 3, ["world"], True) == ("world", "hello world")
    assert find_stop_string("abc", 1, ["x", "c"], False) == ("c", "ab")
    # an old match outside the window of new characters is not re-reported
    assert find_stop_string("stop and more text", 2, ["stop"], False) is None


def test_decode_options_reach_the_tokenizer(tiny_model):
    """spaces_between_special_tokens changes what HF's slow tokenizers produce; it must reach decode."""
    real = load_tokenizer(str(tiny_model))
    seen = []

    class Recording:
        def decode(self, ids, **kwargs):
            seen.append(kwargs)
            return real.decode(ids, skip_special_tokens=kwargs["skip_special_tokens"])

    detok = IncrementalDetokenizer(Recording(), [5], skip_special_tokens=False, spaces_between_special_tokens=False)
    detok.add_token(real.eos_token_id)
    assert seen and all(kw == dict(skip_special_tokens=False, spaces_between_special_tokens=False) for kw in seen)
