"""Fused Triton element-wise kernels against the plain-torch layers.

Runs under TRITON_INTERPRET=1 without CUDA (conftest), compiled on a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.model_executor.layers.fused_kernels import fused_add_rms_norm, fused_qk_norm_rope, silu_and_mul  # noqa: E402
from folovllm.model_executor.layers.layernorm import RMSNorm  # noqa: E402
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding  # noqa: E402

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


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 16), (2, 1, 48), (16, 8, 128)])
@pytest.mark.parametrize("with_norm", [True, False])
def test_fused_qk_norm_rope_matches_torch(num_heads, num_kv_heads, head_dim, with_norm):
    g = torch.Generator().manual_seed(head_dim)
    num_tokens = 5
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    positions = torch.tensor([0, 3, 17, 5, 63])
    rope = RotaryEmbedding(head_dim, 64, 10000.0)
    q_norm, k_norm = _torch_rmsnorm(head_dim, 1), _torch_rmsnorm(head_dim, 2)
    eq, ek = (q_norm(q), k_norm(k)) if with_norm else (q, k)
    eq, ek = rope(positions, eq, ek)
    dq, dk = fused_qk_norm_rope(
        q.to(DEVICE), k.to(DEVICE),
        q_norm.weight.data.to(DEVICE) if with_norm else None, k_norm.weight.data.to(DEVICE) if with_norm else None,
        rope.cos_cache.to(DEVICE), rope.sin_cache.to(DEVICE), positions.to(DEVICE), 1e-6,
    )  # fmt: skip
    torch.testing.assert_close(dq.cpu(), eq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dk.cpu(), ek, atol=1e-5, rtol=1e-5)


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
