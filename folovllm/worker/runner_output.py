"""A step's sampled tokens (and logprobs) on their way from the device to the host."""

from __future__ import annotations

import torch

from folovllm.model_runner_output import AsyncModelRunnerOutput, LogprobsLists, ModelRunnerOutput
from folovllm.sample.sampler import SamplerOutput


class AsyncGPUModelRunnerOutput(AsyncModelRunnerOutput):
    """The device->host copy is queued behind the step's kernels and ``get()``
    waits only for it, so the host can schedule and launch the next step meanwhile.

    ``req_ids`` names the sampler's rows, in order.
    """

    def __init__(self, req_ids: list[int], sampler_output: SamplerOutput | None, device: torch.device) -> None:
        self.req_ids = req_ids
        self._event = None
        self._tensors: list[torch.Tensor] = []
        if sampler_output is None:  # a step in which nobody sampled
            return
        self._tensors = [sampler_output.sampled_token_ids]
        if sampler_output.sampled_logprobs is not None:
            ids, lps = sampler_output.sampled_token_ids.unsqueeze(1), sampler_output.sampled_logprobs.unsqueeze(1)
            if sampler_output.topk_token_ids is not None:
                ids = torch.cat([ids, sampler_output.topk_token_ids], dim=1)
                lps = torch.cat([lps, sampler_output.topk_logprobs], dim=1)
            self._tensors += [ids, lps, sampler_output.sampled_ranks]
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
        logprobs = LogprobsLists(*lists[1:]) if len(lists) > 1 else None
        return ModelRunnerOutput(req_ids=self.req_ids, sampled_token_ids=lists[0], logprobs=logprobs)
