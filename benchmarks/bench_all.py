"""The benchmark suite, one command, on a GPU:

    python benchmarks/bench_all.py            # rewrites its part of docs/benchmarks.md, and docs/roofline.png
    python benchmarks/bench_all.py --smoke    # the same script on the CPU with a tiny model (checks it runs)

(a) throughput on nano-vllm's workload (256 seqs, Qwen3-0.6B shapes, bf16), ``--runs`` times;
(b) latency: TTFT of one 1024-token prompt (with the mixed-step CUDA graphs and
    without), TPOT at batch 1 over 256 tokens, start-up time (``LLM(...)`` to
    ready, transformers already imported; the import, timed in a fresh process
    after ``import folovllm``, beside it; below the table, the engine's start-up phases), the first request after start-up against a warm one, and how many
    Triton kernel variants compiled after start-up (should be 0);
(c) HF ``generate`` on the same workload in the same process;
(d) the hardware floor of (a) and (b): bytes that must move (weights once
    per step + the KV cache read) over the copy bandwidth measured here, and
    for TTFT the FLOPs over the measured matmul rate; printed as achieved / floor;
    and the roofline: output tok/s against that floor for batch sizes 1..256 (``bench_roofline.py``);
(e) prefix caching on vs off (``bench_prefix_caching.py``): a shared-prefix
    workload, a repeated prompt, and nano-vllm's workload where nothing can hit;
(f) with ``--gptq qwen3-8b`` (or qwen3-4b): GPTQ 4-bit against bf16 on a bigger
    model (``bench_gptq.py``); off by default, it builds and quantizes an 8B
    checkpoint first;
(g) the FP8 KV cache against the bf16 one on workload (a), greedy: tok/s and agreement (``bench_fp8_kv.py``).

Warm-up and graph capture stay outside every timed region, except in the
start-up and first-request rows, which measure exactly them. Interrupted
(Ctrl-C, or a time limit's SIGINT) during (c), (e), (f) or (g), the run stops
there and still writes what it measured, saying where it was cut.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import bench_fp8_kv, bench_switches
from benchmarks.bench_gptq import compare as compare_gptq
from benchmarks.bench_prefix_caching import SCALES as PREFIX_SCALES
from benchmarks.bench_prefix_caching import compare as compare_prefix_caching
from benchmarks.bench_roofline import BATCH_SIZES, markdown as roofline_markdown, model_bytes, plot as plot_roofline, sweep
from benchmarks.common import (
    get_checkpoint, hf_generate_throughput, measure_copy_bandwidth, median_and_spread, ms_spread, nano_vllm_workload, sync, timed,
    ttft,
)  # fmt: skip
from folovllm import LLM, SamplingParams
from folovllm.utils.triton_variants import compiled_kernel_variants

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", dtype="bfloat16", num_seqs=256, min_len=100, max_len=1024, ttft_len=1024, tpot_tokens=256,
                roofline=(BATCH_SIZES, 128, 256), matmul_n=8192, copy_bytes=1 << 30),
    "smoke": dict(preset="tiny", dtype="float32", num_seqs=8, min_len=8, max_len=64, ttft_len=128, tpot_tokens=16,
                  roofline=([1, 2, 4], 16, 16), matmul_n=256, copy_bytes=1 << 26),
}  # fmt: skip
BEGIN, END = "<!-- bench_all.py: begin -->", "<!-- bench_all.py: end -->"


def measure_matmul_flops(device: str, n: int, iters: int = 10) -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def run_until_interrupted(parts: list[tuple[str, Callable[[], Any]]]) -> tuple[dict[str, Any], str | None]:
    """Run each ``(name, measure)`` in turn until one is interrupted (Ctrl-C, or the SIGINT that
    ``scripts/gpu_checks.sh`` sends at a stage's time limit). Returns the results of those that
    finished, by name, and the name of the interrupted one (None if none was)."""
    done = {}
    for name, measure in parts:
        print(f"measuring {name} ...", flush=True)
        try:
            done[name] = measure()
        except KeyboardInterrupt:
            return done, name
    return done, None


def write_section(path: Path, text: str) -> None:
    """Replace what an earlier run wrote between the markers; the rest of the file (history, notes) stays."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, old, count=1, flags=re.S)
    else:
        new = block + "\n" + old
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def import_transformers() -> tuple[float, float]:
    """Import here what ``LLM(...)`` uses of transformers (its config and tokenizer classes), and
    return the seconds a fresh Python process takes for ``import folovllm`` (torch included), then
    for that transformers import after it: what ``LLM(...)`` adds to a script that has only done
    ``from folovllm import LLM``.

    ``LLM(...)`` imports them unless the script has already, and building a random checkpoint
    imports them too: imported beforehand, and timed apart, the start-up row times the engine alone
    whether or not this run built the checkpoint. (Timed without folovllm first, the import would
    also count torch's, which every script pays before it can call ``LLM``.)
    """
    code = (
        "import time; t0 = time.perf_counter(); import folovllm; t1 = time.perf_counter(); "
        "from transformers import AutoConfig, AutoTokenizer; print(t1 - t0, time.perf_counter() - t1)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    folovllm_secs, transformers_secs = (float(x) for x in out.split()[-2:])
    from transformers import AutoConfig, AutoTokenizer

    del AutoConfig, AutoTokenizer
    return folovllm_secs, transformers_secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, small sizes: checks the script, measures nothing")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of workload (a), each reported")
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--sync", action="store_true", help="turn async scheduling off")
    ap.add_argument("--prefix-runs", type=int, default=3, help="timed runs per prefix-caching row (0: skip (e))")
    ap.add_argument("--fp8-runs", type=int, default=1, help="timed runs per KV-cache dtype in (g) (0: skip)")
    ap.add_argument("--gptq", default="none", choices=["none", "qwen3-4b", "qwen3-8b"], help="model shape for (f); none skips it")
    ap.add_argument("--out", default="docs/benchmarks.md", help="the roofline plot goes beside it, as roofline.png")
    ap.add_argument("--switches", type=bench_switches.switch_names, default=[],
                    help="comma-separated speed switches to turn on for every engine (bench_switches.py's names), "
                         "e.g. those a device session's switches stage found winning; the report names them")  # fmt: skip
    ap.add_argument("--skinny-configs", type=Path, default=None, help="with --switches skinny_gemm: the table bench_kernels.py wrote")
    args = ap.parse_args()
    scale = SCALES["smoke" if args.smoke else "gpu"]
    device = "cpu" if args.smoke else "cuda"
    assert args.smoke or torch.cuda.is_available(), "bench_all.py needs a CUDA GPU (or --smoke)"
    model = get_checkpoint(args.model, scale["preset"], device)
    out_path = Path(args.out)
    switches_on = bench_switches.apply_from_args(args.switches, args.skinny_configs, device)

    bw = measure_copy_bandwidth(device, nbytes=scale["copy_bytes"])
    flops = measure_matmul_flops(device, scale["matmul_n"])
    max_len = scale["max_len"]
    engine_kwargs = dict(device=device, dtype=scale["dtype"], max_model_len=2 * max_len + 64, enforce_eager=args.enforce_eager,
                         async_scheduling=not args.sync)  # fmt: skip
    folovllm_import_secs, import_secs = import_transformers()
    t0 = time.perf_counter()
    llm = LLM(model, **engine_kwargs)
    sync(device)
    startup = time.perf_counter() - t0
    engine = llm.llm_engine
    phases = engine.startup_seconds
    limits = engine.config.scheduler_config  # the batch limits the device's defaults gave
    worker = engine.executor.worker
    compiled_ahead = ""  # (whether they compiled or came from Triton's cache on disk, the phase's time says)
    if worker.variants_compiled_ahead is not None:
        compiled_ahead = (f"; Triton variants readied by the parallel compile pass: {worker.variants_compiled_ahead}, "
                          f"after it: {worker.variants_compiled_late}")  # fmt: skip
    runner = worker.model_runner
    variants_at_start = compiled_kernel_variants()
    vocab = engine.config.model_config.get_vocab_size()
    rng = random.Random(5)
    short_prompt = [rng.randrange(vocab) for _ in range(128)]
    first_request = ttft(llm, device, short_prompt)  # before anything else has run
    weight_bytes, kv_per_token = model_bytes(llm)
    num_params = sum(p.numel() for p in runner.model.parameters())

    # (a) throughput
    wl = nano_vllm_workload(scale["num_seqs"], scale["min_len"], max_len, max_len, vocab)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    prompts = [{"prompt_token_ids": p} for p in wl.prompts]
    llm.generate(prompts[:4], [SamplingParams(max_tokens=8, ignore_eos=True)] * 4, use_tqdm=False)  # warm-up
    tput_secs = []
    for _ in range(args.runs):
        llm.reset_prefix_cache()  # every run computes its prompts
        tput_secs.append(timed(device, functools.partial(llm.generate, prompts, params, use_tqdm=False)))
    tput_runs = [wl.num_output_tokens / s for s in tput_secs]
    decode_steps = max(wl.output_lens)
    kv_read = kv_per_token * sum(len(p) * n + n * (n - 1) // 2 for p, n in zip(wl.prompts, wl.output_lens))
    tput_floor_secs = (weight_bytes * decode_steps + kv_read) / bw
    preemptions = engine.get_stats()["num_preemptions"]

    # (b) latency
    long_prompt = [rng.randrange(vocab) for _ in range(scale["ttft_len"])]
    ttfts = [ttft(llm, device, long_prompt) for _ in range(5)]
    warm_short = [ttft(llm, device, short_prompt) for _ in range(5)]
    ttfts_eager = []
    if runner.graph_runner is not None:
        mixed, runner.graph_runner.mixed_sizes = runner.graph_runner.mixed_sizes, []
        ttfts_eager = [ttft(llm, device, long_prompt) for _ in range(5)]
        runner.graph_runner.mixed_sizes = mixed
    ttft_floor = 2 * num_params * len(long_prompt) / flops
    tpot_prompt = {"prompt_token_ids": [rng.randrange(vocab) for _ in range(32)]}
    tpots = []
    for _ in range(3):
        out = llm.generate([tpot_prompt], SamplingParams(max_tokens=scale["tpot_tokens"] + 1, ignore_eos=True), use_tqdm=False)[0]
        tpots.append(out.metrics.mean_time_per_output_token)
    tpot = statistics.median(tpots)
    tpot_floor = (weight_bytes + kv_per_token * (32 + scale["tpot_tokens"] // 2)) / bw

    # (d) roofline
    sizes, roof_prompt, roof_out = scale["roofline"]
    roofline = sweep(llm, device, sizes, roof_prompt, roof_out, weight_bytes, kv_per_token, bw)
    compiled = {k: v - variants_at_start.get(k, 0) for k, v in compiled_kernel_variants().items() if v != variants_at_start.get(k, 0)}
    runner_alive = weakref.ref(runner)  # the model runner holds the KV cache
    del llm, engine, worker, runner
    gc.collect()  # the engine holds reference cycles; its KV cache must go before the next engine
    assert runner_alive() is None, "something still holds the first engine's model runner, and with it its KV cache"
    if device == "cuda":
        torch.cuda.empty_cache()

    # (c), (e), (f), (g): each its own engine(s). A time limit's SIGINT stops the run there, and
    # what was measured before it is still written.
    def hf() -> float:
        hf_secs, hf_tokens = hf_generate_throughput(model, wl, device, torch.bfloat16, args.hf_batch_size)
        return hf_tokens / hf_secs

    def fp8_kv() -> list[str]:
        fp8_scale = dict(num_seqs=scale["num_seqs"], max_in=max_len, max_out=max_len)
        base_secs, base, base_lp, tokens = bench_fp8_kv.run(model, device, "auto", fp8_scale, args.fp8_runs)
        fp8_secs, fp8, fp8_lp, _ = bench_fp8_kv.run(model, device, "fp8", fp8_scale, args.fp8_runs)
        same, prefix, delta = bench_fp8_kv.agreement(base, fp8, base_lp, fp8_lp)
        return [
            f"(g) KV cache dtype on workload (a), greedy, {args.fp8_runs} run(s) each: "
            f"auto {tokens / base_secs[len(base_secs) // 2]:,.0f} output tok/s ({median_and_spread(base_secs)}), "
            f"fp8 {tokens / fp8_secs[len(fp8_secs) // 2]:,.0f} output tok/s ({median_and_spread(fp8_secs)}); "
            f"identical tokens {same:.1%}, outputs agree for {prefix:.1f} of {tokens / len(base):.1f} tokens on average, "
            f"mean |dlogprob| {delta:.4f} over the agreeing prefixes of the first {len(base_lp)} sequences "
            "(random weights: a lower bound for a trained model). The timed runs ask for no logprobs.",
            "",
        ]

    parts = [
        ("(c) HF generate", hf, not args.skip_hf and not args.smoke),
        ("(e) prefix caching", lambda: compare_prefix_caching(model, device, PREFIX_SCALES["gpu"], args.prefix_runs, vocab),
         args.prefix_runs and not args.smoke),
        ("(f) GPTQ", lambda: compare_gptq(get_checkpoint(None, args.gptq, device), device, 3, 128), args.gptq != "none"),
        ("(g) FP8 KV cache", fp8_kv, args.fp8_runs),
    ]  # fmt: skip
    done, cut = run_until_interrupted([(name, measure) for name, measure, wanted in parts if wanted])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # measuring is over: a late SIGINT must not cost the report
    hf_tput = done.get("(c) HF generate")
    prefix_rows = done.get("(e) prefix caching", [])
    gptq_lines = done.get("(f) GPTQ", [])
    fp8_lines = done.get("(g) FP8 KV cache", [])

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        machine = "the CPU (--smoke: a tiny model; these numbers measure nothing)"
    import triton

    tput_med = statistics.median(tput_runs)
    tput_floor = wl.num_output_tokens / tput_floor_secs
    warm_short_med = statistics.median(warm_short)
    rows = [
        ("(a) throughput, output tok/s", " / ".join(f"{t:,.0f}" for t in tput_runs), f"{tput_floor:,.0f}",
         f"{tput_med / tput_floor:.0%}", f"{tput_med / hf_tput:.1f}x ({hf_tput:,.0f})" if hf_tput else "-"),
        (f"(b) TTFT, {len(long_prompt)}-token prompt", ms_spread(ttfts), f"{ttft_floor * 1e3:.2f} ms",
         f"{ttft_floor / statistics.median(ttfts):.0%}", "-"),
        (f"(b) TTFT, {len(long_prompt)}-token prompt, mixed-step graphs off", ms_spread(ttfts_eager) if ttfts_eager else "-",
         f"{ttft_floor * 1e3:.2f} ms", f"{ttft_floor / statistics.median(ttfts_eager):.0%}" if ttfts_eager else "-", "-"),
        ("(b) TPOT, batch 1", f"{tpot * 1e3:.2f} ms ({len(tpots)} runs, {min(tpots) * 1e3:.2f}-{max(tpots) * 1e3:.2f})",
         f"{tpot_floor * 1e3:.2f} ms", f"{tpot_floor / tpot:.0%}", "-"),
        ("(b) start-up, `LLM(...)` to ready", f"{startup:.1f} s (+ {import_secs:.1f} s to import transformers after `import folovllm`, itself {folovllm_import_secs:.1f} s)", "-", "-", "-"),
        ("(b) first request after start-up, 128-token prompt", f"{first_request * 1e3:.1f} ms",
         f"{warm_short_med * 1e3:.2f} ms (warm, median of {len(warm_short)})", f"{first_request / warm_short_med:.1f}x warm", "-"),
    ]  # fmt: skip
    lines = [
        f"Measured {datetime.date.today()} on {machine}, torch {torch.__version__}, triton {triton.__version__}, "
        f"by `python benchmarks/bench_all.py{' --smoke' if args.smoke else ''}`.",
        f"Model: random weights with {scale['preset']}'s exact config, {scale['dtype']}, CUDA graphs {'off' if args.enforce_eager else 'on'}, "
        f"async scheduling {'off' if args.sync else 'on'}, at most {limits.max_num_seqs:,} sequences and "
        f"{limits.max_num_batched_tokens:,} tokens a step, "
        f"speed switches beyond the defaults: {' + '.join(switches_on) if switches_on else 'none'}"
        f"{' (fp8_query acts in the FP8 row only)' if 'fp8_query' in switches_on else ''}.",
        f"Workload (a): {scale['num_seqs']} sequences, input and output lengths uniform in {scale['min_len']}..{max_len} "
        f"(random token ids, temperature 0.6, ignore_eos), {wl.num_output_tokens:,} output tokens, {preemptions} preemptions; "
        f"{args.runs} timed runs, each shown.",
        f"Measured here: copy bandwidth {bw / 1e12:.2f} TB/s (read + write), matmul {flops / 1e12:.0f} TFLOP/s.",
        "",
        "| metric | FoloVLLM | floor | achieved / floor | vs HF generate |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"Start-up by phase: {', '.join(f'{name} {secs:.2f} s' for name, secs in phases.items())}; the config and "
        f"the rest {startup - sum(phases.values()):.2f} s{compiled_ahead}.",
        f"Triton kernel variants compiled after start-up (by any request above): {sum(compiled.values())}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(compiled.items()))})" if compiled else "") + ".",
        "",
        "Floors: (a) every decode step reads all weights once, and every generated token reads its",
        "sequence's whole KV context; (b) TPOT reads the weights once per token; TTFT is the matmul",
        "FLOPs (2 x params x tokens) at the measured matmul rate. Prefill of (a) is not in its floor.",
        f"HF generate runs greedy in padded batches of {args.hf_batch_size}; it is charged only for the",
        "tokens each sequence asked for.",
        "",
        f"Roofline (`roofline.png`): batch sizes {sizes[0]}..{sizes[-1]}, {roof_prompt}-token prompts, {roof_out} output tokens each, greedy.",
        "",
        *roofline_markdown(roofline),
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
    elif args.gptq == "none":
        lines += ["(f) GPTQ: not run (`--gptq qwen3-8b` runs it).", ""]
    lines += fp8_lines
    if cut:
        lines += [f"**This run was cut short by a time limit during {cut}**: that part and the ones after it did not run.", ""]
    text = "\n".join(lines)
    print(text, flush=True)
    write_section(out_path, text)
    png = out_path.with_name("roofline.png")
    title = f"{machine.split(' (')[0]}, {scale['preset']} {scale['dtype']}, prompt {roof_prompt}, output {roof_out}"
    print("roofline plot:", png if plot_roofline(roofline, png, title) else "not written (matplotlib is not installed)")


if __name__ == "__main__":
    main()
