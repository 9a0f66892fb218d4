"""Triton kernels: temperature sampling from the logits, one random draw per row.

For rows with no top-k / top-p / min-p and no per-request generator, a token is
drawn from softmax(logits / T) by inverting its cumulative distribution: pick a
uniform u, walk the probabilities in vocabulary order, stop where their running
sum passes u. The torch version (and the Gumbel / exponential race it replaced
here) needs a random number per vocabulary id: 39 million per step for 256 rows
of Qwen3's vocabulary, and drawing them was most of a compute-bound kernel. This
needs one exponential per id and two random numbers per row.

Two kernels, so that the walk does not read the whole row again:

1. ``_block_sums_kernel``: for each BLOCK ids of a row, the largest scaled logit
   m and the sum of exp(logit / T - m) over the block. A row's blocks are shared
   out over ``splits`` programs when the batch alone would leave SMs idle.
2. ``_draw_kernel`` (a program per row): the blocks' weights, sum_b * exp(m_b - M),
   choose a block with one uniform; a second uniform chooses an id inside it by
   the running sum of that block's exponentials. P(id) = P(block) * P(id | block)
   = p(id); two uniforms, rather than one carried down, keep the second choice as
   fine as the first when the chosen block holds little of the row's mass.

Greedy rows may sit among them (a ``greedy`` mask): the first kernel then also
keeps each block's first id holding its max, and a greedy row takes its argmax.

The uniforms come from Triton's counter-based RNG, seeded from a host generator
(the engine's, seeded by its ``seed``; or torch's global one), so runs repeat,
and a row's draw depends neither on the batch beside it nor on ``splits``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.utils.device import num_sms
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel

LOG2E = tl.constexpr(1.4426950408889634)  # the kernels work in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _finite_max(m):
    """A max over no live logit (-inf) read as 0, so that exp2(logit - max) is 0 there, not NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _scaled_logits(row_ptr, ids, V: tl.constexpr, scale):
    """Logits of ``ids`` times log2(e) / T, in float32; ids past the vocabulary are -inf."""
    return tl.load(row_ptr + ids, mask=ids < V, other=float("-inf")).to(tl.float32) * scale


# The number of blocks per program follows the batch size: not specialised on.
@triton.jit(do_not_specialize=["blocks_per_program"])
def _block_sums_kernel(
    logits_ptr, temp_ptr, block_max_ptr, block_sum_ptr, block_arg_ptr, stride, blocks_per_program,
    V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, HAS_GREEDY: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Program (row, split): blocks [split * blocks_per_program, ...) of its row. With greedy rows in
    the batch, also each block's first id holding its max (a greedy row's temperature reads as 1)."""
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    scale = LOG2E / tl.load(temp_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * stride
    first = split * blocks_per_program
    for b in range(first, tl.minimum(first + blocks_per_program, NUM_BLOCKS)):
        y = _scaled_logits(row_ptr, b * BLOCK + tl.arange(0, BLOCK), V, scale)
        if HAS_GREEDY:
            m, arg = tl.max(y, 0, return_indices=True)
            tl.store(block_arg_ptr + row * NUM_BLOCKS + b, arg)
        else:
            m = tl.max(y, 0)
        tl.store(block_max_ptr + row * NUM_BLOCKS + b, m)
        m = _finite_max(m)  # a block of -inf logits: sum 0
        tl.store(block_sum_ptr + row * NUM_BLOCKS + b, tl.sum(tl.exp2(y - m), 0))


@triton.jit
def _walk(weights, offs, u):
    """The first index where the running sum of ``weights`` passes ``u`` times their total. Rounding can
    leave the running sum a hair under it at the end: then the last index with weight, never one past it."""
    below = tl.sum((tl.cumsum(weights, 0) <= u * tl.sum(weights, 0)).to(tl.int32), 0)
    return tl.minimum(below, tl.max(tl.where(weights > 0.0, offs, 0), 0))


@triton.jit(do_not_specialize=["seed"])  # a fresh seed each step (one in 16 would compile a second variant)
def _draw_kernel(
    logits_ptr, temp_ptr, block_max_ptr, block_sum_ptr, block_arg_ptr, greedy_ptr, out_ptr, stride, seed,
    V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, BLOCK_B: tl.constexpr, HAS_GREEDY: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    u_block, u_id, _, _ = tl.rand4x(seed, row)
    # Which block: by the blocks' shares of the row's sum of exponentials.
    offs_b = tl.arange(0, BLOCK_B)
    b_mask = offs_b < NUM_BLOCKS
    m = tl.load(block_max_ptr + row * NUM_BLOCKS + offs_b, mask=b_mask, other=float("-inf"))
    top = tl.max(m, 0)
    top = _finite_max(top)  # only a row of -inf logits; it draws id 0
    w = tl.load(block_sum_ptr + row * NUM_BLOCKS + offs_b, mask=b_mask, other=0.0) * tl.exp2(m - top)
    b = _walk(w, offs_b, u_block)
    # Which id in the block: the same walk over its own exponentials.
    offs = tl.arange(0, BLOCK)
    scale = LOG2E / tl.load(temp_ptr + row)
    m_b = tl.load(block_max_ptr + row * NUM_BLOCKS + b)
    m_b = _finite_max(m_b)
    e = tl.exp2(_scaled_logits(logits_ptr + row.to(tl.int64) * stride, b * BLOCK + offs, V, scale) - m_b)
    token = b * BLOCK + _walk(e, offs, u_id)
    if HAS_GREEDY:  # a greedy row takes the first block holding its max, and that block's first id holding it
        best = tl.argmax(m, 0)
        argmax = best * BLOCK + tl.load(block_arg_ptr + row * NUM_BLOCKS + best)
        token = tl.where(tl.load(greedy_ptr + row).to(tl.int1), argmax, token)
    tl.store(out_ptr + row, token.to(tl.int64))


MAX_SPLITS = 64
# The block sums read the logits once and do little else, so the loads in flight set their pace:
# at least 8 programs per SM where the vocabulary allows (16 fit: 32 registers, 4 warps).
PROGRAMS_PER_SM = 8


def num_vocab_splits(num_rows: int, vocab: int, num_sms: int, block: int) -> int:
    """Programs per row for the block sums: PROGRAMS_PER_SM per SM or more in all, a power of two,
    about two blocks each at least."""
    splits = 1
    while num_rows * splits < PROGRAMS_PER_SM * num_sms and splits * 2 * block <= vocab and splits < MAX_SPLITS:
        splits *= 2
    return splits


def draw_seed(generator: torch.Generator | None) -> int:
    """The kernels' seed for one step, drawn on the host (a CPU generator, or torch's global one):
    no device sync."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def inverse_cdf_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    generator: torch.Generator | None = None,
    splits: int | None = None,
    block: int = 2048,
    greedy: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sample per row from softmax(logits / temperature); logits [B, V] with unit column stride.
    ``greedy`` (bool [B], or None for none): rows that take their argmax instead (lowest id among
    equal maxima, as ``torch.argmax``); their temperature is read as a scale and should be positive.

    ``generator`` (a CPU one; default: torch's global) draws the kernels' seed. ``splits``: programs
    per row for the block sums (default: enough to fill the GPU; a batch of 1 would otherwise run on
    one SM); the draw does not depend on it. ``block`` (ids per block, a power of two; the draw does
    depend on it) other than the default is for tests.
    """
    num_rows, vocab = logits.shape
    assert splits is None or 1 <= splits <= MAX_SPLITS, splits
    block = min(block, triton.next_power_of_2(vocab))
    num_blocks = triton.cdiv(vocab, block)
    if splits is None:
        splits = num_vocab_splits(num_rows, vocab, num_sms(logits.device), block)
    block_max = torch.empty(num_rows, num_blocks, dtype=torch.float32, device=logits.device)
    block_sum = torch.empty(num_rows, num_blocks, dtype=torch.float32, device=logits.device)
    has_greedy = greedy is not None
    block_arg = torch.empty(num_rows, num_blocks, dtype=torch.int32, device=logits.device) if has_greedy else block_sum
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    seed = draw_seed(generator)
    pdl = pdl_launch_args(logits)
    _block_sums_kernel[(num_rows, splits)](
        logits, temperature, block_max, block_sum, block_arg, logits.stride(0), triton.cdiv(num_blocks, splits),
        V=vocab, BLOCK=block, NUM_BLOCKS=num_blocks, HAS_GREEDY=has_greedy, **pdl, num_warps=4,
    )  # fmt: skip
    _draw_kernel[(num_rows,)](
        logits, temperature, block_max, block_sum, block_arg, greedy if has_greedy else out, out, logits.stride(0), seed,
        V=vocab, BLOCK=block, NUM_BLOCKS=num_blocks, BLOCK_B=max(16, triton.next_power_of_2(num_blocks)),
        HAS_GREEDY=has_greedy, **pdl, num_warps=8,
    )  # fmt: skip
    return out
