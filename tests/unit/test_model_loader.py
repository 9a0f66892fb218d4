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


def test_checkpoint_tensor_without_a_place_fails_at_load_naming_it(tiny_model_copy):
    import torch
    from safetensors.torch import load_file, save_file

    from folovllm import LLM

    path = tiny_model_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.layers.0.mlp.adapter.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"no place for: \['model.layers.0.mlp.adapter.weight'\]"):
        LLM(str(tiny_model_copy), device="cpu")


def test_tied_checkpoint_may_carry_a_copy_of_lm_head(tiny_model_copy):
    """Some tied checkpoints save lm_head.weight anyway; it is the embedding, so it is skipped, not an error."""
    from safetensors.torch import load_file, save_file

    from folovllm import LLM

    path = tiny_model_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = tensors["model.norm.weight"][:8].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    LLM(str(tiny_model_copy), device="cpu", max_model_len=64)


def test_wrong_shaped_tensor_names_tensor_and_shard(tiny_model_copy):
    from safetensors.torch import load_file, save_file

    from folovllm import LLM

    path = tiny_model_copy / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:-1].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"'model.layers.0.self_attn.k_proj.weight' does not fit .*qkv_proj.weight.*\(shard 1\)"):
        LLM(str(tiny_model_copy), device="cpu")
