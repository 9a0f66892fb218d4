"""Triton kernel: temperature + Gumbel-max sampling in one pass over the logits.

For rows with no top-k / top-p / min-p and no per-request generator, sampling
is ``argmax(logits / T + Gumbel noise)``. The torch version needs ~6 passes
over a [batch, vocab] float32 tensor (cast, divide, draw, log, subtract,
argmax); this kernel reads the (bf16) logits once and draws its noise with
Triton's counter-based RNG. Drawing the noise is most of its work, so a row's
vocabulary is split over several programs when the batch alone would leave
SMs idle; a second, tiny kernel picks each row's winner among the splits.
The seed is drawn from a host generator (the engine's, seeded by its
``seed``; or torch's global one), so runs repeat.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.utils.device import num_sms
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel


@triton.jit
def _race(best_val, best_idx, row_ptr, ids, hi, inv_t, u):
    """One quarter of a block: vocabulary ids ``ids`` (every fourth), their uniform draws ``u``."""
    mask = ids < hi
    x = tl.load(row_ptr + ids, mask=mask, other=float("-inf")).to(tl.float32)
    score = x * inv_t - tl.log(-tl.log(tl.maximum(u, 1e-20)))
    score = tl.where(mask, score, float("-inf"))
    better = score > best_val
    return tl.where(better, score, best_val), tl.where(better, ids, best_idx)


# A fresh random seed each step: left unspecialised, or one seed in 16 (divisible by 16) would
# compile a second variant in the middle of a run. The chunk length varies with the batch size.
@triton.jit(do_not_specialize=["seed", "chunk"])
def _gumbel_argmax_kernel(
    logits_ptr, temp_ptr, best_val_ptr, best_idx_ptr, stride, seed, chunk, V: tl.constexpr, BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (row, split) scans vocabulary ids [split * chunk, (split + 1) * chunk) of its row.

    The noise of id i comes from Philox counter (row, i // 4), output i % 4: one Philox evaluation
    gives four draws (``tl.rand`` would make one and drop three; Philox was most of the loop), and
    the draw of an id does not depend on how the vocabulary is split (chunks start at multiples of 64).
    """
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    inv_t = 1.0 / tl.load(temp_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * stride
    QUARTER: tl.constexpr = BLOCK // 4
    best_val = tl.full([QUARTER], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([QUARTER], dtype=tl.int32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, V)
    for start in range(lo, hi, BLOCK):
        counters = start // 4 + tl.arange(0, QUARTER)
        u0, u1, u2, u3 = tl.rand4x(seed, row * ((V + 3) // 4) + counters)
        ids = 4 * counters
        best_val, best_idx = _race(best_val, best_idx, row_ptr, ids, hi, inv_t, u0)
        best_val, best_idx = _race(best_val, best_idx, row_ptr, ids + 1, hi, inv_t, u1)
        best_val, best_idx = _race(best_val, best_idx, row_ptr, ids + 2, hi, inv_t, u2)
        best_val, best_idx = _race(best_val, best_idx, row_ptr, ids + 3, hi, inv_t, u3)
    top = tl.max(best_val, 0)
    # lowest index among the lanes holding the maximum
    idx = tl.min(tl.where(best_val == top, best_idx, V), 0)
    out = row * tl.num_programs(1) + split
    tl.store(best_val_ptr + out, top)
    tl.store(best_idx_ptr + out, idx)


MAX_SPLITS = 64


@triton.jit(do_not_specialize=["splits"])  # one compiled variant for every batch size
def _pick_best_split_kernel(
    best_val_ptr, best_idx_ptr, out_ptr, splits, V: tl.constexpr, BLOCK_S: tl.constexpr, USE_PDL: tl.constexpr
):
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_S)
    mask = offs < splits
    vals = tl.load(best_val_ptr + row * splits + offs, mask=mask, other=float("-inf"))
    idxs = tl.load(best_idx_ptr + row * splits + offs, mask=mask, other=V)
    top = tl.max(vals, 0)
    tl.store(out_ptr + row, tl.min(tl.where(vals == top, idxs, V), 0).to(tl.int64))


def num_vocab_splits(num_rows: int, vocab: int, num_sms: int, block: int) -> int:
    """Enough programs for ~2 per SM, in powers of two (few compiled variants), each at least one block."""
    splits = 1
    while num_rows * splits < 2 * num_sms and splits * 2 * block <= vocab and splits < MAX_SPLITS:
        splits *= 2
    return splits


def gumbel_argmax(
    logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None = None, splits: int | None = None
) -> torch.Tensor:
    """One sample per row from softmax(logits / temperature); logits [B, V] with unit column stride.

    ``generator`` (a CPU one; default: torch's global) draws the kernel's seed.
    Each row's vocabulary is scanned in ``splits`` parts (default: enough to
    fill the GPU; a batch of 1 would otherwise run on one SM), whose winners a
    second kernel compares. The draw does not depend on ``splits``.
    """
    num_rows, vocab = logits.shape
    block = min(2048, triton.next_power_of_2(vocab))
    assert splits is None or 1 <= splits <= MAX_SPLITS, splits
    if splits is None:
        splits = num_vocab_splits(num_rows, vocab, num_sms(logits.device), block)
    chunk = triton.cdiv(triton.cdiv(vocab, splits), 64) * 64  # split starts stay aligned for vector loads
    best_val = torch.empty(num_rows, splits, dtype=torch.float32, device=logits.device)
    best_idx = torch.empty(num_rows, splits, dtype=torch.int32, device=logits.device)
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())  # CPU draw: no device sync
    pdl = pdl_launch_args(logits)
    _gumbel_argmax_kernel[(num_rows, splits)](
        logits, temperature, best_val, best_idx, logits.stride(0), seed, chunk, V=vocab, BLOCK=block, **pdl, num_warps=8
    )
    _pick_best_split_kernel[(num_rows,)](best_val, best_idx, out, splits, V=vocab, BLOCK_S=MAX_SPLITS, **pdl)
    return out
