"""Output tok/s against the memory-bandwidth floor, batch size by batch size.

For each batch size B, B sequences of ``prompt_len`` random tokens each
generate ``output_len`` tokens (ignore_eos). The floor is what the GPU must
read for that: all weights once per decode step, plus every sequence's K/V
context at every step, at the measured copy bandwidth. Small batches are
bound by the weights (the floor rises linearly with B), large ones by the
K/V reads (it flattens); the plot shows where the engine sits between.

    python benchmarks/bench_roofline.py            # on a GPU: Qwen3-0.6B shapes, B = 1..256
    python benchmarks/bench_roofline.py --smoke    # on the CPU: a tiny model, B = 1..4
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import timed, weight_bytes_per_step

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class RooflinePoint:
    batch_size: int
    tok_per_s: float
    floor_tok_per_s: float


def model_bytes(llm) -> tuple[int, int]:
    """(bytes of all weights, bytes of K/V per token of context) of a one-rank engine."""
    runner = llm.llm_engine.executor.worker.model_runner
    return weight_bytes_per_step(runner.model), runner.get_kv_cache_bytes_per_block() // runner.block_size


def sweep(llm, device: str, batch_sizes: list[int], prompt_len: int, output_len: int, weight_bytes: int,
          kv_bytes_per_token: int, bandwidth: float) -> list[RooflinePoint]:  # fmt: skip
    from folovllm import SamplingParams

    vocab = llm.llm_engine.config.model_config.get_vocab_size()
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    points = []
    for b in batch_sizes:
        prompts = [{"prompt_token_ids": [(97 * i + 13 * j + b) % vocab for j in range(prompt_len)]} for i in range(b)]
        llm.reset_prefix_cache()
        secs = timed(device, functools.partial(llm.generate, prompts, params, use_tqdm=False))
        context_reads = b * sum(prompt_len + i for i in range(output_len))  # tokens of K/V read over all steps
        floor_secs = (weight_bytes * output_len + kv_bytes_per_token * context_reads) / bandwidth
        points.append(RooflinePoint(b, b * output_len / secs, b * output_len / floor_secs))
    return points


def markdown(points: list[RooflinePoint]) -> list[str]:
    return [
        "| batch size | output tok/s | floor tok/s | achieved / floor |",
        "| --- | --- | --- | --- |",
        *[f"| {p.batch_size} | {p.tok_per_s:,.0f} | {p.floor_tok_per_s:,.0f} | {p.tok_per_s / p.floor_tok_per_s:.0%} |" for p in points],
    ]


def plot(points: list[RooflinePoint], path: Path, title: str) -> bool:
    """Write the PNG; False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bs = [p.batch_size for p in points]
    ax.plot(bs, [p.floor_tok_per_s for p in points], "k--", label="floor (weights + K/V reads at copy bandwidth)")
    ax.plot(bs, [p.tok_per_s for p in points], "o-", label="FoloVLLM")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences in the batch")
    ax.set_ylabel("output tokens / s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    import argparse

    import torch

    from benchmarks.common import get_checkpoint, measure_copy_bandwidth
    from folovllm import LLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script")
    ap.add_argument("--out", default="docs/roofline.png")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    model = get_checkpoint(args.model, "tiny" if args.smoke else "qwen3-0.6b", device)
    llm = LLM(model, device=device, dtype="float32" if args.smoke else "bfloat16", async_scheduling=not args.smoke,
              max_model_len=256 if args.smoke else 1024)  # fmt: skip
    weight_bytes, kv = model_bytes(llm)
    bw = measure_copy_bandwidth(device, nbytes=(1 << 26) if args.smoke else (1 << 30))
    sizes, lens = ([1, 2, 4], (16, 16)) if args.smoke else (BATCH_SIZES, (128, 256))
    points = sweep(llm, device, sizes, *lens, weight_bytes, kv, bw)
    print("\n".join(markdown(points)))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print("plot:", args.out if plot(points, Path(args.out), f"{name}, prompt {lens[0]}, output {lens[1]}") else "matplotlib missing")


if __name__ == "__main__":
    main()
