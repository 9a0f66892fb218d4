"""Kernels alone, on a GPU: attention's achieved bandwidth (decode) and FLOP rate (prefill),
decode attention replayed from a CUDA graph (split-K factors at batch 1, bf16 against an FP8 cache
at batch 256, the FP8 kernel by keys per iteration and pipeline stages), Qwen3-0.6B's matmuls at
decode batch sizes against one read of their weights (cuBLAS, cuBLASLt, the Triton GEMV at 1-4
rows, the skinny GEMM by tiling and K split at 8 and more) and at a prompt's rows in TFLOP/s, the one-row GEMV with the
RMSNorm or SiLU-and-mul before it inside against the two kernels, a prompt beside 255 decodes
through the prefill kernel with and without the decodes taken by kv head, and through the decode
kernel, the fused temperature sampler, the
element-wise kernels at 1 to 1024 tokens against the bytes they move, and last, the longest: the
prefill kernel by tile shape, warps, pipeline stages and work-list order.

    python benchmarks/bench_kernels.py
    python benchmarks/bench_kernels.py --smoke   # every section at toy sizes on the CPU (Triton's
                                                 # interpreter): checks the script, measures nothing
    python benchmarks/bench_kernels.py --skinny-table FILE   # also write the skinny GEMM's winning
        # configurations there, as a Python dict (for bench_switches.py --skinny-configs)
    python benchmarks/bench_kernels.py --baseline DIR   # also time earlier versions of the kernels'
        # files found in DIR or below it (triton_prefill_attention.py, triton_decode_attention.py from
        # folovllm/attention/ops, fused_kernels.py from folovllm/model_executor/layers, triton_sample.py
        # from folovllm/sample/ops, saved with `git show REV:PATH > DIR/NAME`), in turn with today's
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels below are defined

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from folovllm.model_executor.layers import triton_gemv, triton_skinny_gemm  # noqa: E402
from folovllm.model_executor.layers import fused_kernels  # noqa: E402
from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, fused_qk_norm_rope_store, silu_and_mul  # noqa: E402
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding  # noqa: E402
from folovllm.sample.metadata import SamplingMetadata  # noqa: E402
from benchmarks.common import cuda_time  # noqa: E402
from benchmarks.common import measure_copy_bandwidth  # noqa: E402
from folovllm.attention.backends.abstract import num_kv_splits  # noqa: E402
from folovllm.attention.backends.triton_backend import TritonAttentionBackend  # noqa: E402
from folovllm.attention.ops.triton_decode_attention import NewTokenKV, paged_decode_attention  # noqa: E402
from folovllm.attention.ops import triton_prefill_attention  # noqa: E402
from folovllm.attention.ops.triton_prefill_attention import paged_prefill_attention, prefill_block_sizes, prefill_tiles  # noqa: E402
from folovllm.utils.device import num_sms  # noqa: E402


# Qwen3-0.6B's attention and matmul shapes on the GPU; toy ones for --smoke.
SCALES = {
    "gpu": dict(
        dev="cuda", dtype=torch.bfloat16, heads=16, kv_heads=8, head_dim=128,
        decode=[(1, 512), (1, 4096), (32, 1024), (256, 1024), (256, 2048)],
        prefill=[(1, 1024), (16, 1024)],
        # the prefill sweep: (BLOCK_M, BLOCK_N) x warps x pipeline stages, each in batch and heaviest-first order
        prefill_sweep=([(32, 64), (64, 64), (128, 64), (64, 128), (128, 128)], (4, 8), (2, 3)),
        # (batch, context, split counts to try; the FP8 cache is tried at the last batch size)
        # A (low, high) context: uneven, drawn uniformly, as in the throughput workload, which spends
        # 30% of its time at 33-128 sequences (profile_step.py tail) with the long ones left.
        decode_in_graphs=[(1, 160, (1, 2, 4, 9, 16, 33)), (1, 600, (1, 2, 4, 8, 16, 33)), (1, 2048, (4, 8, 16, 33, 64)),
                          (32, (200, 2048), (1, 2, 4, 8)), (96, (200, 2048), (1, 2, 4)), (192, (200, 2048), (1, 2)),
                          (256, 1024, (1,))],
        matmuls={"q/k/v": (4096, 1024), "o": (1024, 2048), "gate/up": (6144, 1024), "down": (1024, 3072), "lm_head": (151_936, 1024)},
        matmul_rows=(1, 2, 4, 8, 16, 32, 64, 128, 256),  # from 8 up, the skinny GEMM's row buckets
        prefill_matmul_rows=(1024, 4096),  # a TTFT prompt's tokens: compute-bound, in TFLOP/s
        # (BLOCK_N, num_stages, V widened in registers, query in FP8, warps); the engine's: 128, 3, yes,
        # no, 4 (FP8_QUERY: 128, 3, yes, yes, 4)
        fp8_decode_variants=[(64, 2, False, False, 4), (128, 2, False, False, 4), (64, 2, True, False, 4), (128, 2, True, False, 4),
                             (64, 3, True, False, 4), (128, 3, True, False, 4), (64, 2, True, True, 4), (64, 3, True, True, 4),
                             (128, 2, True, True, 4), (128, 3, True, True, 4), (64, 2, True, False, 8), (128, 2, True, False, 8),
                             (128, 3, True, False, 8), (64, 2, True, True, 8), (128, 3, True, True, 8)],
        # (prompt, decodes, their context): one prompt beside this many decodes; the second is a typical
        # step with a prompt in a run of 1,000 prompts, 256 at a time (profile_step.py schedule 1000 256)
        mixed=[(1024, 255, 600), (560, 255, 900)],
        vocab=151_936, sampler_batches=(1, 8, 64, 256), element_wise_tokens=(1, 256, 1024),
    ),
    "smoke": dict(
        dev="cpu", dtype=torch.float32, heads=4, kv_heads=2, head_dim=32,
        decode=[(1, 40), (3, 70)], prefill=[(1, 80), (2, 64)], prefill_sweep=([(32, 64), (64, 64)], (4,), (2,)),
        decode_in_graphs=[(1, 40, (1, 2)), (3, (8, 40), (1, 2)), (2, 64, (1,))], fp8_decode_variants=[(16, 1, False, False, 4), (32, 2, True, False, 4), (32, 2, True, True, 4), (32, 2, True, False, 8)],
        matmuls={"q/k/v": (64, 32), "down": (32, 96)}, matmul_rows=(1, 4, 8), prefill_matmul_rows=(16,),
        mixed=[(40, 3, 24)], vocab=1000, sampler_batches=(1, 3), element_wise_tokens=(1, 5),
    ),
}  # fmt: skip
BLOCK_SIZE = 16


def main() -> None:
    scale = SCALES["smoke" if "--smoke" in sys.argv else "gpu"]
    dev, dtype = scale["dev"], scale["dtype"]
    heads, kv_heads, head_dim, block_size = scale["heads"], scale["kv_heads"], scale["head_dim"], BLOCK_SIZE
    baseline = load_baseline()
    bw = measure_copy_bandwidth(dev, nbytes=(1 << 30) if dev == "cuda" else (1 << 24))
    print(f"copy bandwidth: {bw / 1e12:.2f} TB/s")
    for batch, ctx in scale["decode"]:
        q, k_cache, v_cache, block_table, seq_lens = decode_batch(dev, batch, ctx, heads, kv_heads, head_dim, block_size, dtype, dtype)
        s = num_kv_splits(batch, kv_heads, ctx, num_sms(torch.device(dev, 0)))  # the engine's choice
        t = device_time(lambda: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=s))
        nbytes = 2 * batch * ctx * kv_heads * head_dim * k_cache.element_size()
        print(f"decode  B={batch:4d} ctx={ctx:5d} splits={s:3d}: {t * 1e6:8.1f} us, {nbytes / t / 1e12:.2f} TB/s "
              f"({nbytes / t / bw:.0%} of copy bandwidth)")  # fmt: skip
    for batch, qlen in scale["prefill"]:
        args = prefill_inputs(scale, batch, qlen)
        flops = 4 * batch * heads * head_dim * qlen * qlen / 2
        for graph in (False, True):
            tiles = engine_tiles(triton_prefill_attention, [qlen] * batch, head_dim, graph, dev)
            t = device_time(lambda: paged_prefill_attention(*args, tiles, head_dim**-0.5))
            print(f"prefill B={batch:4d} len={qlen}{', list as in a graph' if graph else ''}: {t * 1e6:8.1f} us, "
                  f"{flops / t / 1e12:.1f} TFLOP/s (causal)")  # fmt: skip
        # The sweep below launches a program per item, where heaviest first lost to batch order for 16
        # prompts on 2026-11-27; the engine's programs walk the list in rounds instead.
        calls = [functools.partial(paged_prefill_attention, *args, engine_tiles(triton_prefill_attention, [qlen] * batch, head_dim,
                                   True, dev, order), head_dim**-0.5) for order in (True, False)]  # fmt: skip
        rates = in_turn(calls, lambda t: f"{flops / t / 1e12:.0f}", reps=10)
        print(f"    list as in a graph, heaviest first (the engine's) / batch order, TFLOP/s in turn: {rates[0]} / {rates[1]}")
        if "prefill" in baseline:
            prefill_today_and_baseline(scale, baseline["prefill"], args, [qlen] * batch, flops)
    decode_in_graphs(scale, bw, baseline.get("decode"))
    matmuls(scale, bw)
    gemv_prologues(scale)
    mixed_batch(scale)
    sampler(scale, bw, baseline.get("sample"))
    element_wise(scale, bw, baseline.get("fused"))
    for batch, qlen in scale["prefill"]:  # last: the longest section (a time limit may cut it short)
        args = prefill_inputs(scale, batch, qlen)
        flops = 4 * batch * heads * head_dim * qlen * qlen / 2
        prefill_sweep(scale, lambda tiles, **kw: paged_prefill_attention(*args, tiles, head_dim**-0.5, **kw), [qlen] * batch, flops)


def prefill_inputs(scale: dict, batch: int, qlen: int) -> tuple:
    """``batch`` fresh prompts of ``qlen`` tokens, their K/V already in the cache: (q, k_cache, v_cache,
    block_table, query_start_loc, seq_lens)."""
    dev, dtype, heads, kv_heads, head_dim = scale["dev"], scale["dtype"], scale["heads"], scale["kv_heads"], scale["head_dim"]
    nb = batch * qlen // BLOCK_SIZE
    k_cache = torch.randn(nb, BLOCK_SIZE, kv_heads, head_dim, dtype=dtype, device=dev)
    v_cache = torch.randn_like(k_cache)
    block_table = torch.arange(nb, device=dev, dtype=torch.int32).view(batch, -1)
    seq_lens = torch.full((batch,), qlen, dtype=torch.int32, device=dev)
    qsl = torch.arange(0, (batch + 1) * qlen, qlen, dtype=torch.int32, device=dev)
    q = torch.randn(batch * qlen, heads, head_dim, dtype=dtype, device=dev)
    return q, k_cache, v_cache, block_table, qsl, seq_lens


def prefill_sweep(scale: dict, attend, query_lens: list[int], flops: float) -> None:
    """TFLOP/s of the prefill kernel by tile shape, warps and pipeline stages, with its work list in
    batch order and heaviest tile first, replayed from a graph (the engine's: prefill_block_sizes,
    4 warps, 2 stages, heaviest first). Few graph reps: 40 configurations per shape. One program per
    work item, so that the hardware hands them out as SMs free up: the engine's grid of two programs
    per SM, each taking several items, fits its own shape, and would run a shape that holds one
    program per SM in two waves of whole item lists."""
    dev = scale["dev"]
    shapes, warp_counts, stage_counts = scale["prefill_sweep"]
    print(f"prefill B={len(query_lens):4d} len={query_lens[0]} in a graph, TFLOP/s, batch order / heaviest first:")
    for (bm, bn), warps, stages in itertools.product(shapes, warp_counts, stage_counts):
        rates = []
        for heaviest_first in (False, True):
            tiles = torch.from_numpy(prefill_tiles(query_lens, bm, heaviest_first)).to(dev)
            try:
                call = functools.partial(attend, tiles, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages,
                                         max_programs=len(tiles) * scale["heads"])  # fmt: skip
                t = graph_time(call, reps=10)
                rates.append(f"{flops / t / 1e12:5.0f}")
            except Exception as e:  # on the GPU: too much shared memory or registers for this shape
                if dev != "cuda":
                    raise  # --smoke checks the script: nothing here may fail
                torch.cuda.synchronize()
                rates.append(type(e).__name__)
        print(f"    {bm:3d}x{bn:<3d} {warps}w {stages}s: {' / '.join(rates)}")


# The kernel files --baseline looks for, by the name this script gives each.
BASELINE_FILES = {
    "prefill": "triton_prefill_attention.py", "decode": "triton_decode_attention.py", "fused": "fused_kernels.py",
    "sample": "triton_sample.py",
}  # fmt: skip


def load_baseline() -> dict:
    """``--baseline DIR``: {"prefill": module, "decode": module, ...} (BASELINE_FILES) for the kernel files
    found in DIR or below it. They import today's helpers (load_kv_tile and the rest), which must still
    take their calls."""
    if "--baseline" not in sys.argv:
        return {}
    folder = Path(sys.argv[sys.argv.index("--baseline") + 1])
    modules = {}
    for name, file in BASELINE_FILES.items():
        path = next(folder.rglob(file), None)
        if path is not None:
            spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
            modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[name])
    print(f"baseline kernels from {folder}: {', '.join(modules) or 'none found'}")
    return modules


def engine_tiles(module, query_lens: list[int], head_dim: int, graph: bool, dev: str, heaviest_first: bool = True) -> torch.Tensor:
    """The work list ``module``'s prefill kernel gets from the engine, heaviest first (or in batch
    order); with ``graph``, padded with (-1, -1) rows to the bound a CUDA graph of that many tokens
    holds (256 sequences)."""
    block_m = module.prefill_block_sizes(head_dim)[0]
    tiles = torch.from_numpy(module.prefill_tiles(query_lens, block_m, heaviest_first=heaviest_first))
    if graph:
        rows = module.max_prefill_tiles(sum(query_lens), 256, block_m)
        tiles = torch.cat([tiles, torch.full((rows - len(tiles), 2), -1, dtype=torch.int32)])
    return tiles.to(dev)


def prefill_today_and_baseline(scale: dict, baseline, args: tuple, query_lens: list[int], flops: float) -> None:
    """TFLOP/s of today's prefill kernel and the baseline's, each with its own defaults (tile shape,
    launch options), the engine's work list as it is eagerly and as a graph pads it."""
    head_dim = args[0].shape[-1]
    for graph in (False, True):
        calls = []
        for module in (triton_prefill_attention, baseline):
            tiles = engine_tiles(module, query_lens, head_dim, graph, scale["dev"])
            calls.append(functools.partial(module.paged_prefill_attention, *args, tiles, head_dim**-0.5))
        rates = in_turn(calls, lambda t: f"{flops / t / 1e12:.0f}", reps=10)
        print(f"    today / baseline{', list as in a graph' if graph else ''}, TFLOP/s in turn: {rates[0]} / {rates[1]}")


def microseconds(secs: float) -> str:
    return f"{secs * 1e6:.1f}"


def in_turn(calls: list, show=microseconds, reps: int = 50) -> list[str]:
    """Each of ``calls`` (today's kernel, the baseline's) replayed from a graph, in turn, twice: an A/B
    in one process, so both see the same machine. Returns each call's two timings, as ``show``
    writes seconds per call."""
    times = [[] for _ in calls]
    for _ in range(2):
        for call, out in zip(calls, times):
            out.append(graph_time(call, reps=reps))
    return [", ".join(map(show, t)) for t in times]


def device_time(fn) -> float:
    """Seconds per call of ``fn``: CUDA events on the GPU, wall time of two calls on the CPU (--smoke)."""
    if not torch.cuda.is_available():
        return wall_time(fn)
    return cuda_time(fn)


def wall_time(fn, iters: int = 2) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def graph_time(fn, reps: int = 50) -> float:
    """Seconds per call of ``fn`` replayed from a CUDA graph of ``reps`` calls: no launch cost from the host.
    On the CPU (--smoke), its wall time."""
    if not torch.cuda.is_available():
        return wall_time(fn)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs may still be being written on the default stream
    with torch.cuda.stream(stream):
        fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return cuda_time(graph.replay, iters=10) / reps


def decode_batch(dev: str, batch: int, ctx, heads: int, kv_heads: int, head_dim: int, block_size: int, dtype, cache_dtype):
    """A decode step's inputs: ``batch`` sequences of ``ctx`` cached tokens (or, for a (low, high)
    pair, lengths drawn uniformly from it, seeded) in shuffled blocks (q, k/v caches, table, lengths)."""
    longest = ctx if isinstance(ctx, int) else ctx[1]
    nb = batch * -(-longest // block_size)
    k_cache = torch.randn(nb, block_size, kv_heads, head_dim, device=dev).to(cache_dtype)
    v_cache = torch.randn(nb, block_size, kv_heads, head_dim, device=dev).to(cache_dtype)
    block_table = torch.randperm(nb, device=dev, dtype=torch.int32).view(batch, -1)
    if isinstance(ctx, int):
        seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    else:
        seq_lens = torch.randint(ctx[0], ctx[1] + 1, (batch,), generator=torch.Generator().manual_seed(0), dtype=torch.int32).to(dev)
    q = torch.randn(batch, heads, head_dim, dtype=dtype, device=dev)
    return q, k_cache, v_cache, block_table, seq_lens


def decode_in_graphs(scale: dict, bw: float, baseline=None) -> None:
    """Decode attention as the engine runs it (replayed from a CUDA graph): the split-K factor at
    batch 1 for short and long contexts, and at middle batch sizes with uneven contexts (the engine's
    rule fixes it per graph batch size from max_model_len), and the model's dtype against an FP8
    cache at the largest batch (the FP8 cache
    also by keys per iteration and pipeline stages; with a baseline, today's kernel and the
    baseline's in turn, twice)."""
    dev, dtype, heads, kv_heads, head_dim = scale["dev"], scale["dtype"], scale["heads"], scale["kv_heads"], scale["head_dim"]
    sms = num_sms(torch.device(dev, 0))
    cases = [(b, ctx, dtype, splits) for b, ctx, splits in scale["decode_in_graphs"]]
    b, ctx, _, splits = cases[-1]
    for batch, ctx, cache_dtype, split_counts in cases + [(b, ctx, torch.float8_e4m3fn, splits)]:
        q, k_cache, v_cache, block_table, seq_lens = decode_batch(dev, batch, ctx, heads, kv_heads, head_dim, BLOCK_SIZE, dtype, cache_dtype)
        nbytes = 2 * int(seq_lens.sum()) * kv_heads * head_dim * k_cache.element_size()
        row = []
        for s in split_counts:
            t = graph_time(lambda s=s: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=s))
            row.append(f"{s}: {t * 1e6:.1f} us ({nbytes / t / bw:.0%})")
        rule = {n: num_kv_splits(batch, kv_heads, n, sms) for n in (2048, 40960)}
        context = f"{ctx:5d}" if isinstance(ctx, int) else f"{ctx[0]}..{ctx[1]}"
        print(f"decode in a graph B={batch:3d} ctx={context} {str(cache_dtype).split('.')[-1]:13s} by splits: {', '.join(row)}"
              f" [engine's rule: {rule[2048]} at max_model_len 2048, {rule[40960]} at 40960]")  # fmt: skip
        if not isinstance(ctx, int):  # uneven contexts: the programs started in batch order, then longest first
            order = torch.from_numpy(TritonAttentionBackend().make_decode_order(seq_lens.cpu().numpy())).to(dev)
            row = []
            for s in split_counts:
                attend = functools.partial(paged_decode_attention, q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=s)
                us = in_turn([attend, functools.partial(attend, seq_order=order)])
                row.append(f"{s}: {us[0]} / {us[1]}")
            print(f"    batch order / longest first (LONGEST_FIRST), us in turn, by splits: {'; '.join(row)}")
        if cache_dtype == torch.float8_e4m3fn:
            # SASS instructions per 128 keys (triton 3.6): 1,404 for 128 keys in 2 stages, 1,065 with V
            # widened in registers (no byte-wise gather of V from shared memory); with it and 3 stages,
            # 1,122 (128 keys: the engine's) or 2 x 656 (64 keys), 161 / 142 registers: 3 programs per SM;
            # 1,027 at 128 keys since the softmax went to base 2 (twenty-second session). With the query
            # in FP8 (FP8_QUERY): 701 at 128 keys in 3 stages, 681 in 2, 2 programs per SM. With 8 warps
            # (twenty-seventh session), per warp: 643 at 128 keys x 3 (116 registers, 2 programs: 16 warps
            # an SM against 12), 341 per 64 keys x 2 (76 registers, 3 programs: 24 warps); the query in
            # FP8, 482 at 128 x 3 (2 programs: 16 warps against 8). More instructions in all, more warps
            # to hide each one's waits: which wins is this row's question.
            row = []
            for block_n, stages, via_registers, fp8_query, warps in scale["fp8_decode_variants"]:
                t = graph_time(lambda: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5,
                                                              num_kv_splits=split_counts[0], num_stages=stages, block_n=block_n,
                                                              v_via_registers=via_registers, fp8_query=fp8_query, num_warps=warps))  # fmt: skip
                how = " query in FP8" if fp8_query else " V via registers" if via_registers else ""  # the first widens V in registers
                row.append(f"{block_n} keys x {stages}{how}{', 8 warps' if warps == 8 else ''}: {t * 1e6:.1f} us ({nbytes / t / bw:.0%})")
            print(f"    by keys per iteration x pipeline stages: {', '.join(row)}")
        if cache_dtype == dtype:  # at every batch: where fusing stops paying (it won at 1, lost at 256 on an H200)
            new_token_in_turn(q, k_cache, v_cache, block_table, seq_lens, rule[2048])
        if baseline is not None and batch in (1, b):  # at the engine's split count for max_model_len 2048
            calls = [functools.partial(kernel, q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=rule[2048])
                     for kernel in (paged_decode_attention, baseline.paged_decode_attention)]  # fmt: skip
            us = in_turn(calls)
            print(f"    today / baseline, us in turn: {us[0]} / {us[1]}")


def new_token_in_turn(q, k_cache, v_cache, block_table, seq_lens, splits: int) -> None:
    """A decode step's attention from its raw q/k/v: the q/k norm + RoPE + cache-write kernel, then
    the decode kernel (the engine's default), against the decode kernel doing all of it
    (``FUSE_NEW_TOKEN``), from graphs, in turn."""
    num_seqs, heads, head_dim = q.shape
    kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    g = torch.Generator(device=q.device).manual_seed(0)
    qkv = torch.randn(num_seqs, (heads + 2 * kv_heads) * head_dim, device=q.device, dtype=q.dtype, generator=g)
    raw_q, raw_k, raw_v = (t.view(num_seqs, -1, head_dim) for t in qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1))
    w = torch.ones(head_dim, device=q.device, dtype=q.dtype)
    rope = RotaryEmbedding(head_dim, 4096, 10000.0).to(q.device)
    cos, sin = rope.cos_cache, rope.sin_cache
    positions = (seq_lens - 1).clamp(min=0).long()
    rows = torch.arange(num_seqs, device=q.device)
    slots = block_table[rows, positions // block_size].long() * block_size + positions % block_size

    def two_kernels():
        q_ready = fused_qk_norm_rope_store(raw_q, raw_k, raw_v, w, w, cos, sin, positions, 1e-6, k_cache, v_cache, slots)
        return paged_decode_attention(q_ready, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=splits)

    new = NewTokenKV(raw_k, raw_v, w, w, cos, sin, positions, slots, 1e-6)
    one = functools.partial(paged_decode_attention, raw_q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=splits,
                            new_token=new)  # fmt: skip
    us = in_turn([two_kernels, one])
    print(f"    q/k norm + RoPE + cache write, then decode / all in the decode kernel (FUSE_NEW_TOKEN), us in turn: {us[0]} / {us[1]}")


def config_times(kernel, x: torch.Tensor, w: torch.Tensor, configs: list) -> dict[Any, float]:
    """``kernel(x, w, config)`` in each configuration, checked against F.linear, then timed from a
    graph: seconds per call by configuration."""
    times = {}
    for config in configs:
        torch.testing.assert_close(kernel(x, w, config), torch.nn.functional.linear(x, w), rtol=2e-2, atol=2e-2)
        times[config] = graph_time(lambda: kernel(x, w, config))
    return times


def fastest_config(kernel, x: torch.Tensor, w: torch.Tensor, configs: list) -> tuple[Any, float]:
    """The fastest of ``config_times`` and its seconds per call."""
    times = config_times(kernel, x, w, configs)
    best = min(times, key=times.get)
    return best, times[best]


def matmuls(scale: dict, bw: float) -> None:
    """Qwen3-0.6B's projections (replayed from a graph) at decode batch sizes, against reading the
    weight once: where a decode step's matmul time goes, and how far from the floor. On the GPU
    through cuBLAS (torch's default) and cuBLASLt (``torch.backends.cuda.preferred_blas_library``),
    whose choice of kernel for few rows may differ; at up to 4 rows also the Triton GEMV kernel
    (checked against F.linear before it is timed)."""
    import torch.nn.functional as F

    dev, dtype = scale["dev"], scale["dtype"]
    libraries = ("cublas", "cublaslt") if dev == "cuda" else ("default",)
    one_row_wins = {}  # (N, K) -> the GEMV configuration faster at one row than every library: GEMV_CONFIGS
    few_row_wins = {}  # (N, K, M) for 2-4 rows, likewise (FEW_ROWS_GEMV_CONFIGS)
    skinny_wins, skinny_gains = {}, {}  # (N, K, rows) from 8 rows up: the skinny GEMM, likewise (SKINNY_GEMM_CONFIGS)
    for name, (n, k) in scale["matmuls"].items():
        w = torch.randn(n, k, dtype=dtype, device=dev) / k**0.5
        library_best = {}  # rows -> the fastest library's time
        for library in libraries:
            before = torch.backends.cuda.preferred_blas_library() if dev == "cuda" else None
            if before is not None:
                torch.backends.cuda.preferred_blas_library(library)
            row = []
            for m in scale["matmul_rows"]:
                x = torch.randn(m, k, dtype=dtype, device=dev)
                t = graph_time(lambda: F.linear(x, w))
                row.append(f"M={m}: {t * 1e6:.1f} us ({w.numel() * w.element_size() / t / bw:.0%})")
                library_best[m] = min(library_best.get(m, float("inf")), t)
            if before is not None:
                torch.backends.cuda.preferred_blas_library(before)
            print(f"matmul {name:8s} {n}x{k} {library:8s} in a graph, time (weight bytes / time as a share of copy bandwidth): "
                  f"{', '.join(row)}")  # fmt: skip
        # A prompt's matmuls: with N = 1024 outputs, 128 x 128 tiles are 64 per 1024 rows, fewer than the SMs
        row = []
        for m in scale["prefill_matmul_rows"] if name != "lm_head" else ():
            x = torch.randn(m, k, dtype=dtype, device=dev)
            t = graph_time(lambda: F.linear(x, w), reps=10)
            row.append(f"M={m}: {t * 1e6:.1f} us, {2 * m * n * k / t / 1e12:.0f} TFLOP/s")
        if row:
            print(f"matmul {name:8s} {n}x{k} prompt-sized, torch's default library: {', '.join(row)}")
        row = []
        for m in [m for m in scale["matmul_rows"] if m <= 4]:
            x = torch.randn(m, k, dtype=dtype, device=dev)
            best, t = fastest_config(triton_gemv.gemv, x, w, [c for c in triton_gemv.CONFIGS if triton_gemv.fits(m, c)])
            row.append(f"M={m}: {t * 1e6:.1f} us ({w.numel() * w.element_size() / t / bw:.0%}) at {best}")
            if t < library_best[m]:
                if m == 1:
                    one_row_wins[(n, k)] = best
                else:
                    few_row_wins[(n, k, m)] = best
        few_rows = {rows: c for (n2, k2, rows), c in triton_gemv.FEW_ROWS_GEMV_CONFIGS.items() if (n2, k2) == (n, k)}
        print(f"matmul {name:8s} {n}x{k} Triton GEMV (triton_gemv.py), best of its configurations "
              f"(BLOCK_N, BLOCK_K, warps): {', '.join(row)}; the engine's at M=1: {triton_gemv.GEMV_CONFIGS.get((n, k), 'cuBLAS')}"
              f", at 2-4 rows: {few_rows or 'cuBLAS'}")  # fmt: skip
        # 8 rows and more, not the LM head (cuBLAS is near the floor there)
        batch_rows = [m for m in scale["matmul_rows"] if m >= 8] if n < 100_000 else []
        row = []
        for m in batch_rows:  # each a power of two: the table's row buckets
            x = torch.randn(m, k, dtype=dtype, device=dev)
            times = config_times(triton_skinny_gemm.skinny_gemm, x, w, triton_skinny_gemm.sweep_configs(m))
            best = min(times, key=times.get)
            t, unsplit = times[best], min(t for c, t in times.items() if c[3] == 1)
            row.append(f"M={m}: {t * 1e6:.1f} us ({w.numel() * w.element_size() / t / bw:.0%}) at {best}, unsplit {unsplit * 1e6:.1f} us")
            if t < library_best[m]:
                skinny_wins[(n, k, m)], skinny_gains[(n, k, m)] = best, round(library_best[m] / t, 2)
        if row:
            engine = {m: triton_skinny_gemm.SKINNY_GEMM_CONFIGS.get((n, k, m), "cuBLAS") for m in batch_rows}
            print(f"matmul {name:8s} {n}x{k} skinny GEMM (triton_skinny_gemm.py), best of its configurations "
                  f"(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages): {', '.join(row)}; the engine's: {engine}")  # fmt: skip
        # The same product asked of the library the other way round, weight @ x.T (N rows, M columns),
        # then transposed back: its choice of tiles for 1,024 x 256 may differ from 256 x 1,024's.
        row = []
        for m in batch_rows:
            x = torch.randn(m, k, dtype=dtype, device=dev)
            t = graph_time(lambda: torch.mm(w, x.t()).t().contiguous())
            row.append(f"M={m}: {t * 1e6:.1f} us ({w.numel() * w.element_size() / t / bw:.0%})")
        if row:
            print(f"matmul {name:8s} {n}x{k} as (weight @ x.T).T, torch's default library, transposing copy included: {', '.join(row)}")
    print(f"matmul shapes where the GEMV beats every library at one row, with its best configuration: {one_row_wins}")
    print(f"... and at 2-4 rows, (N, K, rows): {few_row_wins}")
    print(f"... where the skinny GEMM beats every library, (N, K, rows): configuration: {skinny_wins}")
    print(f"    by how much (library time / its time): {skinny_gains}")
    if "--skinny-table" in sys.argv:  # for bench_switches.py --skinny-configs, and SKINNY_GEMM_CONFIGS
        Path(sys.argv[sys.argv.index("--skinny-table") + 1]).write_text(repr(skinny_wins) + "\n")


def gemv_prologues(scale: dict) -> None:
    """The decoder layer's one-row fusions, replayed from a graph, in every GEMV configuration: RMSNorm
    (with the residual add) then the GEMV, against the GEMV with the norm inside (q/k/v, gate/up);
    SiLU-and-mul then the GEMV, against the GEMV with it inside (down). The engine fuses only the
    shapes in ``FUSED_GEMV_CONFIGS``, which the last line printed here fills."""
    dev, dtype = scale["dev"], scale["dtype"]
    wins = {}
    for name, (n, k) in scale["matmuls"].items():
        if name not in ("q/k/v", "gate/up", "down"):
            continue
        w = torch.randn(n, k, dtype=dtype, device=dev) / k**0.5
        if name == "down":
            x = torch.randn(1, 2 * k, dtype=dtype, device=dev)
            pair, fused = (lambda c: triton_gemv.gemv(silu_and_mul(x), w, c)), (lambda c: triton_gemv.gemv_silu_and_mul(x, w, c))
        else:
            x, r, nw = (torch.randn(1, k, dtype=dtype, device=dev) for _ in range(3))
            nw = nw[0]
            pair = lambda c: triton_gemv.gemv(fused_add_rms_norm(x, r, nw, 1e-6)[0], w, c)  # noqa: E731
            fused = lambda c: triton_gemv.gemv_add_rms_norm(x, r, nw, 1e-6, w, c)[0]  # noqa: E731
        pair_times, fused_times = {}, {}
        for config in [c for c in triton_gemv.CONFIGS if triton_gemv.fits(1, c)]:
            torch.testing.assert_close(fused(config), pair(config), rtol=2e-2, atol=2e-2)
            pair_times[config], fused_times[config] = graph_time(lambda: pair(config)), graph_time(lambda: fused(config))
        row = [f"{c}: {pair_times[c] * 1e6:.1f} / {fused_times[c] * 1e6:.1f}" for c in pair_times]
        print(f"one row, {name:8s} {n}x{k}, two kernels / one, us by GEMV configuration: {', '.join(row)}; "
              f"the engine's: {triton_gemv.FUSED_GEMV_CONFIGS.get((n, k), 'two kernels')}")  # fmt: skip
        best = min(fused_times, key=fused_times.get)
        if fused_times[best] < min(pair_times.values()):
            wins[(n, k)] = (best, round(min(pair_times.values()) / fused_times[best], 2))
    print(f"one-row shapes where the fused GEMV beats the two kernels, (N, K): (configuration, speed-up): {wins}")


def element_wise(scale: dict, bw: float, baseline=None) -> None:
    """The decoder layer's element-wise kernels at a decode batch's and a prompt's token counts, each
    replayed from a graph, against the bytes it reads and writes at copy bandwidth; with a baseline
    fused_kernels.py, each of its kernels and today's in turn."""
    dev, dtype, heads, kv_heads, d = scale["dev"], scale["dtype"], scale["heads"], scale["kv_heads"], scale["head_dim"]
    hidden, inter = scale["matmuls"]["q/k/v"][1], scale["matmuls"]["down"][1]
    size = torch.finfo(dtype).bits // 8
    for t in scale["element_wise_tokens"]:
        x, r = (torch.randn(t, hidden, dtype=dtype, device=dev) for _ in range(2))
        nw = torch.ones(hidden, dtype=dtype, device=dev)
        gate_up = torch.randn(t, 2 * inter, dtype=dtype, device=dev)
        qkv = torch.randn(t, heads + 2 * kv_heads, d, dtype=dtype, device=dev)  # q, k, v: strided views, as in the model
        q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
        cache = torch.zeros(2, -(-t // BLOCK_SIZE), BLOCK_SIZE, kv_heads, d, dtype=dtype, device=dev)
        cos, positions, slots = torch.randn(t + 1, d, device=dev), torch.arange(t, device=dev), torch.arange(t, device=dev)
        rope_args = (q, k, v, nw[:d], nw[:d], cos, cos, positions, 1e-6, cache[0], cache[1], slots)
        kernels = {  # name: (its function in fused_kernels.py, arguments, elements read and written)
            "add + RMSNorm": ("fused_add_rms_norm", (x, r, nw, 1e-6), 4 * t * hidden),
            "SiLU and mul": ("silu_and_mul", (gate_up,), 3 * t * inter),
            "q/k norm + RoPE + KV write": ("fused_qk_norm_rope_store", rope_args, 2 * t * (heads + 2 * kv_heads) * d),
        }
        row = []
        for name, (fn, args, elements) in kernels.items():
            secs = graph_time(functools.partial(getattr(fused_kernels, fn), *args))
            row.append(f"{name} {secs * 1e6:.1f} us ({elements * size / secs / bw:.0%} of copy bandwidth)")
        print(f"element-wise, {t:5d} tokens: {'; '.join(row)}")
        for name, (fn, args, _) in kernels.items() if baseline is not None else ():
            calls = [functools.partial(getattr(module, fn), *args) for module in (fused_kernels, baseline)]
            us = in_turn(calls)
            print(f"    {name}, today / baseline, us in turn: {us[0]} / {us[1]}")


def mixed_batch(scale: dict) -> None:
    """One prompt beside many decodes, as a step holds them when a finished sequence's slot goes to
    a waiting prompt (a run with more prompts than ``max_num_seqs``; ``profile_step.py schedule``).
    Three routes, timed in turn after checking they write the same output: the whole step through
    the prefill kernel, a 64-row query tile per decode and query head (the engine's default); the
    same with the decodes taken one item per kv head (``DECODES_BY_KV_HEAD``); and, for scale, the
    decodes through the decode kernel at the engine's split rule, then the prompt's tiles alone."""
    dev, dtype, heads, kv_heads, head_dim = scale["dev"], scale["dtype"], scale["heads"], scale["kv_heads"], scale["head_dim"]
    block_size, block_m = BLOCK_SIZE, prefill_block_sizes(head_dim)[0]
    for prompt_len, num_decodes, ctx in scale["mixed"]:
        query_lens, seq_lens = [1] * num_decodes + [prompt_len], [ctx] * num_decodes + [prompt_len]
        blocks = [-(-n // block_size) for n in seq_lens]
        k_cache = torch.randn(sum(blocks), block_size, kv_heads, head_dim, dtype=dtype, device=dev)
        v_cache = torch.randn_like(k_cache)
        block_table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=dev)
        start = 0
        for i, nb in enumerate(blocks):
            block_table[i, :nb] = torch.arange(start, start + nb, dtype=torch.int32, device=dev)
            start += nb
        qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        q = torch.randn(sum(query_lens), heads, head_dim, dtype=dtype, device=dev)
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=dev)
        # the engine's work list (heaviest first), and the prompt's tiles alone
        every_tile = torch.from_numpy(prefill_tiles(query_lens, block_m, heaviest_first=True, seq_lens=seq_lens)).to(dev)
        marked = torch.from_numpy(prefill_tiles(query_lens, block_m, heaviest_first=True, seq_lens=seq_lens, decode_rows=True)).to(dev)
        prompt_tiles = torch.from_numpy(prefill_tiles([0] * num_decodes + [prompt_len], block_m, heaviest_first=True, seq_lens=seq_lens)).to(dev)
        splits = num_kv_splits(num_decodes, kv_heads, ctx, num_sms(torch.device(dev)))
        one_kernel, by_kv_head, two_kernels = torch.empty_like(q), torch.empty_like(q), torch.empty_like(q)

        def through_prefill_kernel():
            paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, lens, every_tile, head_dim**-0.5, out=one_kernel,
                                    decode_items=False)  # fmt: skip

        def decodes_by_kv_head():
            paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, lens, marked, head_dim**-0.5, out=by_kv_head,
                                    decode_items=True)  # fmt: skip

        def decodes_through_decode_kernel():
            paged_decode_attention(q[:num_decodes], k_cache, v_cache, block_table[:num_decodes], lens[:num_decodes], head_dim**-0.5,
                                   num_kv_splits=splits, out=two_kernels[:num_decodes])  # fmt: skip
            paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, lens, prompt_tiles, head_dim**-0.5, out=two_kernels)

        routes = [through_prefill_kernel, decodes_by_kv_head, decodes_through_decode_kernel]
        for route in routes:
            route()
        torch.testing.assert_close(by_kv_head, one_kernel, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(two_kernels, one_kernel, atol=2e-2, rtol=2e-2)
        us = in_turn(routes, reps=10)
        print(f"mixed   1 x {prompt_len} prompt + {num_decodes} decodes (ctx {ctx}), us in turn: all in the prefill kernel "
              f"({len(every_tile)} tiles) {us[0]} / the decodes by kv head in it (DECODES_BY_KV_HEAD) {us[1]} / the decodes "
              f"in the decode kernel ({splits} split(s)), then the prompt's {len(prompt_tiles)} tiles {us[2]}")  # fmt: skip


def sampler(scale: dict, bw: float, baseline=None) -> None:
    """The fused temperature sampler at the engine's split count, replayed from a graph, against
    reading its logits at copy bandwidth; with a baseline triton_sample.py, the two in turn. Then
    top_k=20 with top_p=0.95, and top_p=0.95 alone, eagerly as the engine samples: the window
    kernel (torch.topk's window included), the whole-row kernel and torch's sort (the sampler takes
    the window kernel where every drawing row's top-k fits the window, the whole-row kernel else).
    Last, a batch with one seeded row through the sampler, against all its rows on torch's path."""
    from folovllm.sample.ops.topk_topp import apply_top_k_top_p
    from folovllm.sample.ops.triton_filtered_sample import filtered_sample
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample
    from folovllm.sample.ops.triton_window_sample import window_sample
    from folovllm.sample.sampler import Sampler, filtering_kernel, random_sample

    dev, vocab = scale["dev"], scale["vocab"]
    for batch in scale["sampler_batches"]:
        logits = torch.randn(batch, vocab, dtype=scale["dtype"], device=dev)
        temperature = torch.full((batch,), 0.6, device=dev)
        today = functools.partial(inverse_cdf_sample, logits, temperature)
        t = graph_time(today)
        print(f"sampler B={batch:4d} vocab={vocab}, in a graph: {t * 1e6:7.1f} us "
              f"({logits.numel() * logits.element_size() / t / bw:.0%} of copy bandwidth)")  # fmt: skip
        if baseline is not None:  # a file from before 2026-11-27 samples with gumbel_argmax
            old = getattr(baseline, "gumbel_argmax", None) or baseline.inverse_cdf_sample
            us = in_turn([today, lambda: old(logits, temperature)])
            print(f"    today / baseline ({old.__name__}), us in turn: {us[0]} / {us[1]}")
        top_k, top_p = torch.full((batch,), 20, device=dev), torch.full((batch,), 0.95, device=dev)
        # Qwen3's generation config on these logits; top_p alone (vLLM's examples) on logits three times
        # as spread, whose nucleus at T=0.6 is ~500 ids (on the first, tens of thousands: no window holds it)
        for what, rows, k in (("top_k=20, top_p=0.95", logits, top_k), ("top_p=0.95 alone, ~500-id nucleus", logits * 3, None)):

            def torch_filters(rows=rows, k=k):  # Sampler.sample's path for these rows
                return random_sample(apply_top_k_top_p(rows.float() / temperature.unsqueeze(1), k, top_p).softmax(-1), {})

            calls = [functools.partial(f, rows, temperature, k, top_p, None) for f in (window_sample, filtered_sample)]
            us = [[microseconds(device_time(call)) for call in calls + [torch_filters]] for _ in range(2)]
            print(f"    {what}, eagerly: window kernel / whole-row kernel / torch's sort, us in turn: "
                  f"{us[0][0]}, {us[1][0]} / {us[0][1]}, {us[1][1]} / {us[0][2]}, {us[1][2]} "
                  f"[the engine's: {filtering_kernel(20 if k is not None else vocab).__name__}]")  # fmt: skip
        one_seeded = _one_seeded_row(batch, vocab, dev)
        engine = Sampler()
        calls = [lambda: engine(logits, one_seeded), lambda: engine.sample(logits.float(), one_seeded)]
        us = [[microseconds(device_time(call)) for call in calls] for _ in range(2)]
        print(f"    top_k=20, top_p=0.95, one row seeded, eagerly: the engine's (the batch by its kernel, the seeded "
              f"row again on torch's path) / every row on torch's path (before), us in turn: "
              f"{us[0][0]}, {us[1][0]} / {us[0][1]}, {us[1][1]}")  # fmt: skip


def _one_seeded_row(batch: int, vocab: int, dev) -> SamplingMetadata:
    """The sampling settings of ``batch`` rows at Qwen3's generation config (T=0.6, top_k=20,
    top_p=0.95), the first with a seed of its own."""
    from folovllm import SamplingParams
    from folovllm.worker.input_batch import CachedRequestState
    from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

    states = [
        CachedRequestState(i, i, [1], [], SamplingParams(temperature=0.6, top_k=20, top_p=0.95, seed=1 if i == 0 else None),
                           torch.Generator(dev).manual_seed(1) if i == 0 else None, 1)
        for i in range(batch)
    ]  # fmt: skip
    return build_sampling_metadata(states, vocab, torch.device(dev))


if __name__ == "__main__":
    main()
