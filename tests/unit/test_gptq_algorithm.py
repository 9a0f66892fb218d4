"""The GPTQ algorithm: it must beat round-to-nearest on the layer's output, and emit a valid format."""

from __future__ import annotations

import pytest
import torch

from folovllm.quantize.gptq_algorithm import GPTQ, find_params, rtn_quantize


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Activations with a few dominant directions and uneven scales, as real ones have."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g)
    mix = torch.randn(16, d, generator=g)
    scales = torch.rand(d, generator=g) * 3 + 0.1
    return (z @ mix + 0.1 * torch.randn(n, d, generator=g)) * scales


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return ((x @ w.T - x @ w_hat.T).norm() / (x @ w.T).norm()).item()


@pytest.mark.parametrize("bits,group_size,desc_act,sym", [(4, 128, False, True), (4, 32, True, False), (8, -1, True, True)])
def test_gptq_has_a_clearly_lower_output_error_than_round_to_nearest(bits, group_size, desc_act, sym):
    d, out = 256, 64
    calib = correlated_inputs(2048, d, seed=0)
    w = torch.randn(out, d, generator=torch.Generator().manual_seed(1)) * 0.05
    gptq = GPTQ(d)
    for chunk in calib.split(512):  # the running mean over batches equals one pass over all
        gptq.add_batch(chunk)
    q_gptq = gptq.quantize(w, bits, group_size, sym, desc_act)
    q_rtn = rtn_quantize(w, bits, group_size, sym)
    err_gptq, err_rtn = output_error(calib, w, q_gptq.dequantize()), output_error(calib, w, q_rtn.dequantize())
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)


def test_act_order_groups_are_whole_and_codes_in_range():
    d, out = 128, 16
    gptq = GPTQ(d)
    gptq.add_batch(correlated_inputs(1024, d, seed=3))
    q = gptq.quantize(torch.randn(out, d), bits=4, group_size=32, desc_act=True)
    assert q.codes.shape == (d, out) and int(q.codes.min()) >= 0 and int(q.codes.max()) <= 15
    assert q.scales.shape == (4, out) and q.scales.dtype == torch.float16
    assert torch.bincount(q.g_idx.long()).tolist() == [32, 32, 32, 32]
    assert not torch.equal(q.g_idx, torch.arange(d, dtype=torch.int32) // 32)  # act order really reordered
    assert torch.equal(q.zeros, torch.full((4, out), 8, dtype=torch.int32))  # symmetric: the middle code


def test_find_params_covers_the_range_and_zero():
    w = torch.tensor([[-1.0, 0.5, 2.0], [0.0, 0.0, 0.0], [0.2, 0.4, 0.6]])
    scale, zero = find_params(w, bits=4, sym=False)
    assert scale.tolist() == pytest.approx([0.2, 2 / 15, 0.04], rel=1e-3)  # an all-zero row gets [-1, 1]
    assert zero.tolist() == [5, 8, 0]
    scale, zero = find_params(w, bits=4, sym=True)
    assert scale[0].item() == pytest.approx(4 / 15, rel=1e-3) and zero.tolist() == [8, 8, 8]


def test_dead_inputs_get_zero_weight():
    d = 64
    x = correlated_inputs(512, d, seed=4)
    x[:, 5] = 0
    gptq = GPTQ(d)
    gptq.add_batch(x)
    q = gptq.quantize(torch.randn(8, d), bits=8, group_size=-1)
    assert torch.equal(q.dequantize()[:, 5], torch.zeros(8))


@pytest.mark.parametrize("checkpoint_format,sym", [("gptq", True), ("gptq_v2", False)])
@pytest.mark.parametrize("bits", [4, 8])
def test_written_tensors_read_back_as_the_weight_the_quantizer_chose(checkpoint_format, sym, bits):
    from folovllm.model_executor.layers.quantization.gptq import ZERO_OFFSETS
    from folovllm.model_executor.layers.quantization.gptq_packing import dequantize
    from folovllm.quantize.gptq_checkpoint import gptq_tensors

    d = 64
    gptq = GPTQ(d)
    gptq.add_batch(correlated_inputs(256, d, seed=5))
    q = gptq.quantize(torch.randn(32, d), bits=bits, group_size=32, sym=sym, desc_act=True)
    t = gptq_tensors(q, bits, checkpoint_format)
    assert t["qweight"].dtype == t["qzeros"].dtype == torch.int32 and t["qweight"].shape == (d * bits // 32, 32)
    read_back = dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, ZERO_OFFSETS[checkpoint_format])
    assert torch.equal(read_back.T, q.dequantize())
