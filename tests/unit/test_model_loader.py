"""Loader: config, tokenizer, EOS ids and weights; clear errors for broken checkpoints."""

from __future__ import annotations

import json

import pytest

from folovllm.model_loader import (
    ModelLoadError,
    get_eos_token_ids,
    get_hf_config,
    iterate_weights,
    load_tokenizer,
    resolve_model_path,
)


def test_loads_config_tokenizer_and_weights(tiny_model):
    cfg = get_hf_config(str(tiny_model))
    assert cfg.architectures == ["Qwen3ForCausalLM"]
    tok = load_tokenizer(str(tiny_model))
    assert tok.is_fast and tok.pad_token is not None
    assert tok.decode(tok.encode("def f(x): return x")) == "def f(x): return x"
    weights = dict(iterate_weights(str(tiny_model)))
    assert "model.layers.0.self_attn.q_proj.weight" in weights
    assert weights["model.embed_tokens.weight"].shape == (cfg.vocab_size, cfg.hidden_size)


def test_eos_ids_come_from_generation_config_and_tokenizer(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    ids = get_eos_token_ids(str(tiny_model), tok)
    assert ids == set(gen["eos_token_id"]) | {tok.eos_token_id}
    assert len(ids) == 2


def test_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Could not find model 'no-such-org/no-such-model'") as info:
        resolve_model_path("no-such-org/no-such-model")
    assert "not a local directory" in str(info.value)
    with pytest.raises(ModelLoadError, match="Could not find model"):
        resolve_model_path(str(tmp_path / "missing" / "dir"))


def test_missing_weight_file_is_reported(tiny_model_copy):
    (tiny_model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ModelLoadError, match="missing.*model-0000"):
        list(iterate_weights(str(tiny_model_copy)))


def test_no_weights_at_all(tiny_model_copy):
    (tiny_model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="No weight files"):
        list(iterate_weights(str(tiny_model_copy)))


def test_truncated_safetensors_is_reported(tiny_model_copy):
    path = tiny_model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="Could not read weight file .*model.safetensors"):
        list(iterate_weights(str(tiny_model_copy)))


def test_pickled_weights_refused_unless_allowed(tiny_model_copy):
    import torch

    (tiny_model_copy / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, tiny_model_copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        list(iterate_weights(str(tiny_model_copy)))
    assert [n for n, _ in iterate_weights(str(tiny_model_copy), allow_pickle=True)] == ["w"]


def test_checkpoint_missing_a_tensor_fails_at_load(tiny_model_copy):
    from safetensors.torch import load_file, save_file

    from folovllm import LLM

    path = tiny_model_copy / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks weights for.*layers.1.mlp.gate_up_proj"):
        LLM(str(tiny_model_copy), device="cpu")
