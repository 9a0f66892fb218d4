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

A step that raises leaves the engine usable: every request it carried is
finished with ``finish_reason="error"`` (reported by the next ``step()``),
its KV blocks are freed, and the next ``step()`` serves everyone else. One
engine serves one caller at a time: its public methods take a lock, so two
threads calling ``generate`` run one after the other.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Optional, Union
from typing import Sequence as Seq

from tqdm.auto import tqdm

from folovllm.config import EngineConfig
from folovllm.core.kv_cache.kv_cache_manager import KVCacheManager
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.scheduler import Scheduler
from folovllm.engine.arg_utils import EngineArgs
from folovllm.engine.output_processor import OutputProcessor
from folovllm.engine.processor import Processor, PromptType, pair_prompts_with_params
from folovllm.executor.multiproc_executor import MultiprocExecutor
from folovllm.executor.uniproc_executor import ExecutorWithExternalLauncher, UniProcExecutor
from folovllm.model_loader import ModelLoadError, get_eos_token_ids, load_tokenizer
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.outputs import RequestOutput
from folovllm.request import Request, RequestStatus
from folovllm.sampling_params import RequestOutputKind, SamplingParams
from folovllm.utils.common import Counter
from folovllm.utils.gc_utils import freeze_gc_heap

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        freeze_gc_heap()  # what exists before this engine, out of the garbage collector's sight (see gc_utils)
        start = time.perf_counter()
        self.config = config
        mc = config.model_config
        self.tokenizer = None
        if not mc.skip_tokenizer_init:
            self.tokenizer = load_tokenizer(mc.tokenizer, mc.tokenizer_mode, mc.trust_remote_code, mc.revision)
            if len(self.tokenizer) > mc.get_vocab_size():
                raise ModelLoadError(
                    f"the tokenizer of {mc.tokenizer!r} has {len(self.tokenizer)} tokens, more than the model's "
                    f"vocab_size={mc.get_vocab_size()}: it is not this model's tokenizer"
                )
        self.eos_token_ids = get_eos_token_ids(mc.model, self.tokenizer, mc.revision)
        tokenizer_secs = time.perf_counter() - start
        executor_class = {"mp": MultiprocExecutor, "uni": UniProcExecutor, "external_launcher": ExecutorWithExternalLauncher}
        self.executor = executor_class[config.parallel_config.distributed_executor_backend](config)
        # Where this engine's start-up went (rank 0's worker for the device phases), in seconds.
        self.startup_seconds = {"tokenizer": tokenizer_secs, **self.executor.worker.startup_seconds}
        logger.info(
            "Engine started in %.2f s: %s", time.perf_counter() - start,
            ", ".join(f"{name} {secs:.2f} s" for name, secs in self.startup_seconds.items()),
        )  # fmt: skip

        block_size = config.cache_config.block_size
        num_blocks = self.executor.num_kv_blocks
        capacity = num_blocks * block_size
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens; max concurrency at max_model_len=%d: %.2fx",
            num_blocks, block_size, capacity, mc.max_model_len, capacity / mc.max_model_len,
        )  # fmt: skip
        sc = config.scheduler_config
        logger.info(
            "Prefix caching: %s; chunked prefill: %s; async scheduling: %s; token budget per step: %d",
            "on" if config.cache_config.enable_prefix_caching else "off", "on" if sc.enable_chunked_prefill else "off",
            "on" if sc.async_scheduling else "off", sc.max_num_batched_tokens,
        )  # fmt: skip
        self.kv_cache_manager = KVCacheManager(num_blocks, block_size, config.cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache_manager)
        self.processor = Processor(self.tokenizer, mc.get_vocab_size(), mc.max_model_len, mc.max_logprobs, self.eos_token_ids)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.request_counter = Counter()
        self.seq_counter = Counter()
        self.async_scheduling = config.scheduler_config.async_scheduling
        # The step in flight (async scheduling): its schedule and the handle of its results.
        self.in_flight: tuple[SchedulerOutput, AsyncModelRunnerOutput] | None = None
        # Schedules whose results are not processed yet: what a failing step takes down.
        self.unprocessed: list[SchedulerOutput] = []
        # Final outputs of requests that ended outside a step (aborted, failed): the next step reports them.
        self.final_outputs: list[RequestOutput] = []
        # Requests whose sampling needs the exact token history (penalties, min_tokens):
        # while any is alive, steps run synchronously.
        self.history_sensitive: set[str] = set()
        self.lock = threading.RLock()

    @classmethod
    def from_engine_args(cls, engine_args: Union[EngineArgs, str], **kwargs) -> "LLMEngine":
        """vLLM's ``from_engine_args(EngineArgs(...))``; also ``from_engine_args(model, **options)``."""
        if isinstance(engine_args, EngineArgs):
            if kwargs:
                raise TypeError(f"from_engine_args() takes options either in the EngineArgs or as keywords, not both: {sorted(kwargs)}")
            return cls(engine_args.create_engine_config())
        return cls(EngineArgs.from_kwargs(engine_args, caller="LLMEngine", **kwargs).create_engine_config())

    def get_tokenizer(self):
        """The HF tokenizer (None when started with ``skip_tokenizer_init=True``)."""
        return self.tokenizer

    # -- requests --------------------------------------------------------------
    def _make_request(self, request_id: str, prompt: PromptType, params: Optional[SamplingParams], where: str) -> Request:
        """Validate one request; errors name it by ``where`` (its id, or its place in a generate() call)."""
        if request_id in self.output_processor.request_states:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = SamplingParams() if params is None else params
        first_seq_id = self.seq_counter.counter
        try:
            request = self.processor.process_inputs(request_id, prompt, params, first_seq_id)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        self.seq_counter.counter += params.n
        return request

    def _enqueue(self, request: Request) -> None:
        self.output_processor.add_request(request)
        self.scheduler.add_request(request)
        if _needs_token_history(request.sampling_params):
            self.history_sensitive.add(request.request_id)

    def add_request(self, request_id: str, prompt: PromptType, params: Optional[SamplingParams] = None) -> None:
        """Validate and queue one request; raises ValueError (queuing nothing) on bad input."""
        with self.lock:
            request_id = str(request_id)
            self._enqueue(self._make_request(request_id, prompt, params, f"request {request_id!r}"))

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        """Stop requests; each still running reports a final output (finish_reason "abort") at the next step."""
        ids = _request_ids(request_id)
        with self.lock:
            self._abort(ids)

    def _abort(self, ids: list[str]) -> None:
        self.scheduler.abort_requests(ids)
        self._report_finished(ids)

    def _report_finished(self, ids: list[str]) -> None:
        """Requests that ended outside a step: their final outputs go out with the next step."""
        self.history_sensitive.difference_update(ids)
        self.final_outputs += self.output_processor.finish_requests(ids)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests() or self.in_flight is not None or bool(self.final_outputs)

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.request_states)

    # -- the loop --------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        with self.lock:
            outputs, self.final_outputs = self.final_outputs, []
            try:
                self._step(outputs)
            except BaseException:
                self.final_outputs = outputs + self.final_outputs  # nothing already produced is lost
                self._fail_unprocessed_steps()
                raise
            return outputs

    def _step(self, outputs: list[RequestOutput]) -> None:
        if not self.async_scheduling or self.history_sensitive:
            outputs += self._finish_in_flight()
            outputs += self._process(*self._launch())
            return
        launched = self._launch()  # not waited for
        outputs += self._finish_in_flight()
        self.in_flight = launched
        if launched[0].is_empty:
            outputs += self._finish_in_flight()

    def _launch(self) -> tuple[SchedulerOutput, AsyncModelRunnerOutput]:
        scheduler_output = self.scheduler.schedule()
        self.unprocessed.append(scheduler_output)
        return scheduler_output, self.executor.execute_model(scheduler_output)

    def _finish_in_flight(self) -> list[RequestOutput]:
        if self.in_flight is None:
            return []
        launched, self.in_flight = self.in_flight, None
        return self._process(*launched)

    def _process(self, scheduler_output: SchedulerOutput, handle: AsyncModelRunnerOutput) -> list[RequestOutput]:
        model_output = handle.get()
        self.output_processor.process_prompt_logprobs(model_output)
        updated = self.scheduler.update_from_output(model_output)
        stopped = self.output_processor.process_new_tokens(updated, model_output)
        self.scheduler.finish_seqs(stopped, RequestStatus.FINISHED_STOPPED)
        outputs = self.output_processor.make_request_outputs(updated)
        for out in outputs:
            if out.finished:
                self.history_sensitive.discard(out.request_id)
        self.unprocessed = [so for so in self.unprocessed if so is not scheduler_output]
        return outputs

    def _fail_unprocessed_steps(self) -> None:
        """After an exception inside a step: fail the requests of every step not yet processed."""
        failed = self.scheduler.fail_steps(self.unprocessed)
        self.unprocessed, self.in_flight = [], None
        self._report_finished(failed)
        if failed:
            logger.error("A step failed; finished %d request(s) with finish_reason='error': %s", len(failed), failed[:8])

    def get_stats(self) -> dict[str, int]:
        return self.scheduler.get_stats()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix. Refused (False, with a warning) while requests hold blocks."""
        with self.lock:
            if self.scheduler.reset_prefix_cache():
                return True
            logger.warning("Prefix cache not reset: some KV blocks are still in use by unfinished requests")
            return False

    def generate(
        self,
        prompts: Union[PromptType, Seq[PromptType]],
        sampling_params: Union[SamplingParams, Seq[SamplingParams], None] = None,
        use_tqdm: Union[bool, Callable[..., tqdm]] = True,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs come back in input order.

        ``use_tqdm``: show a progress bar (prompts done, input and output
        tokens per second); a callable (such as a tqdm class) makes the bar.

        Every prompt is validated before any is queued: one bad prompt
        rejects the whole call (an error naming its position) and leaves the
        engine untouched. If a step fails, the call's requests are aborted
        and the error is raised.
        """
        pairs = pair_prompts_with_params(prompts, sampling_params)
        with self.lock:
            requests = []
            for i, (prompt, params) in enumerate(pairs):
                params = (params or SamplingParams()).clone()
                params.output_kind = RequestOutputKind.FINAL_ONLY
                requests.append(self._make_request(self._next_request_id(), prompt, params, f"prompt {i}"))
            order = {r.request_id: i for i, r in enumerate(requests)}
            for request in requests:
                self._enqueue(request)
            results: dict[str, RequestOutput] = {}
            others: list[RequestOutput] = []  # final outputs of requests added with add_request
            bar = _ProgressBar(len(requests), use_tqdm)
            try:
                while len(results) < len(requests):
                    for out in self.step():
                        if out.finished and out.request_id in order:
                            results[out.request_id] = out
                            bar.update(out)
                        elif out.finished:
                            others.append(out)
            except BaseException:
                unfinished = set(order) - set(results)
                self._abort(list(unfinished))
                # Nobody will read these: the caller gets the exception instead.
                self.final_outputs = [o for o in self.final_outputs if o.request_id not in order]
                raise
            finally:
                bar.close()
                self.final_outputs = others + self.final_outputs  # the next step() reports them
        return sorted(results.values(), key=lambda o: order[o.request_id])

    def _next_request_id(self) -> str:
        """generate()'s ids count up, skipping any id a caller of add_request chose."""
        while (request_id := str(next(self.request_counter))) in self.output_processor.request_states:
            pass
        return request_id


class _ProgressBar:
    """generate()'s bar, as vLLM draws it: prompts done, with input and output tokens per second."""

    def __init__(self, total: int, use_tqdm: Union[bool, Callable[..., tqdm]]) -> None:
        # No bar, no tqdm object: even a disabled one costs ~20 us, which a one-token request feels.
        make = use_tqdm if callable(use_tqdm) else tqdm
        self.bar = None if not use_tqdm else make(
            total=total, desc="Processed prompts", dynamic_ncols=True, postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s"
        )
        self.start = time.perf_counter()
        self.input_tokens = self.output_tokens = 0

    def update(self, out: RequestOutput) -> None:
        if self.bar is None:
            return
        self.input_tokens += len(out.prompt_token_ids)
        self.output_tokens += sum(len(c.token_ids) for c in out.outputs)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.postfix = f"est. speed input: {self.input_tokens / elapsed:.2f} toks/s, output: {self.output_tokens / elapsed:.2f} toks/s"
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _request_ids(request_id) -> list[str]:
    if isinstance(request_id, str):
        return [request_id]
    if isinstance(request_id, (list, tuple, set, frozenset)) and all(isinstance(r, str) for r in request_id):
        return list(request_id)
    raise TypeError(f"request_id must be a str or a list of str, got {request_id!r} ({type(request_id).__name__})")


def _needs_token_history(params: SamplingParams) -> bool:
    """Sampling that reads the tokens generated so far (which lag by a step when async)."""
    return params.min_tokens > 0 or params.has_penalties
