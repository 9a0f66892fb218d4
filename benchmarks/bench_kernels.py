"""Kernels alone, on a GPU: attention's achieved bandwidth (decode) and FLOP rate (prefill),
decode attention replayed from a CUDA graph (split-K factors at batch 1, bf16 against an FP8
cache at batch 256), Qwen3-0.6B's matmuls at decode batch sizes against one read of their
weights, prefill tile shapes and warp counts, a mixed batch through the prefill kernel's work list, and the fused sampler
with and without vocabulary splits.

    python benchmarks/bench_kernels.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import cuda_time  # noqa: E402
from benchmarks.common import measure_copy_bandwidth  # noqa: E402
from folovllm.attention.backends.abstract import num_kv_splits  # noqa: E402
from folovllm.attention.ops.triton_decode_attention import paged_decode_attention  # noqa: E402
from folovllm.attention.ops.triton_prefill_attention import paged_prefill_attention, prefill_block_sizes, prefill_tiles  # noqa: E402
from folovllm.utils.device import num_sms  # noqa: E402


def main() -> None:
    dev, dtype = "cuda", torch.bfloat16
    heads, kv_heads, head_dim, block_size = 16, 8, 128, 16
    bw = measure_copy_bandwidth(dev)
    print(f"copy bandwidth: {bw / 1e12:.2f} TB/s")
    for batch, ctx, splits in [(1, 512, None), (1, 4096, None), (32, 1024, None), (256, 1024, None), (256, 2048, None)]:
        q, k_cache, v_cache, block_table, seq_lens = decode_batch(batch, ctx, heads, kv_heads, head_dim, block_size, dtype, dtype)
        s = splits or num_kv_splits(batch, kv_heads, ctx, num_sms(torch.device(dev, 0)))  # the engine's choice
        t = cuda_time(lambda: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=s))
        nbytes = 2 * batch * ctx * kv_heads * head_dim * 2
        print(f"decode  B={batch:4d} ctx={ctx:5d} splits={s:3d}: {t * 1e6:8.1f} us, {nbytes / t / 1e12:.2f} TB/s "
              f"({nbytes / t / bw:.0%} of copy bandwidth)")  # fmt: skip
    for batch, qlen in [(1, 1024), (16, 1024)]:
        nb = batch * qlen // block_size
        k_cache = torch.randn(nb, block_size, kv_heads, head_dim, dtype=dtype, device=dev)
        v_cache = torch.randn_like(k_cache)
        block_table = torch.arange(nb, device=dev, dtype=torch.int32).view(batch, -1)
        seq_lens = torch.full((batch,), qlen, dtype=torch.int32, device=dev)
        qsl = torch.arange(0, (batch + 1) * qlen, qlen, dtype=torch.int32, device=dev)
        q = torch.randn(batch * qlen, heads, head_dim, dtype=dtype, device=dev)
        tiles = torch.from_numpy(prefill_tiles([qlen] * batch, prefill_block_sizes(head_dim)[0])).to(dev)
        t = cuda_time(lambda: paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, seq_lens, tiles, head_dim**-0.5))
        flops = 4 * batch * heads * head_dim * qlen * qlen / 2
        print(f"prefill B={batch:4d} len={qlen}: {t * 1e6:8.1f} us, {flops / t / 1e12:.1f} TFLOP/s (causal)")
        row = []  # other tile shapes and warp counts, replayed from a graph (the engine's: prefill_block_sizes, 4 warps)
        for (bm, bn), warps in itertools.product([(64, 64), (128, 64), (64, 128), (128, 128)], (4, 8)):
            tiles = torch.from_numpy(prefill_tiles([qlen] * batch, bm)).to(dev)
            try:
                t = graph_time(lambda: paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, seq_lens, tiles,
                                                               head_dim**-0.5, block_m=bm, block_n=bn, num_warps=warps))  # fmt: skip
                row.append(f"{bm}x{bn}/{warps}w: {flops / t / 1e12:.0f}")
            except Exception as e:  # too much shared memory or registers for this shape
                torch.cuda.synchronize()
                row.append(f"{bm}x{bn}/{warps}w: {type(e).__name__}")
        print(f"prefill B={batch:4d} len={qlen} in a graph, TFLOP/s by BLOCK_M x BLOCK_N / warps: {', '.join(row)}")
    decode_in_graphs(heads, kv_heads, head_dim, block_size, dtype, bw)
    matmuls(dtype, bw)
    mixed_batch(heads, kv_heads, head_dim, block_size, dtype)
    sampler()


def graph_time(fn, reps: int = 50) -> float:
    """Seconds per call of ``fn`` replayed from a CUDA graph of ``reps`` calls: no launch cost from the host."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return cuda_time(graph.replay, iters=10) / reps


def decode_batch(batch: int, ctx: int, heads: int, kv_heads: int, head_dim: int, block_size: int, dtype, cache_dtype):
    """A decode step's inputs: ``batch`` sequences of ``ctx`` cached tokens in shuffled blocks (q, k/v caches, table, lengths)."""
    dev = "cuda"
    nb = batch * -(-ctx // block_size)
    k_cache = torch.randn(nb, block_size, kv_heads, head_dim, device=dev).to(cache_dtype)
    v_cache = torch.randn(nb, block_size, kv_heads, head_dim, device=dev).to(cache_dtype)
    block_table = torch.randperm(nb, device=dev, dtype=torch.int32).view(batch, -1)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    q = torch.randn(batch, heads, head_dim, dtype=dtype, device=dev)
    return q, k_cache, v_cache, block_table, seq_lens


def decode_in_graphs(heads: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype, bw: float) -> None:
    """Decode attention as the engine runs it (replayed from a CUDA graph): the split-K factor at
    batch 1 for short and long contexts (the engine's rule fixes it per graph batch size from
    max_model_len), and a bf16 against an FP8 cache at batch 256."""
    dev = "cuda"
    sms = num_sms(torch.device(dev, 0))
    for batch, ctx, cache_dtype, split_counts in [
        (1, 160, dtype, (1, 2, 4, 9, 16, 33)),
        (1, 600, dtype, (1, 2, 4, 8, 16, 33)),
        (1, 2048, dtype, (4, 8, 16, 33, 64)),
        (256, 1024, dtype, (1,)),
        (256, 1024, torch.float8_e4m3fn, (1,)),
    ]:
        q, k_cache, v_cache, block_table, seq_lens = decode_batch(batch, ctx, heads, kv_heads, head_dim, block_size, dtype, cache_dtype)
        nbytes = 2 * batch * ctx * kv_heads * head_dim * k_cache.element_size()
        row = []
        for s in split_counts:
            t = graph_time(lambda s=s: paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, head_dim**-0.5, num_kv_splits=s))
            row.append(f"{s}: {t * 1e6:.1f} us ({nbytes / t / bw:.0%})")
        rule = {n: num_kv_splits(batch, kv_heads, n, sms) for n in (2048, 40960)}
        print(f"decode in a graph B={batch:3d} ctx={ctx:5d} {str(cache_dtype).split('.')[-1]:13s} by splits: {', '.join(row)}"
              f" [engine's rule: {rule[2048]} at max_model_len 2048, {rule[40960]} at 40960]")  # fmt: skip


def matmuls(dtype: torch.dtype, bw: float) -> None:
    """Qwen3-0.6B's projections (cuBLAS, replayed from a graph) at decode batch sizes, against
    reading the weight once: where a decode step's matmul time goes, and how far from the floor."""
    import torch.nn.functional as F

    shapes = {"q/k/v": (4096, 1024), "o": (1024, 2048), "gate/up": (6144, 1024), "down": (1024, 3072), "lm_head": (151_936, 1024)}
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, dtype=dtype, device="cuda") / k**0.5
        row = []
        for m in (1, 8, 32, 64, 128, 256):
            x = torch.randn(m, k, dtype=dtype, device="cuda")
            t = graph_time(lambda: F.linear(x, w))
            row.append(f"M={m}: {t * 1e6:.1f} us ({w.numel() * w.element_size() / t / bw:.0%})")
        print(f"matmul {name:8s} {n}x{k} in a graph, time (weight bytes / time as a share of copy bandwidth): {', '.join(row)}")


def mixed_batch(heads: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> None:
    """One 1024-token prompt beside 255 decodes at context 600: the work list launches 16 + 255 tiles,
    where a (longest query x sequences) grid would launch 16 x 256."""
    dev = "cuda"
    query_lens, seq_lens = [1024] + [1] * 255, [1024] + [600] * 255
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
    tiles = torch.from_numpy(prefill_tiles(query_lens, prefill_block_sizes(head_dim)[0])).to(dev)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=dev)
    t = cuda_time(lambda: paged_prefill_attention(q, k_cache, v_cache, block_table, qsl, lens, tiles, head_dim**-0.5))
    print(f"mixed   1 x 1024 prompt + 255 decodes (ctx 600), {len(tiles)} tiles: {t * 1e6:8.1f} us")


def sampler(vocab: int = 151_936) -> None:
    from folovllm.sample.ops.triton_sample import gumbel_argmax

    for batch in (1, 8, 64, 256):
        logits = torch.randn(batch, vocab, dtype=torch.bfloat16, device="cuda")
        temperature = torch.full((batch,), 0.6, device="cuda")
        one = cuda_time(lambda: gumbel_argmax(logits, temperature, splits=1))
        auto = cuda_time(lambda: gumbel_argmax(logits, temperature))
        print(f"sampler B={batch:4d} vocab={vocab}: one program per row {one * 1e6:7.1f} us, split {auto * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
