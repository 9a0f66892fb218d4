#!/usr/bin/env bash
# Every GPU check that CI cannot run, in priority order, for a lent GPU session:
#
#   bash scripts/gpu_checks.sh [tests] [bench] [switches] [kernels] [views] [fp8] [gptq] [chunked]   (default: tests bench)
#
# (`profile` = `kernels views`.) Each stage has its own time limit and writes its output to $OUT
# (default: ./gpu_out), so a stage that runs long costs only itself. `bench` rewrites its part of
# docs/benchmarks.md and docs/roofline.png (bench_all.py, FP8 section included; `fp8` is the longer
# stand-alone run). `kernels` is bench_kernels.py (the sweeps that pick tile shapes, split rules
# and matmul libraries); `views` are profile_step.py's prefill, tail, batch-1 kernel and host views;
# `switches` is bench_switches.py (the engine's off-by-default switches, PDL, the fused one-row GEMV
# and the skinny GEMM, each alone and together against none: TPOT, TTFT, throughput, tokens).
# A device call may run 600 s at most, and a session has 900 s of device time in all, start-up
# (~30 s a machine) included. Timed on 2026-11-27: the tests ~300 s in all before the GPU engine
# tests got a fixed small KV cache (less now, not re-timed), bench 100 s, kernels 50 s (before the
# GEMV-prologue, skinny-GEMM, prompt-matmul and element-wise sections: more now, not re-timed).
# Reading a call's output takes minutes, by which time its machine has gone back (30 s idle), so a
# session's plan is two calls, the first deciding, the second measuring the decided defaults:
#   1. Here: `mkdir -p .ab && for f in attention/ops/triton_prefill_attention.py model_executor/layers/fused_kernels.py
#      sample/ops/triton_sample.py; do git show 0b6d334:folovllm/$f > .ab/$(basename $f); done`, then on the device
#      (carry [".ab"], timeout 560):
#      `TESTS_LIMIT=200 SWITCHES_LIMIT=190 KERNELS_LIMIT=140 BASELINE=.ab bash scripts/gpu_checks.sh tests switches kernels`
#      - tests: every kernel's, then the GPU engine tests (PDL's among them: same tokens as without);
#      - switches: no switch / pdl / fused_gemv / skinny_gemm / all three, two rounds (10 engines,
#        ~15 s each, not timed on a GPU yet; a cut run still prints its ratios). A switch that gains
#        and changes no token (PDL) or few (a fused norm sums in another order) turns on by default:
#        `folovllm.utils.pdl.ENABLED`, `FUSED_GEMV_CONFIGS`, `SKINNY_GEMM_CONFIGS`;
#      - kernels: the lines that fill those tables with the best configuration per shape: "one-row
#        shapes where the fused GEMV beats the two kernels", "where the skinny GEMM beats every
#        library"; the FP8 decode row "V via registers" (v_via_registers' default); "element-wise":
#        the per-token q/k norm + RoPE + cache write against 0b6d334's per-head one, in turn; the
#        sampler (two uniforms per row, section 20) against 0b6d334's Gumbel-max kernel, in turn; and
#        the prefill rows "list as in a graph": today's kernel (programs walk the list) against
#        0b6d334's (a program per item, padding included), which is what says how much of TTFT the
#        padding was. The prefill sweep comes last and may be cut (measured in full on 2026-11-27).
#   2. With what is left (~300 s): `BENCH_LIMIT=110 bash scripts/gpu_checks.sh bench bench views`:
#      the figures of record on the decided defaults, twice (do they reproduce?), then the views
#      (pageable-copy probe, prefill by kernel, tail, batch-1 kernels, host) as far as the limit
#      allows; what they wrote to $OUT still comes back.
# To time kernel changes against the versions before them in the same run, save the old files where
# git ignores them and carry them to the device: `git show REV:PATH > .ab/NAME` for
# folovllm/attention/ops/triton_prefill_attention.py, .../triton_decode_attention.py,
# folovllm/model_executor/layers/fused_kernels.py and folovllm/sample/ops/triton_sample.py, then
# `BASELINE=.ab` for `kernels` (run's carry:
# [".ab"]). The old files import today's helpers (load_kv_tile and the rest), so those must still
# take their calls.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
stages=${*:-tests bench}
stages=${stages//profile/kernels views}
runs=0
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # logs keep what ran before a time-out
PY=${PYTHON:-python3}
run() {  # name, time limit in seconds, command...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    # SIGINT first: pytest then still prints what failed so far, and why
    timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start))s"
    tail -n 25 "$OUT/$name.log"
    return $rc
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
$PY -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >>"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
for stage in $stages; do
    case $stage in
        # the kernels' tests first: they are quick and say the most when something breaks
        tests) run tests ${TESTS_LIMIT:-540} $PY -m pytest -q -p no:cacheprovider -rfE --durations=12 \
                   tests/unit/test_attention_kernels.py tests/unit/test_fused_kernels.py tests/unit/test_gptq_kernel.py \
                   tests/unit/test_sampler.py tests/unit/test_pdl.py tests/integration/test_gpu_engine.py ;;
        bench) runs=$((runs + 1))  # name it twice to check the figures reproduce in one session
               since=$(mktemp)
               run bench$runs ${BENCH_LIMIT:-540} $PY benchmarks/bench_all.py --skip-hf --prefix-runs 1
               # cut by its time limit (exit 124), bench_all.py still writes what it measured before it
               if [ docs/benchmarks.md -nt "$since" ]; then
                   cp docs/benchmarks.md "$OUT/benchmarks$runs.md" && cp docs/roofline.png "$OUT/"
               fi ;;
        # the sweeps decide the next changes (the prefill sweep alone compiles 20 kernel variants and
        # times 80 graphs; no sweep has been timed on a GPU yet)
        kernels) run kernels ${KERNELS_LIMIT:-240} $PY benchmarks/bench_kernels.py ${BASELINE:+--baseline "$BASELINE"} ;;
        views) run profile_copies 20 $PY benchmarks/profile_step.py copies
               run profile_prefill 90 $PY benchmarks/profile_step.py prefill
               run profile_tail 75 $PY benchmarks/profile_step.py tail
               run profile_decode1 75 $PY benchmarks/profile_step.py kernels 1
               run profile_host 60 $PY benchmarks/profile_step.py host ;;  # 320 s in all
        # PDL, the fused one-row GEMV, the skinny GEMM: each alone and all together against none, two rounds
        switches) run switches ${SWITCHES_LIMIT:-200} $PY benchmarks/bench_switches.py ;;
        fp8) run fp8 300 $PY benchmarks/bench_fp8_kv.py --runs 2 ;;
        gptq) run gptq 540 $PY benchmarks/bench_gptq.py --preset qwen3-4b --runs 2 ;;
        chunked) run chunked 300 $PY benchmarks/bench_chunked_prefill.py ;;
        *) echo "unknown stage $stage" ;;
    esac
done
