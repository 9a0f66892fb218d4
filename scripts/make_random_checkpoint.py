"""Write a random-weight Qwen3 checkpoint (+ a small BPE tokenizer), no download.

    python scripts/make_random_checkpoint.py --preset qwen3-0.6b --out /tmp/qwen3-0.6b-random
    python scripts/make_random_checkpoint.py --preset tiny --out /tmp/tiny

The qwen3-0.6b preset has Qwen3-0.6B's exact architecture (28 layers, hidden
1024, 16 q / 8 kv heads of 128, vocab 151936, tied embeddings), so speed
measured on it is the speed of the real model.
"""

import argparse

from folovllm.utils.random_checkpoint import PRESETS, make_random_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default=None, help="weights dtype (default: bfloat16 for the qwen3-* presets, float32 for tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is faster for big presets)")
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.preset.startswith("qwen3-") else "float32")
    path = make_random_checkpoint(args.out, preset=args.preset, seed=args.seed, dtype=dtype, device=args.device)
    print(f"wrote {args.preset} checkpoint ({dtype}) to {path}")


if __name__ == "__main__":
    main()
