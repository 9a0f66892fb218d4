"""The weight seam of linear layers: quant_method creates and applies, weight_loader places shards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from folovllm.model_executor.layers.linear import (
    LinearMethodBase,
    MergedColumnParallelLinear,
    ColumnParallelLinear,
    set_weight_attrs,
)


def test_merged_layer_loads_each_shard_into_its_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(8, 6), torch.randn(4, 6), torch.randn(4, 6)
    bq, bk, bv = torch.randn(8), torch.randn(4), torch.randn(4)
    layer = MergedColumnParallelLinear(6, [8, 4, 4], bias=True)
    for shard_id, (w, b) in enumerate([(q, bq), (k, bk), (v, bv)]):
        layer.weight.weight_loader(layer.weight, w, shard_id)
        layer.bias.weight_loader(layer.bias, b, shard_id)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ torch.cat([q, k, v]).T + torch.cat([bq, bk, bv]))


def test_plain_layer_loads_whole_and_rejects_a_wrong_shape():
    layer = ColumnParallelLinear(6, 5)
    w = torch.randn(5, 6)
    layer.weight.weight_loader(layer.weight, w)
    assert torch.equal(layer.weight, w) and layer.bias is None
    with pytest.raises(ValueError, match=r"expected shape \(5, 6\), checkpoint tensor has \(6, 5\)"):
        layer.weight.weight_loader(layer.weight, w.T)
    merged = MergedColumnParallelLinear(6, [4, 4])
    with pytest.raises(ValueError, match=r"expected shape \(4, 6\) \(shard 1\)"):
        merged.weight.weight_loader(merged.weight, torch.randn(3, 6), 1)


class PackedInt8Method(LinearMethodBase):
    """A toy quantized format shaped like GPTQ's: weights stored transposed ([in, out]),
    4 uint8 codes packed per int32 along the *output* dim (like qzeros), a scale per
    output, and a per-input permutation that every shard shares (like g_idx)."""

    def create_weights(self, layer, input_size, output_sizes, params_dtype):
        out = sum(output_sizes)
        packed = nn.Parameter(torch.zeros(input_size, out // 4, dtype=torch.int32), requires_grad=False)
        set_weight_attrs(packed, {"input_dim": 0, "output_dim": 1, "packed_dim": 1, "pack_factor": 4})
        scales = nn.Parameter(torch.zeros(out, dtype=params_dtype), requires_grad=False)
        set_weight_attrs(scales, {"output_dim": 0})
        perm = nn.Parameter(torch.zeros(input_size, dtype=torch.int64), requires_grad=False)
        set_weight_attrs(perm, {"input_dim": 0})
        layer.register_parameter("packed", packed)
        layer.register_parameter("scales", scales)
        layer.register_parameter("perm", perm)

    def apply(self, layer, x, bias=None):
        return x[:, layer.perm] @ dequantize(layer.packed, layer.scales)


class PackedInt8Config:
    """A quant config hands each linear layer its method (vLLM's ``get_quant_method``)."""

    def get_quant_method(self, layer):
        return PackedInt8Method()


def quantize(w: torch.Tensor):
    """w [out, in] -> (packed int32 [in, out/4], scales [out])."""
    scales = w.abs().amax(dim=1) / 127
    codes = (torch.round(w / scales[:, None]) + 128).to(torch.int32).T  # [in, out], 1..255
    c = codes.reshape(codes.shape[0], -1, 4)
    packed = c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16) | (c[..., 3] << 24)
    return packed, scales


def dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """-> [in, out] float."""
    codes = torch.stack([(packed >> s) & 0xFF for s in (0, 8, 16, 24)], dim=-1).reshape(packed.shape[0], -1)
    return (codes - 128).float() * scales


def test_a_quantized_method_loads_merged_shards_through_the_same_loader():
    torch.manual_seed(1)
    sizes = [8, 4, 12]
    parts = [torch.randn(n, 16) for n in sizes]
    perm = torch.randperm(16)
    layer = MergedColumnParallelLinear(16, sizes, quant_config=PackedInt8Config())
    assert {name for name, _ in layer.named_parameters()} == {"packed", "scales", "perm"}
    for shard_id, w in enumerate(parts):
        packed, scales = quantize(w)
        layer.packed.weight_loader(layer.packed, packed, shard_id)  # packed along the output dim: size / 4
        layer.scales.weight_loader(layer.scales, scales, shard_id)
        layer.perm.weight_loader(layer.perm, perm, shard_id)  # no output dim: the same whole tensor for each shard
    x = torch.randn(5, 16)
    ref = torch.cat([x[:, perm] @ dequantize(*quantize(w)) for w in parts], dim=1)
    torch.testing.assert_close(layer(x), ref)
    # and the quantization is faithful enough that the layer really computes x @ W.T
    torch.testing.assert_close(layer(x), x[:, perm] @ torch.cat(parts).T, atol=0.15, rtol=0.05)


def test_one_row_on_the_gpu_goes_to_the_triton_gemv_for_the_shapes_it_was_measured_at(monkeypatch):
    """The dispatch alone (no GPU here: use_fused_kernels is made to say yes, the GEMV is a spy), for the
    linear layers and the LM head."""
    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_gemv as triton_gemv
    from folovllm.model_executor.layers.vocab_embedding import VocabParallelEmbedding

    calls = []

    def spy(x, w, config):
        calls.append((tuple(x.shape), tuple(w.shape), config))
        return x @ w.T

    monkeypatch.setattr(dispatch, "use_fused_kernels", lambda x: True)
    monkeypatch.setattr(triton_gemv, "gemv", spy)
    monkeypatch.setattr(triton_gemv, "GEMV_CONFIGS", {(5, 6): (4, 1024, 4), (11, 6): (8, 512, 4)})
    layer, other = ColumnParallelLinear(6, 5), ColumnParallelLinear(6, 7)
    with_bias, fp32 = ColumnParallelLinear(6, 5, bias=True), ColumnParallelLinear(6, 5)
    for lay in (layer, other, with_bias, fp32):
        nn.init.normal_(lay.weight)
        if lay is not fp32:
            lay.to(torch.bfloat16)
    x = torch.randn(1, 6, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)
    assert calls == [((1, 6), (5, 6), (4, 1024, 4))]
    layer(torch.randn(2, 6, dtype=torch.bfloat16))  # two rows
    other(x)  # a shape without a measured configuration
    with_bias(x)  # the GEMV has no bias
    fp32(x.float())  # measured in bfloat16 only
    assert len(calls) == 1
    lm_head = VocabParallelEmbedding(11, 6).to(torch.bfloat16)
    nn.init.normal_(lm_head.weight)
    torch.testing.assert_close(lm_head.compute_logits(x), x @ lm_head.weight.T)
    assert calls[1:] == [((1, 6), (11, 6), (8, 512, 4))]


def test_two_to_four_rows_go_to_the_gemv_where_that_row_count_was_measured_faster(monkeypatch):
    """The dispatch alone, as above: 2 and 4 rows take their own configuration, 3 rows the 4-row one
    (the kernel rounds its rows up to a power of two); 5 rows, and the GEMV with the norm inside, stay
    with the library."""
    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_gemv as triton_gemv

    calls = []

    def spy(x, w, config):
        calls.append((x.shape[0], config))
        return x @ w.T

    monkeypatch.setattr(dispatch, "use_fused_kernels", lambda x: True)
    monkeypatch.setattr(triton_gemv, "gemv", spy)
    monkeypatch.setattr(triton_gemv, "GEMV_CONFIGS", {})
    monkeypatch.setattr(triton_gemv, "FEW_ROWS_GEMV_CONFIGS", {(5, 6, 2): (4, 1024, 4), (5, 6, 4): (4, 512, 8)})
    layer = ColumnParallelLinear(6, 5)
    nn.init.normal_(layer.weight)
    layer.to(torch.bfloat16)
    for m in (1, 2, 3, 4, 5):
        x = torch.randn(m, 6, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x), x @ layer.weight.T)
    assert calls == [(2, (4, 1024, 4)), (3, (4, 512, 8)), (4, (4, 512, 8))]
    assert dispatch.gemv_config(torch.randn(2, 6, dtype=torch.bfloat16), layer.weight, fused=True) is None


def test_5_to_256_rows_on_the_gpu_go_to_the_skinny_gemm_for_the_shapes_and_row_counts_in_its_table(monkeypatch):
    """The dispatch alone (no GPU here: use_fused_kernels is made to say yes, the kernels are spies):
    one row stays with the GEMV, 5..256 rows of a listed bf16 shape without a bias take the skinny
    GEMM in the configuration of their power-of-two bucket (5-8 rows share 8's; a bucket without an
    entry stays with F.linear), anything else F.linear."""
    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_gemv as triton_gemv
    import folovllm.model_executor.layers.triton_skinny_gemm as skinny

    calls = []

    def spy(name):
        def kernel(x, w, config):
            calls.append((name, x.shape[0], tuple(w.shape), config))
            return x @ w.T

        return kernel

    monkeypatch.setattr(dispatch, "use_fused_kernels", lambda x: True)
    monkeypatch.setattr(triton_gemv, "gemv", spy("gemv"))
    monkeypatch.setattr(skinny, "skinny_gemm", spy("skinny"))
    monkeypatch.setattr(triton_gemv, "GEMV_CONFIGS", {(5, 6): (4, 1024, 4)})
    eight, large = (16, 64, 64, 4, 4, 4), (128, 64, 64, 2, 4, 4)
    monkeypatch.setattr(skinny, "SKINNY_GEMM_CONFIGS", {(5, 6, 8): eight, (5, 6, 256): large})
    layer, other, with_bias = ColumnParallelLinear(6, 5), ColumnParallelLinear(6, 7), ColumnParallelLinear(6, 5, bias=True)
    for lay in (layer, other, with_bias):
        nn.init.normal_(lay.weight)
        lay.to(torch.bfloat16)
    for m in (1, 4, 5, 8, 9, 129, 256, 257):
        x = torch.randn(m, 6, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x), x @ layer.weight.T)
        other(x)  # no configuration for its shape
        with_bias(x)  # neither kernel adds a bias
    layer.float()(torch.randn(8, 6))  # measured in bfloat16 only
    assert calls == [("gemv", 1, (5, 6), (4, 1024, 4)), ("skinny", 5, (5, 6), eight), ("skinny", 8, (5, 6), eight),
                     ("skinny", 129, (5, 6), large), ("skinny", 256, (5, 6), large)]  # fmt: skip


def test_the_norm_or_silu_before_a_one_row_gemv_runs_inside_it(monkeypatch):
    """rms_norm_then_linear and silu_and_mul_then_linear (the decoder layer's two seams): where the
    layer's shape has a fused GEMV configuration, the fused entry point takes the whole op (spies
    here, no GPU); elsewhere the norm or activation runs, then the layer. Either way the result is
    the same."""
    import torch.nn.functional as F

    import folovllm.model_executor.layers.dispatch as dispatch
    import folovllm.model_executor.layers.triton_gemv as triton_gemv
    from folovllm.model_executor.layers.activation import SiluAndMul
    from folovllm.model_executor.layers.dispatch import rms_norm_then_linear, silu_and_mul_then_linear
    from folovllm.model_executor.layers.layernorm import RMSNorm

    calls = []

    def fused_norm(x, residual, norm_weight, eps, w, config):
        calls.append(("norm", tuple(w.shape), residual is not None))
        h = x if residual is None else x + residual
        return RMSNorm(h.shape[1], eps).to(h.dtype)._norm(h) * norm_weight @ w.T, h

    def fused_silu(x, w, config):
        calls.append(("silu", tuple(w.shape)))
        return SiluAndMul()(x) @ w.T

    monkeypatch.setattr(dispatch, "use_fused_kernels", lambda x: True)
    monkeypatch.setattr(triton_gemv, "gemv_add_rms_norm", fused_norm)
    monkeypatch.setattr(triton_gemv, "gemv_silu_and_mul", fused_silu)
    monkeypatch.setattr(triton_gemv, "FUSED_GEMV_CONFIGS", {(5, 6): (4, 1024, 4), (6, 4): (4, 1024, 4)})
    monkeypatch.setattr(triton_gemv, "GEMV_CONFIGS", {(5, 6): (4, 1024, 4), (6, 4): (4, 1024, 4)})
    monkeypatch.setattr(triton_gemv, "gemv", lambda x, w, config: x @ w.T)  # the unfused matmul, if a test reaches it
    torch.manual_seed(0)
    norm = RMSNorm(6).to(torch.bfloat16)
    nn.init.normal_(norm.weight)
    monkeypatch.setattr(norm, "forward", lambda x, residual=None: (norm._norm(x) if residual is None else (norm._norm(x + residual), x + residual)))
    up, down, with_bias = ColumnParallelLinear(6, 5), ColumnParallelLinear(4, 6), ColumnParallelLinear(6, 5, bias=True)
    for lay in (up, down, with_bias):
        nn.init.normal_(lay.weight)
        lay.to(torch.bfloat16)
    x, r = torch.randn(1, 6, dtype=torch.bfloat16), torch.randn(1, 6, dtype=torch.bfloat16)

    out, res = rms_norm_then_linear(norm, up, x, r)
    torch.testing.assert_close(out, F.linear(norm._norm(x + r), up.weight))
    torch.testing.assert_close(res, x + r)
    out, res = rms_norm_then_linear(norm, up, x, None)
    assert res is x
    torch.testing.assert_close(out, F.linear(norm._norm(x), up.weight))
    gate_up = torch.randn(1, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(silu_and_mul_then_linear(SiluAndMul(), down, gate_up), F.linear(SiluAndMul()(gate_up), down.weight))
    assert calls == [("norm", (5, 6), True), ("norm", (5, 6), False), ("silu", (6, 4))]

    calls.clear()
    out, res = rms_norm_then_linear(norm, with_bias, x, r)  # the GEMV has no bias
    torch.testing.assert_close(out, F.linear(norm._norm(x + r), with_bias.weight, with_bias.bias))
    x2, r2 = torch.randn(2, 6, dtype=torch.bfloat16), torch.randn(2, 6, dtype=torch.bfloat16)
    out, res = rms_norm_then_linear(norm, up, x2, r2)  # two rows
    torch.testing.assert_close(out, F.linear(norm._norm(x2 + r2), up.weight))
    silu_and_mul_then_linear(SiluAndMul(), down, torch.randn(2, 8, dtype=torch.bfloat16))
    monkeypatch.setattr(up, "tp_size", 2)  # a tensor-parallel layer's forward is more than the matmul
    rms_norm_then_linear(norm, up, x, r)
    monkeypatch.setattr(up, "tp_size", 1)
    monkeypatch.setattr(triton_gemv, "FUSED_GEMV_CONFIGS", {})  # fusing not measured faster: two kernels
    out, res = rms_norm_then_linear(norm, up, x, r)
    torch.testing.assert_close(out, F.linear(norm._norm(x + r), up.weight))
    silu_and_mul_then_linear(SiluAndMul(), down, gate_up)
    assert calls == []
