"""``python -m folovllm``: generate from the command line.

With no ``--model`` it builds (once, cached) a small random-weight demo
checkpoint, so it runs on a fresh machine with no model hub. The text from a
random model is gibberish, but every stage of the engine runs for real.

Errors are one line on stderr: exit code 2 for a bad flag or value (usage),
1 when the model cannot be loaded or generation fails.
"""

from __future__ import annotations

import argparse
import sys


def demo_checkpoint() -> str:
    from folovllm.utils.random_checkpoint import cached_random_checkpoint

    return cached_random_checkpoint("demo-tiny", "tiny", hidden_size=128, intermediate_size=256, num_hidden_layers=4)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m folovllm", description="Offline generation with FoloVLLM")
    ap.add_argument("--model", default=None, help="local HF directory or hub id (default: a random demo model)")
    ap.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        _run(args)
    except ValueError as exc:  # ModelLoadError is a ValueError, but a runtime failure
        from folovllm.model_loader import ModelLoadError

        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, ModelLoadError) else 2)
    except (TypeError, RuntimeError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def _run(args: argparse.Namespace) -> None:
    from folovllm import LLM, SamplingParams

    params = SamplingParams(  # before loading anything, so a bad value fails at once
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, n=args.n, max_tokens=args.max_tokens
    )
    model = args.model or demo_checkpoint()
    prompts = args.prompt or ["def fibonacci(n):", "The capital of France is", "import numpy as np\n"]
    llm = LLM(model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len)
    for out in llm.generate(prompts, params):
        for comp in out.outputs:
            m = out.metrics
            print(f"--- prompt {out.prompt!r} [{comp.index}] finish={comp.finish_reason} "
                  f"tokens={len(comp.token_ids)} ttft={m.time_to_first_token * 1e3:.1f}ms")  # fmt: skip
            print(comp.text)


if __name__ == "__main__":
    main()
