"""Decode latency while long prompts arrive: chunked prefill vs none, and the token budget.

R requests decode steadily; then L long prompts arrive at once. For each setting this prints the
inter-token latency (ITL) of the R decoding requests while the long prompts are being prefilled
(p50 / p99 / max of every gap that overlaps that window), the decode-only ITL before they
arrived, the time until all long prompts have their first token, and the total tokens per second
of the whole run (the throughput side of the trade-off the budget sets).

Without chunking a prompt is prefilled whole, in one step that every decode waits for; with
chunking a step carries the decodes plus at most ``max_num_batched_tokens`` tokens of prompt.

GPU: python benchmarks/bench_chunked_prefill.py               (Qwen3-0.6B shapes: 32 decoding, 4 x 8k prompts)
CPU: python benchmarks/bench_chunked_prefill.py --scale cpu
One engine serves every setting (its token budget is changed between runs); prefix caching is
off so that no setting finds another's prompts. A full warm-up run comes first, untimed.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import parse_scaled_args
from folovllm import LLMEngine, SamplingParams
from folovllm.sampling_params import RequestOutputKind

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", num_running=32, running_prompt=128, num_long=4, long_len=8192, budgets=[2048, 4096, 8192, 16384]),
    "cpu": dict(preset="small", num_running=8, running_prompt=32, num_long=4, long_len=1024, budgets=[128, 256, 512, 1024]),
}


def one_run(engine: LLMEngine, scale: dict, chunked: bool, budget: int, seed: int) -> dict[str, float]:
    sc = engine.config.scheduler_config
    sc.enable_chunked_prefill, sc.max_num_batched_tokens = chunked, budget
    rng = random.Random(seed)
    vocab = engine.config.model_config.get_vocab_size()
    max_tokens = engine.config.model_config.max_model_len - scale["running_prompt"]  # they outlast the run
    streaming = SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens, output_kind=RequestOutputKind.CUMULATIVE)
    running = [f"r{seed}-{i}" for i in range(scale["num_running"])]
    for rid in running:
        engine.add_request(rid, [rng.randrange(vocab) for _ in range(scale["running_prompt"])], streaming)
    arrivals: dict[str, list[float]] = {rid: [] for rid in running}
    seen: dict[str, int] = {}
    total_tokens = 0

    def step() -> list:
        nonlocal total_tokens
        outs = engine.step()
        now = time.perf_counter()
        for out in outs:
            n = len(out.outputs[0].token_ids)
            if out.request_id in arrivals:
                arrivals[out.request_id] += [now] * (n - seen.get(out.request_id, 0))
            total_tokens += n - seen.get(out.request_id, 0)
            seen[out.request_id] = n
        return outs

    t_start = time.perf_counter()
    while min(len(a) for a in arrivals.values()) < 16:  # steady decoding
        step()
    long_ids = [f"long{seed}-{i}" for i in range(scale["num_long"])]
    t_arrive = time.perf_counter()
    for rid in long_ids:
        prompt = [rng.randrange(vocab) for _ in range(scale["long_len"])]
        engine.add_request(rid, prompt, SamplingParams(temperature=0, ignore_eos=True, max_tokens=1))
        total_tokens += len(prompt)
    pending = set(long_ids)
    while pending:
        pending -= {out.request_id for out in step() if out.finished}
    t_done = time.perf_counter()
    for _ in range(4):  # the gaps that straddle t_done end here
        step()
    t_end = time.perf_counter()
    engine.abort_request(running)
    while engine.has_unfinished_requests():
        engine.step()

    gaps_during, gaps_before = [], []
    for times in arrivals.values():
        for a, b in zip(times, times[1:]):
            if b > t_arrive and a < t_done:
                gaps_during.append(b - a)
            elif b <= t_arrive:
                gaps_before.append(b - a)
    gaps_during.sort()
    return dict(
        itl_p50=statistics.median(gaps_during),
        itl_p99=gaps_during[min(len(gaps_during) - 1, int(0.99 * len(gaps_during)))],
        itl_max=gaps_during[-1],
        itl_before=statistics.median(gaps_before[len(gaps_before) // 2 :]),
        ttft_all_long=t_done - t_arrive,
        tok_per_s=total_tokens / (t_end - t_start),
    )


def main() -> None:
    args, device, scale, model = parse_scaled_args(SCALES, runs=None)
    max_model_len = scale["long_len"] + 256
    engine = LLMEngine.from_engine_args(
        model, device=device, max_model_len=max_model_len, enable_prefix_caching=False, skip_tokenizer_init=True,
        max_num_batched_tokens=max(max(scale["budgets"]), max_model_len), async_scheduling=device == "cuda",
    )  # fmt: skip
    settings = [("no chunking", False, max_model_len)] + [(f"chunked, budget {b}", True, b) for b in scale["budgets"]]
    one_run(engine, scale, True, scale["budgets"][0], seed=0)  # warm-up: compiles every kernel variant
    print(f"model {model} on {device}, torch {torch.__version__}: {scale['num_running']} decoding requests, "
          f"{scale['num_long']} prompts of {scale['long_len']} tokens arriving")  # fmt: skip
    print(f"{'setting':<24} {'ITL p50':>9} {'ITL p99':>9} {'ITL max':>9} {'ITL before':>11} {'long TTFT':>10} {'tok/s':>9}")
    for i, (name, chunked, budget) in enumerate(settings, start=1):
        r = one_run(engine, scale, chunked, budget, seed=i)
        print(f"{name:<24} {r['itl_p50'] * 1e3:7.1f}ms {r['itl_p99'] * 1e3:7.1f}ms {r['itl_max'] * 1e3:7.1f}ms "
              f"{r['itl_before'] * 1e3:9.1f}ms {r['ttft_all_long'] * 1e3:8.0f}ms {r['tok_per_s']:9,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
