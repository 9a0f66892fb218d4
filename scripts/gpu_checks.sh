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
# the new token in the decode kernel, the last-split merge, decode programs longest first, decodes by kv head in the prefill kernel and the skinny GEMM,
# and with SWITCHES_KV=fp8 the query in FP8 (every engine then on an FP8 cache), each alone against the defaults: a batch-1
# step's GPU time in one engine, then TPOT, TTFT, throughput, tokens per engine); `step` is its
# first part alone; `startup` is bench_startup.py (LLM(...) in fresh processes: an empty Triton cache with
# and without start-up's parallel compile pass, then a warm cache).
# A device call may run 600 s at most, and a session has 900 s of device time in all, start-up
# (~30 s a machine) included. Timed on 2026-11-27 (fourteenth session, one machine): the kernel
# tests ~150-200 s, after which the GPU engine tests had not reported one result when a 200 s limit
# cut the stage (they still need timing); switches 127 s; kernels 73 s; bench 91-98 s; views:
# copies 6 s, prefill 18 s, tail 24 s, batch-1 kernels 24 s, host (cut by a bug, since mended).
# A machine stays warm for ~30 s after a call: a second call sent at once skips the start-up. The
# plan below instead reads call 1 before sending call 2, and pays a fresh machine's start-up for it.
# The plan for the next session (written in the fifteenth to twenty-first, which had no GPU). It picks
# the switches and publishes figures with them in one session: call 1 decides, call 2 confirms and measures.
#   1. Here: `rm -rf .ab && mkdir .ab && git show f3b9e8b:folovllm/model_executor/layers/fused_kernels.py > .ab/fused_kernels.py
#      && git show 9d6a61e:folovllm/attention/ops/triton_decode_attention.py > .ab/triton_decode_attention.py`
#      (the element-wise kernels before their loads moved ahead of their stores and their inputs ahead of
#      the PDL wait; the decode kernel before its length moved ahead of the wait), then on the device (carry
#      [".ab"], timeout 480): `ENGINE_LIMIT=150 STEP_LIMIT=60 KERNELS_LIMIT=200 BASELINE=.ab
#      bash scripts/gpu_checks.sh engine step kernels` (50 engine tests, each an engine with its
#      graphs: ~3-5 s apiece is the guess, the start-up test two fresh processes, all in 4 processes
#      at once (nineteenth session; SHARDS=1 runs them in one); kernels ~73 s in the fourteenth
#      session, plus ~40 s of skinny sweep)
#      - engine: the GPU engine tests (never run with PDL on, nor with the inputs read before the wait;
#        also the 2-4-row GEMV, longest first, the new token in the decode kernel, the splits merged
#        in their last program (the one switch whose memory ordering only a GPU exercises) and the
#        split-K skinny GEMM at every row bucket, which counts its programs in the same way; every
#        switch at once (twenty-first session); and start-up's parallel compile pass, which runs dummy
#        steps with no kernel launched: the variants it compiles must be all that the warm-up and
#        capture need, and nothing may fault);
#      - step: PDL off, the fused one-row GEMV, the new token in the decode kernel (FUSE_NEW_TOKEN), the
#        splits merged in their last program (MERGE_IN_LAST_SPLIT), the first two together and all three,
#        against the defaults, a batch-1 step in one engine (a candidate: a setting >= 2% faster);
#      - kernels: element-wise and decode at batch 1, today / baseline; two kernels / one for the new token;
#        "batch order / longest first" at
#        32, 96, 192 uneven sequences by splits (decides LONGEST_FIRST and the split rule for that band);
#        "merged by a second kernel / in the last split program" at 1, 32, 96, 192 sequences;
#        o and down asked of cuBLAS transposed; the skinny GEMM at 8-256 rows by tiling and split against
#        cuBLAS (its winners land in $OUT/skinny_gemm_configs.txt: a non-empty table makes skinny_gemm a
#        candidate); the two "mixed" rows (twentieth session): a step's decodes in the prefill kernel as
#        64-row tiles per query head (today), by kv head (DECODES_BY_KV_HEAD), or in the decode kernel
#        with the prompt's tiles alone after it (by kv head faster at 560 + 255 x 900: a candidate;
#        docs/dev/performance.md section 27); the FP8 cache's decode at batch 256 "by keys per iteration x
#        pipeline stages", now also with the query in FP8 (FP8_QUERY, twenty-second session: q.K as one FP8
#        warpgroup MMA, 701 SASS instructions per 128 keys against 1,027): faster than the engine's
#        "128 keys x 3 V via registers" makes fp8_query a candidate (it acts in the FP8 row only);
#        the sampler rows' "window kernel / whole-row kernel / torch's sort" at top_k=20, top_p=0.95 and
#        top_p alone (twenty-third and twenty-fourth sessions): the smallest batch where the whole-row
#        kernel beats the window is what FILTERED_SAMPLE_MIN_ROWS (8) should be.
#   2. Read call 1 (the machine goes back meanwhile; a fresh one costs ~30 s of start-up and compiles
#      its Triton variants again), copy the returned skinny_gemm_configs.txt to .ab/, and list the
#      candidates as CANDIDATES=name,... (bench_switches.py's names). Then (carry [".ab"], timeout ~360):
#      `SKINNY_TABLE=.ab/skinny_gemm_configs.txt SWITCHES_ONLY=$CANDIDATES SWITCHES_TOGETHER=1
#      SWITCHES_RUNS=1 SWITCHES_LIMIT=200 BENCH_SWITCHES=$CANDIDATES BENCH_LIMIT=140
#      bash scripts/gpu_checks.sh switches bench`: each candidate alone and all together against the
#      defaults, each in its engine (TPOT, TTFT, throughput, greedy outputs), then the figures of record
#      with all of them on (the report names them; two timed throughput runs), the start-up row with
#      its phases and the transformers import beside it, the FP8 row with its new decode default.
#      The next session without a GPU makes exactly those switches the defaults (or, where the
#      together row lost to the defaults, says so beside the figures and leaves them as they were).
#      fp8_query, if a candidate, goes in BENCH_SWITCHES (bench's FP8 row then rounds the query: its
#      tok/s and its agreement with the bf16 cache both show what it does); `SWITCHES_ONLY=fp8_query
#      SWITCHES_KV=fp8 switches` (~90 s) is its own A/B if time is left.
#   3. If time is left: `tests` (the kernels' GPU tests, ~100 s in 4 processes: passed in full in the
#      fourteenth session; since then the element-wise loads, the reads before the PDL wait, the
#      last-split merge and the split-K skinny GEMM changed), `startup` (~60 s: LLM(...) with an empty
#      Triton cache, with the parallel compile pass and without, then warm), `views` (the
#      256-sequence kernel view's idle gaps: what the widest band's ~0.4 ms a step unaccounted for is;
#      the prompts view: where the nine prompt steps' 0.43 s go, ~0.2 s over their FLOPs; host work on
#      this CPU is ~3 ms of each, so it is the GPU's), `SWITCHES_ONLY=decodes_by_kv_head
#      SWITCHES_NUM_SEQS=1000 ... switches` (1,000 prompts, 1,024 at a time by the H100's defaults: 21% of
#      decoding's reads in steps with prompt tokens, where that switch acts).
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
        # PDL off, the fused GEMV, longest first, the skinny GEMM, each alone against the defaults: first a
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
