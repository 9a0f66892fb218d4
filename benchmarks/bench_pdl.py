"""Programmatic dependent launch on against off, same process: TPOT, TTFT, throughput, and tokens.

``folovllm.utils.pdl`` lets each Triton kernel of a step launch while the one before it is still
running (and the one-row matmul fetch its weights into L2 meanwhile). It is off by default until
this script has shown what it does: it builds the engine with PDL off, then on (``--runs``
rounds, alternating, so that drift shows as a difference between rounds), and prints per setting
the batch-1 TPOT (3 runs of ``tpot_tokens``), the TTFT of one 1024-token prompt (5 runs), the
throughput on nano-vllm's workload (one run), and whether greedy tokens are the same as with PDL
off (they must be: PDL changes when kernels start, not what they compute).

GPU: python benchmarks/bench_pdl.py               (Qwen3-0.6B shapes, bf16; PDL needs sm_90)
CPU: python benchmarks/bench_pdl.py --scale cpu   (checks the script; both settings run without PDL)
"""

from __future__ import annotations

import functools
import gc
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.bench_all import ms_spread, ttft
from benchmarks.common import nano_vllm_workload, parse_scaled_args, timed
from folovllm import LLM, SamplingParams
from folovllm.utils import pdl

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", num_seqs=256, max_len=1024, ttft_len=1024, tpot_tokens=256),
    "cpu": dict(preset="small", num_seqs=8, max_len=64, ttft_len=128, tpot_tokens=8),
}


def measure(model: str, device: str, scale: dict, enabled: bool) -> dict:
    pdl.ENABLED = enabled  # read at each launch, and baked into the CUDA graphs captured below
    llm = LLM(model, device=device, max_model_len=2 * scale["max_len"] + 64, async_scheduling=device == "cuda")
    on = pdl.pdl_launch_args(torch.zeros(1, device=device))["USE_PDL"]
    vocab = llm.llm_engine.config.model_config.get_vocab_size()
    wl = nano_vllm_workload(scale["num_seqs"], 16, scale["max_len"], scale["max_len"], vocab)
    prompts = [{"prompt_token_ids": p} for p in wl.prompts]
    greedy = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up, untimed
    tpot_prompt = {"prompt_token_ids": wl.prompts[0][:32]}
    tpots = []
    for _ in range(3):
        out = llm.generate([tpot_prompt], SamplingParams(max_tokens=scale["tpot_tokens"] + 1, ignore_eos=True), use_tqdm=False)[0]
        tpots.append(out.metrics.mean_time_per_output_token)
    long_prompt = [(7 * i + 3) % vocab for i in range(scale["ttft_len"])]
    ttfts = [ttft(llm, device, long_prompt) for _ in range(5)]
    llm.reset_prefix_cache()
    outs, generate = [], functools.partial(llm.generate, prompts, greedy, use_tqdm=False)
    secs = timed(device, lambda: outs.extend(generate()))
    del llm
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(on=on, tpots=tpots, ttfts=ttfts, tok_s=[wl.num_output_tokens / secs], tokens=[o.outputs[0].token_ids for o in outs])


def main() -> None:
    args, device, scale, model = parse_scaled_args(SCALES, runs=2)  # --runs: rounds of (off, on)
    rows, reference = [], None
    for r in range(args.runs):
        for enabled in (False, True):
            m = measure(model, device, scale, enabled)
            if reference is None:
                reference = m["tokens"]
            same = sum(a == b for a, b in zip(m["tokens"], reference))
            label = f"round {r + 1}, PDL {'on ' if m['on'] else 'off'}{' (asked for, not available here)' if enabled and not m['on'] else ''}"
            print(f"{label}: TPOT {ms_spread(m['tpots'])}; TTFT {ms_spread(m['ttfts'])}; {m['tok_s'][0]:,.0f} output tok/s; "
                  f"greedy outputs equal to round 1 without PDL: {same}/{len(reference)}", flush=True)  # fmt: skip
            rows.append(m)
    for what, key in (("TPOT", "tpots"), ("TTFT", "ttfts"), ("throughput", "tok_s")):
        off = statistics.median(x for m in rows if not m["on"] for x in m[key])
        on = [x for m in rows if m["on"] for x in m[key]]
        if on:
            print(f"{what}, PDL on / off (medians over all rounds): {statistics.median(on) / off:.3f}")


if __name__ == "__main__":
    main()
