"""The GPTQ checkpoint format: packing, zero-point conventions, act-order g_idx, config checks."""

from __future__ import annotations

import pytest
import torch

from folovllm.model_executor.layers.linear import MergedColumnParallelLinear, ColumnParallelLinear
from folovllm.model_executor.layers.quantization import get_quantization_config
from folovllm.model_executor.layers.quantization.gptq import GPTQConfig
from folovllm.model_executor.layers.quantization.gptq_packing import (
    dequantize,
    gptq_matmul_reference,
    pack_cols,
    pack_rows,
    unpack_cols,
    unpack_rows,
)


def test_codes_are_packed_low_bits_first():
    # 4 bits: codes 0..7 down one column -> 0x76543210; 8 bits: 1, 2, 3, 4 -> 0x04030201
    assert pack_rows(torch.arange(8, dtype=torch.int32)[:, None], 4).item() == 0x76543210
    assert pack_rows(torch.tensor([[1], [2], [3], [4]], dtype=torch.int32), 8).item() == 0x04030201
    # the top code sets the sign bit: the int32 is negative, and unpacks back to 15
    packed = pack_rows(torch.tensor([[0]] * 7 + [[15]], dtype=torch.int32), 4)
    assert packed.item() == 0xF0000000 - 2**32
    assert unpack_rows(packed, 4)[:, 0].tolist() == [0] * 7 + [15]
    # zero points are packed along the output dim
    assert pack_cols(torch.tensor([[1, 2, 3, 4]], dtype=torch.int32), 8).tolist() == [[0x04030201]]


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_and_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (64, 24), generator=g, dtype=torch.int32)
    assert torch.equal(unpack_rows(pack_rows(codes, bits), bits), codes)
    assert torch.equal(unpack_cols(pack_cols(codes, bits), bits), codes)


def _hand_dequantize(codes, zeros, scales, g_idx):
    """Element by element, straight from the format's definition."""
    k, n = codes.shape
    out = torch.empty(k, n)
    for row in range(k):
        for col in range(n):
            g = int(g_idx[row])
            out[row, col] = float(scales[g, col]) * (int(codes[row, col]) - int(zeros[g, col]))
    return out


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_dequantize_follows_the_format_with_act_order_groups(bits, checkpoint_format):
    g = torch.Generator().manual_seed(7)
    k, n = 16, 8
    codes = torch.randint(0, 2**bits, (k, n), generator=g, dtype=torch.int32)
    true_zeros = torch.randint(1, 2**bits, (2, n), generator=g, dtype=torch.int32)
    scales = (torch.rand(2, n, generator=g) + 0.5).half()
    g_idx = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.int32)  # act order: groups interleave
    stored = true_zeros - 1 if checkpoint_format == "gptq" else true_zeros  # v1 stores zero - 1
    offset = 1 if checkpoint_format == "gptq" else 0
    weight = dequantize(pack_rows(codes, bits), pack_cols(stored, bits), scales, g_idx, bits, offset)
    torch.testing.assert_close(weight, _hand_dequantize(codes, true_zeros, scales, g_idx), rtol=0, atol=0)
    x = torch.randn(3, k, generator=g)
    out = gptq_matmul_reference(x, pack_rows(codes, bits), pack_cols(stored, bits), scales, g_idx, bits, offset)
    torch.testing.assert_close(out, x @ weight)


def test_symmetric_4bit_v1_stores_seven_for_a_zero_of_eight():
    codes = torch.tensor([[0], [8], [15], [9], [7], [8], [8], [8]], dtype=torch.int32).expand(8, 8).contiguous()
    scales = torch.full((1, 8), 0.5, dtype=torch.float16)
    qzeros = pack_cols(torch.full((1, 8), 7, dtype=torch.int32), 4)
    weight = dequantize(pack_rows(codes, 4), qzeros, scales, torch.zeros(8, dtype=torch.int32), 4, zero_offset=1)
    assert weight[:, 0].tolist() == [-4.0, 0.0, 3.5, 0.5, -0.5, 0.0, 0.0, 0.0]


def test_config_reads_the_checkpoint_fields():
    qc = GPTQConfig.from_config({"quant_method": "gptq", "bits": 8, "group_size": 64, "desc_act": True, "sym": False,
                                 "checkpoint_format": "gptq_v2"})  # fmt: skip
    assert (qc.weight_bits, qc.group_size, qc.desc_act, qc.sym, qc.pack_factor, qc.zero_offset) == (8, 64, True, False, 4, 0)
    old = GPTQConfig.from_config({"bits": 4, "group_size": 128, "desc_act": False})  # AutoGPTQ quantize_config.json
    assert (old.checkpoint_format, old.zero_offset, old.sym) == ("gptq", 1, True)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"bits": 3}, r"bits must be one of \(4, 8\), got 3"),
        ({"bits": 2}, r"bits must be one of \(4, 8\), got 2"),
        ({"bits": 4, "group_size": 48}, r"group_size must be one of \(-1, 32, 64, 128\), got 48"),
        ({"bits": 4, "checkpoint_format": "marlin"}, r"checkpoint_format must be one of \['gptq', 'gptq_v2'\], got 'marlin'"),
        ({"bits": 4, "lm_head": True}, r"quantized lm_head"),
    ],
)
def test_config_refuses_what_it_cannot_run(fields, match):
    with pytest.raises(ValueError, match=match):
        GPTQConfig.from_config({"quant_method": "gptq", **fields})


def test_quantization_option_against_the_checkpoint():
    ckpt = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    assert get_quantization_config(None, ckpt, "m").weight_bits == 4
    assert get_quantization_config("gptq", ckpt, "m").group_size == 128
    assert get_quantization_config(None, None, "m") is None
    with pytest.raises(ValueError, match=r"quantization='gptq' but 'm' has no quantization_config"):
        get_quantization_config("gptq", None, "m")
    assert get_quantization_config("gptq_marlin", ckpt, "m").weight_bits == 4  # vLLM's kernel name, our kernel
    with pytest.raises(ValueError, match=r"quantization must be one of \['gptq', 'gptq_marlin'\].*got 'awq'"):
        get_quantization_config("awq", ckpt, "m")
    with pytest.raises(ValueError, match=r"quantization='gptq' does not match .*quant_method='awq'"):
        get_quantization_config("gptq", {"quant_method": "awq", "bits": 4}, "m")
    with pytest.raises(ValueError, match=r"quantized with 'fp8', which FoloVLLM does not support"):
        get_quantization_config(None, {"quant_method": "fp8"}, "m")


def test_layer_shapes_must_fit_the_format():
    qc = GPTQConfig(4, 128, False, True)
    with pytest.raises(ValueError, match="group_size 128 does not divide the layer's input size 64"):
        ColumnParallelLinear(64, 32, quant_config=qc)
    with pytest.raises(ValueError, match=r"output sizes divisible by 8, got \[16, 12\]"):
        MergedColumnParallelLinear(128, [16, 12], quant_config=qc)
    layer = MergedColumnParallelLinear(128, [16, 8, 8], quant_config=qc)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"qweight": (16, 32), "qzeros": (1, 4), "scales": (1, 32), "g_idx": (128,)}


def test_merged_layer_loads_gptq_shards_and_insists_on_one_g_idx():
    """q/k/v parts go to their columns of qweight, scales and (packed) qzeros; g_idx must agree."""
    g = torch.Generator().manual_seed(3)
    bits, k, sizes = 4, 64, [16, 8, 8]
    layer = MergedColumnParallelLinear(k, sizes, quant_config=GPTQConfig(bits, 32, True, False, "gptq_v2"))
    g_idx = torch.randperm(k, generator=g).to(torch.int32) // 32
    expected = []
    for shard_id, n in enumerate(sizes):
        codes = torch.randint(0, 16, (k, n), generator=g, dtype=torch.int32)
        zeros = torch.randint(0, 16, (2, n), generator=g, dtype=torch.int32)
        scales = torch.rand(2, n, generator=g).half()
        tensors = {"qweight": pack_rows(codes, bits), "qzeros": pack_cols(zeros, bits), "scales": scales, "g_idx": g_idx}
        for name, tensor in tensors.items():
            param = getattr(layer, name)
            param.weight_loader(param, tensor, shard_id)
        expected.append(dequantize(tensors["qweight"], tensors["qzeros"], scales, g_idx, bits, 0))
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(5, k, generator=g)
    torch.testing.assert_close(layer(x), x @ torch.cat(expected, dim=1))
    with pytest.raises(ValueError, match="g_idx of shard 1 differs"):
        layer.g_idx.weight_loader(layer.g_idx, torch.flip(g_idx, [0]), 1)
