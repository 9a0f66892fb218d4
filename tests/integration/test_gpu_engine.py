"""The GPU path end to end (Triton kernels, CUDA graphs); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from tests.integration.hf_reference import assert_greedy_prefixes_agree, hf_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# A fixed KV cache of 4,096 blocks (64k tokens) for the tiny models. A share of an 80 GB card would
# hold millions of their small blocks, and building that many Python block objects took most of
# each test's time (an FP8 cache of "gqa2", 2 KiB a block, at 0.3 of the card: ~12 million).
SMALL_KV_CACHE = dict(num_gpu_blocks_override=4096)


@pytest.fixture(autouse=True)
def _free_gpu_memory():
    """Each engine takes a share of GPU memory for its KV cache; release it between tests."""
    yield
    import gc

    gc.collect()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("enforce_eager,async_scheduling", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("shape", ["gqa2", "gqa4_untied", "odd_head_dim"])
def test_gpu_greedy_matches_hf(tiny_model_factory, shape, enforce_eager, async_scheduling):
    from folovllm import LLM, SamplingParams
    from tests.fixtures.tiny_models import SHAPES

    path = tiny_model_factory(**SHAPES[shape])
    llm = LLM(str(path), device="cuda", dtype="float32", enforce_eager=enforce_eager, max_num_seqs=8, **SMALL_KV_CACHE, async_scheduling=async_scheduling)
    prompts = [[5, 17, 99, 3], list(range(40, 90)), [7] * 21, list(range(300, 303))]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    ref = hf_greedy(path, prompts, 24, device="cuda")
    for out, expected in zip(outs, ref):
        assert out.outputs[0].token_ids == expected


def test_gpu_bf16_runs_and_mostly_agrees(tiny_model):
    """bf16 rounding may flip a near-tie, so require agreement on a prefix only, up to near-ties."""
    from folovllm import LLM, SamplingParams

    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=4, gpu_memory_utilization=0.05)  # the profiled path
    prompts = [[5, 17, 99, 3], list(range(40, 90))]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    ref = hf_greedy(tiny_model, prompts, 8, device="cuda", dtype=torch.bfloat16)
    assert_greedy_prefixes_agree(tiny_model, prompts, [o.outputs[0].token_ids for o in outs], ref, 3)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_one_row_gemv_serves_every_matmul_of_a_batch_1_step(tiny_model, monkeypatch, enforce_eager, fused):
    """The Triton GEMV configured for the tiny model's five weight shapes (it has entries for
    Qwen3-0.6B's only), and with ``fused`` its forms with the RMSNorm or SiLU-and-mul inside: a
    single sequence's steps call them for each shape, eagerly or while the batch-1 graph is
    captured, and greedy output still agrees with HF in bf16."""
    from folovllm import LLM, SamplingParams
    from tests.fixtures.tiny_models import linear_weight_shapes, spy_on_gemv

    shapes = linear_weight_shapes(tiny_model)
    configs = {s: (4, 1024, 4) for s in shapes.values()}
    seen = spy_on_gemv(monkeypatch, configs, fused_configs=configs if fused else {})
    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=4, enforce_eager=enforce_eager, **SMALL_KV_CACHE)
    prompt = list(range(40, 90))
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    if fused:
        assert seen == {
            "gemv": {shapes["o"], shapes["lm_head"]},
            "gemv_add_rms_norm": {shapes["qkv"], shapes["gate_up"]},
            "gemv_silu_and_mul": {shapes["down"]},
        }
    else:
        assert seen == {"gemv": set(shapes.values()), "gemv_add_rms_norm": set(), "gemv_silu_and_mul": set()}
    ref = hf_greedy(tiny_model, [prompt], 8, device="cuda", dtype=torch.bfloat16)
    assert_greedy_prefixes_agree(tiny_model, [prompt], [out[0].outputs[0].token_ids], ref, 3)


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_gemv_serves_o_and_down_at_2_to_4_rows(tiny_model, monkeypatch, enforce_eager):
    """FEW_ROWS_GEMV_CONFIGS set for the tiny model's o and down shapes at 2 and 4 rows (its entries are
    Qwen3-0.6B's): batches of 2 and 3 sequences (3 runs as 4) call the GEMV for those shapes only,
    compile nothing after start-up (the warm-up compiles the eager variants), and greedy output
    still agrees with HF in bf16."""
    import folovllm.model_executor.layers.triton_gemv as triton_gemv
    from folovllm import LLM, SamplingParams
    from folovllm.utils.triton_variants import compiled_kernel_variants
    from tests.fixtures.tiny_models import linear_weight_shapes, spy_on_weight_shapes

    shapes = linear_weight_shapes(tiny_model)
    few_rows = {(*shapes[name], rows): config for name in ("o", "down") for rows, config in ((2, (4, 1024, 4)), (4, (4, 512, 8)))}
    monkeypatch.setattr(triton_gemv, "GEMV_CONFIGS", {})
    monkeypatch.setattr(triton_gemv, "FEW_ROWS_GEMV_CONFIGS", few_rows)
    seen = spy_on_weight_shapes(monkeypatch, triton_gemv, ("gemv",))["gemv"]
    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=4, enforce_eager=enforce_eager, **SMALL_KV_CACHE)
    before = compiled_kernel_variants()
    prompts = [[5, 17, 99, 3], list(range(40, 90)), [7] * 21]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = [o for n in (2, 3) for o in llm.generate([{"prompt_token_ids": p} for p in prompts[:n]], greedy, use_tqdm=False)]
    assert compiled_kernel_variants() == before
    assert seen == {shapes["o"], shapes["down"]}
    ref = hf_greedy(tiny_model, prompts, 8, device="cuda", dtype=torch.bfloat16)
    assert_greedy_prefixes_agree(tiny_model, prompts[:2] + prompts, [o.outputs[0].token_ids for o in outs], ref[:2] + ref, 3)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9, reason="PDL needs sm_90")
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_programmatic_dependent_launch_changes_no_token(tiny_model, monkeypatch, enforce_eager):
    """With PDL (``folovllm.utils.pdl``) each kernel may launch before the one it reads from has
    finished and waits for it inside: greedy and seeded tokens must be the ones without PDL, for one
    sequence (every GEMV form, with its weight prefetch) and for several, in graphs and eagerly."""
    from folovllm import LLM, SamplingParams
    from folovllm.utils import pdl
    from tests.fixtures.tiny_models import linear_weight_shapes, spy_on_gemv

    configs = {s: (4, 1024, 4) for s in linear_weight_shapes(tiny_model).values()}
    seen = spy_on_gemv(monkeypatch, configs, fused_configs=configs)
    prompts = [{"prompt_token_ids": p} for p in (list(range(40, 90)), [5, 17, 99, 3], [7] * 21)]
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True)]  # fmt: skip
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(pdl, "ENABLED", enabled)
        llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=4, enforce_eager=enforce_eager, **SMALL_KV_CACHE)
        assert pdl.pdl_launch_args(torch.zeros(1, device="cuda"))["USE_PDL"] == enabled
        runs = [llm.generate(prompts[:1], p, use_tqdm=False) + llm.generate(prompts, p, use_tqdm=False) for p in params]
        results.append([o.outputs[0].token_ids for run in runs for o in run])
        del llm
    assert all(seen.values())
    assert results[0] == results[1]


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_skinny_gemm_serves_the_matmuls_of_decode_batches_and_short_prompts(tiny_model, monkeypatch, enforce_eager):
    """The skinny GEMM configured for the tiny model's weight shapes at every row bucket
    (SKINNY_GEMM_CONFIGS is empty until an H100 measures it), K split 2-4 ways (the tiny model's K
    is 64-128, hence 16- and 32-wide steps), another tiling per pair of buckets: 12 sequences
    decoding (16 rows in a graph) and prompts of 40 to 190 tokens call it for each shape, nothing
    compiles after start-up (the warm-up or graph capture compiles each bucket's variant), and
    greedy output still agrees with HF in bf16 up to near-ties (prompt 0's first token is one: on
    the CPU, plain F.linear in bf16 takes 6 for HF's 556 too)."""
    import folovllm.model_executor.layers.triton_skinny_gemm as skinny
    from folovllm import LLM, SamplingParams
    from folovllm.utils.triton_variants import compiled_kernel_variants
    from tests.fixtures.tiny_models import SKINNY_GEMM_PROMPT_BATCHES, linear_weight_shapes, skinny_gemm_table, spy_on_weight_shapes

    shapes = set(linear_weight_shapes(tiny_model).values())
    monkeypatch.setattr(skinny, "SKINNY_GEMM_CONFIGS", skinny_gemm_table(tiny_model))
    seen = spy_on_weight_shapes(monkeypatch, skinny, ("skinny_gemm",))["skinny_gemm"]
    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=16, enforce_eager=enforce_eager, **SMALL_KV_CACHE)
    before = compiled_kernel_variants()
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    batches = SKINNY_GEMM_PROMPT_BATCHES
    outs = [o for prompts in batches for o in llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]
    assert compiled_kernel_variants() == before
    assert seen == shapes
    flat = [p for prompts in batches for p in prompts]
    ref = hf_greedy(tiny_model, flat, 8, device="cuda", dtype=torch.bfloat16)
    assert_greedy_prefixes_agree(tiny_model, flat, [o.outputs[0].token_ids for o in outs], ref, 3)


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_every_speed_switch_at_once(tiny_model, monkeypatch, enforce_eager):
    """Every switch that waits for an H100's timing, on together (a GPU session turns the winners on
    at once): the fused one-row GEMV and the 2-4-row GEMV for every shape, the skinny GEMM at every
    row bucket, decode programs longest first, the new token in the decode kernel, mixed steps'
    decodes by kv head; PDL as by default. Prompts beside
    decodes, batch-1 and padded decode steps: nothing compiles after start-up, and greedy output
    agrees with HF in bf16 (the first tokens, up to near-ties: the kernels sum in another order than
    cuBLAS; the 60-token prompt's first two ids lie 0.005 apart in float32)."""
    import folovllm.model_executor.layers.triton_skinny_gemm as skinny
    from folovllm import LLM, SamplingParams
    from folovllm.attention.ops import triton_decode_attention, triton_prefill_attention
    from folovllm.model_executor.layers import triton_gemv
    from folovllm.utils.triton_variants import compiled_kernel_variants
    from tests.fixtures.tiny_models import linear_weight_shapes, skinny_gemm_table, spy_on_gemv, spy_on_weight_shapes

    for switch in ("LONGEST_FIRST", "FUSE_NEW_TOKEN"):
        monkeypatch.setattr(triton_decode_attention, switch, True)
    monkeypatch.setattr(triton_prefill_attention, "DECODES_BY_KV_HEAD", True)
    shapes = linear_weight_shapes(tiny_model).values()
    configs = {s: (4, 1024, 4) for s in shapes}
    few_rows = {(*s, rows): config for s in shapes for rows, config in ((2, (4, 1024, 4)), (4, (4, 512, 8)))}
    monkeypatch.setattr(triton_gemv, "FEW_ROWS_GEMV_CONFIGS", few_rows)
    gemv_seen = spy_on_gemv(monkeypatch, configs, fused_configs=configs)
    monkeypatch.setattr(skinny, "SKINNY_GEMM_CONFIGS", skinny_gemm_table(tiny_model))
    skinny_seen = spy_on_weight_shapes(monkeypatch, skinny, ("skinny_gemm",))["skinny_gemm"]
    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=8, max_num_batched_tokens=64,
              enforce_eager=enforce_eager, **SMALL_KV_CACHE)  # fmt: skip
    backend = llm.llm_engine.executor.worker.model_runner.attn_backend
    assert backend.orders_decode_rows and backend.fuses_new_token and backend.decodes_by_kv_head
    before = compiled_kernel_variants()
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    batches = [[list(range(40, 90))], [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([5, 90, 17, 60, 33, 3, 41, 12, 25, 8])]]
    outs = [o for prompts in batches for o in llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]
    assert compiled_kernel_variants() == before
    assert all(gemv_seen.values()) and skinny_seen, (gemv_seen, skinny_seen)
    flat = [p for prompts in batches for p in prompts]
    ref = hf_greedy(tiny_model, flat, 12, device="cuda", dtype=torch.bfloat16)
    assert_greedy_prefixes_agree(tiny_model, flat, [o.outputs[0].token_ids for o in outs], ref, 3)


def test_gpu_decode_steps_beyond_the_largest_graph_run_eagerly_without_compiling(tiny_model):
    """vLLM's 1,024 sequences a step on an H100, but decode graphs only up to 512: 560 sequences
    decode eagerly. Nothing compiles after start-up (those steps launch the variants the graphs and
    the warm-up compiled), and the tokens are HF's (checked on a sample: a row's greedy tokens do not
    depend on its neighbours in fp32)."""
    from folovllm import LLM, SamplingParams
    from folovllm.utils.triton_variants import compiled_kernel_variants

    llm = LLM(str(tiny_model), device="cuda", dtype="float32", max_num_seqs=600, max_num_batched_tokens=4096, **SMALL_KV_CACHE)
    graphs = llm.llm_engine.executor.worker.model_runner.graph_runner
    assert graphs.decode_sizes[-1] == 512 and graphs.graph_size(560, 560, decode=True) is None
    before = compiled_kernel_variants()
    prompts = [[(7 * i + j) % 500 + 3 for j in range(5 + i % 7)] for i in range(560)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert compiled_kernel_variants() == before
    sample = list(range(0, 560, 70))
    assert [outs[i].outputs[0].token_ids for i in sample] == hf_greedy(tiny_model, [prompts[i] for i in sample], 4, device="cuda")


def test_gpu_async_equals_sync_with_preemption(tiny_model):
    from folovllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": list(range(10, 10 + n))} for n in (3, 40, 17, 60, 9)]
    params = [SamplingParams(temperature=0.8, seed=i, max_tokens=30 + 5 * i, ignore_eos=True) for i in range(5)]
    results = []
    for async_scheduling in (False, True):
        llm = LLM(str(tiny_model), device="cuda", dtype="float32", num_gpu_blocks_override=20, block_size=8,
                  max_model_len=128, async_scheduling=async_scheduling)  # fmt: skip
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        assert llm.llm_engine.get_stats()["num_preemptions"] > 0
        del llm
    assert results[0] == results[1]


def test_gpu_seeded_request_beside_fused_sampling_keeps_its_tokens(tiny_model):
    """A seeded request with top-k / top-p makes the same tokens alone and in a batch whose other rows
    the fused filtering kernel samples (the seeded row drawn again on torch's path), and its
    neighbours still sample (not all the same ids)."""
    from folovllm import LLM, SamplingParams

    llm = LLM(str(tiny_model), device="cuda", dtype="float32", max_num_seqs=8, **SMALL_KV_CACHE)
    seeded = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    prompt = {"prompt_token_ids": list(range(10, 40))}
    alone = llm.generate([prompt], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, max_tokens=16, ignore_eos=True)
    batch = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (12, 50)] + [prompt]
    outs = llm.generate(batch, [others, others, seeded], use_tqdm=False)
    assert outs[2].outputs[0].token_ids == alone
    assert len(set(outs[0].outputs[0].token_ids)) > 1


@pytest.mark.parametrize("num_prompts", [3, 5])
def test_gpu_padded_graph_replay_matches_hf(tiny_model, num_prompts, caplog):
    """3 or 5 decoding sequences are not capture sizes: they replay the 4- or 8-graph with padded rows."""
    import logging

    from folovllm import LLM, SamplingParams

    with caplog.at_level(logging.INFO, logger="folovllm"):
        llm = LLM(str(tiny_model), device="cuda", dtype="float32", max_num_seqs=8, **SMALL_KV_CACHE)
    assert any("decode batch sizes [1, 2, 4, 8]" in r.getMessage() for r in caplog.records)
    assert any("mixed-step token counts [16, 32, 64," in r.getMessage() for r in caplog.records)  # prompts replay graphs too
    prompts = [list(range(10 + 7 * i, 20 + 9 * i)) for i in range(num_prompts)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    ref = hf_greedy(tiny_model, prompts, 20, device="cuda")
    assert [o.outputs[0].token_ids for o in outs] == ref


@pytest.mark.parametrize("enforce_eager", [True, False])
@pytest.mark.parametrize("switch,value,backend_flag", [("LONGEST_FIRST", False, "orders_decode_rows"), ("FUSE_NEW_TOKEN", True, "fuses_new_token"),
                                                       ("FUSE_NEW_TOKEN", "split", "fuses_new_token")])  # fmt: skip
def test_gpu_decode_kernel_switches_match_hf(tiny_model, monkeypatch, enforce_eager, switch, value, backend_flag):
    """The decode kernel's switches, each away from its default: LONGEST_FIRST off (batch order: the
    grid with the sequence fastest, no order) and FUSE_NEW_TOKEN on (this step's k and v normed,
    rotated and cached inside the kernel), in every decode step or in split ones only; 5 uneven
    sequences: the 8-graph with 3 padding rows, or eagerly; split and unsplit. Start-up compiled
    every kernel variant the steps take (split steps fused, unsplit ones not, for "split")."""
    from folovllm import LLM, SamplingParams
    from folovllm.attention.ops import triton_decode_attention
    from folovllm.utils.triton_variants import compiled_kernel_variants

    monkeypatch.setattr(triton_decode_attention, switch, value)
    llm = LLM(str(tiny_model), device="cuda", dtype="float32", max_num_seqs=8, enforce_eager=enforce_eager, **SMALL_KV_CACHE)
    assert getattr(llm.llm_engine.executor.worker.model_runner.attn_backend, backend_flag) == value
    before = compiled_kernel_variants()
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([5, 90, 17, 60, 33])]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    assert compiled_kernel_variants() == before
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 20, device="cuda")


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_mixed_steps_with_decodes_by_kv_head_match_hf(tiny_model, monkeypatch, enforce_eager):
    """DECODES_BY_KV_HEAD: in steps with prompt tokens the prefill kernel takes each decode as one
    item per kv head. Seven uneven prompts for four seats and a 64-token budget: prompts and chunks
    beside decodes in most steps, in the mixed graphs or eagerly."""
    from folovllm import LLM, SamplingParams
    from folovllm.attention.ops import triton_prefill_attention

    monkeypatch.setattr(triton_prefill_attention, "DECODES_BY_KV_HEAD", True)
    llm = LLM(str(tiny_model), device="cuda", dtype="float32", max_num_seqs=4, max_num_batched_tokens=64,
              enforce_eager=enforce_eager, **SMALL_KV_CACHE)  # fmt: skip
    assert llm.llm_engine.executor.worker.model_runner.attn_backend.decodes_by_kv_head
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([5, 90, 17, 60, 33, 3, 41])]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 20, device="cuda")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_gpu_prefix_caching_and_chunking_match_hf(tiny_model, async_scheduling):
    """Cache hits through the Triton kernels: a shared prefix, chunks of 16 tokens, and a second
    call whose prompts are cached but for one token (a "decode" that starts a new sequence)."""
    from folovllm import LLM, SamplingParams

    system = list(range(300, 316))  # two full blocks of 8
    prompts = [system + [i] for i in range(4)] + [system + list(range(40, 70))]
    llm = LLM(str(tiny_model), device="cuda", dtype="float32", block_size=8, max_num_seqs=8, max_model_len=128,
              max_num_batched_tokens=16, **SMALL_KV_CACHE, async_scheduling=async_scheduling)  # fmt: skip
    ref = hf_greedy(tiny_model, prompts, 20, device="cuda")
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    for call in range(2):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == ref
    assert [o.num_cached_tokens for o in outs] == [16, 16, 16, 16, 40]


def test_gpu_prompt_logprobs_match_hf(tiny_model):
    from folovllm import LLM, SamplingParams
    from tests.integration.test_prompt_logprobs import PROMPT, check

    llm = LLM(str(tiny_model), device="cuda", dtype="float32", block_size=8, max_model_len=128, max_num_seqs=4,
              max_num_batched_tokens=16, **SMALL_KV_CACHE)  # fmt: skip
    out = llm.generate({"prompt_token_ids": PROMPT}, SamplingParams(max_tokens=4, prompt_logprobs=3), use_tqdm=False)[0]
    check(out.prompt_logprobs, tiny_model, k=3)


@pytest.mark.parametrize("enforce_eager", [True, False])
@pytest.mark.parametrize("case", ["4bit_g32_act_order", "8bit_per_channel_asym"])
def test_gpu_gptq_kernel_greedy_matches_hf_on_the_dequantized_weights(tiny_model_factory, tmp_path, case, enforce_eager):
    """The Triton GPTQ GEMM (split-K at decode, reordered rows for act order) inside the engine, graphs on and off."""
    from folovllm import LLM, SamplingParams
    from folovllm.quantize.gptq_checkpoint import GPTQRecipe, quantize_checkpoint
    from tests.integration.test_gptq import CASES, PROMPTS, dequantized_float_checkpoint

    recipe = GPTQRecipe(num_samples=16, seq_len=64, **CASES[case])
    gptq_dir = quantize_checkpoint(str(tiny_model_factory()), str(tmp_path / "gptq"), recipe, progress=False)
    float_dir = dequantized_float_checkpoint(gptq_dir, tmp_path / "float")
    llm = LLM(str(gptq_dir), device="cuda", dtype="float32", enforce_eager=enforce_eager, max_num_seqs=8, **SMALL_KV_CACHE)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(float_dir, PROMPTS, 16, device="cuda")
    bf16 = LLM(str(gptq_dir), device="cuda", dtype="bfloat16", max_num_seqs=8, **SMALL_KV_CACHE)
    out = bf16.generate({"prompt_token_ids": PROMPTS[1]}, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 16


def test_gpu_mp_executor_with_one_rank_matches_uniproc(tiny_model):
    """The multi-process executor's path on one GPU: an NCCL group of one, CUDA graphs captured as usual."""
    from folovllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": p} for p in ([5, 17, 99, 3], list(range(40, 90)))]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    results = []
    for backend in ("uni", "mp"):
        llm = LLM(str(tiny_model), device="cuda", dtype="float32", distributed_executor_backend=backend, **SMALL_KV_CACHE)
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        if backend == "mp":
            llm.llm_engine.executor.shutdown()
        del llm
    assert results[0] == results[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_gpu_tp2_matches_tp1_with_graphs(tiny_model):
    from folovllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": p} for p in ([5, 17, 99, 3], list(range(40, 90)), [7] * 21)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    results = []
    for tp in (1, 2):
        llm = LLM(str(tiny_model), device="cuda", dtype="float32", tensor_parallel_size=tp, **SMALL_KV_CACHE)
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        if tp == 2:
            llm.llm_engine.executor.shutdown()
        del llm
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype,fp8_query", [("float32", False), ("float32", True), ("bfloat16", True)])
def test_gpu_fp8_kv_cache_with_graphs_matches_eager(tiny_model_factory, monkeypatch, dtype, fp8_query):
    """The compiled store (clamp + convert) and the upcasting attention kernels, inside graphs and out;
    with ``FP8_QUERY``, both kernels' FP8 q.K (warpgroup MMAs on Hopper; a head of 32, the least they
    take). Nothing compiles after start-up. (Graphs and eager steps split contexts differently:
    bfloat16 outputs are compared over their first tokens, where a random model's near-ties have not
    yet come into play.)"""
    from folovllm import LLM, SamplingParams
    from folovllm.attention.backends import abstract
    from folovllm.utils.triton_variants import compiled_kernel_variants

    tiny_model = tiny_model_factory(head_dim=32) if fp8_query else tiny_model_factory()
    monkeypatch.setattr(abstract, "FP8_QUERY", fp8_query)
    prompts = [{"prompt_token_ids": p} for p in ([5, 17, 99, 3], list(range(40, 90)), [7] * 21)]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    results = []
    for enforce_eager in (False, True):
        llm = LLM(str(tiny_model), device="cuda", dtype=dtype, kv_cache_dtype="fp8", enforce_eager=enforce_eager,
                  **SMALL_KV_CACHE)  # fmt: skip
        assert llm.llm_engine.executor.worker.model_runner.attn_backend.fp8_query is fp8_query
        before = compiled_kernel_variants()
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        assert compiled_kernel_variants() == before
        del llm
    assert all(len(r) == 16 for r in results[0] + results[1])
    agree = 16 if dtype == "float32" else 4
    assert [r[:agree] for r in results[0]] == [r[:agree] for r in results[1]]


@pytest.mark.parametrize("enforce_eager", [False, True])
def test_gpu_no_triton_kernel_compiles_after_start_up(tiny_model, enforce_eager):
    """The start-up warm-up and graph capture compile every variant; requests of any shape compile none."""
    from folovllm import LLM, SamplingParams
    from folovllm.utils.triton_variants import compiled_kernel_variants

    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=8, **SMALL_KV_CACHE, enforce_eager=enforce_eager)
    before = compiled_kernel_variants()
    assert any(before.values()), before  # the counter sees the compiled kernels at all
    lengths = [1, 7, 16, 33, 64, 130, 257, 300]  # block-table widths 1, 1, 1, 3, 4, 9, 17, 19
    prompts = [{"prompt_token_ids": [(7 * i + j) % 200 for j in range(n)]} for i, n in enumerate(lengths)]
    for params in (
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.8, max_tokens=20, ignore_eos=True),  # the fused sampler, many seeds
        SamplingParams(temperature=0.8, top_k=5, top_p=0.9, max_tokens=5, ignore_eos=True, logprobs=2),
    ):
        llm.generate(prompts, params, use_tqdm=False)
        llm.generate(prompts[:1], params, use_tqdm=False)
    llm.generate(prompts[-1:], SamplingParams(max_tokens=3, prompt_logprobs=1), use_tqdm=False)
    greedy_and_random = [SamplingParams(temperature=0.8 * (i % 2), max_tokens=5, ignore_eos=True) for i in range(len(prompts))]
    llm.generate(prompts, greedy_and_random, use_tqdm=False)  # the fused sampler's variant with greedy rows
    after = compiled_kernel_variants()
    assert {k: (before.get(k, 0), v) for k, v in after.items() if v != before.get(k, 0)} == {}


_START_UP_IN_A_FRESH_PROCESS = """
import json
from folovllm import LLM, SamplingParams
from folovllm.utils.triton_variants import total_compiled_variants
llm = LLM({path!r}, device="cuda", dtype="bfloat16", max_num_seqs=4, num_gpu_blocks_override=4096)
worker, before = llm.llm_engine.executor.worker, total_compiled_variants()
prompts = [{{"prompt_token_ids": p}} for p in ([5, 17, 99, 3], list(range(40, 90)), [7] * 21)]
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
outs += llm.generate(prompts, SamplingParams(temperature=0.8, seed=1, max_tokens=8, ignore_eos=True), use_tqdm=False)
print(json.dumps([worker.variants_compiled_ahead, worker.variants_compiled_late, total_compiled_variants() - before,
                  [o.outputs[0].token_ids for o in outs]]))
"""


def test_gpu_start_up_compiles_every_variant_in_its_parallel_pass(tiny_model, tmp_path):
    """A fresh process with an empty Triton cache: start-up's parallel pass (``compile_kernels``)
    compiles the variants, the warm-up and graph capture after it compile none, requests none, and
    the tokens (greedy and seeded) are those of a start-up without the pass
    (``FOLOVLLM_COMPILE_THREADS=0``). (With graphs: capture reaches every variant the eager
    warm-up does, and the pass runs the eager warm-up's steps either way.)"""
    import json

    from tests.fixtures.python_process import python_prints

    code = _START_UP_IN_A_FRESH_PROCESS.format(path=str(tiny_model))
    runs = {}
    for threads in ("4", "0"):
        env = {"TRITON_CACHE_DIR": str(tmp_path / f"triton-{threads}"), "FOLOVLLM_COMPILE_THREADS": threads}
        runs[threads] = json.loads(python_prints(code, env).splitlines()[-1])
    ahead, late, after_start_up, tokens = runs["4"]
    assert ahead > 0 and late == 0 and after_start_up == 0, runs["4"][:3]
    assert runs["0"][:3] == [None, None, 0]
    assert tokens == runs["0"][3]


def test_gpu_penalties_and_min_tokens_sample_in_the_fused_kernels_compiling_nothing(tiny_model, monkeypatch):
    """A bf16 model's batches with penalties or min_tokens sample in the fused kernels on float32
    logits (the variants the warm-up compiled beside the bf16 ones), with and without filters, at 3
    and 8 rows; a greedy row with a repetition penalty gets the tokens torch's path gives it."""
    from folovllm import LLM, SamplingParams
    from folovllm.sample.ops import triton_filtered_sample, triton_sample, triton_window_sample
    from folovllm.utils.triton_variants import compiled_kernel_variants

    dtypes = []
    for module, name in ((triton_sample, "inverse_cdf_sample"), (triton_filtered_sample, "filtered_sample"),
                         (triton_window_sample, "window_sample")):  # fmt: skip
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda logits, *a, real=real, **k: dtypes.append(logits.dtype) or real(logits, *a, **k))
    llm = LLM(str(tiny_model), device="cuda", dtype="bfloat16", max_num_seqs=8, **SMALL_KV_CACHE)
    before, warm_up_calls = compiled_kernel_variants(), len(dtypes)
    prompts = [{"prompt_token_ids": [5 + i, 17, 99, 3]} for i in range(8)]
    settings = [dict(repetition_penalty=1.3), dict(presence_penalty=0.5, top_k=20, top_p=0.9), dict(min_tokens=4)]
    for s in settings:
        params = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.3)]
        params += [SamplingParams(temperature=0.7, max_tokens=6, ignore_eos=True, **s)] * 7
        for n in (8, 3):
            llm.generate(prompts[:n], params[:n], use_tqdm=False)
    assert compiled_kernel_variants() == before
    assert dtypes[warm_up_calls:] and set(dtypes[warm_up_calls:]) == {torch.float32}
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.3)
    # the same two sequences (same shapes, so the same logits for the first): all greedy goes to torch's
    # argmax, greedy beside a sampled row to the fused kernel's
    all_greedy = llm.generate(prompts[:2], greedy, use_tqdm=False)
    mixed = llm.generate(prompts[:2], [greedy, SamplingParams(temperature=0.7, max_tokens=6, ignore_eos=True)], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == all_greedy[0].outputs[0].token_ids


def test_gpu_filtering_sampler_compiles_nothing_after_start_up(tiny_model_factory, monkeypatch):
    """Batches with top-k / top-p / min-p rows (greedy rows among them or not), of 8 and 3 rows, sample
    in the window kernel (top-k rows) and the whole-row kernel (top-p or min-p alone; a vocabulary of
    2,048, larger than the window), whose every variant the warm-up compiled; top_k=1 rows give
    greedy's tokens."""
    from folovllm import LLM, SamplingParams
    from folovllm.sample.ops import triton_filtered_sample, triton_window_sample
    from folovllm.utils.triton_variants import compiled_kernel_variants

    calls = {"filtered_sample": 0, "window_sample": 0}
    for module, name in ((triton_filtered_sample, "filtered_sample"), (triton_window_sample, "window_sample")):
        real = getattr(module, name)

        def counted(*a, real=real, name=name, **k):
            calls[name] += 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, counted)
    # float32: a tie at the largest logit, common in bf16, would let top_k=1 draw another id than argmax
    llm = LLM(str(tiny_model_factory(vocab_size=2048)), device="cuda", dtype="float32", max_num_seqs=8, **SMALL_KV_CACHE)
    before, warm_up_calls = compiled_kernel_variants(), dict(calls)
    prompts = [{"prompt_token_ids": [5 + i, 17, 99, 3]} for i in range(8)]
    settings = [dict(top_k=20, top_p=0.95), dict(top_p=0.9), dict(top_k=5), dict(min_p=0.05, top_p=0.8), dict(top_k=1)]
    outs = {}
    for i, s in enumerate(settings):
        for with_greedy in (False, True):
            params = [SamplingParams(temperature=0.6, max_tokens=6, ignore_eos=True, **s)] * len(prompts)
            if with_greedy:
                params[0] = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
            for batch in (prompts, prompts[:3]):
                outs[i, with_greedy, len(batch)] = [
                    o.outputs[0].token_ids for o in llm.generate(batch, params[: len(batch)], use_tqdm=False)
                ]  # fmt: skip
    assert compiled_kernel_variants() == before
    assert all(calls[name] > warm_up_calls[name] for name in calls), (calls, warm_up_calls)
    for batch in (prompts, prompts[:3]):  # top_k=1 gives greedy's tokens (batches of the same shapes)
        greedy = llm.generate(batch, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
        assert outs[len(settings) - 1, False, len(batch)] == [o.outputs[0].token_ids for o in greedy]
