"""Automatic prefix caching: end-to-end time with the cache on vs off, and the hit rate.

Workloads:
  shared_prefix  N requests = one shared P-token prefix + a unique S-token suffix, O output tokens each
  repeated       one (P + S)-token prompt, N times (vLLM's benchmark_prefix_caching.py style)
  zero_hit       nano-vllm's random workload: nothing to share, so caching can only cost

Each timed run starts from an empty cache (``reset_prefix_cache``): hits come only from
requests of the same run. Warm-up (kernel compilation) runs on other tokens, untimed.

GPU: python benchmarks/bench_prefix_caching.py               (Qwen3-0.6B shapes, random weights)
CPU: python benchmarks/bench_prefix_caching.py --scale cpu   (a few minutes)
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import Workload, median_and_spread, nano_vllm_workload, parse_scaled_args, sync
from folovllm import LLM, SamplingParams

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", num_requests=256, prefix_len=2000, suffix_len=100, output_len=16, zero_hit=(256, 100, 1024, 1024)),
    "cpu": dict(preset="small", num_requests=32, prefix_len=1000, suffix_len=50, output_len=8, zero_hit=(32, 16, 256, 64)),
}


def shared_prefix_workload(num_requests: int, prefix_len: int, suffix_len: int, output_len: int, vocab: int, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab) for _ in range(prefix_len)]
    prompts = [prefix + [rng.randrange(vocab) for _ in range(suffix_len)] for _ in range(num_requests)]
    return Workload(prompts, [output_len] * num_requests)


def repeated_prompt_workload(num_requests: int, prompt_len: int, output_len: int, vocab: int, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
    return Workload([prompt] * num_requests, [output_len] * num_requests)


def _run(llm: LLM, workload: Workload, device: str) -> None:
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=n) for n in workload.output_lens]
    llm.generate([{"prompt_token_ids": p} for p in workload.prompts], params, use_tqdm=False)
    sync(device)


def measure(model: str, device: str, workload: Workload, warmup: Workload, caching: bool, runs: int) -> tuple[list[float], float]:
    """Sorted seconds of ``runs`` timed runs and the hit rate (hit tokens / prompt tokens) of the last."""
    max_len = max(len(p) + n for p, n in zip(workload.prompts, workload.output_lens))
    llm = LLM(model, device=device, enable_prefix_caching=caching, max_model_len=max_len,
              async_scheduling=device == "cuda", max_num_seqs=min(256, len(workload.prompts)))  # fmt: skip
    engine = llm.llm_engine
    _run(llm, warmup, device)
    secs, hit_rate = [], 0.0
    for _ in range(max(1, runs)):
        llm.reset_prefix_cache()
        before = engine.get_stats()
        t0 = time.perf_counter()
        _run(llm, workload, device)
        secs.append(time.perf_counter() - t0)
        after = engine.get_stats()
        queries = after["prefix_cache_queries"] - before["prefix_cache_queries"]
        hit_rate = (after["prefix_cache_hits"] - before["prefix_cache_hits"]) / max(queries, 1)
    del llm, engine
    gc.collect()  # the engine holds reference cycles; its KV cache must go before the next one
    if device == "cuda":
        torch.cuda.empty_cache()
    return sorted(secs), hit_rate


def compare(model: str, device: str, scale: dict, runs: int, vocab: int) -> list[tuple[str, list[float], list[float], float]]:
    """(workload, seconds on, seconds off, hit rate) for the three workloads."""
    n, p, s, o = scale["num_requests"], scale["prefix_len"], scale["suffix_len"], scale["output_len"]
    zn, lo, hi_in, hi_out = scale["zero_hit"]
    workloads = {  # name: (timed workload, warm-up on other tokens)
        f"shared_prefix ({n} x {p}+{s} tokens, {o} out)": (shared_prefix_workload(n, p, s, o, vocab), shared_prefix_workload(4, p, s, o, vocab, seed=1)),
        f"repeated ({n} x {p + s} tokens, {o} out)": (repeated_prompt_workload(n, p + s, o, vocab), repeated_prompt_workload(4, p + s, o, vocab, seed=1)),
        f"zero_hit (nano-vllm: {zn} seqs, {lo}..{hi_in} in, {lo}..{hi_out} out)":
            (nano_vllm_workload(zn, lo, hi_in, hi_out, vocab), nano_vllm_workload(4, lo, hi_in, lo, vocab, seed=1)),
    }  # fmt: skip
    rows = []
    for name, (workload, warmup) in workloads.items():
        on, hit_rate = measure(model, device, workload, warmup, True, runs)
        off, _ = measure(model, device, workload, warmup, False, runs)
        rows.append((name, on, off, hit_rate))
    return rows


def main() -> None:
    args, device, scale, model = parse_scaled_args(SCALES)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model).vocab_size
    print(f"model {model} on {device}, torch {torch.__version__}")
    for name, on, off, hit_rate in compare(model, device, scale, args.runs, vocab):
        m_on, m_off = on[len(on) // 2], off[len(off) // 2]
        print(f"{name}\n  caching on : {median_and_spread(on)}, hit rate {hit_rate:.1%}\n  caching off: {median_and_spread(off)}")
        print(f"  on / off = {m_on / m_off:.3f} (speed-up {m_off / m_on:.2f}x)")


if __name__ == "__main__":
    main()
