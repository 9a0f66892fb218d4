"""The Triton GPTQ GEMM against the plain-torch reference, for every bits / group_size / act-order / sym case.

Runs under TRITON_INTERPRET=1 without CUDA (conftest), compiled on a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.model_executor.layers.quantization.gptq_packing import gptq_matmul_reference, pack_cols, pack_rows  # noqa: E402
from folovllm.model_executor.layers.quantization.triton_gptq_gemm import (  # noqa: E402
    gptq_gemm,
    kernel_block_k,
    reorder_for_kernel,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_gptq_layer(k: int, n: int, bits: int, group_size: int, desc_act: bool, sym: bool, seed: int):
    """Packed tensors of a random layer in checkpoint order (v1 zero points)."""
    g = torch.Generator().manual_seed(seed)
    group = group_size if group_size != -1 else k
    num_groups = k // group
    codes = torch.randint(0, 2**bits, (k, n), generator=g, dtype=torch.int32)
    if sym:
        zeros = torch.full((num_groups, n), 2 ** (bits - 1), dtype=torch.int32)
    else:
        zeros = torch.randint(1, 2**bits, (num_groups, n), generator=g, dtype=torch.int32)
    scales = (torch.rand(num_groups, n, generator=g) * 0.02 + 0.001).half()
    g_idx = torch.arange(k, dtype=torch.int32) // group
    if desc_act:
        g_idx = g_idx[torch.randperm(k, generator=g)]
    return pack_rows(codes, bits), pack_cols(zeros - 1, bits), scales, g_idx, group


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_gemm_matches_reference(bits, group_size, desc_act):
    k, n = 256, 72  # n is not a multiple of the 64-wide output tile
    for i, (m, sym) in enumerate([(1, True), (5, False), (33, True), (70, False)]):  # 70 > 64: the un-split GEMM path
        qweight, qzeros, scales, g_idx, group = random_gptq_layer(k, n, bits, group_size, desc_act, sym, seed=i)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + i))
        expected = gptq_matmul_reference(x, qweight, qzeros, scales, g_idx, bits, zero_offset=1)
        kernel_qweight, perm = reorder_for_kernel(qweight, g_idx, bits)
        out = gptq_gemm(
            x[:, perm].to(DEVICE), kernel_qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), bits, group, 1
        )
        assert out.shape == (m, n) and out.dtype == x.dtype
        torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)


_NO_BF16_DOT = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton interpreter has no bfloat16 matmul")


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=_NO_BF16_DOT)])
def test_gptq_gemm_in_half_precision(dtype):
    qweight, qzeros, scales, g_idx, group = random_gptq_layer(128, 64, 4, 32, False, True, seed=0)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = gptq_matmul_reference(x.float(), qweight, qzeros, scales, g_idx, 4, zero_offset=1)
    out = gptq_gemm(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 4, group, 1)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), expected, atol=2e-2, rtol=2e-2)


def test_v2_zero_points_need_no_offset():
    qweight, qzeros_v1, scales, g_idx, group = random_gptq_layer(64, 32, 8, 32, False, False, seed=3)
    from folovllm.model_executor.layers.quantization.gptq_packing import unpack_cols

    qzeros_v2 = pack_cols(unpack_cols(qzeros_v1, 8) + 1, 8)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    expected = gptq_matmul_reference(x, qweight, qzeros_v1, scales, g_idx, 8, zero_offset=1)
    out = gptq_gemm(x.to(DEVICE), qweight.to(DEVICE), qzeros_v2.to(DEVICE), scales.to(DEVICE), 8, group, 0)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_gemm_looks_up_each_rows_group_when_groups_are_uneven(bits):
    """A row-parallel shard of an act-order layer: any row in any of the layer's groups, unequal counts."""
    k, n, num_groups = 128, 72, 6
    g = torch.Generator().manual_seed(bits)
    qweight, _, _, _, _ = random_gptq_layer(k, n, bits, 32, False, True, seed=bits)
    zeros = torch.randint(1, 2**bits, (num_groups, n), generator=g, dtype=torch.int32)
    qzeros = pack_cols(zeros - 1, bits)
    scales = (torch.rand(num_groups, n, generator=g) * 0.02 + 0.001).half()
    g_idx = torch.randint(0, num_groups, (k,), generator=g, dtype=torch.int32)
    for m in (1, 70):
        x = torch.randn(m, k, generator=g)
        expected = gptq_matmul_reference(x, qweight, qzeros, scales, g_idx, bits, zero_offset=1)
        out = gptq_gemm(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), bits, 32, 1, g_idx.to(DEVICE))
        torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_block_k_divides_the_group():
    assert [kernel_block_k(g) for g in (32, 64, 128, 256, 4096, 96, 8)] == [32, 64, 128, 128, 128, 32, None]


@pytest.mark.parametrize("layout", ["contiguous", "act_order", "uneven"])
def test_the_linear_method_picks_a_kernel_path_that_matches_the_reference(monkeypatch, layout):
    """What process_weights_after_loading does on a GPU, run here through the interpreter."""
    from folovllm.model_executor.layers import linear
    from folovllm.model_executor.layers.quantization import gptq

    monkeypatch.setattr(gptq, "use_fused_kernels", lambda t: True)
    k, n, bits = 128, 64, 4
    qweight, qzeros, scales, g_idx, _ = random_gptq_layer(k, n, bits, 32, layout != "contiguous", True, seed=11)
    if layout == "uneven":
        g_idx = torch.randint(0, 4, (k,), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    with torch.device(DEVICE):
        layer = linear.ColumnParallelLinear(k, n, quant_config=gptq.GPTQConfig(bits, 32, layout != "contiguous", True))
    for name, tensor in {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(4))
    expected = gptq_matmul_reference(x, qweight, qzeros, scales, g_idx, bits, zero_offset=1)
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.use_kernel
    assert (layer.input_perm is not None, layer.kernel_g_idx is not None) == (layout == "act_order", layout == "uneven")
    torch.testing.assert_close(layer(x.to(DEVICE)).cpu(), expected, atol=1e-4, rtol=1e-4)
