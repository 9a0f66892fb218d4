"""Every Triton kernel compiles for an H100 (sm_90), checked on the CPU; per-step values add no variants.

The interpreter tests check what the kernels compute; this checks what only the compiler
checks (types across runtime branches, constexpr use, ...), and that block-table widths,
split counts, seeds and token counts reuse one compiled variant (a new one would compile
inside a request). It runs ``scripts/check_triton_compile.py`` in a fresh interpreter,
because this test session imported the kernels in interpreter mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.python_process import python_prints

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_every_kernel_variant_the_engine_uses_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "scripts/check_triton_compile.py", "--arch", "90", "--loops", "_prefill_kernel,_decode_stage1_kernel"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " of " in run.stdout and "FAILED" not in run.stdout
    # the calls compiled on a pool of threads first (as the engine's start-up does), then found every variant compiled
    assert "variants the calls compiled after the parallel pass: 0\n" in run.stdout
    # widths x2, work items, splits, skinny rows, GEMV rows, sampler x2, the filtering kernels' batch sizes x2, GPTQ
    assert run.stdout.count("0 new variant(s)") == 11, run.stdout[-2000:]
    # the bf16 model's kernels also compile with programmatic dependent launch (the script checks the wait and the prefetch)
    for name in ("one-row GEMV 1024x2048 at (4, 2048, 4) (torch.bfloat16)", "SiLU and mul + GEMV 1024x3072 at (4, 1024, 4)",
                 "decode attention, 4 split(s) (torch.bfloat16 q, torch.float8_e4m3fn cache, 16/8 heads of 128)",
                 "sampler, split (torch.bfloat16 logits)"):  # fmt: skip
        assert f"{name}, with PDL\n" in run.stdout, name
    # --loops read the SASS: prefill has an unmasked and a masked loop over key tiles inside its loop
    # over work items, decode one loop
    prefill = run.stdout.split("prefill attention (torch.bfloat16 q, torch.bfloat16 cache", 1)[1].split("\n")[1:4]
    assert [line.split(":")[0].strip() for line in prefill] == [f"_prefill_kernel loop {i}" for i in range(3)], prefill
    assert "_decode_stage1_kernel loop 0: " in run.stdout


def test_gptq_and_skinny_gemm_tiles_fit_a_gpu_with_less_shared_memory_by_taking_fewer_stages():
    """On sm_89 (RTX 4090, L40S: 99 KiB a block) float32 and per-row-group GPTQ tiles and the skinny
    GEMM's widest tiles ask for more shared memory with 3 stages than the GPU gives; the launch then
    takes a stage fewer (folovllm.utils.fit_stages) instead of failing. The script's stand-in launch
    refuses such a kernel as Triton's launcher does."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "scripts/check_triton_compile.py", "--arch", "89", "--cases", "gptq,skinny"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0 and "FAILED" not in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    compiled = [line for line in run.stdout.splitlines() if line.startswith("sm_89: ")]
    late = int(run.stdout.split("variants the calls compiled after the parallel pass: ")[1].split()[0])
    assert compiled and late > 0, run.stdout[-2000:]  # the refused variants, compiled again with fewer stages


def test_programs_per_sm_follows_cudas_occupancy_rules():
    # (registers, warps, dynamic shared bytes): registers go to warps in units of 256 (65 a thread ->
    # 2,304 a warp: 28 one-warp programs, not 31); every block also takes 1 KiB of shared memory (two
    # blocks of 113.5 KiB would fit in 228 KiB without it); 64 warps and 32 blocks at most on sm_90.
    cases = "(218, 4, 81920), (166, 4, 45056), (147, 8, 81920), (96, 4, 38912), (40, 4, 116224), (65, 1, 0), (32, 1, 0)"
    code = f"from check_triton_compile import programs_per_sm as f; print([f(*c, 90) for c in [{cases}]])"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "scripts", env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[2, 3, 1, 5, 1, 28, 32]"


@pytest.mark.parametrize("preset", [None, "0"])
def test_importing_folovllm_keeps_tritons_fused_multiply_adds_unless_the_user_chose(preset):
    code = "import os, folovllm; print(os.environ['TRITON_DEFAULT_FP_FUSION'])"
    assert python_prints(code, {"TRITON_DEFAULT_FP_FUSION": preset}) == (preset or "1")
