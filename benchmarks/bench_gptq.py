"""GPTQ 4-bit against bf16 on the same machine, in the same run.

A random checkpoint with a real model's config (default Qwen3-8B's: weight
reads dominate there), quantized by ``scripts/quantize_gptq.py``'s code path
with ``--rtn`` (speed does not depend on how the codes were chosen), 4-bit,
group 128. Rows:

* TPOT at batch 1 (one 128-token prompt, 256 output tokens) and its floor:
  the bytes every decode step must read (weights once) over the measured
  copy bandwidth;
* output tok/s at 64 and 256 sequences (128 in, 256 out each, ignore_eos);
* the GEMM kernel alone at M=1 on each linear shape of the model: achieved
  bandwidth on the packed weights, against the copy bandwidth, and the time
  of bf16 ``F.linear`` on the same shape.

GPU: python benchmarks/bench_gptq.py [--preset qwen3-4b]
CPU: python benchmarks/bench_gptq.py   (tiny preset, group 32: a smoke run of the reference path, no kernel rows)
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import cuda_time, get_checkpoint, measure_copy_bandwidth, timed, weight_bytes_per_step
from folovllm import LLM, SamplingParams

PROMPT_LEN, OUTPUT_LEN = 128, 256


def gptq_checkpoint(float_dir: str, device: str, group_size: int) -> str:
    """The RTN 4-bit copy of ``float_dir``, built once beside it."""
    from folovllm.quantize.gptq_checkpoint import GPTQRecipe, quantize_checkpoint

    out = Path(f"{float_dir}-gptq4-g{group_size}-rtn")
    if not (out / "config.json").is_file():
        print(f"[bench_gptq] quantizing {float_dir} -> {out} (RTN, 4-bit, group {group_size})", flush=True)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        quantize_checkpoint(float_dir, str(out), GPTQRecipe(bits=4, group_size=group_size, rtn=True), device=device, dtype=dtype)
    return str(out)


def measure_engine(model: str, device: str, dtype: str, batch_sizes: list[int], runs: int) -> dict:
    max_seqs = max(batch_sizes)
    llm = LLM(model, device=device, dtype=dtype, max_model_len=PROMPT_LEN + OUTPUT_LEN + 16, max_num_seqs=max_seqs,
              async_scheduling=device == "cuda")  # fmt: skip
    engine = llm.llm_engine
    vocab = engine.config.model_config.get_vocab_size()
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(vocab) for _ in range(PROMPT_LEN)]} for _ in range(max_seqs)]
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=OUTPUT_LEN)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up, untimed
    result = {"weight_bytes": weight_bytes_per_step(engine.executor.worker.model_runner.model)}
    tpots = []
    for _ in range(runs):
        out = llm.generate(prompts[:1], params, use_tqdm=False)[0]
        tpots.append(out.metrics.mean_time_per_output_token)
    result["tpot"] = sorted(tpots)
    for n in batch_sizes:
        secs = []
        for _ in range(runs):
            llm.reset_prefix_cache()  # the same prompts again would otherwise hit
            secs.append(timed(device, functools.partial(llm.generate, prompts[:n], params, use_tqdm=False)))
        result[f"tput_{n}"] = sorted(n * OUTPUT_LEN / s for s in secs)
    del llm, engine
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def linear_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """(in, out) of each distinct linear of a Qwen3 decoder layer, merged as the engine runs them."""
    h, i, d = hf_config.hidden_size, hf_config.intermediate_size, hf_config.head_dim
    q, kv = hf_config.num_attention_heads * d, hf_config.num_key_value_heads * d
    return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}


def measure_kernel(shapes: dict[str, tuple[int, int]], group_size: int, copy_bw: float) -> list[tuple[str, float, float, float]]:
    """(layer, kernel seconds at M=1, achieved bytes/s on the packed tensors, bf16 F.linear seconds)."""
    from folovllm.model_executor.layers.quantization.triton_gptq_gemm import gptq_gemm

    rows = []
    for name, (k, n) in shapes.items():
        qweight = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32, device="cuda")
        qzeros = torch.randint(-(2**31), 2**31 - 1, (k // group_size, n // 8), dtype=torch.int32, device="cuda")
        scales = torch.rand(k // group_size, n, device="cuda").half() * 0.01
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        secs = cuda_time(lambda: gptq_gemm(x, qweight, qzeros, scales, 4, group_size, 1), iters=200, warmup=10)
        moved = sum(t.numel() * t.element_size() for t in (qweight, qzeros, scales, x)) + n * 2
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        bf16_secs = cuda_time(lambda: torch.nn.functional.linear(x, w), iters=200, warmup=10)
        rows.append((name, secs, moved / secs, bf16_secs))
    return rows


def compare(float_dir: str, device: str, runs: int, group_size: int) -> list[str]:
    """Markdown lines: the engine rows, then (on CUDA) the kernel rows."""
    from transformers import AutoConfig

    batch_sizes = [64, 256] if device == "cuda" else [8, 32]
    copy_bw = measure_copy_bandwidth(device, nbytes=(1 << 30) if device == "cuda" else (1 << 26))
    quantized = gptq_checkpoint(float_dir, device, group_size)
    float_dtype = "bfloat16" if device == "cuda" else "float32"
    base = measure_engine(float_dir, device, float_dtype, batch_sizes, runs)
    gptq = measure_engine(quantized, device, float_dtype, batch_sizes, runs)
    med = lambda xs: xs[len(xs) // 2]  # noqa: E731
    lines = [
        f"| metric | {float_dtype} | GPTQ 4-bit g{group_size} | GPTQ / {float_dtype} | GPTQ floor | GPTQ achieved / floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    tpot_floor = gptq["weight_bytes"] / copy_bw
    lines.append(
        f"| TPOT, batch 1 ({PROMPT_LEN} in, {OUTPUT_LEN} out) | {med(base['tpot']) * 1e3:.2f} ms | {med(gptq['tpot']) * 1e3:.2f} ms "
        f"| {med(gptq['tpot']) / med(base['tpot']):.2f} | {tpot_floor * 1e3:.3f} ms | {tpot_floor / med(gptq['tpot']):.0%} |"
    )
    for n in batch_sizes:
        b, g = base[f"tput_{n}"], gptq[f"tput_{n}"]
        lines.append(f"| output tok/s, {n} seqs | {med(b):,.0f} | {med(g):,.0f} | {med(g) / med(b):.2f} | - | - |")
    lines += [
        "",
        f"Weights read per decode step: {base['weight_bytes'] / 2**20:,.1f} MiB ({float_dtype}) vs "
        f"{gptq['weight_bytes'] / 2**20:,.1f} MiB (GPTQ). Copy bandwidth measured here: {copy_bw / 1e12:.2f} TB/s. "
        f"Median of {runs} runs; spreads: TPOT {float_dtype} "
        f"{base['tpot'][0] * 1e3:.2f}-{base['tpot'][-1] * 1e3:.2f} ms, GPTQ {gptq['tpot'][0] * 1e3:.2f}-{gptq['tpot'][-1] * 1e3:.2f} ms.",
        "",
    ]
    if device == "cuda":
        hf_config = AutoConfig.from_pretrained(float_dir)
        lines += [
            "| GEMM at M=1, layer (in -> out) | GPTQ kernel | achieved bandwidth | of copy bandwidth | bf16 F.linear |",
            "| --- | --- | --- | --- | --- |",
        ]
        shapes = linear_shapes(hf_config)
        for name, secs, bw, bf16_secs in measure_kernel(shapes, group_size, copy_bw):
            k, n = shapes[name]
            lines.append(f"| {name} ({k} -> {n}) | {secs * 1e6:.1f} us | {bw / 1e12:.2f} TB/s | {bw / copy_bw:.0%} | {bf16_secs * 1e6:.1f} us |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a float checkpoint (default: a random one of --preset)")
    ap.add_argument("--preset", default=None, help="qwen3-8b (GPU default), qwen3-4b, tiny (CPU default)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=None, help="default: 128 (32 for the tiny preset)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("qwen3-8b" if device == "cuda" else "tiny")
    float_dir = get_checkpoint(args.model, preset, device)
    print(f"model {float_dir} on {device}, torch {torch.__version__}", flush=True)
    group_size = args.group_size or (32 if preset == "tiny" else 128)
    print("\n".join(compare(float_dir, device, args.runs, group_size)))


if __name__ == "__main__":
    main()
