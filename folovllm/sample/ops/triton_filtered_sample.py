"""Triton kernel: sampling with top-k, top-p and min-p, without sorting the vocabulary.

The torch path (``topk_topp.py``) sorts every row: for 256 rows of Qwen3's 151,936 ids that is a
segmented sort of 39 million (value, index) pairs a step, then a softmax, a cumulative sum and a
scatter over them. Qwen3's own generation_config.json asks for top_k=20, top_p=0.95, and vLLM's
examples for top_p=0.95, so that is the path most scripts take. Here a program per row reads its
row a few times instead and never sorts it:

1. The row's largest logit (and the first id holding it: a greedy row stops there).
2. min-p keeps ids with p >= min_p * p_max: logits >= max + T * ln(min_p), a threshold.
   top-k keeps the k largest logits (ties with the k-th kept too, as in the torch path): the k-th
   largest is found by a radix select, one pass per byte of the logits' order-preserving bit
   pattern, each a 256-bin histogram of that byte among the ids whose higher bytes matched so far
   (two passes for bf16 logits, four for float16 and float32).
3. A pass sums exp((logit - max) / T) per block of ids over the kept ids; one uniform picks a
   block by those sums, a second an id inside it (the inverse CDF, as ``triton_sample.py``).
4. top-p keeps the smallest set of most likely ids whose mass reaches p. Rather than find that set,
   the draw is checked: the mass of the kept ids more likely than the drawn one must be below p
   (times the kept mass), which holds exactly for the ids of that set. If not, every id as likely
   as the drawn one or less is outside the set, and the draw is repeated among the more likely
   ones (the check's pass has just summed them). Each repeat is a sample from p restricted to a
   set that still holds the nucleus, so an accepted draw follows p on the nucleus: rejection
   sampling (FlashInfer's way of sampling top-p without sorting). A first draw passes with
   probability p or more; after MAX_ROUNDS repeats the row takes its most likely id, which is
   always in the set.

Ties between logits, which the torch path orders as its sort happens to, are all kept here: the
k-th largest value's ties by top-k, and for top-p an id whose more likely ids hold less than p.

The sampler sends batches whose every drawing row keeps fewer than a window's ids by its top-k to
``triton_window_sample.py``, which samples them from a window of their most likely ids and calls
``_sample_row`` for those its window cannot settle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.sample.ops.triton_sample import LOG2E, _walk, draw_seed
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel

# The radix select's digit: a histogram of 2**RADIX_BITS bins a pass. Triton counts with a warp vote
# per bit of the digit and a population count per bin a lane owns; on sm_90 a byte (256 bins) costs
# ~680 SASS instructions per 2,048 ids, 4 bits ~350: half the instructions for twice the passes.
RADIX_BITS = tl.constexpr(8)
RADIX = tl.constexpr(256)
MAX_ROUNDS = 32  # top-p draws per row; a round fails with probability 1 - p at most, and less each time


@triton.jit
def _load_row(row_ptr, ids, V: tl.constexpr):
    """The logits of ``ids`` as float32 (-inf past the vocabulary), -0.0 read as 0.0 so that equal
    values have equal bit patterns."""
    x = tl.load(row_ptr + ids, mask=ids < V, other=float("-inf")).to(tl.float32)
    return tl.where(x == 0.0, 0.0, x)


@triton.jit
def _order_key(x):
    """float32 -> uint32 with the same order: negative values' bits flipped, positive ones' sign bit set."""
    bits = x.to(tl.uint32, bitcast=True)
    return tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)


@triton.jit
def _key_value(key):
    """The float32 that ``_order_key`` maps to ``key``."""
    bits = tl.where((key >> 31) == 1, key & 0x7FFFFFFF, ~key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _digit_histogram(row_ptr, prefix, shift: tl.constexpr, V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr):
    """How many of the row's ids have each value of the key's digit (RADIX_BITS bits) at ``shift``,
    among those whose bits above it equal ``prefix``."""
    hist = tl.zeros([RADIX], dtype=tl.int32)
    for b in range(NUM_BLOCKS):
        ids = b * BLOCK + tl.arange(0, BLOCK)
        key = _order_key(_load_row(row_ptr, ids, V))
        digit = ((key >> shift) & (RADIX - 1)).to(tl.int32)
        if shift + RADIX_BITS == 32:  # the top digit: no prefix yet (and a shift by 32 would be undefined)
            hist += tl.histogram(digit, RADIX, mask=ids < V)
        else:
            hist += tl.histogram(digit, RADIX, mask=(ids < V) & ((key >> (shift + RADIX_BITS)) == prefix))
    return hist


@triton.jit
def _choose_digit(hist, prefix, remaining):
    """The digit value v where the ``remaining``-th largest key lies (the count of digits >= v reaches
    it), the prefix with v appended, and how many of the wanted keys are left below digits > v."""
    values = tl.arange(0, RADIX)
    at_or_above = tl.cumsum(hist, 0, reverse=True)
    v = tl.max(tl.where(at_or_above >= remaining, values, 0), 0)
    above = tl.sum(tl.where(values > v, hist, 0), 0)
    return (prefix << RADIX_BITS) | v.to(tl.uint32), remaining - above


@triton.jit
def _kth_largest(row_ptr, k, V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, KEY_BITS: tl.constexpr):
    """The row's k-th largest logit, by a radix select over the key's top ``KEY_BITS`` bits (the
    rest are zero for every value: bf16 logits widened to float32)."""
    prefix = tl.zeros([], dtype=tl.uint32)
    remaining = k
    for i in tl.static_range(KEY_BITS // RADIX_BITS):
        hist = _digit_histogram(row_ptr, prefix, 32 - RADIX_BITS * (i + 1), V, BLOCK, NUM_BLOCKS)
        prefix, remaining = _choose_digit(hist, prefix, remaining)
    return _key_value(prefix << (32 - KEY_BITS))


@triton.jit
def _kept_weights(x, lowest, above, top, scale):
    """exp2((logit - top) * scale) of the logits ``x`` that are >= ``lowest`` and > ``above``, 0 elsewhere:
    what both the block sums and the draw inside a block weigh, so that they agree."""
    return tl.where((x >= lowest) & (x > above), tl.exp2((x - top) * scale), 0.0)


@triton.jit
def _block_sums(row_ptr, lowest, above, top, scale, V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, BLOCK_B: tl.constexpr):
    """Per block of ids, the sum of ``_kept_weights``."""
    offs_b = tl.arange(0, BLOCK_B)
    sums = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b in range(NUM_BLOCKS):
        x = _load_row(row_ptr, b * BLOCK + tl.arange(0, BLOCK), V)
        sums = tl.where(offs_b == b, tl.sum(_kept_weights(x, lowest, above, top, scale), 0), sums)
    return sums


@triton.jit
def _draw(row_ptr, sums, lowest, above, top, scale, u_block, u_id, V: tl.constexpr, BLOCK: tl.constexpr, BLOCK_B: tl.constexpr):
    """An id drawn by the block ``sums`` (``_block_sums`` with the same bounds), then inside the block."""
    b = _walk(sums, tl.arange(0, BLOCK_B), u_block)
    offs = tl.arange(0, BLOCK)
    x = _load_row(row_ptr, b * BLOCK + offs, V)
    return b * BLOCK + _walk(_kept_weights(x, lowest, above, top, scale), offs, u_id)


@triton.jit
def _row_settings(row, temp_ptr, top_k_ptr, top_p_ptr, min_p_ptr, greedy_ptr, has_top_k, has_top_p, has_min_p, has_greedy,
                  V: tl.constexpr):  # fmt: skip
    """Row ``row``'s temperature, top_k, top_p, min_p and whether it is greedy; a filter the batch does
    not use (its ``has_`` flag 0: its pointer is a placeholder) reads as off: V, 1.0, 0.0, not greedy."""
    temperature = tl.load(temp_ptr + row)
    k = tl.load(top_k_ptr + row).to(tl.int32) if has_top_k != 0 else V
    top_p = tl.load(top_p_ptr + row) if has_top_p != 0 else 1.0
    min_p = tl.load(min_p_ptr + row) if has_min_p != 0 else 0.0
    greedy = tl.load(greedy_ptr + row).to(tl.int1) if has_greedy != 0 else False
    return temperature, k, top_p, min_p, greedy


@triton.jit
def _sample_row(
    row_ptr, row, seed, temperature, k, top_p, min_p, greedy,
    V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, BLOCK_B: tl.constexpr, KEY_BITS: tl.constexpr,
    MAX_ROUNDS: tl.constexpr,
):  # fmt: skip
    """The id drawn for one row (its first argmax if ``greedy``), by passes over the whole row. Each
    filter is off at its neutral value: k >= V, top_p >= 1, min_p = 0."""
    # 1. The largest logit, and the first id that holds it.
    top = float("-inf")
    token = 0
    for b in range(NUM_BLOCKS):
        m, i = tl.max(_load_row(row_ptr, b * BLOCK + tl.arange(0, BLOCK), V), 0, return_indices=True)
        token = tl.where(m > top, b * BLOCK + i, token)
        top = tl.maximum(top, m)
    first_max = token
    if not greedy:
        # 2. The kept ids: logits >= lowest.
        lowest = float("-inf")
        if min_p > 0.0:  # p >= min_p * p_max
            lowest = top + temperature * tl.log(min_p)
        if k < V:
            lowest = tl.maximum(lowest, _kth_largest(row_ptr, k, V, BLOCK, NUM_BLOCKS, KEY_BITS))
        # 3. A draw from the kept ids.
        scale = LOG2E / temperature
        sums = _block_sums(row_ptr, lowest, float("-inf"), top, scale, V, BLOCK, NUM_BLOCKS, BLOCK_B)
        u_block, u_id, _, _ = tl.rand4x(seed, row * (MAX_ROUNDS + 1))
        token = _draw(row_ptr, sums, lowest, float("-inf"), top, scale, u_block, u_id, V, BLOCK, BLOCK_B)
        # 4. top-p: accept the draw if the kept ids more likely than it hold less than p of the kept
        # mass, else draw again among them.
        wanted = top_p * tl.sum(sums, 0)
        accepted = top_p >= 1.0
        rounds = 0
        while (accepted == 0) & (rounds < MAX_ROUNDS):
            drawn = _load_row(row_ptr, token, V)
            sums = _block_sums(row_ptr, lowest, drawn, top, scale, V, BLOCK, NUM_BLOCKS, BLOCK_B)
            accepted = tl.sum(sums, 0) < wanted
            rounds += 1
            if accepted == 0:
                u_block, u_id, _, _ = tl.rand4x(seed, row * (MAX_ROUNDS + 1) + rounds)
                token = _draw(row_ptr, sums, lowest, drawn, top, scale, u_block, u_id, V, BLOCK, BLOCK_B)
        token = tl.where(accepted, token, first_max)  # the rounds ran out: the most likely id
    return token


# Which filters a batch uses are arguments, not compile-time constants: one compiled variant per
# logits dtype serves every mix of top-k, top-p, min-p and greedy rows (as constants they made 14
# variants a kernel, each ~0.6 s of CPU to compile at a cold start). The seed changes every step.
ROW_FLAGS = ["seed", "has_top_k", "has_top_p", "has_min_p", "has_greedy"]


@triton.jit(do_not_specialize=ROW_FLAGS)
def _filtered_sample_kernel(
    logits_ptr, temp_ptr, top_k_ptr, top_p_ptr, min_p_ptr, greedy_ptr, out_ptr, stride, seed,
    has_top_k, has_top_p, has_min_p, has_greedy,
    V: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr, BLOCK_B: tl.constexpr, KEY_BITS: tl.constexpr,
    MAX_ROUNDS: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    temperature, k, top_p, min_p, greedy = _row_settings(
        row, temp_ptr, top_k_ptr, top_p_ptr, min_p_ptr, greedy_ptr, has_top_k, has_top_p, has_min_p, has_greedy, V
    )  # fmt: skip
    token = _sample_row(
        logits_ptr + row.to(tl.int64) * stride, row, seed, temperature, k, top_p, min_p, greedy,
        V, BLOCK, NUM_BLOCKS, BLOCK_B, KEY_BITS, MAX_ROUNDS,
    )  # fmt: skip
    tl.store(out_ptr + row, token.to(tl.int64))


def filter_args(temperature: torch.Tensor, top_k, top_p, min_p, greedy, out: torch.Tensor) -> list:
    """The filter pointers and their ``has_`` flags as the kernels take them: a filter that is None
    becomes a placeholder of its dtype (so that no combination compiles a variant of its own) with a
    value for every row (reading it is harmless; its flag, 0, discards it)."""
    placeholders = (out, temperature, temperature, out.view(torch.bool))  # int64, float32, float32, bool
    given = (top_k, top_p, min_p, greedy)
    return [p if g is None else g for p, g in zip(placeholders, given)] + [int(g is not None) for g in given]


def whole_row_constants(logits: torch.Tensor, block: int) -> dict:
    """The compile-time constants of ``_sample_row``'s passes over rows of ``logits`` in blocks of
    ``block`` ids (fewer for a small vocabulary), as both kernels that call it take them."""
    vocab = logits.shape[1]
    block = min(block, triton.next_power_of_2(vocab))
    num_blocks = triton.cdiv(vocab, block)
    return dict(
        V=vocab, BLOCK=block, NUM_BLOCKS=num_blocks, BLOCK_B=max(16, triton.next_power_of_2(num_blocks)),
        KEY_BITS=16 if logits.dtype == torch.bfloat16 else 32, MAX_ROUNDS=MAX_ROUNDS,
    )  # fmt: skip


def filtered_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    generator: torch.Generator | None = None,
    greedy: torch.Tensor | None = None,
    block: int = 2048,
) -> torch.Tensor:
    """One sample per row from softmax(logits / temperature) after min-p, top-k and top-p (each
    None where no row uses it; per row: top_k int [B] with the vocabulary size where off, top_p 1.0,
    min_p 0.0), as ``Sampler.sample`` filters; logits [B, V] with unit column stride. ``greedy``
    (bool [B] or None) and ``generator`` as in ``triton_sample.inverse_cdf_sample``; ``block`` (ids
    per block, a power of two; the draw depends on it) other than the default is for tests."""
    num_rows = logits.shape[0]
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    top_k, top_p, min_p, greedy, *flags = filter_args(temperature, top_k, top_p, min_p, greedy, out)
    _filtered_sample_kernel[(num_rows,)](
        logits, temperature, top_k, top_p, min_p, greedy, out, logits.stride(0), draw_seed(generator), *flags,
        **whole_row_constants(logits, block), **pdl_launch_args(logits), num_warps=8,
    )  # fmt: skip
    return out
