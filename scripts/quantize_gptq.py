"""Quantize a float Qwen3 checkpoint to GPTQ (4 or 8 bits), offline.

    python scripts/quantize_gptq.py --model IN --out OUT --bits 4 --group-size 128 [--desc-act] [--asym] [--rtn]

Calibration text is Python's own standard library (no download): by default
128 samples of 512 tokens. ``--rtn`` rounds to nearest instead (no
calibration; fast, for benchmarks). The result loads with
``LLM(model=OUT)`` and follows the AutoGPTQ / GPTQModel checkpoint layout.
"""

import argparse
import time

import torch

from folovllm.quantize.gptq_checkpoint import GPTQRecipe, quantize_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="float checkpoint directory (or hub id)")
    ap.add_argument("--out", required=True, help="where to write the GPTQ checkpoint")
    ap.add_argument("--bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--group-size", type=int, default=128, choices=[-1, 32, 64, 128])
    ap.add_argument("--desc-act", action="store_true", help="act order: quantize the most active inputs first")
    ap.add_argument("--asym", action="store_true", help="asymmetric grid (a zero point per group; written as gptq_v2)")
    ap.add_argument("--rtn", action="store_true", help="round to nearest, no calibration")
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--damp-percent", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype the model runs in while calibrating")
    args = ap.parse_args()
    start = time.perf_counter()
    recipe = GPTQRecipe(
        bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, sym=not args.asym, rtn=args.rtn,
        num_samples=args.num_samples, seq_len=args.seq_len, damp_percent=args.damp_percent,
    )  # fmt: skip
    out = quantize_checkpoint(args.model, args.out, recipe, device=args.device, dtype=getattr(torch, args.dtype))
    print(f"wrote a {args.bits}-bit GPTQ checkpoint to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
