"""The Sampler: logits of the sampling rows -> token ids (+ logprobs).

Order, as in vLLM v1:
  1. logprobs of the raw logits (if any row asked for them)
  2. min_tokens: mask stop/EOS ids of rows that may not stop yet
  3. penalties: repetition, frequency, presence (2 and 3 in float32)
  4. greedy argmax
  5. temperature, min_p, top_k, top_p, then a random draw
Random draws use the "exponential race": argmax(p / E) with E ~ Exp(1) is a
sample from p, needs no host sync (unlike torch.multinomial), and lets a
seeded row draw its E from its own generator, so its output does not depend
on which other requests share the batch. On a GPU, the rows without a seed
(greedy rows may be among them; min_tokens and penalties already applied) go
to two Triton kernels that invert the softmax's cumulative distribution instead
(``ops/triton_sample.py``): two random numbers per row rather than one per
vocabulary id. With top-k / top-p / min-p rows among them, a Triton kernel
filters and draws without sorting the vocabulary: where every row that draws
keeps fewer than a window's ids by its top-k, from the window of its most likely ids
that ``torch.topk`` picks (``ops/triton_window_sample.py``); otherwise a program
per row reads its whole row (``ops/triton_filtered_sample.py``). Seeded rows
are then drawn again on torch's path, by themselves, and replace the kernels'
ids for them: one seeded request no longer sends a whole batch to a sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from folovllm.sample.metadata import SamplingMetadata
from folovllm.sample.ops.penalties import apply_penalties
from folovllm.sample.ops.topk_topp import apply_min_p, apply_top_k_top_p
from folovllm.utils.device import HAS_TRITON


@dataclass
class LogprobsTensors:
    """Per row: a chosen token first, then the ``k`` most likely (the layout of ``LogprobsLists``)."""

    logprob_token_ids: torch.Tensor  # int64 [B, 1 + k]
    logprobs: torch.Tensor  # float32 [B, 1 + k]
    selected_token_ranks: torch.Tensor  # int64 [B]: the chosen token's rank, 1 = most likely


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # int64 [B]
    logprobs_tensors: Optional[LogprobsTensors]  # None when no row asked for logprobs


def gather_logprobs(logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor) -> LogprobsTensors:
    """The logprob and rank of ``token_ids[i]`` in row i, with the row's ``num_logprobs`` best.

    Also computes prompt logprobs (``token_ids`` = the next prompt tokens).
    """
    token_lp = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = (logprobs > token_lp).sum(dim=1) + 1
    ids, lps = token_ids.unsqueeze(1), token_lp
    if num_logprobs:
        topk_lp, topk_ids = logprobs.topk(num_logprobs, dim=-1)
        ids, lps = torch.cat([ids, topk_ids], dim=1), torch.cat([lps, topk_lp], dim=1)
    return LogprobsTensors(ids, lps, ranks)


class Sampler(nn.Module):
    """``seed``: rows without a seed of their own draw from the sampler's generators, seeded once,
    so their draws depend on nothing outside the engine (a user's script may use torch's global
    generator; tensor-parallel ranks must draw the same numbers). None: torch's global generator."""

    def __init__(self, seed: Optional[int] = None, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        # The fused kernel's seed is drawn on the host, so that no device sync is needed.
        self.host_generator = None if seed is None else torch.Generator().manual_seed(seed)

    def forward(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        raw_logprobs = logits.float().log_softmax(dim=-1) if md.max_num_logprobs is not None else None
        if md.min_tokens_stop_ids or md.repetition_penalties is not None:
            logits = _mask_and_penalize(logits.float(), md)
        if _fused_sampling_applies(logits, md):
            if md.top_k is None and md.top_p is None and md.min_p is None:
                from folovllm.sample.ops.triton_sample import inverse_cdf_sample

                sampled = inverse_cdf_sample(logits, md.temperature, self.host_generator, greedy=md.greedy_mask)
            else:
                sampled = filtering_kernel(md.max_top_k)(
                    logits, md.temperature, md.top_k, md.top_p, md.min_p, self.host_generator, greedy=md.greedy_mask
                )  # fmt: skip
            if md.generators:  # only torch's path draws from a row's own generator
                rows = sorted(md.generators)
                index = torch.tensor(rows).to(logits.device, non_blocking=True)
                sampled[index] = self.sample(logits[index].float(), md.select_rows(rows, index))
            return self._output(sampled, raw_logprobs, md)
        sampled = self.sample(logits.float(), md)
        return self._output(sampled, raw_logprobs, md)

    @staticmethod
    def _output(sampled: torch.Tensor, raw_logprobs: Optional[torch.Tensor], md: SamplingMetadata) -> SamplerOutput:
        if raw_logprobs is None:
            return SamplerOutput(sampled, None)
        return SamplerOutput(sampled, gather_logprobs(raw_logprobs, md.max_num_logprobs, sampled))

    def sample(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        greedy = logits.argmax(dim=-1) if not md.all_random else None
        if md.all_greedy:
            return greedy
        logits = logits / md.temperature.unsqueeze(1)
        if md.min_p is None and md.top_k is None and md.top_p is None:
            random = gumbel_sample(logits, md.generators, self.generator)
        else:
            if md.min_p is not None:
                logits = apply_min_p(logits, md.min_p)
            if md.top_k is not None or md.top_p is not None:
                logits = apply_top_k_top_p(logits, md.top_k, md.top_p)
            random = random_sample(logits.softmax(dim=-1), md.generators, self.generator)
        if greedy is None:
            return random
        return torch.where(md.greedy_mask, greedy, random)


def _mask_and_penalize(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """min_tokens' stop ids set to -inf (in place), then the penalties: what every path samples from."""
    for row, stop_ids in md.min_tokens_stop_ids.items():
        logits[row, stop_ids] = float("-inf")
    if md.repetition_penalties is None:
        return logits
    return apply_penalties(
        logits, md.prompt_token_ids, md.output_token_ids,
        md.presence_penalties, md.frequency_penalties, md.repetition_penalties,
    )  # fmt: skip


def _fused_sampling_applies(logits: torch.Tensor, md: SamplingMetadata) -> bool:
    """Temperature sampling, greedy rows beside it or not, on a GPU, with a row that has no seed of its
    own: the fused kernels do it all, top-k / top-p / min-p included, on the logits as min_tokens and
    the penalties left them. (Every row greedy: one argmax is less work. Every row seeded: torch's
    path, the only one that draws from a row's own generator, takes them all anyway.)"""
    return _fused_kernels_run_on(logits) and not md.all_greedy and len(md.generators) < logits.shape[0]


def filtering_kernel(max_top_k: int):
    """The fused kernel that filters and draws a batch whose drawing rows keep at most ``max_top_k``
    ids by their top-k (``SamplingMetadata.max_top_k``): ``window_sample`` or ``filtered_sample``."""
    from folovllm.sample.ops.triton_filtered_sample import filtered_sample
    from folovllm.sample.ops.triton_window_sample import WINDOW, window_sample

    # By the filters, not the batch size (H200, Qwen3's vocabulary, 1-256 rows): with top_k=20
    # + top_p=0.95 the window won everywhere (170-424 us against 380-800); with top-p alone the
    # whole row did (120-260 against 160-480), as a row without top-k settles in the window
    # only by its mass, a pass over its whole row anyway. A top_k of WINDOW itself never settles
    # (the window's last value is the k-th one), hence `<`.
    return window_sample if max_top_k < WINDOW else filtered_sample


def _fused_kernels_run_on(logits: torch.Tensor) -> bool:
    """Whether the Triton kernels can sample ``logits`` (a GPU; the CPU tests say yes for the interpreter)."""
    return logits.is_cuda and HAS_TRITON


def _exponential_noise(
    like: torch.Tensor, generators: dict[int, torch.Generator], default: Optional[torch.Generator] = None
) -> torch.Tensor:
    q = torch.empty_like(like)
    if len(generators) != like.shape[0]:
        q.exponential_(generator=default)
    for row, gen in generators.items():
        q[row].exponential_(generator=gen)
    return q


def random_sample(
    probs: torch.Tensor, generators: dict[int, torch.Generator], default: Optional[torch.Generator] = None
) -> torch.Tensor:
    return probs.div_(_exponential_noise(probs, generators, default)).argmax(dim=-1)


def gumbel_sample(
    logits: torch.Tensor, generators: dict[int, torch.Generator], default: Optional[torch.Generator] = None
) -> torch.Tensor:
    """The same race in log space: argmax(logits - log E) needs no softmax,
    since log p differs from the logits only by a per-row constant."""
    return logits.sub_(_exponential_noise(logits, generators, default).log_()).argmax(dim=-1)


def warm_up_fused_kernels(logits: torch.Tensor) -> None:
    """Launch each fused sampling kernel once on ``logits`` (rows laid out as the model's) and on a
    float32 copy (what min_tokens and penalties hand over): the temperature kernels with and without
    greedy rows, both filtering kernels with every filter and greedy rows. Their variants compile
    before the first request rather than inside it; the ids drawn are dropped."""
    from folovllm.sample.ops.triton_filtered_sample import filtered_sample
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample
    from folovllm.sample.ops.triton_window_sample import window_sample

    rows, device = logits.shape[0], logits.device
    ones = torch.ones(rows, device=device)
    greedy = torch.arange(rows, device=device) % 2 == 0
    filters = (torch.full((rows,), 8, device=device), ones * 0.9, ones * 0.05)
    generator = torch.Generator().manual_seed(0)
    for x in {logits.dtype: logits, torch.float32: logits.float()}.values():
        for g in (None, greedy):
            inverse_cdf_sample(x, ones, generator, greedy=g)
        for sample in (filtered_sample, window_sample):
            sample(x, ones, *filters, generator, greedy=greedy)
