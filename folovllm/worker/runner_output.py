"""What a model-runner step hands back: sampled tokens and logprobs, per sequence."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from folovllm.request import Sequence


@dataclass
class SeqLogprobs:
    token_logprob: float
    rank: int
    topk_ids: list[int]
    topk_logprobs: list[float]


@dataclass
class ModelRunnerOutput:
    sampled_token_ids: dict[int, int] = field(default_factory=dict)  # seq_id -> token
    logprobs: dict[int, SeqLogprobs] = field(default_factory=dict)


class AsyncModelRunnerOutput:
    """A step's results on their way to the host.

    The GPU->host copy is queued behind the step's kernels and ``get()`` waits
    only for it, so the host can schedule and launch the next step meanwhile.
    """

    def __init__(self, seqs: list[Sequence], sampler_output, device: torch.device) -> None:
        self.seqs = seqs
        self._event = None
        self._tensors = []
        if sampler_output is None:  # a step in which nobody sampled
            return
        self._tensors = [sampler_output.sampled_token_ids]
        if sampler_output.sampled_logprobs is not None:
            self._tensors += [sampler_output.sampled_logprobs, sampler_output.sampled_ranks]
            if sampler_output.topk_token_ids is not None:
                self._tensors += [sampler_output.topk_token_ids, sampler_output.topk_logprobs]
        if device.type == "cuda":
            # Pinned destinations: a copy into pageable memory would block the host.
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in self._tensors]
            for dst, src in zip(host, self._tensors):
                dst.copy_(src, non_blocking=True)
            self._tensors = host
            self._event = torch.cuda.Event()
            self._event.record()

    def get(self) -> ModelRunnerOutput:
        if not self._tensors:
            return ModelRunnerOutput()
        if self._event is not None:
            self._event.synchronize()
        lists = [t.tolist() for t in self._tensors]
        result = ModelRunnerOutput(sampled_token_ids={s.seq_id: t for s, t in zip(self.seqs, lists[0])})
        if len(lists) > 1:
            lps, ranks = lists[1], lists[2]
            top_ids, top_lps = (lists[3], lists[4]) if len(lists) > 3 else (None, None)
            for row, seq in enumerate(self.seqs):
                k = seq.sampling_params.logprobs
                if k is None:
                    continue
                result.logprobs[seq.seq_id] = SeqLogprobs(
                    lps[row], ranks[row], top_ids[row][:k] if k else [], top_lps[row][:k] if k else []
                )
        return result
