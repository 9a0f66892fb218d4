"""The decoder through its small-batch kernels (norm or gate fused into the next matmul) equals HF.

On a GPU every decode step takes them; here the dispatch is pointed at them and
Triton's interpreter runs them, so CI checks the wiring in the model as well
as the kernels (tests/unit/test_triton_gemv.py).
"""

from __future__ import annotations

import pytest
import torch

from folovllm import LLM, SamplingParams
from tests.integration.hf_reference import hf_greedy

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-interpreter test; on a GPU the engine takes these kernels itself")


def test_decode_steps_through_the_fused_kernels_match_hf(tiny_model, monkeypatch):
    import folovllm.model_executor.layers.fused_linear as fused_linear
    import folovllm.model_executor.layers.triton_gemv as triton_gemv

    calls = {"norm_linear": [], "silu_mul_linear": []}
    for name, rows in calls.items():
        kernel = getattr(triton_gemv, name)
        monkeypatch.setattr(triton_gemv, name, lambda x, *a, _k=kernel, _rows=rows, **kw: _rows.append(x.shape[0]) or _k(x, *a, **kw))
    monkeypatch.setattr(fused_linear, "use_fused_kernels", lambda x: True)

    llm = LLM(str(tiny_model), device="cpu")
    prompts = [[5, 6, 7], list(range(20, 60)), [9, 9, 9, 9]]  # the first step has 47 tokens: the two-kernel path
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 8)
    num_layers = llm.llm_engine.config.model_config.get_num_layers()
    # 7 decode steps of 3 tokens, two norms and one gate per layer
    assert calls["norm_linear"] == [3] * (2 * num_layers * 7) and calls["silu_mul_linear"] == [3] * (num_layers * 7)
