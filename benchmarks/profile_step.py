"""Where does a step's time go? Views of prefill, decode and the throughput workload.

    python benchmarks/profile_step.py breakdown     # wall time per phase of steady decode steps (GPU synced)
    python benchmarks/profile_step.py host [N]      # host work per decode step without the model: generate, streaming, logprobs
    python benchmarks/profile_step.py logprobs [N]  # the same for logprobs=5, list-of-dicts against flat logprobs, per output kind
    python benchmarks/profile_step.py cprofile      # host-side cProfile of the whole run
    python benchmarks/profile_step.py kernels [B]   # kernel table of steady decode steps at batch B (256); idle gaps between kernels
    python benchmarks/profile_step.py prefill       # one prompt: wall time vs GPU kernel time, graphs on and off; wall by call
    python benchmarks/profile_step.py tail          # the throughput workload's steps, grouped by what they held, against their floor
    python benchmarks/profile_step.py prompts       # the throughput workload's first step (prompts only): wall, GPU, by kernel
    python benchmarks/profile_step.py schedule [N] [SEQS] [KV]  # the throughput workload's steps with prompt tokens, N prompts, SEQS at a time, a KV cache of KV tokens (an H100's by default; CPU, no model)
    python benchmarks/profile_step.py copies        # does a copy from pageable host memory wait for the GPU?

Every view also runs on the CPU (a small model; kernels then lists operators): a check of the script
before GPU time is spent on it. host measures only the CPU anyway.
"""

import cProfile
import functools
import gc
import pstats
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.bench_throughput as bench  # noqa: E402
from benchmarks.common import get_checkpoint, measure_copy_bandwidth, nano_vllm_workload, sync, timed  # noqa: E402
from folovllm.config import LARGE_GPU_BATCH_DEFAULTS  # noqa: E402


def decoding_engine(num_seqs: int, prompt_len: int, enforce_eager: bool = False, async_scheduling: bool = False, **params):
    """An engine whose ``num_seqs`` requests have all finished their prompts and are decoding."""
    from folovllm import LLM, SamplingParams

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = get_checkpoint(None, "qwen3-0.6b" if device == "cuda" else "tiny", device)
    llm = LLM(model, max_model_len=2048 if device == "cuda" else 512, device=device, enforce_eager=enforce_eager,
              async_scheduling=async_scheduling)  # fmt: skip
    engine = llm.llm_engine
    vocab = engine.config.model_config.get_vocab_size()
    for i in range(num_seqs):
        prompt = [(i * 7 + j) % vocab for j in range(prompt_len)]
        engine.add_request(str(i), prompt, SamplingParams(temperature=0.6, max_tokens=10_000, ignore_eos=True, **params))
    while any(s.num_computed_tokens < len(s.prompt_token_ids) for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    return engine


def _step_without_the_model(engine, i: int, k: int | None = None):
    """Step ``i``'s host work before the model (schedule; the worker's state, inputs and sampling
    settings), then its sampled tokens, made up (the model does not run); with ``k``, logprob rows
    too: the token, then k others. Returns the step's SchedulerOutput and that ModelRunnerOutput."""
    from folovllm.model_runner_output import LogprobsLists, ModelRunnerOutput

    runner, vocab = engine.executor.worker.model_runner, engine.config.model_config.get_vocab_size()
    so = engine.scheduler.schedule()
    runner._update_states(so)
    inputs = runner._prepare_inputs(so)  # the sampling settings included
    req_ids = [s.req_id for s in inputs.sample_states]
    tokens = [(31 * i + 7 * row) % vocab for row in range(len(req_ids))]
    lps = None
    if k is not None:
        ids = [[t] + [(t + 13 * j) % vocab for j in range(1, k + 1)] for t in tokens]
        lps = LogprobsLists(ids, [[-0.5 * j for j in range(k + 1)] for _ in tokens], [1] * len(tokens))
    return so, ModelRunnerOutput(req_ids, tokens, lps)


def _computed_tokens(so) -> dict[str, int]:
    """Each scheduled sequence's tokens already computed before the step ``so`` schedules."""
    cached = so.scheduled_cached_reqs
    return {r.req_id: r.num_computed_tokens for r in so.scheduled_new_reqs} | dict(zip(cached.req_ids, cached.num_computed_tokens))


def _one_token_contexts(so, computed: dict[str, int]) -> list[int]:
    """The context (keys read) of each sequence the step ``so`` gives one token."""
    return [computed[r] + 1 for r, n in so.num_scheduled_tokens.items() if n == 1]


def _process(engine, output) -> None:
    """The engine's host work on a step's sampled tokens: the scheduler's update, then the outputs."""
    updated = engine.scheduler.update_from_output(output)
    engine.output_processor.process_new_tokens(updated, output)
    engine.output_processor.make_request_outputs(updated)


def breakdown(num_seqs: int = 256, prompt_len: int = 562 if torch.cuda.is_available() else 200, steps: int = 50) -> None:
    from folovllm.model_runner_output import ModelRunnerOutput
    from folovllm.sampling_params import RequestOutputKind

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = decoding_engine(num_seqs, prompt_len, output_kind=RequestOutputKind.FINAL_ONLY)  # as generate() sends them
    runner = engine.executor.worker.model_runner
    phases = dict.fromkeys(["schedule", "prepare", "forward", "logits+sample", "update+outputs"], 0.0)
    for _ in range(steps):
        t0 = time.perf_counter()
        so = engine.scheduler.schedule()
        t1 = time.perf_counter()
        runner._update_states(so)
        inputs = runner._prepare_inputs(so)
        sync(device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            hidden = runner._forward(inputs)
            sync(device)
            t3 = time.perf_counter()
            logits = runner.model.compute_logits(runner.sampled_rows(hidden, inputs))
            tokens = runner.sampler(logits, inputs.sampling_metadata).sampled_token_ids.tolist()
        t4 = time.perf_counter()
        _process(engine, ModelRunnerOutput([s.req_id for s in inputs.sample_states], tokens))
        t5 = time.perf_counter()
        for k, dt in zip(phases, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]):
            phases[k] += dt
    total = sum(phases.values())
    print(f"{num_seqs} sequences decoding at context ~{prompt_len}: {total / steps * 1e3:.2f} ms per step")
    for k, v in phases.items():
        print(f"  {k:15s} {v / steps * 1e3:7.3f} ms  ({v / total:.0%})")


def host(num_seqs: int = 256, prompt_len: int = 64, steps: int = 40, runs: int = 5) -> None:
    """Host work per decode step, by kind of request: what runs on the CPU around the model.

    The scheduler, the worker's input preparation (sampling settings included),
    the scheduler's update and the output processor run as in ``engine.step()``; the model does not run:
    each step's sampled tokens (and logprobs) are made up, so the figures hold
    no GPU time. With async scheduling this work overlaps the GPU's step; it
    becomes the bound when it is longer.
    """
    from folovllm.sampling_params import RequestOutputKind

    kinds = {
        "generate() (final output only)": dict(output_kind=RequestOutputKind.FINAL_ONLY),
        "generate() + logprobs=5": dict(output_kind=RequestOutputKind.FINAL_ONLY, logprobs=5),
        "streaming (cumulative text)": dict(output_kind=RequestOutputKind.CUMULATIVE),
        "streaming + logprobs=5": dict(output_kind=RequestOutputKind.CUMULATIVE, logprobs=5),
        "streaming deltas + logprobs=5": dict(output_kind=RequestOutputKind.DELTA, logprobs=5),
        "streaming deltas + logprobs=5, flat_logprobs": dict(output_kind=RequestOutputKind.DELTA, logprobs=5, flat_logprobs=True),
    }
    print(f"{num_seqs} sequences decoding, host ms per step (median of {runs} runs of {steps} steps, fastest-slowest)")
    gc_timer = _GCTimer()
    for name, params in kinds.items():
        engine = decoding_engine(num_seqs, prompt_len, enforce_eager=True, **params)  # no graphs: the model never runs
        k = params.get("logprobs")

        def step(i: int) -> None:
            _process(engine, _step_without_the_model(engine, i, k)[1])

        def report(label: str) -> None:
            per_step, in_gc = [], []
            for _ in range(runs):
                gc_timer.total = 0.0
                t0 = time.perf_counter()
                for i in range(steps):
                    step(i)
                per_step.append((time.perf_counter() - t0) / steps * 1e3)
                in_gc.append(gc_timer.total / steps * 1e3)
            per_step.sort()
            in_gc.sort()
            print(f"  {label:52s} {per_step[runs // 2]:6.2f} ms ({per_step[0]:.2f}-{per_step[-1]:.2f}), "
                  f"in the garbage collector {in_gc[runs // 2]:.2f} ms")  # fmt: skip

        for i in range(5):  # warm-up
            step(i)
        gc.callbacks.append(gc_timer)
        try:
            report(name)
        finally:
            gc.callbacks.remove(gc_timer)
        engine.abort_request([str(i) for i in range(num_seqs)])
        engine = None  # freed before the next kind's engine measures the GPU memory it may take
        gc.collect()


def logprobs_layouts(num_seqs: int = 256, k: int = 5, blocks: int = 20, steps: int = 20) -> None:
    """The host's work on each step's results with ``logprobs=k``, list-of-dicts against flat
    logprobs, for each output kind: the scheduler's update, the logprob entries, the outputs.

    Two engines (one per layout) live in one process and take turns, a block of steps each, so
    that both see the same machine: on a noisy CPU, separate runs differ more than the layouts.
    The model does not run; sampled tokens and logprobs are made up, as in ``host``.
    """
    from folovllm.sampling_params import RequestOutputKind

    def step(engine, i: int) -> float:
        output = _step_without_the_model(engine, i, k)[1]
        t0 = time.perf_counter()
        _process(engine, output)
        return time.perf_counter() - t0

    print(f"{num_seqs} sequences decoding, logprobs={k}: host ms per step for the update, the logprob entries and the outputs")
    print(f"(median of {blocks - 2} blocks of {steps} steps, fastest-slowest, and the mean time in the garbage collector;")
    print(f" the outputs grow to {blocks * steps} tokens)")
    gc_timer = _GCTimer()
    gc.callbacks.append(gc_timer)
    try:
        for kind in (RequestOutputKind.FINAL_ONLY, RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA):
            engines = {flat: decoding_engine(num_seqs, 64, enforce_eager=True, output_kind=kind, logprobs=k, flat_logprobs=flat)
                       for flat in (False, True)}  # fmt: skip
            per_block: dict[bool, list[float]] = {False: [], True: []}  # ms per step in each block
            in_gc: dict[bool, list[float]] = {False: [], True: []}  # of which in the collector
            for b in range(blocks):
                for flat in (False, True) if b % 2 == 0 else (True, False):
                    gc_timer.total = 0.0
                    per_block[flat].append(sum(step(engines[flat], b * steps + i) for i in range(steps)) / steps * 1e3)
                    in_gc[flat].append(gc_timer.total / steps * 1e3)
            row = []
            for flat in (False, True):
                ms, gc_ms = sorted(per_block[flat][2:]), in_gc[flat][2:]  # the first two blocks warm up
                row.append(f"{'flat' if flat else 'list of dicts'} {ms[len(ms) // 2]:.2f} ms ({ms[0]:.2f}-{ms[-1]:.2f}; "
                           f"collector {sum(gc_ms) / len(gc_ms):.2f})")  # fmt: skip
            print(f"  {kind.name:10s} " + ", ".join(row))
            for engine in engines.values():
                engine.abort_request([str(i) for i in range(num_seqs)])
    finally:
        gc.callbacks.remove(gc_timer)


class _GCTimer:
    """A ``gc.callbacks`` entry that adds up the seconds spent in collections."""

    def __init__(self) -> None:
        self.total = 0.0
        self.start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self.start


def kernel_table(num_seqs: int = 256, prompt_len: int = 562, steps: int = 20) -> None:
    """torch.profiler over steady decode steps: where the GPU time goes, per kernel (on the CPU,
    a small model's operators: checks the script)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        prompt_len, steps = min(prompt_len, 200), min(steps, 5)
    engine = decoding_engine(num_seqs, prompt_len, async_scheduling=True)
    for _ in range(30 if cuda else 3):  # into the steady state
        engine.step()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            engine.step()
        sync(device)
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    from folovllm.utils import pdl

    on = pdl.pdl_launch_args(torch.zeros(1, device=device))["USE_PDL"]
    print(f"{num_seqs} sequences decoding, {steps} steps; PDL {'on: kernel times overlap (FOLOVLLM_PDL=0 turns it off)' if on else 'off'}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=60))
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    _print_idle_gaps([e for e in prof.events() if e.device_type == kind], steps)


# Idle gaps by length (us): launch latency between a graph's kernels is a few us; the GPU waiting
# for the host (a sync, a late launch) is tens of us or more.
GAP_BUCKETS = ((0, 2), (2, 5), (5, 20), (20, 100), (100, float("inf")))


def _print_idle_gaps(events, steps: int) -> None:
    """How long the device sat idle between the events (kernels, copies) of ``steps`` steps, by gap
    length: many short gaps are the launch latency between kernels, which fusing and PDL shorten;
    long ones, the device waiting for the host. The profiler's own tracing adds a little to each."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    busy_until, gaps = spans[0][1], []
    for start, end in spans[1:]:
        if start > busy_until:
            gaps.append(start - busy_until)
        busy_until = max(busy_until, end)
    span = busy_until - spans[0][0]
    print(f"busy {(span - sum(gaps)) / steps / 1e3:.3f} ms and idle {sum(gaps) / steps / 1e3:.3f} ms a step "
          f"({len(spans) / steps:.0f} events a step), the idle time by gap length:")  # fmt: skip
    for low, high in GAP_BUCKETS:
        chosen = [g for g in gaps if low <= g < high]
        print(f"  {low:3.0f}-{high:<4.0f} us: {len(chosen) / steps:6.1f} gaps a step, {sum(chosen) / steps / 1e3:.3f} ms a step")


def prefill(runs: int = 5) -> None:
    """Is a prefill bound by the host or the GPU? Wall time of a 1-token request against the GPU kernel
    time inside it; then that wall time split by the engine's calls (the worker's share is the host's
    launch work on a GPU, everything on the CPU)."""
    from folovllm import LLM, SamplingParams
    from folovllm.worker.runner_output import AsyncGPUModelRunnerOutput

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    lengths = (128, 1024, 4096) if cuda else (64, 512, 2048)
    model = get_checkpoint(None, "qwen3-0.6b" if cuda else "small", device)
    llm = LLM(model, max_model_len=max(lengths) + 16, device=device)
    runner = llm.llm_engine.executor.worker.model_runner
    vocab = llm.llm_engine.config.model_config.get_vocab_size()
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    graphs = runner.graph_runner
    modes = [("graphs", graphs.mixed_sizes if graphs else []), ("eager", [])]
    # "first": the run that warms up; the first of all is the engine's first request, and each length's
    # first graph run is that graph's first replay (one-time costs show as first >> wall)
    print(f"{'tokens':>6} {'mode':>6} {'first ms':>8} {'wall ms':>8} {'GPU kernels ms':>15} {'kernels':>8}")
    kernel_events = []  # the by-kernel view's prompt
    for n in lengths:
        for i, (mode, sizes) in enumerate(modes):
            if graphs is None and i == 0:
                continue
            if graphs is not None:
                graphs.mixed_sizes = sizes
            walls = []
            for r in range(runs + 1):  # the first run warms up
                prompt = [{"prompt_token_ids": [(31 * r + 7 * j + n) % vocab for j in range(n)]}]
                llm.reset_prefix_cache()  # the other mode ran these prompts: no hits, every token computed
                walls.append(timed(device, functools.partial(llm.generate, prompt, params, use_tqdm=False)))
            gpu_ms, kernels = float("nan"), 0
            if cuda:
                llm.reset_prefix_cache()
                events = _gpu_kernel_events(lambda: llm.generate([{"prompt_token_ids": [(5 * j + n) % vocab for j in range(n)]}],
                                                                 params, use_tqdm=False))  # fmt: skip
                gpu_ms, kernels = sum(e.time_range.elapsed_us() for e in events) / 1e3, len(events)
                if n == lengths[1] and not kernel_events:  # the first mode that runs: graphs, if there are any
                    kernel_events = events
            print(f"{n:>6} {mode:>6} {walls[0] * 1e3:>8.2f} {sorted(walls[1:])[runs // 2] * 1e3:>8.2f} {gpu_ms:>15.2f} {kernels:>8}")
    if cuda:
        print(f"the {lengths[1]}-token prompt's GPU time by kernel ({'graphs' if graphs else 'eager'}), largest first:")
        _print_by_kernel(kernel_events)
    if graphs is not None:
        graphs.mixed_sizes = modes[0][1]
    n = lengths[1]
    runner = llm.llm_engine.executor.worker.model_runner
    parts, undo = _time_calls([
        ("check the prompt, hash its blocks", llm.llm_engine, "_make_request"),
        ("schedule (twice: the prompt, then nothing)", llm.llm_engine.scheduler, "schedule"),
        ("worker: inputs to the device, launch", llm.llm_engine.executor, "execute_model"),
        ("  of which the step's inputs (numpy, copies)", runner, "_prepare_inputs"),
        ("  of which the forward (graph replay)" if graphs else "  of which the forward (launches)", runner, "_forward"),
        ("wait for the sampled token", AsyncGPUModelRunnerOutput, "get"),
        ("the step's results (the wait included)", llm.llm_engine, "_process"),
    ])  # fmt: skip
    prompts = [[{"prompt_token_ids": [(31 * r + 3 * j + n) % vocab for j in range(n)]}] for r in range(runs * 4)]
    wall = 0.0
    for prompt in prompts:
        llm.reset_prefix_cache()
        wall += timed(device, functools.partial(llm.generate, prompt, params, use_tqdm=False))
    undo()
    outside = wall - sum(secs for label, secs in parts.items() if not label.startswith(("wait", "  of which")))
    print(f"where a {n}-token one-token request's {wall / len(prompts) * 1e3:.2f} ms go "
          f"(mean of {len(prompts)}, {'graphs on' if graphs else 'no graphs'}):")  # fmt: skip
    for label, secs in [*parts.items(), ("the rest of generate()", outside)]:
        print(f"  {label:44s} {secs / len(prompts) * 1e3:7.3f} ms")


def prompt_step() -> None:
    """The throughput workload's first step (its first prompts, up to the token budget, eagerly: more
    tokens than the largest graph): wall time against the GPU's kernel time, and that by kernel. Its
    nine such steps took 0.43 s of the 7.0 s run on the H100 (2026-11-27), about twice what their
    FLOPs need at the measured matmul rate."""
    from folovllm import LLM, SamplingParams

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    num_seqs, max_len = (256, 1024) if cuda else (16, 64)
    model = get_checkpoint(None, "qwen3-0.6b" if cuda else "small", device)
    llm = LLM(model, max_model_len=2 * max_len + 64, device=device, async_scheduling=False)  # one step, then its results
    engine = llm.llm_engine
    vocab = engine.config.model_config.get_vocab_size()
    wl = nano_vllm_workload(num_seqs, 100 if cuda else 16, max_len, max_len, vocab)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    llm.generate([{"prompt_token_ids": p} for p in wl.prompts[:8]], SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    ids = []

    def fresh_workload(run: str) -> None:
        """The workload's requests again (the last run's dropped), none of their prompts cached."""
        engine.abort_request(ids)
        llm.reset_prefix_cache()
        ids[:] = [f"{run}-{i}" for i in range(num_seqs)]
        for req_id, p, sp in zip(ids, wl.prompts, params):
            engine.add_request(req_id, p, sp)

    fresh_workload("untimed")
    engine.step()  # the first prompts, untimed (the allocator's first blocks of this size)
    fresh_workload("timed")
    tokens = []
    schedule = engine.scheduler.schedule

    def counting_schedule():
        so = schedule()
        tokens.append((so.total_num_scheduled_tokens, len(so.num_scheduled_tokens)))
        return so

    engine.scheduler.schedule = counting_schedule
    wall = timed(device, engine.step)
    events = []
    if cuda:
        fresh_workload("profiled")
        events = _gpu_kernel_events(engine.step)
    engine.scheduler.schedule = schedule
    num_tokens, seqs = tokens[0]
    gpu_ms = sum(e.time_range.elapsed_us() for e in events) / 1e3 if cuda else float("nan")
    print(f"the first step of the throughput workload: {num_tokens:,} tokens of {seqs} prompts, wall {wall * 1e3:.2f} ms, "
          f"GPU kernels {gpu_ms:.2f} ms")  # fmt: skip
    _print_by_kernel(events)


def _gpu_kernel_events(fn) -> list:
    """The profiler's GPU events of ``fn()``, the GPU drained before the profiler stops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def _print_by_kernel(events, top: int = 15) -> None:
    for name, (us, count) in _gpu_time_by_name(events)[:top]:
        print(f"  {us / 1e3:7.3f} ms  {count:4d} x  {name[:100]}")


def _gpu_time_by_name(events) -> list[tuple[str, tuple[float, int]]]:
    """(kernel name, (total us, calls)) of profiler device events, the longest total first."""
    totals: dict[str, tuple[float, int]] = {}
    for e in events:
        us, calls = totals.get(e.name, (0.0, 0))
        totals[e.name] = (us + e.time_range.elapsed_us(), calls + 1)
    return sorted(totals.items(), key=lambda item: -item[1][0])


def pageable_copies() -> None:
    """Does a copy to the GPU from ordinary (pageable) host memory wait for the GPU's queue? CUDA only
    promises that one from pinned memory does not. The step inputs and the sampling settings come
    from pinned buffers (``InputBuffers``); the prompt-logprob targets and the penalties' token lists
    still come from pageable memory, and until 2026-11-27 the sampling settings did, at each change
    of batch: if such a copy waits, the host loses its lead over the GPU there. The host time of one
    small copy queued behind ~10 ms of GPU work."""
    if not torch.cuda.is_available():
        print("pageable copies: needs a GPU")
        return
    for name, src in (("pinned", torch.ones(64).pin_memory()), ("pageable", torch.ones(64)), ("pinned", torch.ones(64).pin_memory())):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.cuda._sleep(20_000_000)  # GPU clock cycles: ~10 ms
        t1 = time.perf_counter()
        src.to("cuda", non_blocking=True)
        t2 = time.perf_counter()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        print(f"copy of 64 floats from {name} memory behind {(t3 - t0) * 1e3:.1f} ms of GPU work: "
              f"the call took {(t2 - t1) * 1e3:.3f} ms on the host")


def _time_calls(targets: list) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap each ``(label, owner, method name)`` so that its calls add their wall time under the label.
    Returns the totals and a function that puts the methods back."""
    totals, undos = {}, []
    for label, owner, name in targets:
        totals[label] = 0.0
        inner = getattr(owner, name)  # bound for an instance, plain for a class

        def wrapper(*args, _inner=inner, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - t0

        if isinstance(owner, type):
            undos.append(functools.partial(setattr, owner, name, inner))
        else:
            undos.append(functools.partial(delattr, owner, name))
        setattr(owner, name, wrapper)

    def put_back() -> None:
        for undo in undos:
            undo()

    return totals, put_back


# The KV cache an 80 GB H100 holds for Qwen3-0.6B in bf16 at gpu_memory_utilization 0.9, in tokens:
# an estimate (~65 GiB left after weights, activations and graphs, 112 KiB a token); the engine's
# start-up log prints the real count.
H100_KV_TOKENS = 600_000
# The schedule view's time model, from the fourteenth session's H100 run (docs/benchmarks.md): the
# copy bandwidth bench_all measured, and the rate of the workload of record's steps with prompt
# tokens (0.425 s for its 138,879 prompt tokens, the decodes beside them included).
H100_COPY_BYTES_PER_S = 2.97e12
H100_PROMPT_TOKENS_PER_S = 138_879 / 0.425


def qwen3_bytes(config: dict) -> tuple[int, int]:
    """(bytes of bf16 weights a decode step reads: every layer's and the LM head's, bytes of K/V a
    token of context holds) for a Qwen3 config."""
    h, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * inter
    return 2 * (config["num_hidden_layers"] * per_layer + config["vocab_size"] * h), config["num_hidden_layers"] * 2 * kv * 2


def schedule_view(num_prompts: int = 256, max_num_seqs: int = LARGE_GPU_BATCH_DEFAULTS[1], kv_tokens: int = H100_KV_TOKENS,
                  max_len: int = 1024, listed: int = 12) -> None:  # fmt: skip
    """The throughput workload's steps as the scheduler makes them on an H100 (its defaults: a budget
    of 16,384 tokens, ``max_num_seqs`` sequences at a time (vLLM's 1,024 there), a KV cache of
    ``kv_tokens``; bench_throughput's lengths and seed; ``num_prompts`` of them), the model left
    out: each step with prompt tokens (listed when there are at most ``listed``), its one-token rows
    (sequences decoding) and their context, and the share of all decoding's K/V reads made in such
    steps. Runs on the CPU in seconds and gives the steps a GPU run makes, since the scheduler sees
    only token counts. (In the engine a step with prompt tokens sends its one-token rows through the
    prefill kernel too: a 64-row query tile and a pass over the context per query head each;
    ``bench_kernels.py``'s mixed rows price the other way.)"""
    from folovllm import LLM, SamplingParams
    from folovllm.utils.random_checkpoint import PRESETS

    llm = LLM(get_checkpoint(None, "small", "cpu"), device="cpu", max_model_len=2 * max_len + 64, enforce_eager=True,
              async_scheduling=False, max_num_seqs=max_num_seqs, max_num_batched_tokens=LARGE_GPU_BATCH_DEFAULTS[0],
              num_gpu_blocks_override=kv_tokens // 16)  # fmt: skip
    engine = llm.llm_engine
    # Qwen3-0.6B's vocabulary draws the lengths the GPU run has (the ids are drawn with them); the ids
    # are then folded into the small model's
    wl = nano_vllm_workload(num_prompts, 100, max_len, max_len, PRESETS["qwen3-0.6b"]["vocab_size"])
    vocab = engine.config.model_config.get_vocab_size()
    for i, (p, n) in enumerate(zip(wl.prompts, wl.output_lens)):
        engine.add_request(str(i), [t % vocab for t in p], SamplingParams(max_tokens=n, ignore_eos=True))
    sc = engine.config.scheduler_config
    print(f"the throughput workload ({num_prompts} sequences, prompts {sum(map(len, wl.prompts)):,} tokens), token budget "
          f"{sc.max_num_batched_tokens:,}, {sc.max_num_seqs} sequences at a time, a KV cache of {kv_tokens:,} tokens")  # fmt: skip
    mixed = []  # each step with prompt tokens: (step, tokens, prompt tokens, prompt sequences, its one-token rows' contexts)
    decode_only_context = 0  # the K/V tokens that steps of decodes only read
    decode_only_steps = 0
    i = 0
    while engine.has_unfinished_requests():
        so, output = _step_without_the_model(engine, i)  # schedules step i, then makes up its tokens
        decodes = _one_token_contexts(so, _computed_tokens(so))
        prompt = [n for n in so.num_scheduled_tokens.values() if n > 1]
        if prompt:
            mixed.append((i, so.total_num_scheduled_tokens, sum(prompt), len(prompt), decodes))
        else:
            decode_only_context += sum(decodes)
            decode_only_steps += 1
        _process(engine, output)
        i += 1
    for step, tokens, prompt_tokens, prompts, decodes in mixed if len(mixed) <= listed else ():
        print(f"  step {step}: {tokens:6,d} tokens: {prompt_tokens:6,d} prompt tokens of {prompts:3d} sequences, "
              f"{len(decodes):3d} one-token rows (mean context {sum(decodes) / max(1, len(decodes)):4.0f})")  # fmt: skip
    rows, context, prompt_tokens = sum(len(m[4]) for m in mixed), sum(sum(m[4]) for m in mixed), sum(m[2] for m in mixed)
    print(f"  {i} steps, {len(mixed)} with prompt tokens ({prompt_tokens / max(1, len(mixed)):,.0f} of them a step on "
          f"average); in those {rows:,} one-token rows, mean context {context / max(1, rows):.0f} tokens, "
          f"{context / max(1, context + decode_only_context):.1%} of all decoding's K/V reads; "
          f"{engine.get_stats()['num_preemptions']} preemptions")  # fmt: skip
    # A time model of the run on an H100: decode rows at the floor (the weights once a step, every row's
    # context at the copy bandwidth), prompt tokens at the workload of record's rate (its steps read the
    # weights too). Steps as run take longer; the model compares schedules (seats, KV cache), it is
    # not a figure.
    weight_bytes, kv_bytes = qwen3_bytes(PRESETS["qwen3-0.6b"])
    model_secs = (decode_only_steps * weight_bytes + (decode_only_context + context) * kv_bytes) / H100_COPY_BYTES_PER_S
    model_secs += prompt_tokens / H100_PROMPT_TOKENS_PER_S
    print(f"  time model for Qwen3-0.6B on an H100 (decode rows at the floor, {H100_COPY_BYTES_PER_S / 1e12:.2f} TB/s; prompt "
          f"tokens at {H100_PROMPT_TOKENS_PER_S:,.0f} a second): {model_secs:.2f} s, {wl.num_output_tokens / model_secs:,.0f} output tok/s")  # fmt: skip


def tail() -> None:
    """The throughput workload step by step: how much of its time goes to which kind of step, and
    each kind's floor (bench_all's: a decode step reads every weight once and each sequence's whole
    K/V context, at the measured copy bandwidth; steps with prompt tokens are not in the floor)."""
    from benchmarks.bench_roofline import model_bytes
    from folovllm import LLM, SamplingParams

    cuda = torch.cuda.is_available()
    num_seqs, max_len = (256, 1024) if cuda else (32, 128)
    model = get_checkpoint(None, "qwen3-0.6b" if cuda else "small", "cuda" if cuda else "cpu")
    llm = LLM(model, max_model_len=2 * max_len + 64, async_scheduling=cuda, device="cuda" if cuda else "cpu")
    engine = llm.llm_engine
    vocab = engine.config.model_config.get_vocab_size()
    wl = nano_vllm_workload(num_seqs, 100 if cuda else 16, max_len, max_len, vocab)
    for i, (p, n) in enumerate(zip(wl.prompts, wl.output_lens)):
        engine.add_request(str(i), p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n))
    weight_bytes, kv_per_token = model_bytes(llm)
    bw = measure_copy_bandwidth("cuda" if cuda else "cpu", nbytes=(1 << 30) if cuda else (1 << 26))
    launch = engine._launch
    # (has prompt tokens, sequences, seconds since the previous launch, tokens of K/V context read,
    #  the context of each one-token row in a step with prompt tokens)
    steps = []
    last = [time.perf_counter()]

    def timed_launch():
        so, handle = launch()
        now = time.perf_counter()
        prompts = bool(so.scheduled_new_reqs) or any(n > 1 for n in so.num_scheduled_tokens.values())
        computed = _computed_tokens(so)
        context = sum(computed[r] + n for r, n in so.num_scheduled_tokens.items())
        one_token_rows = _one_token_contexts(so, computed) if prompts else []
        steps.append((prompts, len(so.num_scheduled_tokens), now - last[0], context, one_token_rows))
        last[0] = now
        return so, handle

    engine._launch = timed_launch
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    total = time.perf_counter() - t0
    groups = {"with prompt tokens": lambda p, b: p, "decode, 129+ seqs": lambda p, b: not p and b > 128,
              "decode, 33-128 seqs": lambda p, b: not p and 32 < b <= 128, "decode, 9-32 seqs": lambda p, b: not p and 8 < b <= 32,
              "decode, 1-8 seqs": lambda p, b: not p and b <= 8}  # fmt: skip
    print(f"{num_seqs} sequences, {wl.num_output_tokens:,} output tokens in {total:.2f} s ({wl.num_output_tokens / total:,.0f} tok/s), {len(steps)} steps")
    for name, match in groups.items():
        chosen = [(b, dt, ctx) for p, b, dt, ctx, _ in steps if match(p, b)]
        secs = sum(dt for _, dt, _ in chosen)
        line = f"  {name:20s} {len(chosen):5d} steps {secs:7.3f} s ({secs / total:4.0%}), {sum(b for b, _, _ in chosen):8,d} sequence-steps"
        if name.startswith("decode") and chosen:
            floor = sum(weight_bytes + kv_per_token * ctx for _, _, ctx in chosen) / bw
            line += f", floor {floor:.3f} s ({floor / secs:.0%} of it reached), {secs / len(chosen) * 1e3:.2f} ms a step against {floor / len(chosen) * 1e3:.2f}"
        elif chosen:  # their decodes go through the prefill kernel
            rows = [ctx for p, b, _, _, one_token_rows in steps if match(p, b) for ctx in one_token_rows]
            line += f", of which {len(rows):,} one-token rows (decodes, mean context {sum(rows) / max(1, len(rows)):.0f})"
        print(line)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "breakdown"
    extra = sys.argv[2:]
    sys.argv = [sys.argv[0]]
    if mode == "breakdown":
        breakdown()
    elif mode == "host":
        host(*(int(a) for a in extra[:1]))
    elif mode == "logprobs":
        logprobs_layouts(*(int(a) for a in extra[:1]))
    elif mode == "kernels":
        kernel_table(*(int(a) for a in extra[:1]))
    elif mode == "prefill":
        prefill()
    elif mode == "tail":
        tail()
    elif mode == "prompts":
        prompt_step()
    elif mode == "copies":
        pageable_copies()
    elif mode == "schedule":
        schedule_view(*(int(a) for a in extra[:3]))  # [prompts] [max_num_seqs] [KV tokens]
    else:
        prof = cProfile.Profile()
        prof.runcall(bench.main)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
