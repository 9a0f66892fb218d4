"""Our Qwen3 forward against HF transformers' on the same flattened prompts."""

from __future__ import annotations

import pytest
import torch

from folovllm import LLM
from tests.fixtures.tiny_models import SHAPES


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_prefill_logits_match_hf(tiny_model_factory, shape):
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory(**SHAPES[shape])
    llm = LLM(str(path), device="cpu", max_model_len=128)
    runner = llm.llm_engine.executor.worker.model_runner
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    prompts = [[3, 50, 7, 9, 11], list(range(100, 137))]
    # Two sequences in one flattened batch (no padding), through the engine's own runner.
    from folovllm import SamplingParams
    from folovllm.core.sched.output import SchedulerOutput
    from folovllm.request import Sequence

    seqs = [Sequence(1000 + i, f"m{i}", p, SamplingParams(temperature=0)) for i, p in enumerate(prompts)]
    kv = llm.llm_engine.kv_cache_manager
    for s in seqs:
        assert kv.allocate_slots(s, s.num_tokens)
    so = SchedulerOutput(seqs, {s.seq_id: s.num_tokens for s in seqs}, sum(s.num_tokens for s in seqs),
                         num_computed_tokens=[0, 0], sampling=[True, True],
                         block_ids={s.seq_id: kv.get_block_ids(s.seq_id) for s in seqs})  # fmt: skip
    inputs = runner._prepare_inputs(so)
    with torch.inference_mode():
        hidden = runner.model(inputs.input_ids, inputs.positions, inputs.attn_metadata)
        ours = runner.model.compute_logits(hidden)
        start = 0
        for p in prompts:
            ref = hf(torch.tensor([p])).logits[0]
            torch.testing.assert_close(ours[start : start + len(p)], ref, atol=1e-4, rtol=1e-4)
            start += len(p)
    for s in seqs:
        kv.free(s)


def test_tied_and_untied_lm_head(tiny_model_factory):
    tied = LLM(str(tiny_model_factory()), device="cpu").llm_engine.executor.worker.model_runner.model
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied_path = tiny_model_factory(**SHAPES["gqa4_untied"])
    untied = LLM(str(untied_path), device="cpu").llm_engine.executor.worker.model_runner.model
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
