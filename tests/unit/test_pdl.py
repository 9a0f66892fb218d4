"""Programmatic dependent launch: the switch, and the kernels' PDL variants run in the interpreter.

The interpreter cannot execute ``griddepcontrol`` or an L2 prefetch, so these tests stand in
Python functions for them that record each call. That checks what a CPU can: with PDL each
program of every kernel of a step lets the next kernel launch and then waits, exactly once (a
program that exits without waiting would let the kernel finish before the one it depends on),
the results are those of the plain launch, and the one-row matmul prefetches every line of its
weight. Whether the GPU overlaps the kernels is for ``benchmarks/`` to show.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from folovllm.utils import pdl  # noqa: E402
from tests.fixtures.python_process import python_prints  # noqa: E402


def test_pdl_runs_only_when_enabled_and_only_on_hopper_or_later(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setattr(pdl, "ENABLED", False)
    monkeypatch.setattr(pdl, "_sm_major", lambda x: 9)
    assert pdl.pdl_launch_args(x) == {"USE_PDL": False}
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.pdl_launch_args(x) == {"USE_PDL": True, "launch_pdl": True}
    monkeypatch.setattr(pdl, "_sm_major", lambda x: 8)  # an A100
    assert pdl.pdl_launch_args(x) == {"USE_PDL": False}
    monkeypatch.undo()
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.pdl_launch_args(x) == {"USE_PDL": False}  # a CPU tensor


@pytest.mark.parametrize("value,expected", [(None, "True"), ("0", "False"), ("1", "True")])
def test_the_switch_is_the_environment_variable(value, expected):
    assert python_prints("from folovllm.utils import pdl; print(pdl.ENABLED)", {"FOLOVLLM_PDL": value}) == expected


def test_a_triton_without_the_launch_option_gets_no_pdl(monkeypatch):
    import dataclasses

    from triton.backends.nvidia import compiler

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert pdl._cuda_major.__wrapped__(0) == (9 if "launch_pdl" in compiler.CUDAOptions.__dataclass_fields__ else 0)
    monkeypatch.setattr(compiler, "CUDAOptions", dataclasses.make_dataclass("CUDAOptions", [("num_warps", int, 4)]))
    assert pdl._cuda_major.__wrapped__(0) == 0


@pytest.fixture
def pdl_calls(monkeypatch):
    """PDL on for CPU tensors, with Python stand-ins for the GPU-only calls. Yields the record:
    the order of launch/wait calls, and the addresses the kernels prefetched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter")
    record = {"calls": [], "prefetched": []}
    monkeypatch.setattr(pdl, "ENABLED", True)
    monkeypatch.setattr(pdl, "_sm_major", lambda x: 9)
    monkeypatch.setattr(tl.extra.cuda, "gdc_launch_dependents", lambda *a, **k: record["calls"].append("launch"))
    monkeypatch.setattr(tl.extra.cuda, "gdc_wait", lambda *a, **k: record["calls"].append("wait"))
    monkeypatch.setattr(pdl, "prefetch_to_l2", lambda ptrs: record["prefetched"].append(ptrs.handle.data.copy()))
    return record


def _run_both_ways(pdl_calls, monkeypatch, call, num_programs):
    """``call()`` with PDL off, then on; the outputs must be equal, and each of the ``num_programs``
    programs must have called launch, then wait, once."""
    with monkeypatch.context() as m:
        m.setattr(pdl, "ENABLED", False)
        plain = call()
        assert pdl_calls["calls"] == []
    with_pdl = call()
    for a, b in zip(plain if isinstance(plain, tuple) else (plain,), with_pdl if isinstance(with_pdl, tuple) else (with_pdl,)):
        assert torch.equal(a, b)
    assert pdl_calls["calls"] == ["launch", "wait"] * num_programs


def test_every_program_of_the_element_wise_kernels_waits(pdl_calls, monkeypatch):
    from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, fused_qk_norm_rope_store, silu_and_mul

    g = torch.Generator().manual_seed(0)
    x, res, w = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g), torch.randn(64, generator=g)
    _run_both_ways(pdl_calls, monkeypatch, lambda: fused_add_rms_norm(x, res, w, 1e-6), num_programs=3)
    pdl_calls["calls"].clear()
    _run_both_ways(pdl_calls, monkeypatch, lambda: silu_and_mul(torch.arange(2 * 40.0).view(2, 40) / 9), num_programs=2)
    pdl_calls["calls"].clear()

    q, k, v = torch.randn(2, 4, 16, generator=g), torch.randn(2, 2, 16, generator=g), torch.randn(2, 2, 16, generator=g)
    cos, sin = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)

    def rope_store():
        cache = torch.zeros(2, 2, 4, 2, 16)
        out = fused_qk_norm_rope_store(q, k, v, w[:16], w[16:32], cos, sin, torch.tensor([3, 5]), 1e-6, cache[0], cache[1], torch.tensor([1, 2]))
        return out, cache

    _run_both_ways(pdl_calls, monkeypatch, rope_store, num_programs=2)


@pytest.mark.parametrize("form", ["plain", "add_rms_norm", "silu_and_mul"])
def test_the_gemv_prefetches_every_line_of_its_weight_before_it_waits(pdl_calls, monkeypatch, form):
    from folovllm.model_executor.layers import triton_gemv

    g = torch.Generator().manual_seed(1)
    n, k, config = 37, 1024, (8, 256, 4)  # 37 rows: the last program's rows past N are clamped, not fetched
    w = torch.randn(n, k, generator=g).half()
    x = torch.randn(1, 2 * k if form == "silu_and_mul" else k, generator=g).half()
    res, norm_w = torch.randn(1, k, generator=g).half(), torch.randn(k, generator=g).half()
    call = {
        "plain": lambda: triton_gemv.gemv(x, w, config),
        "add_rms_norm": lambda: triton_gemv.gemv_add_rms_norm(x, res, norm_w, 1e-6, w, config),
        "silu_and_mul": lambda: triton_gemv.gemv_silu_and_mul(x, w, config),
    }[form]
    _run_both_ways(pdl_calls, monkeypatch, call, num_programs=triton.cdiv(n, config[0]))
    addresses = np.concatenate([p.ravel() for p in pdl_calls["prefetched"]]).astype(np.int64) - w.data_ptr()
    assert addresses.min() >= 0 and addresses.max() < w.nbytes  # nothing outside the weight
    assert set(addresses // 128) == set(range(w.nbytes // 128))  # every 128-byte line of it


def test_every_program_of_the_attention_kernels_waits(pdl_calls, monkeypatch):
    from folovllm.attention.ops.triton_decode_attention import paged_decode_attention
    from folovllm.attention.ops.triton_prefill_attention import paged_prefill_attention, prefill_tiles

    g = torch.Generator().manual_seed(2)
    k_cache, v_cache = torch.randn(6, 8, 2, 16, generator=g), torch.randn(6, 8, 2, 16, generator=g)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    lens = torch.tensor([20, 0], dtype=torch.int32)  # the second row is a graph's padding: no keys, still waits
    q = torch.randn(2, 4, 16, generator=g)
    # stage 1: a program per (row, kv head, split); split, stage 2: one per (row, head)
    for splits, programs in ((1, 2 * 2), (3, 2 * 2 * 3 + 2 * 4)):
        pdl_calls["calls"].clear()
        call = lambda s=splits: paged_decode_attention(q, k_cache, v_cache, table, lens, 0.25, num_kv_splits=s)  # noqa: E731
        _run_both_ways(pdl_calls, monkeypatch, call, num_programs=programs)

    pdl_calls["calls"].clear()
    query_lens, seq_lens = [20, 3], [20, 9]
    tiles = torch.from_numpy(prefill_tiles(query_lens, 16))
    qp = torch.randn(sum(query_lens), 4, 16, generator=g)
    qsl, sl = torch.tensor([0, 20, 23], dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32)
    call = lambda: paged_prefill_attention(qp, k_cache, v_cache, table, qsl, sl, tiles, 0.25, block_m=16, block_n=16)  # noqa: E731
    _run_both_ways(pdl_calls, monkeypatch, call, num_programs=2)  # two per SM, one SM here: each walks 6 of the 12 items


@pytest.mark.parametrize("splits,positions", [(1, range(8)), (3, range(20))])
def test_the_decode_kernel_prefetches_each_splits_first_key_tile(pdl_calls, monkeypatch, splits, positions):
    """Before it waits, each program with keys asks L2 for its first tile of K and V rows (8 keys a
    tile here): one split, keys 0-7 of the 20; three, keys 0-7, 8-15 and 16-19. The padding row
    (no keys) asks for nothing."""
    from folovllm.attention.ops.triton_decode_attention import paged_decode_attention

    g = torch.Generator().manual_seed(5)
    k_cache, v_cache = torch.randn(6, 8, 2, 16, generator=g), torch.randn(6, 8, 2, 16, generator=g)  # 64-byte rows
    table = torch.tensor([[4, 0, 2], [3, 1, 5]], dtype=torch.int32)
    lens = torch.tensor([20, 0], dtype=torch.int32)
    q = torch.randn(2, 4, 16, generator=g)
    call = lambda: paged_decode_attention(q, k_cache, v_cache, table, lens, 0.25, num_kv_splits=splits, block_n=8)  # noqa: E731
    _run_both_ways(pdl_calls, monkeypatch, call, num_programs=2 * 2 * splits + (2 * 4 if splits > 1 else 0))
    addresses = np.concatenate([p.ravel() for p in pdl_calls["prefetched"]]).astype(np.int64)
    rows = {(int(table[0, p // 8]) * 8 + p % 8) * 2 + kvh for p in positions for kvh in range(2)}  # row = (block, slot, kv head)
    for cache in (k_cache, v_cache):
        mine = addresses[(addresses >= cache.data_ptr()) & (addresses < cache.data_ptr() + cache.nbytes)] - cache.data_ptr()
        assert set(mine // 64) == rows and len(mine) == len(addresses) // 2


def test_every_program_of_the_skinny_gemm_waits_and_prefetches_its_splits_weight_lines(pdl_calls, monkeypatch):
    from folovllm.model_executor.layers.triton_skinny_gemm import skinny_gemm

    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(20, 1200, generator=g), torch.randn(40, 1200, generator=g)
    call = lambda: skinny_gemm(x, w, (16, 32, 64, 2, 4, 3))  # noqa: E731
    # 40 outputs in 32s, 20 rows in 16s, K = 1200 in 2 shares of 10 steps of 64
    _run_both_ways(pdl_calls, monkeypatch, call, num_programs=2 * 2 * 2)
    addresses = np.concatenate([p.ravel() for p in pdl_calls["prefetched"]]).astype(np.int64) - w.data_ptr()
    rows, cols = np.divmod(addresses // w.element_size(), 1200)
    # every weight row, each from both shares' first 8 lines of 32 float32s: columns 0..224 and 640..864
    assert set(rows) == set(range(40))
    assert set(cols) == {c for start in (0, 640) for c in range(start, start + 8 * 32, 32)}


def test_every_program_of_the_sampler_waits(pdl_calls, monkeypatch):
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(3))
    call = lambda: inverse_cdf_sample(logits, torch.ones(2), torch.Generator().manual_seed(5), splits=3, block=64)  # noqa: E731
    _run_both_ways(pdl_calls, monkeypatch, call, num_programs=2 * 3 + 2)
