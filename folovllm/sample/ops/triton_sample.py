"""Triton kernel: temperature + Gumbel-max sampling in one pass over the logits.

For rows with no top-k / top-p / min-p and no per-request generator, sampling
is ``argmax(logits / T + Gumbel noise)``. The torch version needs ~6 passes
over a [batch, vocab] float32 tensor (cast, divide, draw, log, subtract,
argmax); this kernel reads the (bf16) logits once and draws its noise with
Triton's counter-based RNG. Its seed is drawn from a host generator (the
engine's, seeded by its ``seed``; or torch's global one), so runs repeat.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# A fresh random seed each step: left unspecialised, or one seed in 16 (divisible by 16) would
# compile a second variant in the middle of a run.
@triton.jit(do_not_specialize=["seed"])
def _gumbel_argmax_kernel(logits_ptr, temp_ptr, out_ptr, stride, seed, V: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    inv_t = 1.0 / tl.load(temp_ptr + row)
    best_val = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        x = tl.load(logits_ptr + row.to(tl.int64) * stride + offs, mask=mask, other=float("-inf")).to(tl.float32)
        u = tl.rand(seed, row * V + offs)
        u = tl.maximum(u, 1e-20)
        score = x * inv_t - tl.log(-tl.log(u))
        score = tl.where(mask, score, float("-inf"))
        better = score > best_val
        best_val = tl.where(better, score, best_val)
        best_idx = tl.where(better, offs, best_idx)
    top = tl.max(best_val, 0)
    # lowest index among the lanes holding the maximum
    idx = tl.min(tl.where(best_val == top, best_idx, V), 0)
    tl.store(out_ptr + row, idx.to(tl.int64))


def gumbel_argmax(logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per row from softmax(logits / temperature); logits [B, V] with unit column stride.

    ``generator`` (a CPU one; default: torch's global) draws the kernel's seed.
    """
    num_rows, vocab = logits.shape
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())  # CPU draw: no device sync
    _gumbel_argmax_kernel[(num_rows,)](
        logits, temperature, out, logits.stride(0), seed, V=vocab, BLOCK=min(2048, triton.next_power_of_2(vocab)), num_warps=8
    )
    return out
