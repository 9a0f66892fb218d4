"""The M4 benchmark suite, one command, on a GPU:

    python benchmarks/bench_all.py            # writes docs/benchmarks.md

(a) throughput on nano-vllm's workload (256 seqs, Qwen3-0.6B shapes, bf16);
(b) latency: TTFT of one 1024-token prompt, TPOT at batch 1 over 256 tokens;
(c) HF ``generate`` on the same workload in the same process;
(d) the hardware floor of (a) and (b): bytes that must move (weights once
    per step + the KV cache read) over the copy bandwidth measured here, and
    for TTFT the FLOPs over the measured matmul rate; printed as achieved / floor;
(e) prefix caching on vs off (``bench_prefix_caching.py``): a shared-prefix
    workload, a repeated prompt, and nano-vllm's workload where nothing can hit;
(f) with ``--gptq qwen3-8b`` (or qwen3-4b): GPTQ 4-bit against bf16 on a bigger
    model (``bench_gptq.py``); off by default, it builds and quantizes an 8B
    checkpoint first.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.bench_gptq import compare as compare_gptq
from benchmarks.bench_prefix_caching import SCALES as PREFIX_SCALES
from benchmarks.bench_prefix_caching import compare as compare_prefix_caching
from benchmarks.common import get_checkpoint, hf_generate_throughput, measure_copy_bandwidth, median_and_spread, nano_vllm_workload, sync
from folovllm import LLM, SamplingParams


def measure_matmul_flops(device: str, n: int = 8192, iters: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--sync", action="store_true", help="turn async scheduling off")
    ap.add_argument("--prefix-runs", type=int, default=3, help="timed runs per prefix-caching row (0: skip (e))")
    ap.add_argument("--gptq", default="none", choices=["none", "qwen3-4b", "qwen3-8b"], help="model shape for (f); none skips it")
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench_all.py needs a CUDA GPU (bench_throughput.py runs on the CPU)"
    device = "cuda"
    model = get_checkpoint(args.model, "qwen3-0.6b", device)

    bw = measure_copy_bandwidth(device)
    flops = measure_matmul_flops(device)
    llm = LLM(model, dtype="bfloat16", max_model_len=2 * args.max_len + 64, enforce_eager=args.enforce_eager,
              async_scheduling=not args.sync)  # fmt: skip
    engine = llm.llm_engine
    mc = engine.config.model_config
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.executor.worker.model_runner.model.parameters())
    num_params = sum(p.numel() for p in engine.executor.worker.model_runner.model.parameters())
    kv_per_token = 2 * mc.get_num_layers() * mc.get_total_num_kv_heads() * mc.get_head_dim() * 2
    vocab = mc.get_vocab_size()

    # (a) throughput
    wl = nano_vllm_workload(args.num_seqs, 100, args.max_len, args.max_len, vocab)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    prompts = [{"prompt_token_ids": p} for p in wl.prompts]
    llm.generate(prompts[:4], [SamplingParams(max_tokens=8, ignore_eos=True)] * 4, use_tqdm=False)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    sync(device)
    tput_secs = time.perf_counter() - t0
    tput = wl.num_output_tokens / tput_secs
    decode_steps = max(wl.output_lens)
    kv_read = kv_per_token * sum(len(p) * n + n * (n - 1) // 2 for p, n in zip(wl.prompts, wl.output_lens))
    tput_floor_secs = (weight_bytes * decode_steps + kv_read) / bw
    preemptions = engine.get_stats()["num_preemptions"]

    # (b) latency
    rng = random.Random(5)
    long_prompt = {"prompt_token_ids": [rng.randrange(vocab) for _ in range(1024)]}
    ttfts = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        llm.generate([long_prompt], SamplingParams(max_tokens=1, ignore_eos=True), use_tqdm=False)
        sync(device)
        ttfts.append(time.perf_counter() - t0)
    ttft = statistics.median(ttfts)
    ttft_floor = 2 * num_params * 1024 / flops
    short = {"prompt_token_ids": [rng.randrange(vocab) for _ in range(32)]}
    tpots = []
    for _ in range(3):
        out = llm.generate([short], SamplingParams(max_tokens=257, ignore_eos=True), use_tqdm=False)[0]
        tpots.append(out.metrics.mean_time_per_output_token)
    tpot = statistics.median(tpots)
    tpot_floor = (weight_bytes + kv_per_token * (32 + 128)) / bw
    del llm, engine
    gc.collect()  # the engine holds reference cycles; its KV cache must go before HF runs
    torch.cuda.empty_cache()

    # (c) HF
    hf_tput = None
    if not args.skip_hf:
        hf_secs, hf_tokens = hf_generate_throughput(model, wl, device, torch.bfloat16, args.hf_batch_size)
        hf_tput = hf_tokens / hf_secs

    # (e) prefix caching
    prefix_rows = compare_prefix_caching(model, device, PREFIX_SCALES["gpu"], args.prefix_runs, vocab) if args.prefix_runs else []

    # (f) GPTQ
    gptq_lines = compare_gptq(get_checkpoint(None, args.gptq, device), device, 3, 128) if args.gptq != "none" else []

    props = torch.cuda.get_device_properties(0)
    import triton

    rows = [
        ("(a) throughput, output tok/s", f"{tput:,.0f}", f"{wl.num_output_tokens / tput_floor_secs:,.0f}",
         f"{tput_floor_secs / tput_secs:.0%}", f"{tput / hf_tput:.1f}x ({hf_tput:,.0f})" if hf_tput else "-"),
        ("(b) TTFT, 1024-token prompt", f"{ttft * 1e3:.1f} ms", f"{ttft_floor * 1e3:.2f} ms", f"{ttft_floor / ttft:.0%}", "-"),
        ("(b) TPOT, batch 1", f"{tpot * 1e3:.2f} ms", f"{tpot_floor * 1e3:.2f} ms", f"{tpot_floor / tpot:.0%}", "-"),
    ]  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} on {props.name} ({props.total_memory / 2**30:.0f} GiB), "
        f"torch {torch.__version__}, triton {triton.__version__}, by `python benchmarks/bench_all.py`.",
        f"Model: random weights with Qwen3-0.6B's exact config, bf16, CUDA graphs {'off' if args.enforce_eager else 'on'}, "
        f"async scheduling {'off' if args.sync else 'on'}.",
        f"Workload (a): {args.num_seqs} sequences, input and output lengths uniform in 100..{args.max_len} "
        f"(random token ids, ignore_eos), {wl.num_output_tokens:,} output tokens, {preemptions} preemptions.",
        f"Measured here: copy bandwidth {bw / 1e12:.2f} TB/s (read + write), bf16 matmul {flops / 1e12:.0f} TFLOP/s.",
        "",
        "| metric | FoloVLLM | floor | achieved / floor | vs HF generate |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        "Floors: (a) every decode step reads all weights once, and every generated token reads its",
        "sequence's whole KV context; (b) TPOT reads the weights once per token; TTFT is the matmul",
        "FLOPs (2 x params x tokens) at the measured matmul rate. Prefill of (a) is not in its floor.",
        f"HF generate runs greedy in padded batches of {args.hf_batch_size}; it is charged only for the",
        "tokens each sequence asked for.",
        "",
    ]
    if prefix_rows:
        lines += [
            "| (e) prefix caching, workload | caching on | caching off | on / off | hit rate |",
            "| --- | --- | --- | --- | --- |",
            *[f"| {name} | {median_and_spread(on)} | {median_and_spread(off)} | {on[len(on) // 2] / off[len(off) // 2]:.3f} | {rate:.1%} |"
              for name, on, off, rate in prefix_rows],
            "",
            "Each run starts with an empty prefix cache; greedy, ignore_eos. Target: shared prefix >= 4x",
            "faster (on / off <= 0.25); zero hits <= 2% slower (on / off <= 1.02).",
            "",
        ]  # fmt: skip
    if gptq_lines:
        lines += [f"(f) GPTQ, random weights with {args.gptq}'s config, RTN 4-bit group 128, against bf16:", "", *gptq_lines]
    else:
        lines += ["(f) GPTQ: not run (`--gptq qwen3-8b` runs it).", ""]
    text = "\n".join(lines)
    print(text, flush=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
