"""Shared pieces of the benchmarks: workloads, checkpoints, HF baseline, roofline."""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from folovllm import SamplingParams
from folovllm.utils.random_checkpoint import cached_random_checkpoint


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def nano_vllm_workload(num_seqs: int, min_len: int, max_input_len: int, max_output_len: int, vocab: int, seed: int = 0) -> Workload:
    """nano-vllm's offline benchmark: random token ids, input and output lengths uniform."""
    rng = random.Random(seed)
    prompts = [[rng.randint(0, vocab - 1) for _ in range(rng.randint(min_len, max_input_len))] for _ in range(num_seqs)]
    output_lens = [rng.randint(min_len, max_output_len) for _ in range(num_seqs)]
    return Workload(prompts, output_lens)


# "small": the tiny preset widened until, on a CPU, prefill costs more than the engine's Python
# overhead (the prefix-caching and chunked-prefill benchmarks need that to show anything).
SMALL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, head_dim=32, max_position_embeddings=4096)  # fmt: skip


def get_checkpoint(model: str | None, preset: str, device: str) -> str:
    """``model`` if given, else a cached random checkpoint of ``preset`` (qwen3-0.6b, tiny or small)."""
    if model:
        return model
    if preset == "small":
        return cached_random_checkpoint("small", "tiny", **SMALL)
    dtype = "bfloat16" if preset.startswith("qwen3-") else "float32"
    init_device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    return cached_random_checkpoint(preset, preset, dtype=dtype, device=init_device)


def parse_scaled_args(
    scales: dict[str, dict], runs: Optional[int] = 3, add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
) -> tuple[argparse.Namespace, str, dict, str]:  # fmt: skip
    """The command line of a benchmark with CPU and GPU scales: ``--model``, ``--scale`` (and ``--runs``),
    and whatever ``add_arguments`` adds.

    Returns (args, device, the chosen scale, the checkpoint path).
    """
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint dir or hub id (default: a random one for the scale)")
    ap.add_argument("--scale", choices=sorted(scales), default=None, help="default: gpu when CUDA is available, else cpu")
    if runs is not None:
        ap.add_argument("--runs", type=int, default=runs)
    if add_arguments is not None:
        add_arguments(ap)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scale = scales[args.scale or ("gpu" if device == "cuda" else "cpu")]
    return args, device, scale, get_checkpoint(args.model, scale["preset"], device)


def median_and_spread(secs: list[float]) -> str:
    """Sorted run times -> "median (median of N, fastest-slowest)"."""
    return f"{secs[len(secs) // 2]:.3f}s (median of {len(secs)}, {secs[0]:.3f}-{secs[-1]:.3f})"


def sync(device: str) -> None:
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(device: str, fn) -> float:
    """Wall seconds of ``fn()``, with the device idle before and drained after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def ttft(llm, device: str, prompt: list[int]) -> float:
    """Seconds to the first token of ``prompt``, computed in full: the prefix cache is emptied first
    (the runs repeat one prompt, and a hit would leave one block's worth of tokens to compute)."""
    llm.reset_prefix_cache()
    return timed(device, lambda: llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, ignore_eos=True), use_tqdm=False))


def ms_spread(secs: list[float]) -> str:
    s = sorted(secs)
    return f"{s[len(s) // 2] * 1e3:.2f} ms ({len(s)} runs, {s[0] * 1e3:.2f}-{s[-1] * 1e3:.2f})"


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every parameter, except an untied embedding (only its rows are read)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    if model.lm_head is not model.model.embed_tokens:
        total -= embed.numel() * embed.element_size()
    return total


def hf_generate_throughput(model_path: str, workload: Workload, device: str, dtype: torch.dtype, batch_size: int) -> tuple[float, int]:
    """HF ``generate`` on the same workload: greedy, padded batches of ``batch_size``.

    Each batch runs to its longest requested output; only requested tokens are
    counted (the rest is the padding waste that continuous batching avoids).
    Returns (seconds, counted output tokens).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    pad = 0
    total_time, counted = 0.0, 0
    for start in range(0, len(workload.prompts), batch_size):
        prompts = workload.prompts[start : start + batch_size]
        outs = workload.output_lens[start : start + batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(outs), min_new_tokens=max(outs),
                do_sample=False, pad_token_id=pad, eos_token_id=None,
            )  # fmt: skip
        sync(device)
        total_time += time.perf_counter() - t0
        counted += sum(outs)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return total_time, counted


def measure_copy_bandwidth(device: str, nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Bytes per second a device-to-device copy moves (read + write)."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * src.element_size() * iters / (time.perf_counter() - t0)


def cuda_time(fn, iters: int = 20, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` on the GPU (CUDA events), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3
