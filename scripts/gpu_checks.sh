#!/usr/bin/env bash
# Every GPU check that CI cannot run, in priority order, for a lent GPU session:
#
#   bash scripts/gpu_checks.sh [tests] [engine] [bench] [switches] [step] [kernels] [views] [startup] [fp8] [gptq] [chunked]
#   (default: tests engine bench)
#
# (`profile` = `kernels views`.) `tests` are the kernels' GPU tests, `engine` the GPU engine tests
# (tests/integration/test_gpu_engine.py). Each stage has its own time limit and writes its output to $OUT
# (default: ./gpu_out), so a stage that runs long costs only itself. `bench` rewrites its part of
# docs/benchmarks.md and docs/roofline.png (bench_all.py, FP8 section included; `fp8` is the longer
# stand-alone run). `kernels` is bench_kernels.py (the sweeps that pick tile shapes, split rules
# and matmul libraries); `views` are profile_step.py's prefill, tail, prompts, kernel (256 and 1 sequences, idle gaps) and host views;
# `switches` is bench_switches.py (the engine's speed switches, PDL off, the fused one-row GEMV,
# the new token in the decode kernel, decode programs in batch order (longest first is the default), decodes by kv head in the prefill kernel and the skinny GEMM,
# and with SWITCHES_KV=fp8 the query in FP8 (every engine then on an FP8 cache), each alone against the defaults: a batch-1
# step's GPU time in one engine, then TPOT, TTFT, throughput, tokens per engine); `step` is its
# first part alone; `startup` is bench_startup.py (LLM(...) in fresh processes: an empty Triton cache with
# and without start-up's parallel compile pass, then a warm cache).
# A device call may run 600 s at most, and a session has 900 s of device time in all, start-up
# (~30 s a machine) included. Timed on 2026-11-28 (twenty-fifth session, an H200): engine 108 s in 4
# processes (51 tests), step 34 s, kernels 120 s, switches 79 s (3 settings and all together, one
# round, after the step part), bench 89-99 s; the fourteenth session (an H100): the kernel tests
# ~150-200 s in one process, views: copies 6 s, prefill 18 s, tail 24 s, batch-1 kernels 24 s.
# A machine stays warm for ~30 s after a call: a second call sent at once skips the start-up; the
# plan below reads each call before the next and gives the machine back in between.
# Keep what the stages printed: commit the kernels, switches and views logs ($OUT/*.log) under
# docs/gpu_runs/DATE-GPU/ beside the dev log's summary of them. (Section 32 kept one number per
# uneven-context decode row, and the rows by split count were lost with the session.)
# The performance issue closed in the twenty-eighth session on its second condition (docs/dev/performance.md,
# section 35: the account of the three missed targets); this plan stays the first thing to run on a lent GPU.
# The plan for the next session (written in the twenty-fifth, after its H200 run, section 32 of
# docs/dev/performance.md; item 1 amended in the twenty-sixth, section 33; "Later" in the twenty-seventh):
#   1. `tests engine` (carry nothing; timeout ~330): the kernels' GPU tests have not run since the
#      fourteenth session (the element-wise loads, the reads before the PDL wait,
#      the split-K skinny GEMM, the filtering samplers and the FP8-query kernels changed since). The
#      engine tests' four skinny-GEMM failures of the twenty-fifth session were a near-tie of their
#      prompt (section 33: bf16 with plain F.linear flips it on the CPU too); their bf16 prefix checks
#      now forgive a divergence within 0.1 of HF's float32 logprob, so they should pass; a failure
#      prints the prompt and the gap.
#   2. `SWITCHES_ONLY=fuse_new_token,fuse_new_token_split,decodes_by_kv_head SWITCHES_RUNS=2
#      SWITCHES_LIMIT=280 bash scripts/gpu_checks.sh switches` (~220 s): the two candidates the H200's
#      single round could not decide (the new token in the decode kernel: TPOT 0.970, throughput 1.013,
#      kernel 3% slower at 256 sequences; since section 34 also in split steps only, which keeps the
#      batch-1 gain and leaves steps of many sequences as they are; decodes by kv head: kernel 40%
#      faster on a mixed step, its engine's TPOT 1.354 where it does nothing); then, if time is left,
#      `SWITCHES_ONLY=fp8_query SWITCHES_KV=fp8 switches` (~90 s). Items 1-3 take ~800 s of the 900
#      with start-up: on an H100, where the targets can be read, run item 3 before item 2.
#   3. `BENCH_LIMIT=140 bash scripts/gpu_checks.sh bench bench` (~200 s): the figures with longest first
#      on (the default since 32f8154, not in the published H200 figures), two runs, and with whatever
#      step 2 turned on (BENCH_SWITCHES=...; the report names them). On an H100 where one is lent, so
#      that the targets (an H100's) can be read off directly.
#   Later, as time allows: `startup`, `views` (the 256-sequence kernel view's idle gaps; the prompts
#   view), `kernels` (its new-token rows now at every decode batch, 1 to 256: the batch size where the
#   new token in the decode kernel stops paying, against the split steps that fuse_new_token_split
#   fuses (1-32 sequences on an H100 or H200); and the
#   sampler's "one row seeded" rows, section 33: the fused kernels plus the seeded row on torch's
#   path, against the whole batch on torch's path as before; the FP8 decode rows' 8-warp variants,
#   section 34: if one beats the engine's 128 keys x 3 at 256 sequences, it is the next FP8 default).
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
SKINNY_TABLE=${SKINNY_TABLE:-$OUT/skinny_gemm_configs.txt}
stages=${*:-tests engine bench}
stages=${stages//profile/kernels views}
runs=0
SHARDS=${SHARDS:-4}  # processes for the test stages: their time is mostly host work on one core each
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
        # the kernels' GPU tests (~150-200 s on an H100 in one process, 2026-11-27), in $SHARDS processes
        # at once (scripts/pytest_shards.py: the summary here, each shard's log beside it)
        tests) run tests ${TESTS_LIMIT:-300} $PY scripts/pytest_shards.py $SHARDS "$OUT/tests" \
                   tests/unit/test_attention_kernels.py tests/unit/test_fused_kernels.py tests/unit/test_gptq_kernel.py \
                   tests/unit/test_sampler.py tests/unit/test_pdl.py -- -q -rfE --durations=12 ;;
        # -v: a cut run still shows which tests passed and which one it was in
        engine) run engine ${ENGINE_LIMIT:-300} $PY scripts/pytest_shards.py $SHARDS "$OUT/engine" \
                    tests/integration/test_gpu_engine.py -- -v -rfE --durations=12 ;;
        bench) runs=$((runs + 1))  # name it twice to check the figures reproduce in one session
               since=$(mktemp)
               # BENCH_SWITCHES=name,...: the figures with those speed switches on (the skinny GEMM with $SKINNY_TABLE)
               run bench$runs ${BENCH_LIMIT:-540} $PY benchmarks/bench_all.py --skip-hf --prefix-runs 1 \
                   ${BENCH_SWITCHES:+--switches "$BENCH_SWITCHES"} $([ -s "$SKINNY_TABLE" ] && echo --skinny-configs "$SKINNY_TABLE")
               # cut by its time limit (exit 124), bench_all.py still writes what it measured before it
               if [ docs/benchmarks.md -nt "$since" ]; then
                   cp docs/benchmarks.md "$OUT/benchmarks$runs.md" && cp docs/roofline.png "$OUT/"
               fi ;;
        # the sweeps decide the next changes (the prefill sweep alone compiles 20 kernel variants and
        # times 80 graphs; no sweep has been timed on a GPU yet)
        # (the skinny GEMM's winning configurations go to $SKINNY_TABLE, for `switches`)
        kernels) run kernels ${KERNELS_LIMIT:-240} $PY benchmarks/bench_kernels.py ${BASELINE:+--baseline "$BASELINE"} --skinny-table "$SKINNY_TABLE" ;;
        views) run profile_copies 20 $PY benchmarks/profile_step.py copies
               run profile_prefill 90 $PY benchmarks/profile_step.py prefill
               run profile_tail 75 $PY benchmarks/profile_step.py tail
               run profile_prompts 60 $PY benchmarks/profile_step.py prompts
               run profile_decode256 75 $PY benchmarks/profile_step.py kernels 256
               # PDL off: with it a kernel starts early and waits inside for the one before, so the
               # per-kernel times of a batch-1 step overlap and say nothing (fourteenth session)
               FOLOVLLM_PDL=0 run profile_decode1 75 $PY benchmarks/profile_step.py kernels 1
               run profile_host 60 $PY benchmarks/profile_step.py host ;;  # 455 s in all
        # PDL off, the fused GEMV, batch order, the skinny GEMM, each alone against the defaults: first a
        # batch-1 step captured per setting in one engine and replayed in turn, then two rounds of engines
        # (SWITCHES_ONLY=name,...: the defaults and those alone; the skinny GEMM takes $SKINNY_TABLE where a
        # `kernels` stage or a carried file left one; SWITCHES_KV=fp8: every engine on an FP8 cache, for fp8_query)
        switches) run switches ${SWITCHES_LIMIT:-200} $PY benchmarks/bench_switches.py ${SWITCHES_ONLY:+--only "$SWITCHES_ONLY"} \
                      ${SWITCHES_NUM_SEQS:+--num-seqs "$SWITCHES_NUM_SEQS"} ${SWITCHES_TOGETHER:+--together} ${SWITCHES_RUNS:+--runs "$SWITCHES_RUNS"} \
                      ${SWITCHES_KV:+--kv-cache-dtype "$SWITCHES_KV"} $([ -s "$SKINNY_TABLE" ] && echo --skinny-configs "$SKINNY_TABLE") ;;
        # only the first part (one engine: ~30-40 s expected, not yet timed)
        step) run step ${STEP_LIMIT:-90} $PY benchmarks/bench_switches.py --runs 0 ;;
        # three fresh processes, two of them compiling every variant (not yet timed: ~60 s expected)
        startup) run startup ${STARTUP_LIMIT:-150} $PY benchmarks/bench_startup.py ;;
        fp8) run fp8 300 $PY benchmarks/bench_fp8_kv.py --runs 2 ;;
        gptq) run gptq 540 $PY benchmarks/bench_gptq.py --preset qwen3-4b --runs 2 ;;
        chunked) run chunked 300 $PY benchmarks/bench_chunked_prefill.py ;;
        *) echo "unknown stage $stage" ;;
    esac
done
