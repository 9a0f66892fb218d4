"""The engine's matmuls through the Triton skinny GEMM on the CPU, in Triton's interpreter: what
the GPU engine test checks for the kernel, dispatch and warm-up, without a GPU."""

from __future__ import annotations

import pytest

from tests.integration.hf_reference import hf_greedy

pytest.importorskip("triton")


def test_matmuls_of_5_to_256_rows_through_the_split_k_skinny_gemm_keep_greedy_equal_to_hf(tiny_model, monkeypatch):
    """Every matmul of 5 to 256 rows of the tiny model (prompts of 40 to 190 tokens, a decode batch
    of 12) taken by the skinny GEMM in the interpreter, K split 2-4 ways: the engine makes the
    same greedy tokens as HF. (On the CPU the dispatch is told a Triton matmul may run.)"""
    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_skinny_gemm as skinny
    from folovllm import LLM, SamplingParams
    from tests.fixtures.tiny_models import linear_weight_shapes, skinny_gemm_table, spy_on_weight_shapes

    shapes = set(linear_weight_shapes(tiny_model).values())
    monkeypatch.setattr(skinny, "SKINNY_GEMM_CONFIGS", skinny_gemm_table(tiny_model))
    monkeypatch.setattr(dispatch, "_triton_matmul_may_run", lambda x, weight, bias: bias is None)
    seen = spy_on_weight_shapes(monkeypatch, skinny, ("skinny_gemm",))["skinny_gemm"]
    llm = LLM(str(tiny_model), device="cpu", max_num_seqs=16)
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    batches = [[list(range(10 + i, 20 + i)) for i in range(12)], [list(range(40))], [list(range(5, 55)), list(range(7, 67)), list(range(9, 89))]]
    outs = [o for prompts in batches for o in llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]
    assert seen == shapes
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, [p for prompts in batches for p in prompts], 4)
