"""GPTQ's storage layout: pack, unpack and dequantize (the plain-torch reference).

A GPTQ linear layer with ``bits`` b stores ``32 / b`` codes per int32, low bits first:

* ``qweight`` int32 ``[in / (32/b), out]``: codes packed along the *input* dim;
* ``qzeros``  int32 ``[groups, out / (32/b)]``: zero points packed along the *output* dim;
* ``scales``  fp16  ``[groups, out]``;
* ``g_idx``   int32 ``[in]``: the group of each input row.

Row ``k`` of the float weight (transposed, ``[in, out]``) is
``scales[g_idx[k]] * (code[k] - zero[g_idx[k]])``. Checkpoints in the original
format ("gptq", v1) store every zero point minus one, so the reader adds
``zero_offset=1``; "gptq_v2" stores it as is. The scripts that write our own
checkpoints and the Triton kernels' tests use these functions as the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_BITS = (4, 8)


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 32, bits, dtype=torch.int32, device=device)


def _to_int32(values: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 bit patterns -> the same bits as int32."""
    return torch.where(values >= 2**31, values - 2**32, values).to(torch.int32)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[K, N]`` codes in ``[0, 2**bits)`` -> int32 ``[K / (32/bits), N]`` (qweight)."""
    pack = 32 // bits
    k, n = codes.shape
    parts = codes.to(torch.int64).reshape(k // pack, pack, n) << _shifts(bits, codes.device).to(torch.int64)[None, :, None]
    return _to_int32(parts.sum(dim=1))


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[K / (32/bits), N]`` -> int32 codes ``[K, N]``."""
    rows, n = packed.shape
    codes = (packed[:, None, :] >> _shifts(bits, packed.device)[None, :, None]) & ((1 << bits) - 1)
    return codes.reshape(rows * (32 // bits), n)


def pack_cols(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[G, N]`` codes -> int32 ``[G, N / (32/bits)]`` (qzeros)."""
    return pack_rows(codes.T.contiguous(), bits).T.contiguous()


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[G, N / (32/bits)]`` -> int32 codes ``[G, N]``."""
    return unpack_rows(packed.T.contiguous(), bits).T.contiguous()


def dequantize_codes(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Unpacked codes ``[in, out]`` and true zero points ``[groups, out]`` -> the float32 weight ``[in, out]``."""
    groups = g_idx.long()
    return (codes - zeros[groups]).float() * scales[groups].float()


def dequantize(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int, zero_offset: int
) -> torch.Tensor:
    """The float32 weight ``[in, out]`` that the packed tensors stand for."""
    return dequantize_codes(unpack_rows(qweight, bits), unpack_cols(qzeros, bits) + zero_offset, scales, g_idx)


def gptq_matmul_reference(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    zero_offset: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W + bias`` with W dequantized in float32, then rounded to x's dtype (as the kernels do)."""
    weight = dequantize(qweight, qzeros, scales, g_idx, bits, zero_offset).to(x.dtype)
    return F.linear(x, weight.T, bias)
