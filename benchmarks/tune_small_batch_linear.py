"""Choose the small-batch norm / gate + matmul kernel's blocks on a GPU, and check it pays off.

    python benchmarks/tune_small_batch_linear.py [kernels] [engine]

``kernels``: for Qwen3-0.6B's q/k/v, gate/up and down at 1 and 16 rows, every
(BLOCK_N, BLOCK_K, num_warps, num_stages) in a small grid, timed inside a CUDA
graph against the two kernels it replaces; prints the fastest few and the
engine's current choice (``triton_gemv.gemv_config``).
``engine``: decode time per step of a bf16 Qwen3-0.6B-shaped engine at batch
1, 8 and 16, with the fused path on and off (``SMALL_BATCH_MAX_TOKENS``).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.bench_kernels import graph_time  # noqa: E402
from benchmarks.common import get_checkpoint, measure_copy_bandwidth  # noqa: E402

GRID = list(itertools.product((16, 32, 64), (128, 256, 512), (4, 8), (2, 3, 4)))


def kernels() -> None:
    import torch.nn.functional as F

    from folovllm.model_executor.layers import triton_gemv
    from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, silu_and_mul

    dev, dtype = "cuda", torch.bfloat16
    bw = measure_copy_bandwidth(dev)
    default = triton_gemv.gemv_config
    norm_w = torch.ones(1024, dtype=dtype, device=dev)
    for m in (1, 16):
        x, res = torch.randn(m, 1024, dtype=dtype, device=dev), torch.randn(m, 1024, dtype=dtype, device=dev)
        gate_up = torch.randn(m, 6144, dtype=dtype, device=dev)
        shapes = []
        for name, n in (("q/k/v", 4096), ("gate/up", 6144)):
            w = torch.randn(n, 1024, dtype=dtype, device=dev) / 32
            shapes.append((name, w, lambda w=w: F.linear(fused_add_rms_norm(x, res, norm_w, 1e-6)[0], w),
                           lambda w=w: triton_gemv.norm_linear(x, res, norm_w, 1e-6, w)))  # fmt: skip
        down = torch.randn(1024, 3072, dtype=dtype, device=dev) / 55
        shapes.append(("down", down, lambda: F.linear(silu_and_mul(gate_up), down), lambda: triton_gemv.silu_mul_linear(gate_up, down)))
        for name, w, two, one in shapes:
            t0 = time.perf_counter()
            pair, current = graph_time(two), graph_time(one)
            timings = []
            for cfg in GRID:
                triton_gemv.gemv_config = lambda n, elem_size, cfg=cfg: triton_gemv.GemvConfig(*cfg)
                try:
                    timings.append((graph_time(one), cfg))
                except Exception as e:  # a block too big for shared memory or registers
                    print(f"  {cfg}: {type(e).__name__}")
                finally:
                    triton_gemv.gemv_config = default
            timings.sort()
            best = ", ".join(f"{cfg} {t * 1e6:.1f} us" for t, cfg in timings[:4])
            print(f"{name:7s} M={m:2d}: two kernels {pair * 1e6:6.1f} us, fused as configured {default(w.shape[0], 2)} "
                  f"{current * 1e6:6.1f} us ({w.numel() * 2 / current / bw:.0%} of copy bandwidth); "
                  f"fastest (BLOCK_N, BLOCK_K, warps, stages): {best} [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip


def engine() -> None:
    from folovllm import LLM, SamplingParams
    from folovllm.model_executor.layers import fused_linear

    model = get_checkpoint(None, "qwen3-0.6b", "cuda")
    for max_tokens in (fused_linear.SMALL_BATCH_MAX_TOKENS, 0):
        fused_linear.SMALL_BATCH_MAX_TOKENS = max_tokens  # read at each step, so the graphs capture this path
        llm = LLM(model, max_model_len=1024)
        rows = []
        for batch in (1, 8, 16):
            prompts = [{"prompt_token_ids": [(7 * i + j) % 1000 for j in range(32)]} for i in range(batch)]
            params = SamplingParams(max_tokens=257, ignore_eos=True)
            llm.generate(prompts, params, use_tqdm=False)  # warm
            tpots = [statistics.mean(o.metrics.mean_time_per_output_token for o in llm.generate(prompts, params, use_tqdm=False))
                     for _ in range(3)]  # fmt: skip
            rows.append(f"batch {batch}: {statistics.median(tpots) * 1e3:.2f} ms/step ({min(tpots) * 1e3:.2f}-{max(tpots) * 1e3:.2f})")
        print(f"fused up to {max_tokens} tokens: " + "; ".join(rows), flush=True)
        del llm
        import gc

        gc.collect()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    for part in sys.argv[1:] or ["kernels", "engine"]:
        {"kernels": kernels, "engine": engine}[part]()
