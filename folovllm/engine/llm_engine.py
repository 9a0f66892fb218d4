"""LLMEngine: add requests, call ``step()`` until none are left.

One step = schedule (which sequences, how many tokens each) -> execute (one
forward over the flattened batch + sampling) -> update (append tokens, stop
checks, free finished KV blocks) -> outputs (text, logprobs, RequestOutput).
``generate()`` is a loop over ``step()``.

With ``async_scheduling=True`` a step launches the next batch on the device
*before* it processes the previous one's tokens, so host work (scheduling,
detokenizing, building inputs) overlaps with the GPU instead of adding to
it. The price: a sequence that stops is found one step late, so it may have
computed one token that is thrown away.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Union
from typing import Sequence as Seq

from tqdm.auto import tqdm

from folovllm.config import EngineConfig
from folovllm.core.kv_cache.kv_cache_manager import KVCacheManager
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.arg_utils import EngineArgs
from folovllm.engine.output_processor import OutputProcessor
from folovllm.engine.processor import Processor, PromptType
from folovllm.executor.uniproc_executor import UniProcExecutor
from folovllm.model_loader import get_eos_token_ids, load_tokenizer
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.outputs import RequestOutput
from folovllm.request import Request, RequestStatus
from folovllm.sampling_params import RequestOutputKind, SamplingParams
from folovllm.utils.common import Counter

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        mc = config.model_config
        self.tokenizer = load_tokenizer(mc.tokenizer, mc.tokenizer_mode, mc.trust_remote_code, mc.revision)
        self.eos_token_ids = get_eos_token_ids(mc.model, self.tokenizer, mc.revision)
        self.executor = UniProcExecutor(config)

        block_size = config.cache_config.block_size
        num_blocks = self.executor.num_kv_blocks
        capacity = num_blocks * block_size
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens; max concurrency at max_model_len=%d: %.2fx",
            num_blocks, block_size, capacity, mc.max_model_len, capacity / mc.max_model_len,
        )  # fmt: skip
        self.kv_cache_manager = KVCacheManager(num_blocks, block_size)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache_manager)
        self.processor = Processor(self.tokenizer, mc.get_vocab_size(), mc.max_model_len, self.eos_token_ids)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.request_counter = Counter()
        self.seq_counter = Counter()
        self.async_scheduling = config.scheduler_config.async_scheduling
        # The step in flight (async scheduling): the handle of its results.
        self.in_flight: AsyncModelRunnerOutput | None = None
        # Requests whose sampling needs the exact token history (penalties, min_tokens):
        # while any is alive, steps run synchronously.
        self.history_sensitive: set[str] = set()

    @classmethod
    def from_engine_args(cls, model: str, **kwargs) -> "LLMEngine":
        return cls(EngineArgs.from_kwargs(model, caller="LLMEngine", **kwargs).create_engine_config())

    def get_tokenizer(self):
        return self.tokenizer

    # -- requests --------------------------------------------------------------
    def _make_request(self, request_id: str, prompt: PromptType, params: Optional[SamplingParams]) -> Request:
        if request_id in self.output_processor.request_states:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = SamplingParams() if params is None else params
        first_seq_id = self.seq_counter.counter
        request = self.processor.process_inputs(request_id, prompt, params, first_seq_id)
        self.seq_counter.counter += params.n
        return request

    def _enqueue(self, request: Request) -> None:
        self.output_processor.add_request(request)
        self.scheduler.add_request(request)
        if _needs_token_history(request.sampling_params):
            self.history_sensitive.add(request.request_id)

    def add_request(self, request_id: str, prompt: PromptType, params: Optional[SamplingParams] = None) -> None:
        """Validate and queue one request; raises ValueError (queuing nothing) on bad input."""
        self._enqueue(self._make_request(str(request_id), prompt, params))

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.history_sensitive.difference_update(ids)
        self.scheduler.abort_requests(ids)
        self.output_processor.abort_requests(ids)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests() or self.in_flight is not None

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.request_states)

    # -- the loop --------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if not self.async_scheduling or self.history_sensitive:
            outputs = self._finish_in_flight()
            scheduler_output = self.scheduler.schedule()
            return outputs + self._process(self.executor.execute_model(scheduler_output))
        scheduler_output = self.scheduler.schedule()
        handle = self.executor.execute_model(scheduler_output)  # launched, not waited for
        outputs = self._finish_in_flight()
        self.in_flight = handle
        if scheduler_output.is_empty:
            outputs += self._finish_in_flight()
        return outputs

    def _finish_in_flight(self) -> list[RequestOutput]:
        if self.in_flight is None:
            return []
        handle, self.in_flight = self.in_flight, None
        return self._process(handle)

    def _process(self, handle: AsyncModelRunnerOutput) -> list[RequestOutput]:
        model_output = handle.get()
        updated = self.scheduler.update_from_output(model_output)
        stopped = self.output_processor.process_new_tokens(updated, model_output)
        self.scheduler.finish_seqs(stopped, RequestStatus.FINISHED_STOPPED)
        outputs = self.output_processor.make_request_outputs(updated)
        for out in outputs:
            if out.finished:
                self.history_sensitive.discard(out.request_id)
        return outputs

    def get_stats(self) -> dict[str, int]:
        return self.scheduler.get_stats()

    def generate(
        self,
        prompts: Union[PromptType, Seq[PromptType]],
        sampling_params: Union[SamplingParams, Seq[SamplingParams], None] = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs come back in input order.

        Every prompt is validated before any is queued: one bad prompt
        rejects the whole call (ValueError) and leaves the engine untouched.
        """
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"got {len(prompts)} prompts but {len(params_list)} sampling_params; pass one or one per prompt"
                )
        requests = []
        for prompt, params in zip(prompts, params_list):
            params = (params or SamplingParams()).clone()
            params.output_kind = RequestOutputKind.FINAL_ONLY
            requests.append(self._make_request(str(next(self.request_counter)), prompt, params))
        order = {r.request_id: i for i, r in enumerate(requests)}
        for request in requests:
            self._enqueue(request)

        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(requests), desc="Processed prompts", disable=not use_tqdm)
        try:
            while len(results) < len(requests):
                for out in self.step():
                    if out.finished and out.request_id in order:
                        results[out.request_id] = out
                        bar.update(1)
        except BaseException:
            self.abort_request(list(set(order) - set(results)))
            raise
        finally:
            bar.close()
        return sorted(results.values(), key=lambda o: order[o.request_id])


def _needs_token_history(params: SamplingParams) -> bool:
    """Sampling that reads the tokens generated so far (which lag by a step when async)."""
    return params.min_tokens > 0 or params.has_penalties
