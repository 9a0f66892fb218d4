"""The CUDA-graph runner's bookkeeping, on the CPU.

A real CUDA graph replays the kernels it recorded: it reads whatever its
device buffers hold at replay, while every Python-side value (shapes, the
metadata object, a step's longest query) stays what it was at capture. The
stand-in below models exactly that: "replay" calls the captured forward again,
with the captured closure, and writes into the captured output tensor. With
the Triton attention backend running in the interpreter, this checks on CI
that the runner fills and pads its buffers right, that nothing in the
captured forward depends on host values of the step being replayed, and that
FoloVLLM's code in it makes no host-device sync (which CUDA refuses during a
capture). The capture itself is checked by the GPU tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.integration.hf_reference import hf_greedy

pytest.importorskip("triton")
# The Triton kernels run on CPU tensors only in the interpreter (set by conftest without CUDA);
# with a GPU, test_gpu_engine.py captures real graphs instead.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-interpreter test; real graphs are tested on the GPU")


# Ops that make the host wait for the device (or depend on device values): CUDA refuses them
# while capturing, so none may run in a captured forward.
_SYNCING_OPS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
                "masked_select", "unique", "repeat_interleave", "cpu", "numpy"}  # fmt: skip
_FOLOVLLM = str(Path(__file__).resolve().parents[2] / "folovllm")


class _NoSyncInFolovllm(TorchFunctionMode):
    """Records syncing ops called from FoloVLLM's own code (the interpreter's internals may sync)."""

    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _SYNCING_OPS:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(_FOLOVLLM):
                self.found.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


class _ReplayedForward:
    def __init__(self, forward) -> None:
        self.forward = forward
        self.syncs: list[str] = []
        with _NoSyncInFolovllm(self.syncs):
            self.out = forward()  # "capture"
        self.replays = 0

    def replay(self) -> None:
        self.out.copy_(self.forward())
        self.replays += 1


def _fake_capture(forward, pool):
    graph = _ReplayedForward(forward)
    return graph, graph.out, pool


@pytest.fixture
def graphed_llm(tiny_model, monkeypatch):
    """An engine on the CPU with Triton attention and the graph runner switched on through the stand-in."""
    from folovllm import LLM
    from folovllm.attention.backends.triton_backend import TritonAttentionBackend
    from folovllm.worker.cuda_graph_runner import CUDAGraphRunner

    monkeypatch.setattr("folovllm.worker.model_runner.get_attn_backend", lambda device: TritonAttentionBackend())
    monkeypatch.setattr(CUDAGraphRunner, "_capture_graph", staticmethod(_fake_capture))

    def build(dtype="float32", model=None, **kwargs):
        llm = LLM(str(model or tiny_model), device="cpu", dtype=dtype, **kwargs)
        runner = llm.llm_engine.executor.worker.model_runner
        runner.num_sms = 8  # so that small decode batches split their context, as on a GPU
        runner.graph_runner = runner.new_graph_runner()
        runner.graph_runner.capture()
        return llm, runner.graph_runner

    return build


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_graph_replays_of_mixed_and_decode_steps_match_hf(graphed_llm, tiny_model, async_scheduling):
    from folovllm import SamplingParams

    llm, graphs = graphed_llm(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160, async_scheduling=async_scheduling)
    assert (graphs.decode_sizes, graphs.mixed_sizes) == ([1, 2, 4], [16, 32, 64])
    assert {key: g.syncs for key, g in graphs.graphs.items() if g.syncs} == {}  # CUDA would refuse these captures
    # Five prompts for four seats and a 64-token budget: chunks, decodes mixed in, padded sizes, a queue.
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([3, 40, 17, 90, 9])]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 12)
    replays = {key: g.replays for key, g in graphs.graphs.items() if g.replays}
    assert {kind for kind, _ in replays} == {"decode", "mixed"}, replays
    assert any(size not in (64,) for kind, size in replays if kind == "mixed"), replays  # some steps were padded


def test_a_step_beyond_the_largest_mixed_graph_runs_eagerly(graphed_llm, tiny_model):
    from folovllm import SamplingParams

    llm, graphs = graphed_llm(max_num_seqs=2, max_num_batched_tokens=200, max_model_len=256)
    assert graphs.mixed_sizes == [16, 32, 64, 128, 200]
    big = list(range(5, 205))  # one 200-token step: the 200 graph; then decodes
    outs = llm.generate([{"prompt_token_ids": big}], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert outs[0].outputs[0].token_ids == hf_greedy(tiny_model, [big], 4)[0]
    assert graphs.graphs[("mixed", 200)].replays == 1
    graphs.mixed_sizes = graphs.mixed_sizes[:-1]  # now 200 tokens exceed the largest graph
    outs = llm.generate([{"prompt_token_ids": big[::-1]}], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert outs[0].outputs[0].token_ids == hf_greedy(tiny_model, [big[::-1]], 4)[0]
    assert graphs.graphs[("mixed", 200)].replays == 1


def test_one_row_gemv_in_captured_and_eager_steps(graphed_llm, tiny_model, monkeypatch):
    """The Triton GEMV, configured for the tiny model's five weight shapes and let in on the CPU (the
    interpreter runs it): batch-1 steps, replayed and eager, call it for each shape; configured for
    its fused forms too, q/k/v and gate/up take the one with the RMSNorm inside and down the one
    with SiLU-and-mul inside. The tokens are those of the same engine without it (float16: the GEMV
    takes 16-bit weights only)."""
    import folovllm.model_executor.layers.dispatch as dispatch
    from folovllm import SamplingParams
    from tests.fixtures.tiny_models import linear_weight_shapes, spy_on_gemv

    shapes = linear_weight_shapes(tiny_model)
    prompts = [[{"prompt_token_ids": list(range(40, 90))}], [{"prompt_token_ids": list(range(7, 30))}]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)

    def run():
        llm, graphs = graphed_llm(dtype="float16", max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128)
        tokens = [llm.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts[:1]]
        graphs.mixed_sizes = []  # the second prompt's prefill runs eagerly
        tokens += [llm.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts[1:]]
        return tokens

    without = run()
    monkeypatch.setattr(dispatch, "use_fused_kernels", lambda x: True)
    configs = {shape: (16, 512, 8) for shape in shapes.values()}  # the fewest programs
    seen = spy_on_gemv(monkeypatch, configs, fused_configs={})
    assert run() == without
    assert seen == {"gemv": set(shapes.values()), "gemv_add_rms_norm": set(), "gemv_silu_and_mul": set()}
    seen = spy_on_gemv(monkeypatch, configs, fused_configs=configs)
    assert run() == without
    assert seen == {
        "gemv": {shapes["o"], shapes["lm_head"]},
        "gemv_add_rms_norm": {shapes["qkv"], shapes["gate_up"]},
        "gemv_silu_and_mul": {shapes["down"]},
    }


def _greedy_replayed_then_eager(llm, graphs, tiny_model, prompts, max_tokens, eager, records) -> list[list]:
    """Greedy ``prompts`` twice, each pass against HF: through the graphs, then with the runner's
    ladders named in ``eager`` emptied, so those steps run eagerly. The spies' ``records`` (lists or
    sets) are emptied before each pass (the graphs' capture leaves calls in them); returns what each
    pass left in them: [replayed, eager], each a list in the order of ``records``."""
    from folovllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    expected = hf_greedy(tiny_model, prompts, max_tokens)
    passes = []
    for eager_pass in (False, True):
        if eager_pass:
            for ladder in eager:
                setattr(graphs, ladder, [])
        for r in records:
            r.clear()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == expected
        passes.append([type(r)(r) for r in records])
    return passes


def _decode_attention_calls(monkeypatch, graphed_llm, tiny_model, record) -> list[list]:
    """Three uneven prompts (a 4-graph with one padding row) through an engine with graphs, then with
    decode steps eager, each against HF; ``record(args, kwargs)`` of every decode-attention call, per run."""
    import folovllm.attention.backends.triton_backend as triton_backend

    attend, calls = triton_backend.paged_decode_attention, []
    monkeypatch.setattr(triton_backend, "paged_decode_attention", lambda *a, **kw: calls.append(record(a, kw)) or attend(*a, **kw))
    llm, graphs = graphed_llm(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160)
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([3, 40, 17])]
    return [run for run, in _greedy_replayed_then_eager(llm, graphs, tiny_model, prompts, 8, ("decode_sizes",), [calls])]


def test_decode_programs_longest_first_in_replayed_and_eager_steps(graphed_llm, tiny_model, monkeypatch):
    """With ``LONGEST_FIRST`` every decode step hands the kernel its sequences longest first (a graph's
    padding rows last, each as itself), replayed and eager, and the tokens stay HF's."""
    from folovllm.attention.ops import triton_decode_attention

    monkeypatch.setattr(triton_decode_attention, "LONGEST_FIRST", True)

    def record(args, kwargs):
        order = kwargs.get("seq_order")
        return args[4].tolist(), None if order is None else order.tolist()  # (sequence lengths, order)

    replayed, eager = _decode_attention_calls(monkeypatch, graphed_llm, tiny_model, record)
    for steps in (replayed, eager):
        assert steps and all(order is not None and sorted(order) == list(range(len(lens))) for lens, order in steps), steps
        assert all([lens[i] for i in order] == sorted(lens, reverse=True) for lens, order in steps), steps
        assert any(order != sorted(order) for _, order in steps), steps  # the 40-token prompt is not first
    assert any(len(lens) == 4 and lens[3] == 0 and order[3] == 3 for lens, order in replayed), replayed  # padding row last


def test_the_new_token_fused_into_split_decode_steps_only(graphed_llm, tiny_model, monkeypatch):
    """``FUSE_NEW_TOKEN = "split"``: a decode step hands attention the raw q/k/v exactly when its
    kernel splits the keys; the others run the norm + RoPE + cache-write kernel first. The graphs
    split (their split count follows max_model_len), the eager steps' short contexts do not; the
    tokens stay HF's either way. (``FUSE_NEW_TOKEN = True``, every decode step fused, replayed and
    eager: the every-switch test below.)"""
    from folovllm.attention.ops import triton_decode_attention

    monkeypatch.setattr(triton_decode_attention, "FUSE_NEW_TOKEN", "split")
    monkeypatch.setattr("folovllm.model_executor.models.qwen3.use_fused_kernels", lambda x: True)  # the GPU's path, in the interpreter

    def record(args, kwargs):
        return kwargs["num_kv_splits"], kwargs.get("new_token") is not None

    replayed, eager = _decode_attention_calls(monkeypatch, graphed_llm, tiny_model, record)
    assert replayed and all(splits > 1 and fused for splits, fused in replayed), replayed
    assert eager and all(splits == 1 and not fused for splits, fused in eager), eager


def test_fp8_query_reaches_both_attention_kernels_over_an_fp8_cache_only(graphed_llm, tiny_model_factory, monkeypatch):
    """With ``FP8_QUERY`` every step over an FP8 cache, replayed or eager, asks its attention kernel
    (decode, or prefill for steps with prompt tokens) to round the query (the kernels' rounding:
    test_attention_kernels.py); over a cache in the model's dtype none does, nor with heads of 16
    (below the 32 an FP8 matrix product takes). (No HF comparison: an FP8 cache drifts from it,
    test_fp8_kv_cache.py.)"""
    import folovllm.attention.backends.triton_backend as triton_backend
    from folovllm import SamplingParams
    from folovllm.attention.backends import abstract

    monkeypatch.setattr(abstract, "FP8_QUERY", True)
    calls = []
    for name in ("paged_decode_attention", "paged_prefill_attention"):
        attend = getattr(triton_backend, name)
        monkeypatch.setattr(triton_backend, name, lambda *a, attend=attend, name=name, **kw: calls.append((name, kw["fp8_query"])) or attend(*a, **kw))
    prompts = [{"prompt_token_ids": list(range(10 + 7 * i, 10 + 7 * i + n))} for i, n in enumerate([3, 40, 17])]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    heads_of_32 = tiny_model_factory(head_dim=32)
    for kv_cache_dtype, model, rounded in (("fp8", heads_of_32, True), ("auto", heads_of_32, False), ("fp8", None, False)):
        llm, graphs = graphed_llm(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160, kv_cache_dtype=kv_cache_dtype, model=model)
        for eager in (False, True):
            if eager:
                graphs.decode_sizes, graphs.mixed_sizes = [], []
            calls.clear()
            outs = llm.generate(prompts, params, use_tqdm=False)
            assert all(len(o.outputs[0].token_ids) == 5 for o in outs)
            assert {name for name, _ in calls} == {"paged_decode_attention", "paged_prefill_attention"}, calls
            assert all(flag is rounded for _, flag in calls), (kv_cache_dtype, model, eager, calls)
        assert {kind for (kind, _), g in graphs.graphs.items() if g.replays} == {"decode", "mixed"}


def _marked_rows(tiles) -> int:
    """One-token rows a prefill work list marks for DECODES_BY_KV_HEAD (query tile -1)."""
    return int(((tiles[:, 0] >= 0) & (tiles[:, 1] < 0)).sum())


def test_mixed_steps_take_their_decodes_by_kv_head_in_replayed_and_eager_steps(graphed_llm, tiny_model, monkeypatch):
    """With ``DECODES_BY_KV_HEAD`` the work list of a step with prompt tokens marks its one-token rows
    and the prefill kernel takes them one item per kv head, in replayed and eager steps alike (a
    graph's list is data, so the same capture serves either); the tokens stay HF's."""
    import folovllm.attention.backends.triton_backend as triton_backend
    from folovllm.attention.ops import triton_prefill_attention

    monkeypatch.setattr(triton_prefill_attention, "DECODES_BY_KV_HEAD", True)
    attend, calls = triton_backend.paged_prefill_attention, []

    def spy(*args, **kwargs):
        tiles = args[6]
        calls.append((kwargs.get("decode_items"), _marked_rows(tiles)))
        return attend(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "paged_prefill_attention", spy)
    llm, graphs = graphed_llm(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160)
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([3, 40, 17, 90, 9])]  # more prompts than seats
    for (calls_in_pass,) in _greedy_replayed_then_eager(llm, graphs, tiny_model, prompts, 6, ("mixed_sizes",), [calls]):
        assert calls_in_pass and all(flag is True for flag, _ in calls_in_pass), calls_in_pass
        assert sum(marked for _, marked in calls_in_pass) >= 2, calls_in_pass  # decodes beside prompt tokens, taken by kv head
    assert any(g.replays for (kind, _), g in graphs.graphs.items() if kind == "mixed")


# The stand-in's "capture" runs the forward on whatever the buffers hold (as a real capture does): the
# skinny GEMM's products of that garbage may be NaN or overflow. The replays' tokens are checked against HF.
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered in:RuntimeWarning")
def test_every_speed_switch_at_once_in_replayed_and_eager_steps(graphed_llm, tiny_model, monkeypatch):
    """The switches that wait for an H100 to time them, all on in one engine (a GPU session turns
    the winners on together): decode programs longest first, the new token in the decode kernel,
    mixed steps' decodes by kv head, and the split-K
    skinny GEMM for every matmul of 5 to 256 rows. Replayed and eager steps each do what each
    switch says, and the tokens stay HF's. (The fused one-row GEMV takes 16-bit weights only: its
    own test above compares float16 engines.)"""
    import folovllm.attention.backends.triton_backend as triton_backend
    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_skinny_gemm as skinny
    from folovllm.attention.ops import triton_decode_attention, triton_prefill_attention
    from tests.fixtures.tiny_models import skinny_gemm_table, spy_on_weight_shapes

    for switch in ("LONGEST_FIRST", "FUSE_NEW_TOKEN"):
        monkeypatch.setattr(triton_decode_attention, switch, True)
    monkeypatch.setattr(triton_prefill_attention, "DECODES_BY_KV_HEAD", True)
    monkeypatch.setattr("folovllm.model_executor.models.qwen3.use_fused_kernels", lambda x: True)  # the GPU's path
    monkeypatch.setattr(skinny, "SKINNY_GEMM_CONFIGS", skinny_gemm_table(tiny_model))
    monkeypatch.setattr(dispatch, "_triton_matmul_may_run", lambda x, weight, bias: bias is None)  # float32 weights too
    skinny_shapes = spy_on_weight_shapes(monkeypatch, skinny, ("skinny_gemm",))["skinny_gemm"]
    decode_attend, prefill_attend, calls = triton_backend.paged_decode_attention, triton_backend.paged_prefill_attention, []

    def decode_spy(*args, **kwargs):
        calls.append(("decode", kwargs.get("seq_order") is not None and kwargs.get("new_token") is not None, kwargs["num_kv_splits"]))
        return decode_attend(*args, **kwargs)

    def prefill_spy(*args, **kwargs):
        tiles = args[6]
        calls.append(("prefill", kwargs.get("decode_items") is True, _marked_rows(tiles)))
        return prefill_attend(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "paged_decode_attention", decode_spy)
    monkeypatch.setattr(triton_backend, "paged_prefill_attention", prefill_spy)
    llm, graphs = graphed_llm(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160)
    prompts = [list(range(10 + 7 * i, 10 + 7 * i + n)) for i, n in enumerate([3, 40, 17, 90, 9])]  # more prompts than seats
    passes = _greedy_replayed_then_eager(llm, graphs, tiny_model, prompts, 8, ("decode_sizes", "mixed_sizes"), [calls, skinny_shapes])
    for calls_in_pass, shapes_in_pass in passes:
        decodes = [c[1:] for c in calls_in_pass if c[0] == "decode"]
        prefills = [c[1:] for c in calls_in_pass if c[0] == "prefill"]
        assert decodes and all(every_switch for every_switch, _ in decodes), decodes
        assert prefills and all(by_kv_head for by_kv_head, _ in prefills) and sum(marked for _, marked in prefills) >= 2, prefills
        assert shapes_in_pass, "no matmul of 5 to 256 rows took the skinny GEMM"
    # the graphs split (sized for max_model_len), so the new token was fused into split programs too
    assert any(c[0] == "decode" and c[2] > 1 for c in passes[0][0]), passes[0][0]
    replays = {kind for (kind, _), g in graphs.graphs.items() if g.replays}
    assert replays == {"decode", "mixed"}, replays
