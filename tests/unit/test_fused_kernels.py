"""Fused Triton element-wise kernels against the plain-torch layers.

Runs under TRITON_INTERPRET=1 without CUDA (conftest), compiled on a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.attention.ops.paged_attn_reference import store_kv_cache_ref  # noqa: E402
from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, fused_qk_norm_rope_store, silu_and_mul  # noqa: E402
from folovllm.model_executor.layers.layernorm import RMSNorm  # noqa: E402
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding  # noqa: E402
from folovllm.model_executor.layers.triton_gemv import (  # noqa: E402
    CONFIGS,
    FEW_ROWS_GEMV_CONFIGS,
    GEMV_CONFIGS,
    fits,
    gemv,
    gemv_add_rms_norm,
    gemv_silu_and_mul,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _torch_rmsnorm(hidden: int, seed: int) -> RMSNorm:
    norm = RMSNorm(hidden, eps=1e-6)
    norm.weight.data = torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
    return norm


@pytest.mark.parametrize("hidden", [64, 96, 1024])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_add_rms_norm_matches_torch(hidden, with_residual):
    g = torch.Generator().manual_seed(hidden)
    wide = torch.randn(7, hidden + 8, generator=g)
    x = wide[:, :hidden]  # strided rows
    residual = torch.randn(7, hidden, generator=g) if with_residual else None
    norm = _torch_rmsnorm(hidden, hidden)
    expected = norm._norm(x + residual) if with_residual else norm._norm(x)
    out = fused_add_rms_norm(
        x.to(DEVICE), residual.to(DEVICE) if with_residual else None, norm.weight.data.to(DEVICE), 1e-6
    )
    if with_residual:
        out, new_residual = out
        torch.testing.assert_close(new_residual.cpu(), x + residual)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 16), (2, 1, 48), (6, 3, 32), (16, 8, 128)])
@pytest.mark.parametrize("with_norm", [True, False])
def test_fused_qk_norm_rope_store_matches_torch(num_heads, num_kv_heads, head_dim, with_norm):
    """q comes back normed and rotated; k (normed, rotated) and v land in their cache slots; slot -1 writes nothing."""
    g = torch.Generator().manual_seed(head_dim)
    num_tokens, num_blocks, block_size = 5, 4, 4
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = (x.view(num_tokens, -1, head_dim) for x in (q, k, v))
    positions = torch.tensor([0, 3, 17, 5, 63])
    slots = torch.tensor([6, -1, 0, 15, 9])
    rope = RotaryEmbedding(head_dim, 64, 10000.0)
    q_norm, k_norm = _torch_rmsnorm(head_dim, 1), _torch_rmsnorm(head_dim, 2)
    eq, ek = (q_norm(q), k_norm(k)) if with_norm else (q, k)
    eq, ek = rope(positions, eq, ek)
    ref_k = torch.full((num_blocks, block_size, num_kv_heads, head_dim), 9.0)
    ref_v = ref_k.clone()
    store_kv_cache_ref(ek, v, ref_k, ref_v, slots)
    k_cache, v_cache = torch.full_like(ref_k, 9.0).to(DEVICE), torch.full_like(ref_v, 9.0).to(DEVICE)
    dq = fused_qk_norm_rope_store(
        q.to(DEVICE), k.to(DEVICE), v.to(DEVICE),
        q_norm.weight.data.to(DEVICE) if with_norm else None, k_norm.weight.data.to(DEVICE) if with_norm else None,
        rope.cos_cache.to(DEVICE), rope.sin_cache.to(DEVICE), positions.to(DEVICE), 1e-6, k_cache, v_cache, slots.to(DEVICE),
    )  # fmt: skip
    torch.testing.assert_close(dq.cpu(), eq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_cache.cpu(), ref_k, atol=1e-5, rtol=1e-5)
    assert torch.equal(v_cache.cpu(), ref_v)


def test_fused_qk_norm_rope_store_into_an_fp8_cache_saturates_like_the_kv_store_kernel():
    from folovllm.attention.ops.triton_kv_store import store_kv_cache

    g = torch.Generator().manual_seed(3)
    num_tokens, heads, kv_heads, d = 6, 4, 2, 16
    q = torch.randn(num_tokens, heads, d, generator=g)
    k = torch.randn(num_tokens, kv_heads, d, generator=g) * 200  # normed away below; v keeps its range
    v = torch.randn(num_tokens, kv_heads, d, generator=g) * 300  # some beyond +-448
    positions, slots = torch.arange(num_tokens), torch.tensor([3, 0, -1, 7, 5, 2])
    rope = RotaryEmbedding(d, 16, 10000.0)
    weights = [(torch.rand(d, generator=g) * 600).to(DEVICE) for _ in range(2)]  # pushes normed k past 448 too
    caches = [torch.zeros(2, 4, kv_heads, d, dtype=torch.float8_e4m3fn, device=DEVICE) for _ in range(4)]
    fused_qk_norm_rope_store(
        q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), *weights, rope.cos_cache.to(DEVICE), rope.sin_cache.to(DEVICE),
        positions.to(DEVICE), 1e-6, caches[0], caches[1], slots.to(DEVICE),
    )  # fmt: skip
    norm_k = RMSNorm(d, 1e-6)
    norm_k.weight.data = weights[1].cpu()
    _, roped_k = rope(positions, q, norm_k(k))
    store_kv_cache(roped_k.to(DEVICE), v.to(DEVICE), caches[2], caches[3], slots.to(DEVICE))
    assert caches[1].float().abs().max() == 448.0 and caches[0].float().abs().max() == 448.0
    assert torch.equal(caches[1].float(), caches[3].float())  # v: the same bytes as the KV-store kernel
    torch.testing.assert_close(caches[0].float(), caches[2].float(), rtol=0.13, atol=2**-6)  # k: within an FP8 step


@pytest.mark.parametrize("n", [16, 100, 3072])
def test_silu_and_mul_matches_torch(n):
    x = torch.randn(6, 2 * n, generator=torch.Generator().manual_seed(n))
    expected = torch.nn.functional.silu(x[:, :n]) * x[:, n:]
    torch.testing.assert_close(silu_and_mul(x.to(DEVICE)).cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_kernels_bf16_match_torch_layers_on_gpu():
    x = torch.randn(33, 1024, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    norm = RMSNorm(1024).cuda().to(torch.bfloat16)
    out, res = fused_add_rms_norm(x, r, norm.weight, norm.eps)
    torch.testing.assert_close(res, x + r)
    torch.testing.assert_close(out, norm._norm(x + r), atol=2e-2, rtol=2e-2)


def test_gemv_matches_a_matmul_in_every_configuration():
    """Every configuration the benchmark times, at 1-4 rows, columns and K that no block divides."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 300, generator=g).to(DEVICE)
    for m in (1, 2, 3, 4):
        x = torch.randn(m, 300, generator=g).to(DEVICE)
        configs = [c for c in CONFIGS if fits(m, c)]
        assert configs
        for config in configs:
            torch.testing.assert_close(gemv(x, w, config), x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemv_with_the_norm_or_silu_inside_equals_the_two_kernels(dtype):
    """The fused forms against the kernels they replace, then the GEMV, in every configuration at
    1-3 rows and a K that no block divides: the same values (bit for bit in the interpreter, whose
    sums run in one order), and against the plain-torch layers. (The interpreter's bfloat16 is not
    IEEE: bfloat16 runs on the GPU.)"""
    g = torch.Generator().manual_seed(1)
    k = 300
    w, w_down = torch.randn(37, k, generator=g).to(dtype), (torch.randn(37, k, generator=g) / k**0.5).to(dtype)
    norm = _torch_rmsnorm(k, 3).to(dtype)

    def same(a, b, config):
        if DEVICE == "cpu":
            assert torch.equal(a, b), config
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)

    for m in (1, 3):
        x, r = torch.randn(m, k, generator=g).to(dtype), torch.randn(m, k, generator=g).to(dtype)
        gate_up = torch.randn(m, 2 * k, generator=g).to(dtype)
        nw, xd, rd, wd, wdd, gud = (t.to(DEVICE) for t in (norm.weight.data, x, r, w, w_down, gate_up))
        for config in [c for c in CONFIGS if fits(m, c)]:
            out, res = gemv_add_rms_norm(xd, rd, nw, 1e-6, wd, config)
            normed, summed = fused_add_rms_norm(xd, rd, nw, 1e-6)
            same(res, summed, config)
            same(out, gemv(normed, wd, config), config)
            torch.testing.assert_close(out.cpu(), norm._norm(x + r) @ w.T, rtol=2e-2, atol=2e-2 * k**0.5)
            out, res = gemv_add_rms_norm(xd, None, nw, 1e-6, wd, config)
            assert res is xd
            same(out, gemv(fused_add_rms_norm(xd, None, nw, 1e-6), wd, config), config)
            out = gemv_silu_and_mul(gud, wdd, config)
            same(out, gemv(silu_and_mul(gud), wdd, config), config)
            gate, up = gate_up.float().chunk(2, dim=-1)
            torch.testing.assert_close(out.float().cpu(), (torch.nn.functional.silu(gate) * up) @ w_down.float().T, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gemv_bf16_matches_a_matmul_at_every_shape_the_engine_sends_it():
    cases = [(n, k, 1, config) for (n, k), config in GEMV_CONFIGS.items()]
    cases += [(n, k, m, config) for (n, k, rows), config in FEW_ROWS_GEMV_CONFIGS.items() for m in range(rows // 2 + 1, rows + 1)]
    for n, k, m, config in cases:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(gemv(x, w, config), torch.nn.functional.linear(x, w), rtol=2e-2, atol=2e-2)


def test_skinny_gemm_matches_a_matmul_in_every_tiling_it_is_swept_in():
    """Each tiling bench_kernels.py sweeps (row and output tiles, K steps, splits), at row counts on
    both sides of a row tile, ragged N and K: with K = 300 an 8-way split of 64-wide steps is 5
    shares, the last one short."""
    from folovllm.model_executor.layers.triton_skinny_gemm import skinny_gemm, sweep_configs

    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 300, generator=g).to(DEVICE)  # outputs and K not multiples of any block
    tilings = {c[:4]: c for rows in (8, 16, 32, 64, 128, 256) for c in sweep_configs(rows)}
    for m in (5, 17, 70):
        x = torch.randn(m, 300, generator=g).to(DEVICE)
        for config in tilings.values():
            torch.testing.assert_close(skinny_gemm(x, w, config), x @ w.T, rtol=1e-4, atol=1e-4, msg=f"{config} at {m} rows")


def test_skinny_gemm_split_programs_leave_their_counters_for_the_next_call():
    """The last program at each tile sets its count back to zero: a second and third call, other
    inputs and another tile grid, still find the program that completes each tile (with a count
    left over, no program would, or the wrong one would sum partials not yet written)."""
    from folovllm.model_executor.layers.triton_skinny_gemm import skinny_gemm

    g = torch.Generator().manual_seed(1)
    for m, n, config in ((40, 70, (16, 32, 64, 4, 4, 3)), (40, 70, (16, 32, 64, 4, 4, 3)), (9, 100, (16, 64, 64, 2, 4, 4))):
        w = torch.randn(n, 256, generator=g).to(DEVICE)
        x = torch.randn(m, 256, generator=g).to(DEVICE)
        torch.testing.assert_close(skinny_gemm(x, w, config), x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_skinny_gemm_bf16_matches_a_matmul_at_qwen3_0_6b_shapes():
    from folovllm.model_executor.layers.triton_skinny_gemm import rows_bucket, skinny_gemm, sweep_configs

    for n, k in ((1024, 2048), (1024, 3072), (4096, 1024)):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        for m in (8, 100, 256):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for config in sweep_configs(rows_bucket(m)):
                torch.testing.assert_close(skinny_gemm(x, w, config), torch.nn.functional.linear(x, w), rtol=2e-2, atol=2e-2)
