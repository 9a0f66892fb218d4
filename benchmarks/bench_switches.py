"""The engine's speed switches, each alone, against the engine's defaults, in one process.

Switches a GPU run decides on:

* ``no_pdl``: programmatic dependent launch (``folovllm.utils.pdl``) off. With it, each Triton
  kernel of a step launches while the one before it still runs, and reads what no kernel writes
  (weights into L2, the step's positions and lengths) meanwhile; on by default since the H100 run
  of 2026-11-27, which measured it against no switch;
* ``fused_gemv``: at one row, the RMSNorm (with the residual add) inside the q/k/v and gate/up
  GEMVs and SiLU-and-mul inside down's (``triton_gemv.FUSED_GEMV_CONFIGS``, filled here with each
  shape's plain GEMV configuration): seven kernels per layer instead of ten;
* ``fuse_new_token``: decode steps norm, rotate and cache their new k and v inside the decode
  attention kernel (``triton_decode_attention.FUSE_NEW_TOKEN``): nine kernels per layer instead of ten;
* ``fuse_new_token_split``: the same in the decode steps whose kernel splits the keys only (few
  sequences: 1-32 on an H100), where the fused kernel won on an H200 (it lost 3% at 256 sequences);
  at batch 1 it is ``fuse_new_token``, so the batch-1 step part leaves it out;
* ``batch_order``: decode steps start their sequences' attention programs in batch order, not
  longest first (``triton_decode_attention.LONGEST_FIRST`` off); longest first is the default since
  the H200 run of 2026-11-28 (throughput 1.066 against batch order, the same greedy tokens);
* ``decodes_by_kv_head``: in steps with prompt tokens, the prefill kernel takes each decode as one
  work item per kv head (``triton_prefill_attention.DECODES_BY_KV_HEAD``) instead of a 64-row tile
  per query head; it acts where a step holds prompts and decodes together: a run of 1,000 prompts
  (``--num-seqs 1000``) holds 21% of its decoding's reads in such steps at an H100's 1,024 sequences
  a step (preempted sequences coming back), 28% at 256; the default workload under 1%;
* ``skinny_gemm``: at 5 to 256 rows, the Triton skinny GEMM (``triton_skinny_gemm.SKINNY_GEMM_CONFIGS``):
  by default for o and down, the two projections cuBLAS read at 21-34% of copy bandwidth, K split
  4 ways, a guess; ``--skinny-configs FILE`` gives it the table ``bench_kernels.py --skinny-table
  FILE`` wrote (where the skinny GEMM beat every library) instead;
* ``fp8_query``: attention over an FP8 cache rounds the query to FP8 too (``abstract.FP8_QUERY``),
  and the kernels take q.K as one FP8 warpgroup MMA (the decode kernel's loop turned round for it):
  it acts only with ``--kv-cache-dtype fp8``, which every engine of the run then gets (without it,
  the switch is left out).

First, in one engine, a batch-1 decode step's forward and logits captured as a CUDA graph under
each setting and replayed in turn (``step_graphs_in_turn``): the GPU time per step each setting
gives, free of the spread between engines that decided nothing for the fused GEMV on 2026-11-27.
Then per setting, an engine of its own (``--runs`` rounds, settings in turn within a round, so
that drift shows between rounds): the batch-1 TPOT (3 runs of ``tpot_tokens``), the TTFT of one 1024-token prompt (5 runs),
the throughput on nano-vllm's workload (one run), and how many greedy outputs equal those of round 1
with the defaults (PDL must change none; a fused norm sums in another order, so may change a few);
last, each setting's medians over the rounds against the defaults (also when a time limit's Ctrl-C
cuts the run: the settings measured so far).

GPU: python benchmarks/bench_switches.py               (Qwen3-0.6B shapes, bf16; PDL needs sm_90)
CPU: python benchmarks/bench_switches.py --scale cpu   (checks the script; PDL is not available there)
     [--only SWITCH,...]   the defaults and these switches alone (the batch-1 step too, where they act there)
     [--skinny-configs FILE]
     [--num-seqs N]        prompts in the throughput workload (at most max_num_seqs at a time: 1,024 on an H100)
     [--together]          also every --only switch at once (the winners a device session picked,
                           before ``bench_all.py --switches`` publishes figures with them)
     [--kv-cache-dtype fp8] every engine with an FP8 KV cache (and fp8_query among the switches)
"""

from __future__ import annotations

import argparse
import ast
import functools
import gc
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ms_spread, nano_vllm_workload, parse_scaled_args, timed, ttft
from folovllm import LLM, SamplingParams
from folovllm.attention.backends import abstract
from folovllm.attention.ops import triton_decode_attention, triton_prefill_attention
from folovllm.model_executor.layers import triton_gemv, triton_skinny_gemm
from folovllm.utils import pdl
from folovllm.worker.cuda_graph_runner import CUDAGraphRunner

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", num_seqs=256, max_len=1024, ttft_len=1024, tpot_tokens=256),
    "cpu": dict(preset="small", num_seqs=8, max_len=64, ttft_len=128, tpot_tokens=8),
}
PDL_DEFAULT = pdl.ENABLED  # FOLOVLLM_PDL=0 turns it off for the defaults too
LONGEST_FIRST_DEFAULT = triton_decode_attention.LONGEST_FIRST
SWITCHES = ("no_pdl", "fused_gemv", "fuse_new_token", "fuse_new_token_split", "batch_order", "decodes_by_kv_head", "skinny_gemm",
            "fp8_query")
# The defaults, then each switch alone.
SETTINGS = [(), *((name,) for name in SWITCHES)]
# Those that change a batch-1 step (the skinny GEMM takes 5 rows and more; the order, several sequences).
STEP_SETTINGS = [(), ("no_pdl",), ("fused_gemv",), ("fuse_new_token",), ("fused_gemv", "fuse_new_token"), ("fp8_query",)]
# The shapes whose one-row GEMV takes the op before it inside: q/k/v, gate/up (the norm), down (SiLU-and-mul).
FUSABLE = [(4096, 1024), (6144, 1024), (1024, 3072)]
# o and down (1,024 outputs each) at every row bucket, K split 4 ways: a guess until bench_kernels.py
# has chosen (--skinny-configs replaces it)
SKINNY = {(n, k, rows): (min(128, max(16, rows)), 64, 64, 4, 4, 4) for n, k in ((1024, 2048), (1024, 3072)) for rows in (8, 16, 32, 64, 128, 256)}


def apply(setting: tuple[str, ...], device: str) -> tuple[str, ...]:
    """Turn the switches in ``setting`` on and the others off, back to the defaults (read at each
    launch, and baked into the CUDA graphs an engine captures); returns those that took effect here."""
    pdl.ENABLED = True
    pdl_here = pdl.pdl_launch_args(torch.zeros(1, device=device))["USE_PDL"]
    pdl.ENABLED = PDL_DEFAULT and "no_pdl" not in setting
    fused = "fused_gemv" in setting
    triton_gemv.FUSED_GEMV_CONFIGS = {s: triton_gemv.GEMV_CONFIGS[s] for s in FUSABLE} if fused else {}
    triton_decode_attention.LONGEST_FIRST = LONGEST_FIRST_DEFAULT and "batch_order" not in setting  # read by the next engine's backend
    # likewise; both named: every step (the wider)
    triton_decode_attention.FUSE_NEW_TOKEN = True if "fuse_new_token" in setting else "split" if "fuse_new_token_split" in setting else False
    triton_prefill_attention.DECODES_BY_KV_HEAD = "decodes_by_kv_head" in setting  # likewise
    abstract.FP8_QUERY = "fp8_query" in setting  # likewise (over an FP8 cache only)
    skinny = "skinny_gemm" in setting
    triton_skinny_gemm.SKINNY_GEMM_CONFIGS = dict(SKINNY) if skinny else {}
    return tuple(name for name in setting if name != "no_pdl" or (pdl_here and PDL_DEFAULT))


def apply_from_args(names: list[str], skinny_configs: Path | None, device: str) -> tuple[str, ...]:
    """``apply`` for another script's ``--switches`` (and the skinny GEMM's table from a file where
    given); returns the switches that took effect, for its report."""
    if skinny_configs is not None:
        SKINNY.clear()
        SKINNY.update(ast.literal_eval(skinny_configs.read_text()))
    return apply(tuple(names), device)


def measure(model: str, device: str, scale: dict, kv_cache_dtype: str = "auto") -> dict:
    llm = LLM(model, device=device, max_model_len=2 * scale["max_len"] + 64, async_scheduling=device == "cuda", kv_cache_dtype=kv_cache_dtype)
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
    return dict(tpots=tpots, ttfts=ttfts, tok_s=[wl.num_output_tokens / secs], tokens=[o.outputs[0].token_ids for o in outs])


def step_graphs_in_turn(model: str, device: str, scale: dict, settings: list, kv_cache_dtype: str = "auto", rounds: int = 5,
                        reps: int = 50) -> None:
    """A batch-1 decode step's forward and logits, captured as a CUDA graph under each setting in
    one engine and replayed in turn: the GPU time each setting gives that step, without the spread
    between engines that the TPOT rows carry (on the H100, one engine's TPOT differed from the next
    one's with the same setting by up to 6%). On the CPU: eager calls, a check of the script."""
    llm = LLM(model, device=device, max_model_len=2 * scale["max_len"] + 64, async_scheduling=False, kv_cache_dtype=kv_cache_dtype)
    engine = llm.llm_engine
    runner = engine.executor.worker.model_runner
    vocab = engine.config.model_config.get_vocab_size()
    engine.add_request("step", [(7 * i + 3) % vocab for i in range(32)], SamplingParams(max_tokens=10_000, ignore_eos=True))
    for _ in range(scale["tpot_tokens"] // 2):  # the prompt, then decoding to about the TPOT rows' mean context
        engine.step()
    so = engine.scheduler.schedule()
    with torch.inference_mode():
        runner._update_states(so)
        inputs = runner._prepare_inputs(so)
        meta = inputs.attn_metadata
        if runner.graph_runner is not None:  # the engine's own batch-1 graph metadata (split count, block table)
            runner.graph_runner.block_table[:1, : meta.block_table.shape[1]].copy_(meta.block_table)
            meta = runner.graph_runner._metadata("decode", 1)

        def forward() -> torch.Tensor:
            return runner.model.compute_logits(runner.model(inputs.input_ids, inputs.positions, meta))

        calls, pool = {}, None
        for setting in settings:
            took = apply(setting, device)
            # the backend read FUSE_NEW_TOKEN when this engine was made; the model asks it at each call
            runner.attn_backend.fuses_new_token = triton_decode_attention.FUSE_NEW_TOKEN if runner.attn_backend.name == "triton" else False
            runner.attn_backend.fp8_query = abstract.FP8_QUERY  # likewise FP8_QUERY (both backends)
            forward()  # compiles this setting's kernels outside the capture
            if device == "cuda":
                graph, _, pool = CUDAGraphRunner._capture_graph(forward, pool)
                calls[label(setting, took)] = graph.replay
            else:
                calls[label(setting, took)] = forward
        apply((), device)
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                times[name].append(timed(device, lambda: [call() for _ in range(reps)]) / reps)
    base = statistics.median(times[label((), ())])
    print(f"batch-1 step (forward + logits) as one graph per setting, one engine, {rounds} rounds of {reps} replays in turn:")
    for name, t in times.items():
        us = ", ".join(f"{x * 1e6:.1f}" for x in t)
        print(f"  {name}: {statistics.median(t) * 1e6:.1f} us ({us}); / defaults {statistics.median(t) / base:.3f}")


def label(setting: tuple[str, ...], took: tuple[str, ...]) -> str:
    missing = [name for name in setting if name not in took]
    return (" + ".join(setting) or "defaults") + (f" ({', '.join(missing)}: not available here)" if missing else "")


def switch_names(value: str) -> list[str]:
    names = value.split(",")
    unknown = sorted(set(names) - set(SWITCHES))
    if unknown:
        raise argparse.ArgumentTypeError(f"no such switch: {unknown}; the switches are {list(SWITCHES)}")
    return names


def add_arguments(ap) -> None:
    ap.add_argument("--only", type=switch_names, default=list(SWITCHES), help="comma-separated switches (default: all)")
    ap.add_argument("--skinny-configs", type=Path, default=None, help="the skinny GEMM's table, as bench_kernels.py --skinny-table wrote it")
    ap.add_argument("--num-seqs", type=int, default=None, help="prompts in the throughput workload (default: the scale's)")
    ap.add_argument("--together", action="store_true", help="also every --only switch at once, as one more setting")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8"), help="every engine's KV cache (fp8_query acts over fp8 only)")


def main() -> None:
    args, device, scale, model = parse_scaled_args(SCALES, runs=2, add_arguments=add_arguments)  # --runs: rounds over every setting
    if args.num_seqs is not None:
        scale = {**scale, "num_seqs": args.num_seqs}
    if args.kv_cache_dtype != "fp8" and "fp8_query" in args.only:
        args.only = [name for name in args.only if name != "fp8_query"]
        print("fp8_query left out: it acts over an FP8 KV cache only (--kv-cache-dtype fp8)")
    print(f"KV cache: {args.kv_cache_dtype}")
    print(f"throughput workload: {scale['num_seqs']} prompts of up to {scale['max_len']} tokens")
    apply_from_args([], args.skinny_configs, device)  # the table only; each setting turns its switches on below
    if "skinny_gemm" in args.only:
        print(f"the skinny GEMM's table: {len(SKINNY)} entries, from {args.skinny_configs or 'a guess for o and down'}")
    settings = [s for s in SETTINGS if set(s) <= set(args.only)]
    if args.together and len(args.only) > 1:
        settings.append(tuple(name for name in SWITCHES if name in args.only))
    step_settings = [s for s in STEP_SETTINGS if set(s) <= set(args.only)]
    if len(step_settings) > 1:  # something to compare with the defaults
        try:
            step_graphs_in_turn(model, device, scale, step_settings, args.kv_cache_dtype)
        finally:
            apply((), device)
        gc.collect()  # that engine's memory, before the next ones measure what they may take
        if device == "cuda":
            torch.cuda.empty_cache()
    by_setting, reference = {s: [] for s in settings}, None
    try:
        for r in range(args.runs):
            for setting in settings:
                took = apply(setting, device)
                m = measure(model, device, scale, args.kv_cache_dtype)
                reference = reference or m["tokens"]
                same = sum(a == b for a, b in zip(m["tokens"], reference))
                print(f"round {r + 1}, {label(setting, took)}: TPOT {ms_spread(m['tpots'])}; TTFT {ms_spread(m['ttfts'])}; "
                      f"{m['tok_s'][0]:,.0f} output tok/s; greedy outputs equal to round 1 with the defaults: "
                      f"{same}/{len(reference)}", flush=True)  # fmt: skip
                by_setting[setting].append(m)
    except KeyboardInterrupt:  # scripts/gpu_checks.sh's time limit: summarise what was measured
        print("(cut short)")
    finally:
        apply((), device)
    none = by_setting[()]
    for setting in settings[1:]:
        rows = by_setting[setting]
        if not rows or not none:
            continue
        ratios = []
        for what, key in (("TPOT", "tpots"), ("TTFT", "ttfts"), ("throughput", "tok_s")):
            base = statistics.median(x for m in none for x in m[key])
            ratios.append(f"{what} {statistics.median(x for m in rows for x in m[key]) / base:.3f}")
        print(f"{' + '.join(setting)} / defaults (medians over all rounds): {', '.join(ratios)}")


if __name__ == "__main__":
    main()
