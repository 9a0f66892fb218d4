"""The small-batch norm+matmul and gate+matmul kernels against the plain-torch layers (interpreter on CPU).

bf16 has no matmul in Triton's interpreter: float32 and float16 here, bf16 on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from folovllm.model_executor.layers.layernorm import RMSNorm

triton = pytest.importorskip("triton")

from folovllm.model_executor.layers.triton_gemv import MAX_ROWS, norm_linear, silu_mul_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=6e-2, rtol=3e-2)}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])


def reference_norm(x, residual, norm_w, eps):
    norm = RMSNorm(x.shape[1], eps).to(x.dtype)
    norm.weight.data.copy_(norm_w)
    if residual is None:
        return norm._norm(x), x
    h = x + residual
    return norm._norm(h), h


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, MAX_ROWS])
@pytest.mark.parametrize("n,k", [(48, 96), (200, 600), (16, 128)])  # N off the column block, K off the 512 tile
@pytest.mark.parametrize("with_residual", [True, False])
def test_norm_linear_matches_norm_then_linear(dtype, m, n, k, with_residual):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    x, norm_w, w, bias = make(m, k), 1 + 0.1 * make(k), make(n, k) / k**0.5, make(n)
    residual = make(m, k) if with_residual else None
    for b in (None, bias):
        out, res_out = norm_linear(x, residual, norm_w, 1e-6, w, b)
        normed, h = reference_norm(x, residual, norm_w, 1e-6)
        torch.testing.assert_close(res_out, h, atol=0, rtol=0)  # a plain add: exact
        torch.testing.assert_close(out, F.linear(normed, w, b), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, MAX_ROWS])
@pytest.mark.parametrize("n,k", [(40, 96), (256, 200), (16, 700)])  # 700: two K tiles of 512
def test_silu_mul_linear_matches_gate_then_linear(dtype, m, n, k):
    g = torch.Generator().manual_seed(7 * m + n)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    gate_up, w, bias = 2 * make(m, 2 * k), make(n, k) / k**0.5, make(n)
    gate, up = gate_up.float().chunk(2, dim=-1)
    act = (F.silu(gate).to(dtype) * up.to(dtype))
    for b in (None, bias):
        torch.testing.assert_close(silu_mul_linear(gate_up, w, b), F.linear(act, w, b), **TOL[dtype])


def test_strided_input_rows():
    """q/k/v and gate/up outputs reach the kernels as views; the row stride is honoured."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(4, 3 * 64, generator=g).to(DEVICE)
    x, residual = wide[:, :64], wide[:, 64:128]  # both non-contiguous
    norm_w, w = torch.rand(64, generator=g).to(DEVICE) + 0.5, torch.randn(32, 64, generator=g).to(DEVICE)
    out, res_out = norm_linear(x, residual, norm_w, 1e-6, w)
    normed, h = reference_norm(x, residual, norm_w, 1e-6)
    torch.testing.assert_close(out, F.linear(normed, w), **TOL[torch.float32])
    torch.testing.assert_close(res_out, h)
    gate_up = torch.randn(4, 3 * 48, generator=g).to(DEVICE)[:, : 2 * 48]
    w2 = torch.randn(16, 48, generator=g).to(DEVICE)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul_linear(gate_up, w2), F.linear(F.silu(gate) * up, w2), **TOL[torch.float32])


def test_wide_layers_take_wider_column_blocks_and_shorter_k_tiles():
    from folovllm.model_executor.layers.triton_gemv import gemv_config

    assert [gemv_config(n, 2)[:2] for n in (1024, 4096, 6144, 8192)] == [(16, 512), (32, 128), (32, 128), (64, 128)]
    assert gemv_config(1024, 4)[:2] == (16, 256)  # float32: 512-wide K tiles would not fit an H100's shared memory
    g = torch.Generator().manual_seed(5)
    x, residual = torch.randn(3, 300, generator=g).to(DEVICE), torch.randn(3, 300, generator=g).to(DEVICE)
    norm_w, w = 1 + 0.1 * torch.randn(300, generator=g).to(DEVICE), torch.randn(4096, 300, generator=g).to(DEVICE) / 17
    out, res_out = norm_linear(x, residual, norm_w, 1e-6, w)  # 128 programs of 32 columns, K in 3 tiles
    normed, h = reference_norm(x, residual, norm_w, 1e-6)
    torch.testing.assert_close(out, F.linear(normed, w), **TOL[torch.float32])
    torch.testing.assert_close(res_out, h, atol=0, rtol=0)
