"""A step's sampled tokens (and logprobs) on their way from the device to the host."""

from __future__ import annotations

import torch

from folovllm.model_runner_output import AsyncModelRunnerOutput, LogprobsLists, ModelRunnerOutput, PromptLogprobs
from folovllm.sample.sampler import LogprobsTensors, SamplerOutput


class AsyncGPUModelRunnerOutput(AsyncModelRunnerOutput):
    """The device->host copy is queued behind the step's kernels and ``get()``
    waits only for it, so the host can schedule and launch the next step meanwhile.

    ``req_ids`` names the sampler's rows, in order; ``prompt_logprobs`` maps a
    sequence to (its first position this step, its prompt logprob tensors).
    """

    def __init__(
        self,
        req_ids: list[int],
        sampler_output: SamplerOutput | None,
        device: torch.device,
        prompt_logprobs: dict[int, tuple[int, LogprobsTensors]] | None = None,
    ) -> None:
        self.req_ids = req_ids
        self._event = None
        self._prompt_starts = {req_id: start for req_id, (start, _) in (prompt_logprobs or {}).items()}
        # Everything the host needs, in one list: sampled ids, [logprobs], then prompt logprobs.
        self._tensors: list[torch.Tensor] = []
        self._has_logprobs = sampler_output is not None and sampler_output.logprobs_tensors is not None
        if sampler_output is not None:
            self._tensors.append(sampler_output.sampled_token_ids)
            if self._has_logprobs:
                self._tensors += _fields(sampler_output.logprobs_tensors)
        for _, tensors in (prompt_logprobs or {}).values():
            self._tensors += _fields(tensors)
        if device.type == "cuda" and self._tensors:
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
        out = ModelRunnerOutput()
        if self.req_ids:
            out.req_ids, out.sampled_token_ids = self.req_ids, lists.pop(0)
            if self._has_logprobs:
                out.logprobs = LogprobsLists(lists.pop(0), lists.pop(0), lists.pop(0))
        for req_id, start in self._prompt_starts.items():
            out.prompt_logprobs_dict[req_id] = PromptLogprobs(start, LogprobsLists(lists.pop(0), lists.pop(0), lists.pop(0)))
        return out


def _fields(t: LogprobsTensors) -> list[torch.Tensor]:
    return [t.logprob_token_ids, t.logprobs, t.selected_token_ranks]
