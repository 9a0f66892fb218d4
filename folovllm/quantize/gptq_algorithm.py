"""The GPTQ algorithm (Frantar et al., 2022) for one linear layer, and round-to-nearest for comparison.

Quantizing ``W [out, in]`` column by column, GPTQ minimises the layer's output
error ``||W X - Ŵ X||²`` over calibration inputs ``X`` rather than the weight
error. The inputs enter only through the Hessian of that error,
``H = 2 X Xᵀ / n`` (``add_batch``). After rounding column ``j``, the rounding
error is spread over the columns not yet quantized, weighted by row ``j`` of
the upper Cholesky factor of ``H⁻¹``; columns are processed in blocks of 128
so that most of this update is one matrix product per block. With
``desc_act`` ("act order") the columns with the largest ``H`` diagonal (the
most active inputs) go first, and ``g_idx`` records each input row's group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from folovllm.model_executor.layers.quantization.gptq_packing import dequantize_codes


@dataclass
class QuantizedWeight:
    """One layer's quantized weight, in checkpoint row order (rows = inputs)."""

    codes: torch.Tensor  # int32 [in, out]
    scales: torch.Tensor  # float16 [groups, out]
    zeros: torch.Tensor  # int32 [groups, out], the true zero points
    g_idx: torch.Tensor  # int32 [in]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` these stand for."""
        return dequantize_codes(self.codes, self.zeros, self.scales, self.g_idx).T.contiguous()


def find_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output row of ``w [out, cols]``: the scale (float16-exact) and zero point covering its range and 0."""
    maxq = 2**bits - 1
    xmin = w.min(dim=1).values.clamp(max=0)
    xmax = w.max(dim=1).values.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    flat = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(flat, -1.0, xmin), torch.where(flat, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).half().float()  # the checkpoint stores float16: quantize with that value
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> QuantizedWeight:
    """Round each weight to the nearest level of its group's grid; no calibration."""
    w = weight.float()
    in_features = w.shape[1]
    group_size = group_size if group_size != -1 else in_features
    codes, scales, zeros = [], [], []
    for start in range(0, in_features, group_size):
        cols = w[:, start : start + group_size]
        scale, zero = find_params(cols, bits, sym)
        codes.append(quantize_column(cols, scale[:, None], zero[:, None], bits))
        scales.append(scale)
        zeros.append(zero)
    g_idx = torch.arange(in_features) // group_size
    return QuantizedWeight(
        torch.cat(codes, dim=1).T.to(torch.int32).contiguous(),
        torch.stack(scales).half(),
        torch.stack(zeros).to(torch.int32),
        g_idx.to(torch.int32),
    )


class GPTQ:
    """Accumulates one layer's input Hessian, then quantizes its weight against it."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(in_features, in_features, device=device)
        self.num_samples = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """``x [tokens, in]``: inputs of the layer; keeps ``H = 2/n Σ x xᵀ`` as a running mean."""
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.H *= self.num_samples / (self.num_samples + n)
        self.num_samples += n
        x = (2 / self.num_samples) ** 0.5 * x
        self.H += x.T @ x

    def quantize(
        self,
        weight: torch.Tensor,
        bits: int,
        group_size: int,
        sym: bool = True,
        desc_act: bool = False,
        damp_percent: float = 0.01,
        block_size: int = 128,
    ) -> QuantizedWeight:
        W = weight.float().clone()
        in_features = W.shape[1]
        group_size = group_size if group_size != -1 else in_features
        H = self.H.clone()
        dead = torch.diag(H) == 0  # inputs that were always 0: their weights never matter
        H[dead, dead] = 1
        W[:, dead] = 0
        perm = torch.argsort(torch.diag(H), descending=True) if desc_act else torch.arange(in_features, device=W.device)
        W, H = W[:, perm], H[perm][:, perm]
        H += damp_percent * torch.mean(torch.diag(H)) * torch.eye(in_features, device=W.device)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

        codes = torch.zeros_like(W)
        scales, zeros = [], []
        for i1 in range(0, in_features, block_size):
            i2 = min(i1 + block_size, in_features)
            W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
            Err1 = torch.zeros_like(W1)
            for i in range(i2 - i1):
                if (i1 + i) % group_size == 0:  # a new group starts: its grid from the columns as they are now
                    scale, zero = find_params(torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group_size], bits, sym)
                    scales.append(scale)
                    zeros.append(zero)
                w = W1[:, i]
                q = quantize_column(w, scale, zero, bits)
                codes[:, i1 + i] = q
                err = (w - scale * (q - zero)) / Hinv1[i, i]
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
                Err1[:, i] = err
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        g_idx = torch.empty(in_features, dtype=torch.int32, device=W.device)
        g_idx[perm] = (torch.arange(in_features, device=W.device) // group_size).to(torch.int32)
        original_order = torch.empty_like(codes)
        original_order[:, perm] = codes
        return QuantizedWeight(
            original_order.T.to(torch.int32).contiguous().cpu(),
            torch.stack(scales).half().cpu(),
            torch.stack(zeros).to(torch.int32).cpu(),
            g_idx.cpu(),
        )
