"""Build a step's SamplingMetadata from the worker's state of the sequences that sample in it."""

from __future__ import annotations

import torch

from folovllm.sample.metadata import SamplingMetadata
from folovllm.sampling_params import SamplingType
from folovllm.worker.input_batch import CachedRequestState


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.int64)


def build_sampling_metadata(seqs: list[CachedRequestState], vocab_size: int, device: torch.device) -> SamplingMetadata:
    params = [s.sampling_params for s in seqs]
    types = [p.sampling_type for p in params]
    all_greedy = all(t == SamplingType.GREEDY for t in types)
    all_random = not any(t == SamplingType.GREEDY for t in types)

    def col(values, dtype=torch.float32):
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    temperature = col([1.0 if t == SamplingType.GREEDY else p.temperature for p, t in zip(params, types)])
    greedy_mask = None
    if not all_greedy and not all_random:
        greedy_mask = col([t == SamplingType.GREEDY for t in types], torch.bool)
    top_p = col([p.top_p for p in params]) if any(p.top_p < 1.0 for p in params) else None
    top_k = None
    if any(p.top_k > 0 for p in params):
        top_k = col([p.top_k if p.top_k > 0 else vocab_size for p in params], torch.int64)
    min_p = col([p.min_p for p in params]) if any(p.min_p > 0.0 for p in params) else None

    row_generators = {i: s.generator for i, s in enumerate(seqs) if s.generator is not None}

    prompt_ids = output_ids = presence = frequency = repetition = None
    if any(p.has_penalties for p in params):
        prompt_ids = _pad([s.prompt_token_ids for s in seqs], vocab_size).to(device)
        output_ids = _pad([s.output_token_ids for s in seqs], vocab_size).to(device)
        presence = col([p.presence_penalty for p in params])
        frequency = col([p.frequency_penalty for p in params])
        repetition = col([p.repetition_penalty for p in params])

    min_tokens_stop_ids = {
        i: sorted(s.sampling_params.all_stop_token_ids)
        for i, s in enumerate(seqs)
        if len(s.output_token_ids) < s.sampling_params.min_tokens and s.sampling_params.all_stop_token_ids
    }
    wanted = [p.logprobs for p in params if p.logprobs is not None]
    return SamplingMetadata(
        temperature=temperature,
        all_greedy=all_greedy,
        all_random=all_random,
        greedy_mask=greedy_mask,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        generators=row_generators,
        prompt_token_ids=prompt_ids,
        output_token_ids=output_ids,
        presence_penalties=presence,
        frequency_penalties=frequency,
        repetition_penalties=repetition,
        min_tokens_stop_ids=min_tokens_stop_ids,
        max_num_logprobs=max(wanted) if wanted else None,
    )
