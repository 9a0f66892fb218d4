"""Compile every FoloVLLM Triton kernel for a GPU that is not here (default: an H100, sm_90).

Triton's interpreter (TRITON_INTERPRET=1, how CI runs the kernels) executes them as numpy: it
checks their arithmetic but not Triton's own rules. A kernel can pass every interpreter test and
still fail to compile, e.g. when a branch that depends on a runtime value gives a name another
type. This script calls each kernel's Python wrapper on CPU tensors, the way the engine calls it,
with a stand-in driver that reports the target GPU and a launch that stops once the kernel is
compiled (Triton's warm-up mode). It covers the variants the engine uses: bf16, fp16 and float32
models, an FP8 KV cache, Qwen3's head size and odd ones, split and unsplit decode, every GPTQ
path. It then checks that values which change from step to step (block-table width, split
count, the sampler's seed, the batch size) reuse one compiled variant instead of compiling new
ones inside requests. Exit status 1 lists what failed.

The calls run twice: first inside ``compile_in_parallel`` (what the engine's start-up does), which
compiles every variant on a pool of threads and launches nothing; then one by one, with the checks.
The second pass must find every variant compiled: if it compiles one more, the parallel pass asked
for another variant than the launch needs, and the script fails.

    python scripts/check_triton_compile.py [--arch 90] [--cases FAMILY,...] [--resources] [--loops [KERNEL,...]]

``--resources`` prints each compiled kernel's registers, spills and shared memory, and how many of
its programs one SM holds at once (CUDA's occupancy rules): whether a grid runs in one wave.
``--loops`` prints, per compiled kernel (or those named, e.g. ``_prefill_kernel``), the SASS
instructions of each loop body by opcode: a static count of what the SM issues per iteration, a
proxy (not a timing) for changes to a kernel's inner loop when no GPU is at hand. (cuobjdump takes
about half a second per kernel.)
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # must be gone before any kernel module is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from folovllm.utils.compile_ahead import compile_in_parallel, compile_threads  # noqa: E402
from folovllm.utils.triton_variants import num_compiled_variants, total_compiled_variants  # noqa: E402

BF16, FP16, FP32, FP8 = torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn


class _TargetOnlyDriver:
    """What JITFunction.run asks of a driver before it compiles; nothing here can launch."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


# Shared memory one block may opt into, per compute capability: a kernel over it compiles but fails to launch.
MAX_SHARED_BYTES = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
# What one SM holds, per compute capability: registers, shared memory, warps, blocks (CUDA's occupancy limits).
SM_LIMITS = {80: (65_536, 167_936, 64, 32), 86: (65_536, 102_400, 48, 16), 89: (65_536, 102_400, 48, 24), 90: (65_536, 233_472, 64, 32)}


def programs_per_sm(regs: int, num_warps: int, shared: int, arch: int) -> int:
    """How many programs of a compiled kernel run on one SM at once. Registers are handed to warps
    in units of 256, and every block takes 1 KiB of shared memory beside its own."""
    sm_regs, sm_shared, sm_warps, sm_blocks = SM_LIMITS.get(arch, SM_LIMITS[90])
    regs_per_warp = -(-regs * 32 // 256) * 256
    return min(sm_regs // (regs_per_warp * num_warps), sm_shared // (shared + 1024), sm_warps // num_warps, sm_blocks)


# Every kernel compiled so far, in order: (name, compiled kernel).
COMPILED: list = []
# Kernels refused for their shared memory, one entry a refusal: each retry with a stage fewer compiles
# one variant that the parallel pass (which launches nothing) could not know of.
REFUSED: list[str] = []


# Kernels whose every global load must come before their first global store. The compiler keeps a
# load after a store it cannot tell apart from it, so a load placed after a store starts its trip
# to memory one round trip late: at one token, the q/k norm kernel took 2.4 us instead of ~1.6 for
# that (docs/dev/performance.md section 21). Not the prefill kernel, whose programs store one work
# item's output before loading the next.
LOADS_BEFORE_STORES = {
    "_add_rms_norm_kernel", "_silu_and_mul_kernel", "_qk_norm_rope_store_kernel", "_store_kv_cache_kernel", "_gemv_kernel",
    "_decode_stage1_kernel", "_decode_stage2_kernel", "_block_sums_kernel", "_draw_kernel", "_skinny_gemm_kernel",
}  # fmt: skip


def _compile_only(run, show_resources: bool, show_loops: list[str] | None, arch: int):
    max_shared = MAX_SHARED_BYTES.get(arch, 232_448)

    def wrapped(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append((self.__name__, kernel))
        if kernel.metadata.shared > max_shared:  # as Triton's launcher refuses it (folovllm.utils.fit_stages retries)
            REFUSED.append(self.__name__)
            raise OutOfResources(kernel.metadata.shared, max_shared, "shared memory")
        if "tf32" in kernel.asm.get("ptx", ""):  # Triton's default for a float32 tl.dot
            raise RuntimeError(f"{self.__name__} rounds float32 products to TF32: pass input_precision='ieee'")
        if self.__name__ in LOADS_BEFORE_STORES:
            # Up to an acquiring atomic: what follows one (the skinny GEMM's split-K sum) reads
            # what other programs stored, and must skip L1, which other SMs' stores do not update.
            ptx = kernel.asm["ptx"]
            acquire = re.search(r"atom\.global\.gpu\.acq_rel", ptx)
            before, after = (ptx[: acquire.start()], ptx[acquire.end() :]) if acquire else (ptx, "")
            if "st.global" in before and "ld.global" in before[before.index("st.global") :]:
                raise RuntimeError(f"{self.__name__} loads after its first store")
            if re.search(r"ld\.global(?!\.cg)", after):
                raise RuntimeError(f"{self.__name__} loads through L1 after its acquiring atomic")
        check_prefill = self.__name__ == "_prefill_kernel" and arch == 90
        if check_prefill or show_resources:
            md = kernel.metadata
            regs, local = _resource_usage(kernel.asm["cubin"])
            held = programs_per_sm(regs, md.num_warps, md.shared, arch)
        if check_prefill:
            from folovllm.attention.ops.triton_prefill_attention import PROGRAMS_PER_SM

            if local or held < PROGRAMS_PER_SM:  # its grid is PROGRAMS_PER_SM per SM: they must all run at once
                raise RuntimeError(f"_prefill_kernel: {held} program(s) per SM, {local} bytes spilled; the grid assumes {PROGRAMS_PER_SM}")
        if show_resources:
            print(f"    {self.__name__}: {regs} registers, {local} bytes of local memory (spills), {md.shared} bytes of "
                  f"shared memory, {md.num_warps} warps: {held} program(s) per SM")
        if show_loops is not None and (not show_loops or self.__name__ in show_loops):
            for i, body in enumerate(_loop_bodies(kernel.asm["cubin"])):
                top = ", ".join(f"{op} {n}" for op, n in body.most_common(8))
                print(f"    {self.__name__} loop {i}: {sum(body.values())} instructions ({top}, ...)")
        return kernel

    return wrapped


@functools.lru_cache(maxsize=None)
def _cuobjdump(cubin: bytes, flag: str) -> str:
    """The output of the cuobjdump in Triton's wheel for a compiled kernel (once per binary: calls that
    reuse a compiled variant print the same loops)."""
    import subprocess
    import tempfile

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True).stdout


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """Registers per thread and bytes of local memory (spills) of a compiled kernel. (cuobjdump's
    SHARED is only the static part; Triton's kernels ask for theirs at launch: metadata.shared.)"""
    out = _cuobjdump(cubin, "--dump-resource-usage")
    return int(re.search(r"REG:(\d+)", out)[1]), int(re.search(r"LOCAL:(\d+)", out)[1])


def _loop_bodies(cubin: bytes) -> list[Counter]:
    """Opcode counts of each loop body in the kernel's SASS: the instructions from a backward
    branch's target to the branch. (A loop nested in another is counted in both.)"""
    lines = []  # (address, opcode, branch target or None)
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^;]*);", _cuobjdump(cubin, "-sass")):
        target = re.search(r"0x([0-9a-f]+)", m[3]) if m[2] == "BRA" else None
        lines.append((int(m[1], 16), m[2], int(target[1], 16) if target else None))
    return [
        Counter(op for a, op, _ in lines if target <= a <= addr)
        for addr, _, target in lines
        if target is not None and target < addr
    ]


def _attention_cases():
    from folovllm.attention.ops.triton_decode_attention import NewTokenKV, paged_decode_attention
    from folovllm.attention.ops.triton_kv_store import store_kv_cache
    from folovllm.attention.ops.triton_prefill_attention import paged_prefill_attention, prefill_block_sizes, prefill_tiles

    def batch(dtype, cache_dtype, heads, kv_heads, head_dim, block=16):
        seq_lens, query_lens = [40, 9], [17, 1]
        k_cache = torch.zeros(8, block, kv_heads, head_dim, dtype=cache_dtype)
        q = torch.zeros(sum(query_lens), heads, head_dim, dtype=dtype)
        table = torch.zeros(2, 3, dtype=torch.int32)
        qsl = torch.tensor([0, 17, 18], dtype=torch.int32)
        lens = torch.tensor(seq_lens, dtype=torch.int32)
        tiles = torch.from_numpy(prefill_tiles(query_lens, prefill_block_sizes(head_dim)[0]))
        return q, k_cache, table, qsl, lens, tiles

    for dtype, cache_dtype, heads, kv_heads, head_dim in [
        (BF16, BF16, 16, 8, 128), (BF16, FP8, 16, 8, 128), (FP16, FP16, 16, 8, 128),
        (FP32, FP32, 2, 1, 48), (BF16, BF16, 8, 2, 256),
    ]:  # fmt: skip
        name = f"{dtype} q, {cache_dtype} cache, {heads}/{kv_heads} heads of {head_dim}"
        q, cache, table, qsl, lens, tiles = batch(dtype, cache_dtype, heads, kv_heads, head_dim)
        yield f"prefill attention ({name})", lambda: paged_prefill_attention(q, cache, cache, table, qsl, lens, tiles, 0.1)
        if cache_dtype == FP8:  # FP8_QUERY's variant
            yield (f"prefill attention, query in FP8 ({name})",
                   lambda: paged_prefill_attention(q, cache, cache, table, qsl, lens, tiles, 0.1, fp8_query=True))  # fmt: skip
        if heads == 16:  # DECODES_BY_KV_HEAD's variant, the one-token row marked
            marked = torch.from_numpy(prefill_tiles([17, 1], prefill_block_sizes(head_dim)[0], decode_rows=True))
            yield (f"prefill attention, decodes by kv head ({name})",
                   lambda: paged_prefill_attention(q, cache, cache, table, qsl, lens, marked, 0.1, decode_items=True))  # fmt: skip
            if cache_dtype == FP8:
                yield (f"prefill attention, decodes by kv head, query in FP8 ({name})",
                       lambda: paged_prefill_attention(q, cache, cache, table, qsl, lens, marked, 0.1, decode_items=True, fp8_query=True))  # fmt: skip
        for splits in (1, 4):
            yield (f"decode attention, {splits} split(s) ({name})",
                   lambda s=splits: paged_decode_attention(q[:2].contiguous(), cache, cache, table, lens, 0.1, num_kv_splits=s))  # fmt: skip
            if dtype == BF16 and cache_dtype != FP8 and heads == 16:  # LONGEST_FIRST's variants, the model's dtype
                yield (f"decode attention, {splits} split(s), longest first ({name})",
                       lambda s=splits: paged_decode_attention(q[:2].contiguous(), cache, cache, table, lens, 0.1, num_kv_splits=s,
                                                               seq_order=torch.tensor([1, 0], dtype=torch.int32)))  # fmt: skip
            if dtype == BF16 and heads == 16:  # FUSE_NEW_TOKEN's variants: raw q/k/v as views of the q/k/v projection
                qkv = torch.zeros(2, (heads + 2 * kv_heads) * head_dim, dtype=dtype)
                raw_q, raw_k, raw_v = (t.view(2, -1, head_dim) for t in qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1))
                w, table_cs = torch.ones(head_dim, dtype=dtype), torch.zeros(64, head_dim)
                new = NewTokenKV(raw_k, raw_v, w, w, table_cs, table_cs, torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), 1e-6)
                yield (f"decode attention, {splits} split(s), new token fused in ({name})",
                       lambda s=splits, new=new, raw_q=raw_q: paged_decode_attention(raw_q, cache, cache, table, lens, 0.1, num_kv_splits=s,
                                                                                     new_token=new))  # fmt: skip
                # the decode switches at once (a GPU session turns its winners on together)
                every = dict(seq_order=torch.tensor([1, 0], dtype=torch.int32), new_token=new)
                yield (f"decode attention, {splits} split(s), longest first, new token fused in ({name})",
                       lambda s=splits, every=every, raw_q=raw_q: paged_decode_attention(raw_q, cache, cache, table, lens, 0.1,
                                                                                         num_kv_splits=s, **every))  # fmt: skip
                if cache_dtype == FP8:  # FP8_QUERY's variants, alone and with the three
                    yield (f"decode attention, {splits} split(s), query in FP8 ({name})",
                           lambda s=splits: paged_decode_attention(q[:2].contiguous(), cache, cache, table, lens, 0.1, num_kv_splits=s,
                                                                   fp8_query=True))  # fmt: skip
                    yield (f"decode attention, {splits} split(s), query in FP8, longest first, new token fused in ({name})",
                           lambda s=splits, every=every, raw_q=raw_q: paged_decode_attention(raw_q, cache, cache, table, lens, 0.1,
                                                                                             num_kv_splits=s, fp8_query=True, **every))  # fmt: skip
        if cache_dtype == FP8:  # variants bench_kernels.py times (the engine's widens V in registers, with 4 warps)
            yield (f"decode attention, 1 split, V through shared memory ({name})",
                   lambda: paged_decode_attention(q[:2].contiguous(), cache, cache, table, lens, 0.1, v_via_registers=False))  # fmt: skip
            for block_n, stages, fp8_query in ((64, 2, False), (128, 3, False), (128, 3, True)):
                yield (f"decode attention, 1 split, {block_n} keys x {stages}, 8 warps{', query in FP8' if fp8_query else ''} ({name})",
                       lambda n=block_n, s=stages, f=fp8_query: paged_decode_attention(q[:2].contiguous(), cache, cache, table, lens, 0.1,
                                                                                       block_n=n, num_stages=s, num_warps=8, fp8_query=f))  # fmt: skip
        kv = torch.zeros(3, kv_heads, head_dim, dtype=dtype)
        yield f"KV store ({name})", lambda: store_kv_cache(kv, kv, cache, cache, torch.tensor([0, -1, 5]))


def _fused_cases():
    from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, fused_qk_norm_rope_store, silu_and_mul

    for dtype in (BF16, FP16, FP32):
        x, w = torch.zeros(5, 1024, dtype=dtype), torch.ones(1024, dtype=dtype)
        yield f"add + RMSNorm ({dtype})", lambda: fused_add_rms_norm(x, x, w, 1e-6)
        yield f"RMSNorm ({dtype})", lambda: fused_add_rms_norm(x, None, w, 1e-6)
        yield f"SiLU and mul ({dtype})", lambda: silu_and_mul(torch.zeros(5, 6144, dtype=dtype))
        for cache_dtype in ((dtype, FP8) if dtype == BF16 else (dtype,)):
            for norm in (True, False):
                qkv = torch.zeros(5, 32 * 128, dtype=dtype)
                q, k, v = (t.view(5, -1, 128) for t in qkv.split([16 * 128, 8 * 128, 8 * 128], dim=-1))
                cache = torch.zeros(4, 16, 8, 128, dtype=cache_dtype)
                nw = torch.ones(128, dtype=dtype) if norm else None
                cos = torch.zeros(64, 128)
                yield (f"q/k norm + RoPE + KV write ({dtype}, {cache_dtype} cache, norm={norm})",
                       lambda: fused_qk_norm_rope_store(q, k, v, nw, nw, cos, cos, torch.zeros(5, dtype=torch.int64), 1e-6,
                                                        cache, cache, torch.zeros(5, dtype=torch.int64)))  # fmt: skip


def _gemv_cases():
    from folovllm.model_executor.layers.triton_gemv import (
        CONFIGS, FEW_ROWS_GEMV_CONFIGS, GEMV_CONFIGS, fits, gemv, gemv_add_rms_norm, gemv_silu_and_mul,
    )  # fmt: skip

    for (n, k), config in GEMV_CONFIGS.items():
        for dtype in (BF16, FP16, FP32):
            x, w = torch.zeros(1, k, dtype=dtype), torch.zeros(n, k, dtype=dtype)
            yield f"one-row GEMV {n}x{k} at {config} ({dtype})", lambda: gemv(x, w, config)
    for (n, k, rows), config in FEW_ROWS_GEMV_CONFIGS.items():
        x, w = torch.zeros(rows, k, dtype=BF16), torch.zeros(n, k, dtype=BF16)
        yield f"{rows}-row GEMV {n}x{k} at {config} ({BF16})", lambda x=x, w=w, c=config: gemv(x, w, c)
    # The prologues in every configuration (the engine's choice, FUSED_GEMV_CONFIGS, waits for the
    # H100's timings), bf16: the norm before q/k/v (gate/up differs only in N, a runtime value),
    # SiLU-and-mul before down.
    for config in [c for c in CONFIGS if fits(1, c)]:
        w, x = torch.zeros(4096, 1024, dtype=BF16), torch.zeros(1, 1024, dtype=BF16)
        for res in (x, None):
            yield (f"add + RMSNorm + GEMV 4096x1024 at {config} (residual={res is not None})",
                   lambda w=w, x=x, c=config, r=res: gemv_add_rms_norm(x, r, w[0], 1e-6, w, c))  # fmt: skip
        w, x = torch.zeros(1024, 3072, dtype=BF16), torch.zeros(1, 6144, dtype=BF16)
        yield f"SiLU and mul + GEMV 1024x3072 at {config}", lambda w=w, x=x, c=config: gemv_silu_and_mul(x, w, c)


def _skinny_cases():
    from folovllm.model_executor.layers.triton_skinny_gemm import skinny_gemm, sweep_configs

    # Each compiled variant bench_kernels.py sweeps (the split count is an argument: one variant
    # serves every split), split 4 ways, at the rows it is swept at (SKINNY_GEMM_CONFIGS, the
    # engine's choice, waits for the H100's timings); K changes no compiled variant
    w = torch.zeros(1024, 3072, dtype=BF16)
    variants = {}
    for rows in (8, 16, 32, 64, 128, 256):
        for c in sweep_configs(rows):
            variants.setdefault((c[:3], c[4:]), ((*c[:3], 4, *c[4:]), rows))
    for config, m in variants.values():
        x = torch.zeros(m, 3072, dtype=BF16)
        yield f"skinny GEMM 1024x3072 at {config}, M={m}", lambda x=x, c=config: skinny_gemm(x, w, c)


def _sampler_cases():
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    for dtype in (BF16, FP32):
        logits = torch.zeros(3, 151_936, dtype=dtype)
        yield f"sampler, split ({dtype} logits)", lambda: inverse_cdf_sample(logits, torch.ones(3), splits=8)
        greedy = torch.tensor([True, False, True])
        yield (f"sampler with greedy rows, split ({dtype} logits)",
               lambda: inverse_cdf_sample(logits, torch.ones(3), splits=8, greedy=greedy))  # fmt: skip
    from folovllm.sample.ops.triton_filtered_sample import filtered_sample

    for dtype in (BF16, FP16, FP32):
        logits = torch.zeros(3, 151_936, dtype=dtype)
        top_k, top_p, min_p = torch.full((3,), 20), torch.full((3,), 0.95), torch.full((3,), 0.05)
        yield f"sampler, top-k and top-p ({dtype} logits)", lambda: filtered_sample(logits, torch.ones(3), top_k, top_p, None)
    greedy = torch.tensor([True, False, True])
    yield "sampler, top-p alone, greedy rows", lambda: filtered_sample(logits, torch.ones(3), None, top_p, None, greedy=greedy)
    yield "sampler, every filter", lambda: filtered_sample(logits, torch.ones(3), top_k, top_p, min_p, greedy=greedy)
    from folovllm.sample.ops.triton_window_sample import window_sample

    for dtype in (BF16, FP32):
        logits = torch.zeros(3, 151_936, dtype=dtype)
        yield f"sampler, a window, top-k and top-p ({dtype} logits)", lambda: window_sample(logits, torch.ones(3), top_k, top_p, None)
    yield "sampler, a window, top-p alone, greedy rows", lambda: window_sample(logits, torch.ones(3), None, top_p, None, greedy=greedy)
    yield "sampler, a window, every filter", lambda: window_sample(logits, torch.ones(3), top_k, top_p, min_p, greedy=greedy)
    from folovllm.sample.sampler import warm_up_fused_kernels

    yield "sampler warm-up, a bf16 model (bf16 and float32 logits)", lambda: warm_up_fused_kernels(torch.zeros(2, 151_936, dtype=BF16))


def _gptq_cases():
    from folovllm.model_executor.layers.quantization.triton_gptq_gemm import gptq_gemm

    k, n = 1024, 512
    for bits in (4, 8):
        # grouped, per-channel (one group of all K rows, as the linear method passes it), per-row group lookup
        for group_size, row_groups in ((128, False), (k, False), (128, True)):
            # split-K with BLOCK_M 16 and 64, the tiled GEMM; fp16 takes bf16's code path
            for dtype, m in ((BF16, 1), (BF16, 33), (BF16, 100), (FP32, 1), (FP32, 100)):
                qweight = torch.zeros(k * bits // 32, n, dtype=torch.int32)
                qzeros = torch.zeros(k // group_size, n * bits // 32, dtype=torch.int32)
                scales = torch.zeros(k // group_size, n, dtype=dtype)
                g_idx = torch.zeros(k, dtype=torch.int32) if row_groups else None
                x = torch.zeros(m, k, dtype=dtype)
                yield (f"GPTQ GEMM ({bits}-bit, group {group_size}{', per-row groups' if row_groups else ''}, {dtype}, M={m})",
                       lambda: gptq_gemm(x, qweight, qzeros, scales, bits, group_size, 1, g_idx))  # fmt: skip


# Kernels that read inputs no kernel writes before they wait for the kernel before (with PDL), and
# how many such loads their PTX must issue ahead of the wait: position, slot, cos, sin; the length.
LOADS_BEFORE_WAIT = {"_qk_norm_rope_store_kernel": 4, "_decode_stage1_kernel": 1}
# Kernels that ask L2 for what they will read before they wait: weights; the first key tile.
PREFETCH_BEFORE_WAIT = {"_gemv_kernel", "_decode_stage1_kernel", "_skinny_gemm_kernel"}


def _pdl_cases():
    """The kernels of a decode step with programmatic dependent launch on (``folovllm.utils.pdl``): each
    must let the next kernel launch first thing and wait for the kernel before (``griddepcontrol.wait``);
    those in ``PREFETCH_BEFORE_WAIT`` must also ask L2 for data, and those in ``LOADS_BEFORE_WAIT``
    load their inputs, before the wait."""
    from folovllm.utils import pdl

    def with_pdl(call):
        def run():
            saved = pdl.ENABLED, pdl._sm_major
            pdl.ENABLED, pdl._sm_major = True, lambda x: 9
            start = len(COMPILED)
            try:
                call()
            finally:
                pdl.ENABLED, pdl._sm_major = saved
            for name, kernel in COMPILED[start:]:
                ptx = kernel.asm["ptx"]
                if not kernel.metadata.launch_pdl or "griddepcontrol.wait" not in ptx:
                    raise RuntimeError(f"{name} does not take part in programmatic dependent launch")
                wait = ptx.index("griddepcontrol.wait")
                early = ptx[:wait].count("ld.global")
                if early and not ptx.index("griddepcontrol.launch_dependents") < ptx.index("ld.global"):
                    raise RuntimeError(f"{name} loads before it lets the next kernel launch")
                if name in PREFETCH_BEFORE_WAIT and "prefetch.global.L2" not in ptx[:wait]:
                    raise RuntimeError(f"{name} does not ask L2 for data before it waits")
                if early < LOADS_BEFORE_WAIT.get(name, 0):
                    raise RuntimeError(f"{name} loads {early} input(s) before it waits, not {LOADS_BEFORE_WAIT[name]}")
            if len(COMPILED) == start:
                raise RuntimeError("nothing compiled")

        return run

    for cases in (_attention_cases, _fused_cases, _gemv_cases, _skinny_cases, _sampler_cases):
        # the bf16 model's kernels (the KV store runs only outside the fused path; the GEMV's
        # prologues and the skinny GEMM in one configuration: the others differ in block sizes only)
        for name, call in cases():
            skip = r"torch\.float(16|32)\b|^KV store|(RMSNorm|SiLU and mul) \+ GEMV .* at (?!\(4, 1024, 4\))|skinny GEMM .* at (?!\(64, 64, 64, 4, 4, 4\))"
            if re.search(skip, name) is None:
                yield f"{name}, with PDL", with_pdl(call)


def _drawing(accept) -> torch.Generator:
    """A generator whose first draw, as ``inverse_cdf_sample`` makes it, satisfies ``accept``."""
    for seed in range(10_000):
        if accept(int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed)))):
            return torch.Generator().manual_seed(seed)
    raise AssertionError("no such seed")


# The families of calls, by the name --cases takes.
CASES = {"attention": _attention_cases, "fused": _fused_cases, "gemv": _gemv_cases, "skinny": _skinny_cases,
         "sampler": _sampler_cases, "gptq": _gptq_cases, "pdl": _pdl_cases}  # fmt: skip


def _per_step_value_cases():
    """Values that change from step to step (block-table width, seed, batch size) must not add variants:
    a new variant compiles inside a user's request. Yields (name, kernels, calls that must share their variants)."""
    from folovllm.attention.ops import triton_decode_attention as decode
    from folovllm.attention.ops import triton_prefill_attention as prefill
    from folovllm.model_executor.layers.quantization import triton_gptq_gemm as gptq
    from folovllm.sample.ops import triton_sample as sample

    cache = torch.zeros(80, 16, 8, 128, dtype=BF16)
    q = torch.zeros(4, 16, 128, dtype=BF16)
    lens = torch.tensor([3, 1], dtype=torch.int32)
    qsl = torch.tensor([0, 3, 4], dtype=torch.int32)
    tiles = torch.from_numpy(prefill.prefill_tiles([3, 1], 64))
    widths = (1, 3, 16, 64)  # ==1, odd, and multiples of 16: three specialisations if the stride were specialised
    yield "prefill attention, block-table widths 1..64", (prefill._prefill_kernel,), [
        lambda w=w: prefill.paged_prefill_attention(q, cache, cache, torch.zeros(2, w, dtype=torch.int32), qsl, lens, tiles, 0.1)
        for w in widths
    ]
    # 6 heads: 12, 18, 48 and 96 work items, multiples of 16 and not (two specialisations if it were specialised)
    q6, cache2 = torch.zeros(4, 6, 128, dtype=BF16), torch.zeros(80, 16, 2, 128, dtype=BF16)
    padded = [torch.cat([tiles, torch.full((n, 2), -1, dtype=torch.int32)]) for n in (0, 1, 6, 14)]
    yield "prefill attention, work lists of 2..16 tiles", (prefill._prefill_kernel,), [
        lambda t=t: prefill.paged_prefill_attention(q6, cache2, cache2, torch.zeros(2, 3, dtype=torch.int32), qsl, lens, t, 0.1)
        for t in padded
    ]
    yield "decode attention, block-table widths 1..64", (decode._decode_stage1_kernel,), [
        lambda w=w: decode.paged_decode_attention(q[:2], cache, cache, torch.zeros(2, w, dtype=torch.int32), lens, 0.1)
        for w in widths
    ]
    table = torch.zeros(2, 3, dtype=torch.int32)
    yield "decode attention, split counts 2..64", (decode._decode_stage1_kernel, decode._decode_stage2_kernel), [
        lambda s=s: decode.paged_decode_attention(q[:2], cache, cache, table, lens, 0.1, num_kv_splits=s) for s in (2, 3, 16, 33, 64)
    ]
    from folovllm.model_executor.layers import triton_skinny_gemm as skinny

    w = torch.zeros(1024, 2048, dtype=BF16)
    yield "skinny GEMM, 129..256 rows, split 1..8 ways", (skinny._skinny_gemm_kernel,), [
        lambda m=m, s=s: skinny.skinny_gemm(torch.zeros(m, 2048, dtype=BF16), w, (128, 64, 64, s, 4, 4))
        for m, s in ((129, 4), (200, 1), (256, 8), (256, 2))
    ]
    from folovllm.model_executor.layers import triton_gemv

    w = torch.zeros(1024, 3072, dtype=BF16)
    yield "GEMV, 3 and 4 rows (one BLOCK_M)", (triton_gemv._gemv_kernel,), [
        lambda m=m: triton_gemv.gemv(torch.zeros(m, 3072, dtype=BF16), w, (4, 512, 8)) for m in (4, 3)
    ]
    logits = torch.zeros(64, 151_936, dtype=BF16)
    calls = [
        lambda b=b, splits=splits, seed=seed: sample.inverse_cdf_sample(logits[:b], torch.ones(b), _drawing(seed), splits=splits)
        for b, splits in ((1, 1), (2, 3), (16, 16), (64, 64))
        for seed in (lambda x: x % 16 != 0, lambda x: x % 16 == 0)  # the kernel's seed: both specialisations
    ]
    yield "sampler, batch sizes 1..64, split counts 1..64, seeds", (sample._block_sums_kernel, sample._draw_kernel), calls
    greedy = torch.arange(64) % 3 == 0
    calls = [
        lambda b=b, splits=splits: sample.inverse_cdf_sample(logits[:b], torch.ones(b), splits=splits, greedy=greedy[:b])
        for b, splits in ((2, 1), (16, 16), (64, 64))
    ]
    yield "sampler with greedy rows, batch sizes 2..64", (sample._block_sums_kernel, sample._draw_kernel), calls
    from folovllm.sample.ops import triton_filtered_sample as filtered
    from folovllm.sample.ops import triton_window_sample as windowed

    top_k, top_p, min_p = torch.full((64,), 20), torch.full((64,), 0.95), torch.full((64,), 0.05)
    greedy = torch.arange(64) % 3 == 0
    filter_sets = ((top_k, top_p, None, None), (None, top_p, None, greedy), (top_k, None, min_p, None), (top_k, top_p, min_p, greedy))
    sizes = (1, 2, 7, 8, 9, 64)  # the sampler picks either kernel by the rows' top-k, at any batch size
    for kernel, sample_rows in ((filtered._filtered_sample_kernel, filtered.filtered_sample),
                                (windowed._window_sample_kernel, windowed.window_sample)):  # fmt: skip
        calls = [
            lambda b=b, seed=seed, fs=fs, f=sample_rows: f(
                logits[:b], torch.ones(b), *(None if x is None else x[:b] for x in fs[:3]), _drawing(seed),
                greedy=None if fs[3] is None else fs[3][:b],
            )
            for b in sizes
            for seed in (lambda x: x % 16 != 0, lambda x: x % 16 == 0)
            for fs in filter_sets
        ]
        yield f"{kernel.__name__}, batch sizes {sizes[0]}..{sizes[-1]}, seeds, filter sets", (kernel,), calls
    qweight, qzeros = torch.zeros(128, 512, dtype=torch.int32), torch.zeros(8, 64, dtype=torch.int32)
    scales = torch.zeros(8, 512, dtype=BF16)
    yield "GPTQ GEMM, M 1..16 (one BLOCK_M)", (gptq._gptq_gemm_kernel,), [
        lambda m=m: gptq.gptq_gemm(torch.zeros(m, 1024, dtype=BF16), qweight, qzeros, scales, 4, 128, 1) for m in (1, 2, 5, 16)
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100)")
    ap.add_argument("--resources", action="store_true", help="print each kernel's registers, spills, shared memory and "
                    "how many of its programs an SM holds")
    ap.add_argument("--loops", nargs="?", const="", help="print the SASS instructions of the loop bodies of every kernel, "
                    "or of those named (comma-separated)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated families of calls (default: all of {', '.join(CASES)}; "
                    "pdl only from sm_90 on, the engine's condition for it)")
    args = ap.parse_args()
    triton.runtime.driver.set_active(_TargetOnlyDriver(args.arch))
    loops = None if args.loops is None else [name for name in args.loops.split(",") if name]
    names = args.cases.split(",")
    if set(names) - set(CASES):
        ap.error(f"--cases: no such family {sorted(set(names) - set(CASES))}; the families are {', '.join(CASES)}")
    all_cases = [CASES[name] for name in names if name != "pdl" or args.arch >= 90]
    t0, threads = time.perf_counter(), max(2, compile_threads())
    with compile_in_parallel(threads, ignore_errors=True):  # failures are reported by the pass below
        for cases in all_cases:
            for name, call in cases():
                try:
                    call()
                except Exception:
                    pass
    ahead = total_compiled_variants()
    print(f"compiled ahead on {threads} threads: {ahead} variants in {time.perf_counter() - t0:.0f} s")
    JITFunction.run = _compile_only(JITFunction.run, args.resources, loops, args.arch)
    failed, count, t0 = [], 0, time.perf_counter()
    for cases in all_cases:
        for name, call in cases():
            if args.resources or loops is not None:
                print(name)
            count += 1
            try:
                call()
            except Exception:
                failed.append(name)
                print(f"FAILED: {name}\n{traceback.format_exc(limit=3)}", flush=True)
    print(f"sm_{args.arch}: {count - len(failed)} of {count} kernel calls compiled in {time.perf_counter() - t0:.0f} s "
          f"(triton {triton.__version__})")  # fmt: skip
    late = total_compiled_variants() - ahead
    print(f"variants the calls compiled after the parallel pass: {late}")
    # A variant refused for its shared memory compiles again with fewer stages at its first launch
    # (in the engine: the warm-up, still before any request); any other is one the pass missed.
    if late > len(REFUSED):
        failed.append("compile ahead")
        print("FAILED: compile ahead: the parallel pass missed variants the launches needed", flush=True)
    if set(names) != set(CASES):
        return 1 if failed else 0  # the per-step checks below call kernels of every family
    for name, kernels, calls in _per_step_value_cases():
        calls[0]()  # may compile this configuration; the other values must reuse it
        before = sum(map(num_compiled_variants, kernels))
        for call in calls[1:]:
            call()
        added = sum(map(num_compiled_variants, kernels)) - before
        print(f"{name}: {added} new variant(s) over {len(calls) - 1} more calls")
        if added:
            failed.append(name)
            print(f"FAILED: {name}: a per-step value is specialised on", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
