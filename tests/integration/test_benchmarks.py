"""The benchmark suite runs end to end (``--smoke``: a tiny model on the CPU), so GPU time is not spent on script errors."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_bench_all_smoke_writes_every_row_and_keeps_the_rest_of_the_file(tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- bench_all.py: begin -->\nold figures\n<!-- bench_all.py: end -->\n\n## History\n\nkept\n")
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_all.py", "--smoke", "--runs", "2", "--out", str(out), "--switches", "batch_order,fuse_new_token,fp8_query"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n") and text.endswith("## History\n\nkept\n") and "old figures" not in text
    for row in ("(a) throughput", "(b) TTFT", "mixed-step graphs off", "(b) TPOT", "(b) start-up", "s to import transformers after `import folovllm`, itself ", "Start-up by phase: tokenizer ", "first request after start-up",
                "kernel variants compiled after start-up", "| 4 |", "(g) KV cache dtype",
                "speed switches beyond the defaults: batch_order + fuse_new_token + fp8_query (fp8_query acts in the FP8 row only)."):  # fmt: skip
        assert row in text, row
    assert (out.parent / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bench_all_run_cut_by_a_time_limit_keeps_what_it_measured():
    """gpu_checks.sh stops a stage with SIGINT at its time limit: the parts measured before it are kept."""
    from benchmarks.bench_all import run_until_interrupted

    def interrupted():
        raise KeyboardInterrupt

    ran = []
    parts = [("(c)", lambda: 1.5), ("(e)", interrupted), ("(g)", lambda: ran.append("(g)"))]
    assert run_until_interrupted(parts) == ({"(c)": 1.5}, "(e)")
    assert ran == []  # nothing runs after the interruption
    assert run_until_interrupted(parts[:1] + parts[2:]) == ({"(c)": 1.5, "(g)": None}, None)


def test_repeated_timed_runs_compute_their_prompts_every_time(tiny_model):
    """TTFT and throughput runs repeat their prompts: a prefix-cache hit would time less work."""
    from benchmarks.bench_throughput import run_folovllm
    from benchmarks.common import nano_vllm_workload, ttft
    from folovllm import LLM

    llm = LLM(str(tiny_model), device="cpu", max_model_len=128)
    workload = nano_vllm_workload(4, 20, 40, 24, llm.llm_engine.config.model_config.get_vocab_size())
    for timed_run in (lambda: ttft(llm, "cpu", list(range(3, 67))), lambda: run_folovllm(llm, workload, "cpu")):
        for _ in range(3):
            timed_run()
        stats = llm.llm_engine.get_stats()
        assert stats["prefix_cache_queries"] > 0 and stats["prefix_cache_hits"] == 0


# Every script that scripts/gpu_checks.sh runs besides bench_all.py (above) and the tests, at its
# CPU size: a lent GPU's minutes are too few to find a script error there. (What each one prints
# on the CPU is not a measurement.) Also the CPU-only views of profile_step.py.
SKINNY_TABLE = Path(tempfile.gettempdir()) / f"folovllm_skinny_table_{os.getpid()}.txt"  # bench_kernels writes it
GPU_STAGE_SCRIPTS = {
    # (today's kernels as their own baseline: the A/B's plumbing, not a comparison)
    "bench_kernels": (["benchmarks/bench_kernels.py", "--smoke", "--baseline", "folovllm", "--skinny-table", str(SKINNY_TABLE)],
                      ["baseline kernels from folovllm: prefill, decode, fused", "decode  B=", "prefill B=",
                       "today / baseline, TFLOP/s in turn: ", "today / baseline, list as in a graph, TFLOP/s in turn: ", ", list as in a graph: ", "in a graph, TFLOP/s, batch order / heaviest first", "today / baseline, us in turn: ", "by keys per iteration x pipeline stages: 16 keys x 1: ", "32 keys x 2 V via registers, 8 warps: ", "32 keys x 2 query in FP8: ",
                       " 64x64  4w 2s: ", "float8_e4m3fn by splits",
                       "matmul down", "prompt-sized, torch's default library: M=16: ", "Triton GEMV (triton_gemv.py), best of its configurations (BLOCK_N, BLOCK_K, warps): M=1: ", "the engine's at M=1: ", "matmul shapes where the GEMV beats every library at one row, with its best configuration: ", "... and at 2-4 rows, (N, K, rows): ", "skinny GEMM (triton_skinny_gemm.py), best of its configurations (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages): M=8: ",
                       ", unsplit ", "; the engine's: {8: 'cuBLAS'}", "... where the skinny GEMM beats every library, (N, K, rows): configuration: ",
                       "    by how much (library time / its time): ",
                       "as (weight @ x.T).T, torch's default library, transposing copy included: M=8: ", ", at 2-4 rows: ",
                       "one row, q/k/v    64x32, two kernels / one, us by GEMV configuration: (4, 1024, 4): ", "one row, down ",
                       "one-row shapes where the fused GEMV beats the two kernels, (N, K): (configuration, speed-up): ", "mixed   1 x 40 prompt + 3 decodes (ctx 24), us in turn: all in the prefill kernel (", "/ the decodes by kv head in it (DECODES_BY_KV_HEAD) ", "/ the decodes in the decode kernel (", "sampler B=", "one row seeded, eagerly: the engine's (the batch by its kernel",
                       "element-wise,     1 tokens: add + RMSNorm ", "    q/k norm + RoPE + KV write, today / baseline, us in turn: ",
                       "    add + RMSNorm, today / baseline, us in turn: ", "    SiLU and mul, today / baseline, us in turn: ",
                       "list as in a graph, heaviest first (the engine's) / batch order, TFLOP/s in turn: ", " ctx=8..40 ",
                       "    batch order / longest first (LONGEST_FIRST), us in turn, by splits: 1: ",
                       "    q/k norm + RoPE + cache write, then decode / all in the decode kernel (FUSE_NEW_TOKEN), us in turn: "]),
    "profile_copies": (["benchmarks/profile_step.py", "copies"],
                       ["from pageable memory behind"] if torch.cuda.is_available() else ["pageable copies: needs a GPU"]),
    "profile_kernels": (["benchmarks/profile_step.py", "kernels", "4"], ["Self CPU time total", "the idle time by gap length", "100-inf  us:"]),
    "profile_prefill": (["benchmarks/profile_step.py", "prefill"], ["first ms", "GPU kernels ms", "2048  eager", "of which the step's inputs", "wait for the sampled token", "the rest of generate()"]),
    "profile_tail": (["benchmarks/profile_step.py", "tail"], ["decode, 1-8 seqs", "of it reached"]),
    "profile_prompts": (["benchmarks/profile_step.py", "prompts"], ["the first step of the throughput workload: "]),
    "profile_breakdown": (["benchmarks/profile_step.py", "breakdown"], ["update+outputs"]),
    "profile_host": (["benchmarks/profile_step.py", "host", "4"],
                     ["generate()", "generate() + logprobs=5", "streaming (cumulative text)", "streaming + logprobs=5", "streaming deltas + logprobs=5",
                      "streaming deltas + logprobs=5, flat_logprobs"]),
    "profile_logprobs": (["benchmarks/profile_step.py", "logprobs", "8"], ["FINAL_ONLY list of dicts", "DELTA      list of dicts"]),
    "fp8": (["benchmarks/bench_fp8_kv.py", "--scale", "cpu", "--runs", "1", "--fp8-query"],
            ["fp8: ", "fp8, query too (FP8_QUERY): ", "identical tokens"]),
    "switches": (["benchmarks/bench_switches.py", "--scale", "cpu", "--runs", "1"],
                 ["batch-1 step (forward + logits) as one graph per setting", "  fused_gemv: ", "  fused_gemv + fuse_new_token: ", "  fuse_new_token: ",
                  "round 1, defaults: TPOT ", "round 1, fuse_new_token: ", "round 1, fuse_new_token_split: ",
                  "round 1, no_pdl (no_pdl: not available here): ", "round 1, fused_gemv: ", "round 1, batch_order: ", "round 1, decodes_by_kv_head: ", "round 1, skinny_gemm: ",
                  "greedy outputs equal to round 1 with the defaults: 8/8", "skinny_gemm / defaults (medians over all rounds): TPOT ",
                  "fp8_query left out: it acts over an FP8 KV cache only", "KV cache: auto"]),
    "switches_fp8": (["benchmarks/bench_switches.py", "--scale", "cpu", "--runs", "1", "--only", "fp8_query", "--kv-cache-dtype", "fp8"],
                     ["KV cache: fp8", "  fp8_query: ", "round 1, fp8_query: TPOT ", "fp8_query / defaults (medians over all rounds): TPOT "]),
    "chunked": (["benchmarks/bench_chunked_prefill.py", "--scale", "cpu"], ["chunked, budget 1024"]),
    "startup": (["benchmarks/bench_startup.py", "--scale", "cpu"],
                ["cold, parallel compile pass: LLM(...) ", "cold, no pass (FOLOVLLM_COMPILE_THREADS=0): LLM(...) ",
                 "warm (the first run's cache), parallel compile pass: LLM(...) ", "; no parallel pass", "cold start-up with the pass / without: "]),
    "gptq": (["benchmarks/bench_gptq.py", "--runs", "1"], ["TPOT, batch 1", "Weights read per decode step"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GPU_STAGE_SCRIPTS))
def test_gpu_stage_script_runs_on_the_cpu(name):
    args, expected = GPU_STAGE_SCRIPTS[name]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # each script picks its own backend
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for text in expected:
        assert text in run.stdout, (text, run.stdout[-3000:])
    if name == "bench_kernels":  # the winners' table, as bench_switches.py --skinny-configs reads it
        assert isinstance(ast.literal_eval(SKINNY_TABLE.read_text()), dict)
        SKINNY_TABLE.unlink()


def test_bench_switches_runs_the_defaults_and_the_switches_named_alone_and_together_with_the_skinny_table_and_workload_given(tmp_path):
    table = tmp_path / "skinny.txt"
    table.write_text("{(1024, 2048, 256): (128, 64, 64, 4, 4, 4), (1024, 3072, 256): (64, 128, 64, 2, 4, 4)}\n")
    args = ["benchmarks/bench_switches.py", "--scale", "cpu", "--runs", "1", "--only", "skinny_gemm,batch_order", "--together",
            "--skinny-configs", str(table), "--num-seqs", "5"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"the skinny GEMM's table: 2 entries, from {table}" in run.stdout
    assert "throughput workload: 5 prompts of up to 64 tokens" in run.stdout
    rounds = [line.split(":")[0] for line in run.stdout.splitlines() if line.startswith("round ")]
    assert rounds == ["round 1, defaults", "round 1, batch_order", "round 1, skinny_gemm", "round 1, batch_order + skinny_gemm"], run.stdout[-3000:]
    assert "batch_order + skinny_gemm / defaults (medians over all rounds): TPOT " in run.stdout
    assert "batch-1 step" not in run.stdout  # neither acts on a batch-1 step: nothing to compare there


def test_bench_switches_settings_start_from_the_engines_defaults(monkeypatch):
    """A setting turns its switches away from the engine's defaults and leaves the rest at them: no
    setting (bench_all.py without --switches) keeps decode programs longest first, the default, and
    ``batch_order`` turns that off. (A run of 2026-11-28 published figures with it silently off.)"""
    from benchmarks import bench_switches
    from folovllm.attention.backends import abstract
    from folovllm.attention.ops import triton_decode_attention, triton_prefill_attention
    from folovllm.model_executor.layers import triton_gemv, triton_skinny_gemm
    from folovllm.utils import pdl

    for module, names in ((triton_decode_attention, ("LONGEST_FIRST", "FUSE_NEW_TOKEN")), (pdl, ("ENABLED",)),
                          (triton_prefill_attention, ("DECODES_BY_KV_HEAD",)), (abstract, ("FP8_QUERY",)),
                          (triton_gemv, ("FUSED_GEMV_CONFIGS",)), (triton_skinny_gemm, ("SKINNY_GEMM_CONFIGS",))):  # fmt: skip
        for name in names:  # apply() sets them all: each goes back after the test
            monkeypatch.setattr(module, name, getattr(module, name))
    assert bench_switches.LONGEST_FIRST_DEFAULT is True
    assert bench_switches.apply((), "cpu") == () and triton_decode_attention.LONGEST_FIRST is True
    assert bench_switches.apply(("batch_order",), "cpu") == ("batch_order",) and triton_decode_attention.LONGEST_FIRST is False
    assert bench_switches.apply(("fuse_new_token_split",), "cpu") and triton_decode_attention.FUSE_NEW_TOKEN == "split"
    bench_switches.apply(("fuse_new_token", "fuse_new_token_split"), "cpu")
    assert triton_decode_attention.FUSE_NEW_TOKEN is True  # both named: every step
    bench_switches.apply((), "cpu")
    assert triton_decode_attention.LONGEST_FIRST is True and triton_decode_attention.FUSE_NEW_TOKEN is False


def test_the_prefill_views_kernel_breakdown_sums_each_kernels_calls():
    from types import SimpleNamespace

    from benchmarks.profile_step import _gpu_time_by_name

    def event(name, us):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("gemm", 30.0), event("norm", 2.0), event("gemm", 25.0), event("attention", 40.0), event("norm", 3.0)]
    assert _gpu_time_by_name(events) == [("gemm", (55.0, 2)), ("attention", (40.0, 1)), ("norm", (5.0, 2))]


def test_the_schedule_view_lists_every_prompt_token_of_the_gpu_workload_once():
    """profile_step.py schedule: the GPU run's workload (its lengths, drawn with Qwen3's vocabulary),
    each step with prompt tokens listed; their prompt tokens add up to the workload's, and their
    one-token rows to the summary's."""
    import re

    run = subprocess.run([sys.executable, "benchmarks/profile_step.py", "schedule"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    total = int(re.search(r"256 sequences, prompts ([\d,]+) tokens", run.stdout).group(1).replace(",", ""))
    steps = re.findall(r"step (\d+): +([\d,]+) tokens: +([\d,]+) prompt tokens of +\d+ sequences, +(\d+) one-token rows", run.stdout)
    counts = [[int(x.replace(",", "")) for x in step] for step in steps]
    assert [i for i, *_ in counts] == list(range(len(counts))) and len(counts) > 1
    assert sum(prompt for _, _, prompt, _ in counts) == total
    assert all(tokens == prompt + rows for _, tokens, prompt, rows in counts)
    summary = re.search(r"(\d+) steps, (\d+) with prompt tokens .*; in those ([\d,]+) one-token rows", run.stdout)
    assert summary is not None and int(summary.group(2)) == len(counts) < int(summary.group(1)), run.stdout[-2000:]
    assert int(summary.group(3).replace(",", "")) == sum(r for *_, r in counts) > 0
