"""Start-up of ``LLM(...)`` with an empty Triton cache and a warm one, each in a fresh process.

A machine's first engine compiles every Triton variant its start-up reaches; later ones load them
from Triton's cache on disk. ``bench_all.py``'s start-up row is whatever the machine's cache held
(warm, after the kernel tests and sweeps). Here each run is a fresh Python with its own cache
directory, in this order:

* cold, with start-up's parallel compile pass (``folovllm.utils.compile_ahead``, one thread per CPU
  up to 16);
* cold, without it (``FOLOVLLM_COMPILE_THREADS=0``: each variant compiles when its launch comes);
* warm: the first run's cache again, with the pass.

Each prints ``LLM(...)``'s seconds (transformers and folovllm imported before the timer), the
engine's phases, and how many variants compiled in the pass and after it (0 is the aim).

GPU: python benchmarks/bench_startup.py   (Qwen3-0.6B shapes, bf16, bench_all's engine settings)
CPU: python benchmarks/bench_startup.py --scale cpu   (checks the script: nothing compiles on a CPU)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import parse_scaled_args

SCALES = {
    "gpu": dict(preset="qwen3-0.6b", dtype="bfloat16", max_model_len=2 * 1024 + 64),
    "cpu": dict(preset="small", dtype="float32", max_model_len=256),
}

# One start-up, in the child process: prints one JSON line.
_CHILD = """
import json, time
import transformers, folovllm
from folovllm import LLM
from folovllm.utils.compile_ahead import compile_threads
t0 = time.perf_counter()
llm = LLM({model!r}, device={device!r}, dtype={dtype!r}, max_model_len={max_model_len})
if {device!r} == "cuda":
    import torch
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
worker = llm.llm_engine.executor.worker
print(json.dumps(dict(seconds=seconds, phases=llm.llm_engine.startup_seconds, threads=compile_threads(),
                      ahead=worker.variants_compiled_ahead, late=worker.variants_compiled_late)))
"""


def start_up(code: str, cache_dir: str, threads: str | None) -> dict:
    env = {**os.environ, "TRITON_CACHE_DIR": cache_dir}
    env.pop("FOLOVLLM_COMPILE_THREADS", None)
    if threads is not None:
        env["FOLOVLLM_COMPILE_THREADS"] = threads
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"start-up failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def describe(name: str, r: dict) -> str:
    phases = ", ".join(f"{phase} {secs:.2f} s" for phase, secs in r["phases"].items())
    if r["ahead"] is None:
        compiled = "no parallel pass"
    else:
        compiled = f"{r['ahead']} variants readied on {r['threads']} threads (compiled, or loaded from the cache), {r['late']} after"
    return f"{name}: LLM(...) {r['seconds']:.2f} s ({phases}; the config and the rest {r['seconds'] - sum(r['phases'].values()):.2f} s); {compiled}"


def main() -> None:
    args, device, scale, model = parse_scaled_args(SCALES, runs=None)
    code = _CHILD.format(model=model, device=device, dtype=scale["dtype"], max_model_len=scale["max_model_len"])
    with tempfile.TemporaryDirectory() as root:
        first, second = str(Path(root) / "first"), str(Path(root) / "second")
        runs = [
            ("cold, parallel compile pass", start_up(code, first, None)),
            ("cold, no pass (FOLOVLLM_COMPILE_THREADS=0)", start_up(code, second, "0")),
            ("warm (the first run's cache), parallel compile pass", start_up(code, first, None)),
        ]
    for name, r in runs:
        print(describe(name, r), flush=True)
    (_, with_pass), (_, without) = runs[0], runs[1]
    print(f"cold start-up with the pass / without: {with_pass['seconds']:.2f} / {without['seconds']:.2f} s = "
          f"{with_pass['seconds'] / without['seconds']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
