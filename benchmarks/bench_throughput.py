"""Offline throughput on nano-vllm's workload, optionally against HF ``generate``.

GPU (Qwen3-0.6B shapes, random weights):
    python benchmarks/bench_throughput.py --preset qwen3-0.6b --hf
CPU, in about a minute on a tiny checkpoint:
    python benchmarks/bench_throughput.py --scale cpu --hf
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import get_checkpoint, hf_generate_throughput, nano_vllm_workload, timed
from folovllm import LLM, SamplingParams

SCALES = {
    # num_seqs, min_len, max_input_len, max_output_len
    "full": (256, 100, 1024, 1024),
    "cpu": (32, 16, 128, 128),
}


def run_folovllm(llm: LLM, workload, device: str) -> float:
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in workload.output_lens]
    prompts = [{"prompt_token_ids": p} for p in workload.prompts]
    llm.reset_prefix_cache()  # a repeated run would otherwise find its prompts cached
    return timed(device, functools.partial(llm.generate, prompts, params, use_tqdm=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint dir or hub id (default: random --preset)")
    ap.add_argument("--preset", default=None, help="random checkpoint preset: qwen3-0.6b (GPU) or tiny (CPU)")
    ap.add_argument("--scale", choices=sorted(SCALES), default=None, help="workload size (default: full on GPU, cpu on CPU)")
    ap.add_argument("--num-seqs", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--sync", action="store_true", help="turn async scheduling off (it is on for GPU runs; the CPU has nothing to overlap)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of the workload (the median is reported, with the spread)")
    ap.add_argument("--hf", action="store_true", help="also run HF generate and print the ratio")
    ap.add_argument("--hf-batch-size", type=int, default=None)
    args = ap.parse_args()

    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    scale = args.scale or ("full" if on_gpu else "cpu")
    preset = args.preset or ("qwen3-0.6b" if on_gpu else "tiny")
    num_seqs, min_len, max_in, max_out = SCALES[scale]
    num_seqs = args.num_seqs or num_seqs
    model = get_checkpoint(args.model, preset, device)

    llm = LLM(model, device=device, dtype=args.dtype, enforce_eager=args.enforce_eager, async_scheduling=on_gpu and not args.sync,
              max_model_len=max_in + max_out, max_num_seqs=min(num_seqs, 256))  # fmt: skip
    vocab = llm.llm_engine.config.model_config.get_vocab_size()
    workload = nano_vllm_workload(num_seqs, min_len, max_in, max_out, vocab)
    # Warm up on real prompt lengths, so Triton compiles every kernel variant outside the timed run.
    warm = nano_vllm_workload(4, min_len, max_in, min_len, vocab, seed=1)
    run_folovllm(llm, warm, device)
    runs = sorted(run_folovllm(llm, workload, device) for _ in range(max(1, args.runs)))
    secs = runs[len(runs) // 2]
    out_tps = workload.num_output_tokens / secs
    total_tps = (workload.num_output_tokens + workload.num_prompt_tokens) / secs
    spread = f" (median of {len(runs)} runs; {workload.num_output_tokens / runs[-1]:,.0f}-{workload.num_output_tokens / runs[0]:,.0f})"
    print(f"FoloVLLM  : async_scheduling={on_gpu and not args.sync}, {num_seqs} seqs, {workload.num_output_tokens} output tokens in {secs:.2f}s "
          f"-> {out_tps:,.0f} output tok/s{spread if len(runs) > 1 else ''}, {total_tps:,.0f} total tok/s")  # fmt: skip
    print(f"stats     : {llm.llm_engine.get_stats()}")
    if args.hf:
        dtype = llm.llm_engine.config.dtype
        del llm
        batch = args.hf_batch_size or (64 if on_gpu else 8)
        hf_secs, hf_tokens = hf_generate_throughput(model, workload, device, dtype, batch)
        hf_tps = hf_tokens / hf_secs
        print(f"HF generate: batch {batch}, {hf_tokens} output tokens in {hf_secs:.2f}s -> {hf_tps:,.0f} output tok/s")
        print(f"ratio FoloVLLM / HF = {out_tps / hf_tps:.2f}x")


if __name__ == "__main__":
    main()
