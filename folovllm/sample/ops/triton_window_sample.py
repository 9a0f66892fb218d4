"""Triton kernel: top-k / top-p / min-p sampling from a window of each row's most likely ids.

``triton_filtered_sample.py`` gives a row one program, which reads the whole row four times or
more (~150 us on one SM for Qwen3's vocabulary). Where every row's top-k fits a window, that is
wasted: the sampler sends such batches here. ``torch.topk`` (which spreads one row over many thread
blocks) first picks each row's WINDOW most likely ids, most likely first; a program per row then
works on those alone:

- top-k's threshold is the window's k-th value, min-p's follows from its first (the row's max);
- top-p's is where the window's running mass first reaches p of the kept mass. With top-k or min-p
  every kept id lies in the window, so the kept mass is the window's; with top-p alone it is the
  whole row's, summed in one pass over the row;
- one uniform draws an id from the window's kept ids by the inverse CDF.

The window settles a row when nothing outside it can be kept: its last value is below the top-k /
min-p threshold (so every tie of the k-th value is inside), or, for top-p alone, the window's ids
more likely than its last already hold p of the row's mass. Rows it does not settle (a top_k of
the window's size or more, a small min_p, a flat row under top-p) are sampled by
``triton_filtered_sample``'s passes over the whole row, in the same program. Both keep the same
ids, ties included, and draw from the same distribution (not the same ids for one seed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from folovllm.sample.ops.triton_filtered_sample import (
    ROW_FLAGS, _block_sums, _kept_weights, _row_settings, _sample_row, filter_args, whole_row_constants,
)  # fmt: skip
from folovllm.sample.ops.triton_sample import LOG2E, _walk, draw_seed
from folovllm.utils.pdl import pdl_launch_args, wait_for_previous_kernel

# Ids per row that torch.topk picks (vLLM's open pull request 48913 takes the same window for its
# torch path): top_k up to 1,023 settles in it, and top-p nuclei of that size.
WINDOW = 1024


@triton.jit
def _value_at(values, offs, i):
    """``values[i]`` (a scalar) from a block of values (float or integer)."""
    return tl.sum(tl.where(offs == i, values, 0), 0)


@triton.jit(do_not_specialize=ROW_FLAGS)
def _window_sample_kernel(
    logits_ptr, values_ptr, ids_ptr, temp_ptr, top_k_ptr, top_p_ptr, min_p_ptr, greedy_ptr, out_ptr, stride, seed,
    has_top_k, has_top_p, has_min_p, has_greedy,
    V: tl.constexpr, N: tl.constexpr, WINDOW_BLOCK: tl.constexpr, BLOCK: tl.constexpr, NUM_BLOCKS: tl.constexpr,
    BLOCK_B: tl.constexpr, KEY_BITS: tl.constexpr, MAX_ROUNDS: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride
    temperature, k, top_p, min_p, greedy = _row_settings(
        row, temp_ptr, top_k_ptr, top_p_ptr, min_p_ptr, greedy_ptr, has_top_k, has_top_p, has_min_p, has_greedy, V
    )  # fmt: skip
    offs = tl.arange(0, WINDOW_BLOCK)
    values = tl.load(values_ptr + row * N + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
    ids = tl.load(ids_ptr + row * N + offs, mask=offs < N, other=V)
    top = tl.max(values, 0)
    last = tl.min(tl.where(offs < N, values, float("inf")), 0)
    whole_row = N == V
    # A greedy row: the first id holding the max; all of them are in the window unless it holds only them.
    token = tl.min(tl.where(values == top, ids, V), 0)
    settled = whole_row | (last < top)
    if not greedy:
        lowest = float("-inf")
        if min_p > 0.0:  # p >= min_p * p_max
            lowest = top + temperature * tl.log(min_p)
        k_inside = True
        if k < V:
            k_inside = k <= N
            lowest = tl.maximum(lowest, _value_at(values, offs, k - 1))
        inside = whole_row | ((last < lowest) & k_inside)  # every id top-k and min-p keep is in the window
        scale = LOG2E / temperature
        weights = _kept_weights(values, lowest, float("-inf"), top, scale)
        mass = tl.sum(weights, 0)
        if top_p < 1.0:
            if (inside == 0) & (lowest == float("-inf")):  # top-p alone: the kept mass is the row's
                mass = tl.sum(_block_sums(row_ptr, lowest, float("-inf"), top, scale, V, BLOCK, NUM_BLOCKS, BLOCK_B), 0)
                inside = tl.sum(tl.where(values > last, weights, 0.0), 0) >= top_p * mass
            # The threshold: the value at the last position whose predecessors hold less than p of the
            # mass (its ties after it are kept too, as the whole-row kernel keeps them).
            mass_before = tl.cumsum(weights, 0) - weights
            last_kept = tl.sum((mass_before < top_p * mass).to(tl.int32), 0) - 1
            lowest = tl.maximum(lowest, _value_at(values, offs, last_kept))
        u, _, _, _ = tl.rand4x(seed, row * (MAX_ROUNDS + 1))
        drawn = _walk(_kept_weights(values, lowest, float("-inf"), top, scale), offs, u)
        token = _value_at(ids, offs, drawn)
        settled = inside
    if not settled:
        token = _sample_row(
            row_ptr, row, seed, temperature, k, top_p, min_p, greedy,
            V, BLOCK, NUM_BLOCKS, BLOCK_B, KEY_BITS, MAX_ROUNDS,
        ).to(tl.int64)  # fmt: skip
    tl.store(out_ptr + row, token.to(tl.int64))


def window_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
    generator: torch.Generator | None = None,
    greedy: torch.Tensor | None = None,
    window: int = WINDOW,
    block: int = 2048,
) -> torch.Tensor:
    """``triton_filtered_sample.filtered_sample``'s draw (same arguments), from each row's ``window``
    most likely ids where they settle it. ``window`` and ``block`` other than the defaults are for tests."""
    num_rows, vocab = logits.shape
    n = min(window, vocab)
    values, ids = logits.topk(n, dim=-1)  # sorted: the most likely first
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    top_k, top_p, min_p, greedy, *flags = filter_args(temperature, top_k, top_p, min_p, greedy, out)
    _window_sample_kernel[(num_rows,)](
        logits, values, ids, temperature, top_k, top_p, min_p, greedy, out, logits.stride(0), draw_seed(generator),
        *flags, N=n, WINDOW_BLOCK=triton.next_power_of_2(n), **whole_row_constants(logits, block),
        **pdl_launch_args(logits), num_warps=8,
    )  # fmt: skip
    return out
