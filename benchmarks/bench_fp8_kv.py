"""FP8 KV cache against the model-dtype cache: throughput and greedy agreement, same run.

nano-vllm's workload (random prompts, ignore_eos), greedy, once with
``kv_cache_dtype="auto"`` and once with ``"fp8"``. Reports output tok/s of
each (median of ``--runs``), the fraction of output tokens identical at the
same position, how long outputs agree before the first difference, and the
mean |Δ logprob| of the chosen token over the agreeing prefix (from an untimed run of the first
``LOGPROB_SEQS`` sequences with logprobs on; the timed runs ask for none). Random weights
amplify the FP8 rounding (nothing in them is smooth), so agreement here is a
lower bound for a trained model.

GPU: python benchmarks/bench_fp8_kv.py               (Qwen3-0.6B shapes, bf16, 256 sequences)
CPU: python benchmarks/bench_fp8_kv.py --scale cpu   (a 4-layer model, 32 sequences)
     [--fp8-query]   also the FP8 cache with the queries rounded to FP8 too (``FP8_QUERY``)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import median_and_spread, nano_vllm_workload, parse_scaled_args, sync
from folovllm import LLM, SamplingParams
from folovllm.attention.backends import abstract

LOGPROB_SEQS = 64
SCALES = {
    "gpu": dict(preset="qwen3-0.6b", num_seqs=256, max_in=1024, max_out=1024),
    "cpu": dict(preset="small", num_seqs=32, max_in=256, max_out=64),
}


def run(model: str, device: str, kv_cache_dtype: str, scale: dict, runs: int):
    llm = LLM(model, device=device, kv_cache_dtype=kv_cache_dtype, max_model_len=scale["max_in"] + scale["max_out"] + 16,
              async_scheduling=device == "cuda")  # fmt: skip
    vocab = llm.llm_engine.config.model_config.get_vocab_size()
    wl = nano_vllm_workload(scale["num_seqs"], 16, scale["max_in"], scale["max_out"], vocab)
    prompts = [{"prompt_token_ids": p} for p in wl.prompts]
    # No logprobs in the timed runs: building them on the host costs more per step than the
    # GPU's step at 256 sequences and would hide what the cache's dtype changes.
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up, untimed
    secs, outs = [], None
    for _ in range(runs):
        llm.reset_prefix_cache()
        sync(device)
        t0 = time.perf_counter()
        outs = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
        sync(device)
        secs.append(time.perf_counter() - t0)
    k = min(LOGPROB_SEQS, len(prompts))  # the chosen tokens' logprobs, untimed, for the first k sequences
    lp_params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=n, logprobs=0) for n in wl.output_lens[:k]]
    lp_outs = [o.outputs[0] for o in llm.generate(prompts[:k], lp_params, use_tqdm=False)]
    del llm
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return sorted(secs), outs, lp_outs, wl.num_output_tokens


def _agreeing_prefix(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), len(a.token_ids))


def agreement(base, other, base_lp, other_lp) -> tuple[float, float, float]:
    """(identical tokens / all, mean agreeing prefix length) of the timed outputs, and the mean
    |Δ logprob| of the chosen tokens over the agreeing prefixes of the logprob outputs."""
    same = sum(x == y for a, b in zip(base, other) for x, y in zip(a.token_ids, b.token_ids))
    total = sum(len(a.token_ids) for a in base)
    prefix = statistics.mean(_agreeing_prefix(a, b) for a, b in zip(base, other))
    deltas = [abs(a.logprobs[i][a.token_ids[i]].logprob - b.logprobs[i][b.token_ids[i]].logprob)
              for a, b in zip(base_lp, other_lp) for i in range(_agreeing_prefix(a, b))]  # fmt: skip
    return same / total, prefix, statistics.mean(deltas) if deltas else float("nan")


def main() -> None:
    add = lambda ap: ap.add_argument("--fp8-query", action="store_true", help="also FP8 with FP8_QUERY on")  # noqa: E731
    args, device, scale, model = parse_scaled_args(SCALES, add_arguments=add)
    print(f"model {model} on {device}, torch {torch.__version__}, {scale['num_seqs']} sequences, median of {args.runs} runs")
    base_secs, base, base_lp, tokens = run(model, device, "auto", scale, args.runs)
    print(f"auto: {tokens / base_secs[len(base_secs) // 2]:,.0f} output tok/s, {median_and_spread(base_secs)}")
    for query_too in (False, True) if args.fp8_query else (abstract.FP8_QUERY,):
        abstract.FP8_QUERY = query_too  # read by each engine's attention backend
        fp8_secs, fp8, fp8_lp, _ = run(model, device, "fp8", scale, args.runs)
        same, prefix, delta = agreement(base, fp8, base_lp, fp8_lp)
        name = "fp8, query too (FP8_QUERY)" if query_too else "fp8"
        print(f"{name}: {tokens / fp8_secs[len(fp8_secs) // 2]:,.0f} output tok/s, {median_and_spread(fp8_secs)}")
        print(f"    identical tokens {same:.1%}; outputs agree for {prefix:.1f} of {tokens / len(base):.1f} tokens on average; "
              f"mean |dlogprob| over agreeing prefixes {delta:.4f} (first {len(base_lp)} sequences)")


if __name__ == "__main__":
    main()
