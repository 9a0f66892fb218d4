"""Build a step's SamplingMetadata from the worker's state of the sequences that sample in it."""

from __future__ import annotations

import numpy as np
import torch

from folovllm.sample.metadata import SamplingMetadata
from folovllm.sampling_params import SamplingType
from folovllm.worker.input_batch import CachedRequestState
from folovllm.worker.input_buffers import SAMPLING_COLUMNS, CpuGpuBuffer


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.int64)


def build_sampling_metadata(
    seqs: list[CachedRequestState], vocab_size: int, device: torch.device, columns: dict[str, CpuGpuBuffer] | None = None
) -> SamplingMetadata:  # fmt: skip
    """The settings of ``seqs`` as per-row tensors on ``device``: in ``columns`` (the model runner's
    persistent buffers, ``InputBuffers.sampling``) if given, else in new tensors."""
    params = [s.sampling_params for s in seqs]
    types = [p.sampling_type for p in params]
    all_greedy = all(t == SamplingType.GREEDY for t in types)
    all_random = not any(t == SamplingType.GREEDY for t in types)

    def col(name: str, values: list) -> torch.Tensor:
        if columns is not None:
            return columns[name].copy_to_gpu(np.asarray(values))
        return torch.tensor(values, dtype=SAMPLING_COLUMNS[name]).to(device, non_blocking=True)

    temperature = col("temperature", [1.0 if t == SamplingType.GREEDY else p.temperature for p, t in zip(params, types)])
    greedy_mask = None
    if not all_greedy and not all_random:
        greedy_mask = col("greedy_mask", [t == SamplingType.GREEDY for t in types])
    top_p = col("top_p", [p.top_p for p in params]) if any(p.top_p < 1.0 for p in params) else None
    top_k = None
    if any(p.top_k > 0 for p in params):
        top_k = col("top_k", [p.top_k if p.top_k > 0 else vocab_size for p in params])
    min_p = col("min_p", [p.min_p for p in params]) if any(p.min_p > 0.0 for p in params) else None
    max_top_k = max((p.top_k if p.top_k > 0 else vocab_size for p, t in zip(params, types) if t != SamplingType.GREEDY), default=0)

    row_generators = {i: s.generator for i, s in enumerate(seqs) if s.generator is not None}

    prompt_ids = output_ids = presence = frequency = repetition = None
    if any(p.has_penalties for p in params):
        prompt_ids = _pad([s.prompt_token_ids for s in seqs], vocab_size).to(device)
        output_ids = _pad([s.output_token_ids for s in seqs], vocab_size).to(device)
        presence = col("presence_penalties", [p.presence_penalty for p in params])
        frequency = col("frequency_penalties", [p.frequency_penalty for p in params])
        repetition = col("repetition_penalties", [p.repetition_penalty for p in params])

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
        max_top_k=max_top_k,
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
