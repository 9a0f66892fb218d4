"""Our Qwen3 forward against HF transformers' on the same flattened prompts."""

from __future__ import annotations

import pytest
import torch

from folovllm.attention.backends.abstract import AttentionMetadata
from folovllm.engine.arg_utils import EngineArgs
from folovllm.worker.model_runner import ModelRunner
from tests.fixtures.tiny_models import SHAPES


def load_runner(path, **kw) -> ModelRunner:
    config = EngineArgs.from_kwargs(str(path), device="cpu", max_model_len=128, **kw).create_engine_config()
    runner = ModelRunner(config, torch.device("cpu"))
    runner.load_model()
    return runner


def prefill_metadata(lens: list[int], block_size: int) -> AttentionMetadata:
    """Sequences laid end to end, each in its own run of consecutive blocks."""
    qsl = [0]
    for n in lens:
        qsl.append(qsl[-1] + n)
    blocks = [-(-n // block_size) for n in lens]
    first = [sum(blocks[:i]) for i in range(len(lens))]
    table = torch.zeros(len(lens), max(blocks), dtype=torch.int32)
    for i, nb in enumerate(blocks):
        table[i, :nb] = torch.arange(first[i], first[i] + nb)
    slots = torch.cat([first[i] * block_size + torch.arange(n) for i, n in enumerate(lens)])
    return AttentionMetadata(
        max_query_len=max(lens), max_seq_len=max(lens), query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32), block_table=table, slot_mapping=slots,
        query_start_loc_cpu=qsl, seq_lens_cpu=list(lens),
    )  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_prefill_logits_match_hf(tiny_model_factory, shape):
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory(**SHAPES[shape])
    runner = load_runner(path)
    runner.initialize_kv_cache(num_blocks=8)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    prompts = [[3, 50, 7, 9, 11], list(range(100, 137))]
    # Two sequences in one flattened batch (no padding), every position's logits.
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    with torch.inference_mode():
        hidden = runner.model(ids, positions, prefill_metadata([len(p) for p in prompts], runner.block_size))
        ours = runner.model.compute_logits(hidden)
        start = 0
        for p in prompts:
            ref = hf(torch.tensor([p])).logits[0]
            torch.testing.assert_close(ours[start : start + len(p)], ref, atol=1e-4, rtol=1e-4)
            start += len(p)


def test_tied_and_untied_lm_head(tiny_model_factory):
    tied = load_runner(tiny_model_factory()).model
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = load_runner(tiny_model_factory(**SHAPES["gqa4_untied"])).model
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)


def test_all_layers_share_one_rope_table(tiny_model_factory):
    model = load_runner(tiny_model_factory()).model
    ropes = {id(layer.self_attn.rotary_emb) for layer in model.model.layers}
    assert len(ropes) == 1 and len(model.model.layers) > 1


def test_kv_cache_is_bound_to_every_attention_layer_in_order(tiny_model_factory):
    from folovllm.model_executor.layers.attention import Attention

    runner = load_runner(tiny_model_factory())
    runner.initialize_kv_cache(num_blocks=4)
    layers = [m for m in runner.model.modules() if isinstance(m, Attention)]
    assert len(layers) == runner.model_config.get_num_layers()
    for i, layer in enumerate(layers):
        assert layer.kv_cache.data_ptr() == runner.kv_cache[i].data_ptr()
