"""Find a checkpoint and read its config, tokenizer and weights.

``model`` may be a local HF directory or a hub id (downloaded with
``huggingface_hub`` for users who are online). Weights are read from
safetensors only; pickled ``*.bin`` files are refused unless the caller
explicitly allows them, because unpickling runs arbitrary code.
Every failure surfaces as one ``ModelLoadError`` naming what was looked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


class ModelLoadError(ValueError):
    """A model, tokenizer or weight file could not be found or read."""


def resolve_model_path(model: str, revision: Optional[str] = None) -> Path:
    """A local directory holding the checkpoint: ``model`` itself or a hub snapshot."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not find model {model!r}: it is not a local directory "
            f"(looked for {local.resolve()}) and the Hugging Face Hub lookup failed "
            f"({type(exc).__name__}: {reason})"
        ) from None


def get_head_dim(hf_config) -> int:
    """An HF config's head_dim, which most configs derive from hidden_size when they omit it."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def get_hf_config(model: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    path = resolve_model_path(model, revision)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"No config.json in {path} (model {model!r})")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"Could not read the config of {model!r} from {path}: {exc}") from None


def read_quantization_config(model: str, hf_config, revision: Optional[str] = None) -> Optional[dict]:
    """The checkpoint's ``quantization_config`` (config.json), else its ``quantize_config.json``, else None."""
    config = getattr(hf_config, "quantization_config", None)
    if config is not None:
        return config if isinstance(config, dict) else config.to_dict()
    path = resolve_model_path(model, revision) / "quantize_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


# Files that carry a vocabulary (tokenizer_config.json alone does not).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model")


def load_tokenizer(
    tokenizer: str,
    tokenizer_mode: str = "auto",
    trust_remote_code: bool = False,
    revision: Optional[str] = None,
):
    """A (fast, unless tokenizer_mode='slow') HF tokenizer with a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model_path(tokenizer, revision)
    if not any((path / f).is_file() for f in _TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        # transformers would quietly build an empty tokenizer, and every text prompt would fail later.
        raise ModelLoadError(
            f"No tokenizer files in {path} (looked for {', '.join(_TOKENIZER_FILES)}, *.tiktoken). "
            "Pass tokenizer=<dir or hub id>, or skip_tokenizer_init=True to send token ids only."
        )
    try:
        tok = AutoTokenizer.from_pretrained(
            str(path), use_fast=tokenizer_mode != "slow", trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"Could not load a tokenizer from {path} ({tokenizer!r}): {exc}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def read_generation_config(model: str, revision: Optional[str] = None) -> dict:
    """The checkpoint's generation_config.json as a dict ({} when it has none)."""
    path = resolve_model_path(model, revision) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None


# generation_config.json keys that become SamplingParams defaults (vLLM's list).
_GENERATION_DEFAULTS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def get_sampling_defaults(model: str, revision: Optional[str] = None) -> dict:
    """SamplingParams keywords from the checkpoint's generation config (only those it sets)."""
    config = read_generation_config(model, revision)
    return {ours: config[theirs] for theirs, ours in _GENERATION_DEFAULTS.items() if config.get(theirs) is not None}


def get_eos_token_ids(model: str, tokenizer=None, revision: Optional[str] = None) -> set[int]:
    """EOS ids from generation_config.json (int or list) plus the tokenizer's."""
    ids: set[int] = set()
    eos = read_generation_config(model, revision).get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(e) for e in eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _weight_files(path: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The checkpoint's weight files and whether they are safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists weight files that are missing: {missing}")
        return [path / s for s in shards], True
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files, True
    bins = sorted(path.glob("*.bin"))
    if bins and not allow_pickle:
        raise ModelLoadError(
            f"{path} has only pickled *.bin weights; refusing to unpickle them "
            "(pass allow_pickle=True if you trust this checkpoint)"
        )
    if bins:
        return bins, False
    raise ModelLoadError(f"No weight files (*.safetensors) found in {path}")


def iterate_weights(model: str, revision: Optional[str] = None, allow_pickle: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, CPU tensor) for every tensor in the checkpoint."""
    from safetensors import safe_open

    path = resolve_model_path(model, revision)
    files, is_safetensors = _weight_files(path, allow_pickle)
    for file in files:
        if not is_safetensors:
            yield from torch.load(file, map_location="cpu", weights_only=True).items()
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt file
            raise ModelLoadError(f"Could not read weight file {file}: {exc}") from None

