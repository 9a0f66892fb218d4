"""Incremental detokenization equals a full decode; stop strings across tokens."""

from __future__ import annotations

import random

from folovllm.engine.detokenizer import IncrementalDetokenizer, find_stop_string, make_decode
from folovllm.engine.output_processor import OutputProcessor
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


class CountingTokenizer:
    """A real fast tokenizer that counts calls to its (slow-path) ``decode``."""

    def __init__(self, tok, clean_up: bool) -> None:
        self.tok, self.calls = tok, 0
        self.backend_tokenizer = tok.backend_tokenizer
        self.clean_up_tokenization_spaces = clean_up

    def decode(self, ids, **kwargs):
        self.calls += 1
        return self.tok.decode(ids, **kwargs)


def test_make_decode_calls_the_backend_and_equals_decode(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    rng = random.Random(1)
    ids_lists = [tok.encode("naïve café 你好 🙂 x")] + [[rng.randrange(len(tok)) for _ in range(n)] for n in (1, 3, 9)]
    ids_lists.append(tok.encode("a") + [tok.eos_token_id] + tok.encode(" b"))
    for skip in (True, False):
        counting = CountingTokenizer(tok, clean_up=False)
        decode = make_decode(counting, skip_special_tokens=skip, spaces_between_special_tokens=True)
        for ids in ids_lists:
            assert decode(ids) == tok.decode(ids, skip_special_tokens=skip)
        assert counting.calls == 0  # the transformers wrapper was skipped
    # With clean-up on, the wrapper's pass matters: make_decode goes through tokenizer.decode.
    counting = CountingTokenizer(tok, clean_up=True)
    decode = make_decode(counting, skip_special_tokens=True, spaces_between_special_tokens=True)
    assert decode(ids_lists[0]) == tok.decode(ids_lists[0], skip_special_tokens=True) and counting.calls == 1


def test_logprob_token_texts_are_decoded_once(tiny_model):
    tok = CountingTokenizer(load_tokenizer(str(tiny_model)), clean_up=False)
    processor = OutputProcessor(tok)
    token = tok.tok.encode(" café")[0]
    first, again = processor._decode_one(token), processor._decode_one(token)
    assert first == again == tok.tok.decode([token]) and tok.calls == 1
    assert OutputProcessor(None)._decode_one(token) is None  # skip_tokenizer_init: no text
