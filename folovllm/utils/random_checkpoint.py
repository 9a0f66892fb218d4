"""Build random-weight Qwen3 checkpoints and a small BPE tokenizer, offline.

Used by the test fixtures, the example (when no ``--model`` is given) and the
benchmarks, so that nothing needs the model hub. The tokenizer is a byte-level
BPE trained on the fly on Python's own standard-library sources.
"""

from __future__ import annotations

import json
import os
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

QWEN3_0_6B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
)

# Bigger shapes, for benchmarks where weight reads dominate (GPTQ): Qwen3-4B's and Qwen3-8B's configs.
QWEN3_4B = {**QWEN3_0_6B, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8}  # fmt: skip
QWEN3_8B = {**QWEN3_0_6B, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}  # fmt: skip

TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    # Wide initialisation makes most of a random model's greedy picks decisive
    # (top two ~0.5 apart in logprob); near-ties still occur, and the tests'
    # bf16 comparisons forgive a flip there.
    initializer_range=0.25,
)

PRESETS = {"qwen3-0.6b": QWEN3_0_6B, "qwen3-4b": QWEN3_4B, "qwen3-8b": QWEN3_8B, "tiny": TINY}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _training_text(max_chars: int = 400_000) -> list[str]:
    """Some of Python's own standard-library sources, as training text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for name in ("argparse.py", "textwrap.py", "json/decoder.py", "string.py", "difflib.py", "calendar.py"):
        p = stdlib / name
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="ignore")
            texts.append(text)
            total += len(text)
        if total >= max_chars:
            break
    # A little non-ASCII text so multi-byte UTF-8 pieces are exercised.
    texts.append("naïve café 你好，世界 こんにちは 🙂 Grüße " * 50)
    return texts


def make_tokenizer(save_dir: str | Path, vocab_size: int = 1000):
    """Train a byte-level BPE tokenizer and save it as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(save_dir))
    return hf_tok


def make_random_checkpoint(
    save_dir: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "float32",
    tokenizer_dir: str | Path | None = None,
    device: str = "cpu",
    **overrides: Any,
) -> Path:
    """Write config, random safetensors weights, tokenizer and generation config.

    ``tokenizer_dir``: reuse a tokenizer saved earlier instead of training one.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer = make_tokenizer(save_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(save_dir))
    fields = {**PRESETS[preset], **overrides}
    fields.setdefault("eos_token_id", tokenizer.eos_token_id)
    fields.setdefault("bos_token_id", tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {fields['vocab_size']} < tokenizer size {len(tokenizer)}")
    config = Qwen3Config(**fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(save_dir), safe_serialization=True)
    (save_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [fields["eos_token_id"], tokenizer.pad_token_id], "bos_token_id": fields["bos_token_id"]})
    )
    return save_dir


def cached_random_checkpoint(name: str, preset: str, dtype: str = "float32", device: str = "cpu", **overrides: Any) -> str:
    """A random checkpoint under ``$FOLOVLLM_CACHE`` (default: the temp dir), built on first use."""
    root = Path(os.environ.get("FOLOVLLM_CACHE", Path(tempfile.gettempdir()) / "folovllm-checkpoints"))
    path = root / name
    if not (path / "config.json").is_file():
        print(f"[folovllm] building a random {preset!r} checkpoint in {path}")
        make_random_checkpoint(path, preset=preset, dtype=dtype, device=device, **overrides)
    return str(path)
