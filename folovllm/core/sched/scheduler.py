"""A vLLM v1-style scheduler: one token budget per step, shared by everyone.

There is no separate "prefill phase" and "decode phase". Each step:

1. every RUNNING sequence gets the tokens it still lacks (1 when decoding,
   the rest of its prompt while a chunked prefill is under way), as long as
   the budget lasts and the KV cache can hold them; when blocks run out, the
   most recently admitted running sequence is preempted (its blocks freed, it
   goes back to the head of the queue and is recomputed later);
2. then, if nobody was preempted, WAITING sequences are admitted first come,
   first served while ``max_num_seqs``, the token budget and free blocks allow.
   A sequence being admitted first takes the longest prefix the prefix cache
   holds (``get_computed_blocks``); only the rest counts against the budget.

A prompt longer than the remaining budget takes what is left and continues
next step (chunked prefill, on by default); with chunked prefill off it
waits instead. That single ``min`` is all chunked prefill needs here.

The three phases are ``_schedule_running``, ``_schedule_waiting`` and
``_make_output``, which turns the decisions into a plain-data
``SchedulerOutput`` for the worker: each sequence whole the first time, then
only what changed (see ``core/sched/output.py``).

``schedule()`` advances each scheduled sequence's ``num_computed_tokens`` at
once, and counts the token it will sample as a placeholder until
``update_from_output`` appends it. So the next step can be scheduled while
this one is still running on the GPU (async scheduling): a decoding sequence
always needs ``num_tokens + placeholders - num_computed_tokens`` = 1 token.

Invariant (checked at construction): the KV cache holds at least
``max_model_len`` tokens, so a sequence running alone always fits and
preemption can never livelock.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable

from folovllm.config import SchedulerConfig
from folovllm.core.kv_cache.kv_cache_manager import KVCacheManager
from folovllm.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from folovllm.core.sched.stop_checker import check_stop, reaches_length_limit
from folovllm.model_runner_output import ModelRunnerOutput
from folovllm.request import Request, RequestStatus, Sequence


# (sequence, tokens this step, block ids it gained: all of them when it (re)starts).
# A plain tuple: a few hundred are made per step.
_Scheduled = tuple[Sequence, int, list[int]]


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, kv_cache_manager: KVCacheManager) -> None:
        self.config = scheduler_config
        self.max_model_len = scheduler_config.max_model_len
        self.kv_cache_manager = kv_cache_manager
        num_blocks, block_size = kv_cache_manager.num_total_blocks, kv_cache_manager.block_size
        if num_blocks * block_size < self.max_model_len:
            raise ValueError(
                f"The KV cache holds {num_blocks * block_size} tokens ({num_blocks} blocks of {block_size}), "
                f"fewer than max_model_len={self.max_model_len}: a full-length sequence could never fit. "
                "Lower max_model_len or give the cache more memory (gpu_memory_utilization, "
                "cpu_kv_cache_space_gib or num_gpu_blocks_override)."
            )
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, Request] = {}
        self.seqs: dict[int, Sequence] = {}  # the unfinished sequences, by seq_id
        # Ids the worker has yet to hear about: finished ones (it drops their state)
        # and preempted ones whose news was lost with a failed step (see fail_steps).
        self.finished_seq_ids: set[int] = set()
        self.preempted_seq_ids: list[int] = []
        self.num_preemptions = 0

    # -- queue management ----------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.seqs.update((seq.seq_id, seq) for seq in request.seqs)
        self.waiting.extend(request.seqs)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def finish_seqs(self, seqs: Iterable[Sequence], status: RequestStatus) -> None:
        """Move sequences to a finished state and release their KV blocks at once."""
        for seq in seqs:
            if seq.is_finished():
                continue
            if seq.status == RequestStatus.RUNNING:
                self.running.remove(seq)
            else:
                self.waiting.remove(seq)
            seq.set_status(status)
            self.kv_cache_manager.free(seq)
            self.finished_seq_ids.add(seq.seq_id)
            del self.seqs[seq.seq_id]
            request = self.requests[seq.request_id]
            if request.is_finished():
                del self.requests[seq.request_id]

    def abort_requests(self, request_ids: Iterable[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> None:
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is not None:
                self.finish_seqs(request.seqs, status)

    def fail_steps(self, scheduler_outputs: list[SchedulerOutput]) -> list[str]:
        """Recover from steps that failed between ``schedule()`` and ``update_from_output``.

        Their requests are finished with FINISHED_ERROR (a failure may be the
        request's own doing, so re-running it could fail forever); the ids
        those outputs told the worker about are sent again, since the worker
        may never have received them. Returns the failed request ids.
        """
        failed = []
        for so in scheduler_outputs:
            self.finished_seq_ids |= so.finished_req_ids
            self.preempted_seq_ids += so.preempted_req_ids
            failed += [self.seqs[i].request_id for i in so.num_scheduled_tokens if i in self.seqs]
        failed = list(dict.fromkeys(failed))
        self.abort_requests(failed, RequestStatus.FINISHED_ERROR)
        # Blocks these steps were to fill may hold garbage: nobody may hit them.
        self.kv_cache_manager.evict_cached_blocks()
        return failed

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    # -- the step ------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        running, budget, preempted = self._schedule_running(budget)
        admitted = self._schedule_waiting(budget) if not preempted else []
        return self._make_output(running, admitted, preempted)

    def _schedule_running(self, budget: int) -> tuple[list[_Scheduled], int, list[Sequence]]:
        """Give each running sequence, in admission order, the tokens it lacks.

        When blocks run out, the most recently admitted sequence is preempted.
        Returns what was scheduled, the budget left and the preempted sequences.
        """
        scheduled: list[_Scheduled] = []
        preempted: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if self._will_finish_anyway(seq):
                i += 1  # its last token is in flight; computing another would be wasted
                continue
            n = min(seq.num_tokens + seq.num_output_placeholders - seq.num_computed_tokens, budget)
            while (new_blocks := self.kv_cache_manager.allocate_slots(seq, n)) is None:
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    return scheduled, budget, preempted  # nothing later in the list can run either
            scheduled.append((seq, n, [b.block_id for b in new_blocks] if new_blocks else []))
            budget -= n
            i += 1
        return scheduled, budget, preempted

    def _schedule_waiting(self, budget: int) -> list[_Scheduled]:
        """Admit waiting sequences first come, first served while seats, budget and blocks last."""
        admitted: list[_Scheduled] = []
        while self.waiting and budget > 0 and len(self.running) + len(admitted) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_output_placeholders:
                break  # preempted with a token still in flight; resume once it lands
            computed_blocks, num_cached = self.kv_cache_manager.get_computed_blocks(seq)
            n = seq.num_tokens - num_cached
            if n > budget:
                if not self.config.enable_chunked_prefill:
                    break
                n = budget
            new_blocks = self.kv_cache_manager.allocate_slots(seq, n, computed_blocks)
            if new_blocks is None:
                break
            self.waiting.popleft()
            seq.num_computed_tokens = num_cached
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = num_cached
            request = self.requests[seq.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = time.time()
            admitted.append((seq, n, [b.block_id for b in new_blocks]))
            budget -= n
        return admitted

    def _make_output(self, running: list[_Scheduled], admitted: list[_Scheduled], preempted: list[Sequence]) -> SchedulerOutput:
        """Describe the step as plain data, then advance the bookkeeping.

        A sequence seen for the first time is sent whole; the others, resumed
        ones included, as deltas since they were last sent. Advancing the
        bookkeeping now (computed tokens, a placeholder for each token to be
        sampled) lets the next step be scheduled before this one's results
        are back.
        """
        new = [x for x in admitted if x[0].status == RequestStatus.WAITING]
        known = running + [x for x in admitted if x[0].status == RequestStatus.PREEMPTED]
        out = SchedulerOutput(
            scheduled_new_reqs=[
                NewRequestData(seq.seq_id, seq.prompt_token_ids, seq.sampling_params, block_ids, seq.num_computed_tokens)
                for seq, _, block_ids in new
            ],
            scheduled_cached_reqs=CachedRequestData(
                req_ids=[seq.seq_id for seq, _, _ in known],
                new_token_ids=[seq.output_token_ids[seq.num_output_tokens_sent :] for seq, _, _ in known],
                new_block_ids=[block_ids for _, _, block_ids in known],
                num_computed_tokens=[seq.num_computed_tokens for seq, _, _ in known],
            ),
            num_scheduled_tokens={seq.seq_id: n for seq, n, _ in running + admitted},
            total_num_scheduled_tokens=sum(n for _, n, _ in running + admitted),
            preempted_req_ids=self.preempted_seq_ids + [seq.seq_id for seq in preempted],
            finished_req_ids=self.finished_seq_ids,
        )
        self.finished_seq_ids, self.preempted_seq_ids = set(), []
        for seq, _, _ in admitted:
            seq.set_status(RequestStatus.RUNNING)
            self.running.append(seq)
        for seq, n, _ in running + admitted:
            seq.num_output_tokens_sent = seq.num_output_tokens
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens + seq.num_output_placeholders:
                seq.num_output_placeholders += 1  # this step samples its next token
        return out

    def _will_finish_anyway(self, seq: Sequence) -> bool:
        """Whether the tokens already in flight take ``seq`` to max_tokens / max_model_len."""
        return seq.num_output_placeholders > 0 and reaches_length_limit(
            seq, self.max_model_len, seq.num_output_placeholders
        )

    def _preempt(self, seq: Sequence) -> None:
        self.kv_cache_manager.free(seq)
        seq.set_status(RequestStatus.PREEMPTED)
        seq.num_computed_tokens = 0
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update_from_output(self, model_output: ModelRunnerOutput) -> list[Sequence]:
        """Append the sampled tokens and apply the token stop rules.

        Returns the sequences that received a token.
        """
        updated = []
        stopped: dict[RequestStatus, list[Sequence]] = {}
        for seq_id, token_id in zip(model_output.req_ids, model_output.sampled_token_ids):
            seq = self.seqs.get(seq_id)
            if seq is None:
                continue  # stopped or aborted while this step was in flight
            seq.num_output_placeholders -= 1
            seq.append_token_id(token_id)
            updated.append(seq)
            status = check_stop(seq, self.max_model_len)
            if status is not None:
                stopped.setdefault(status, []).append(seq)
        for status, seqs in stopped.items():
            self.finish_seqs(seqs, status)
        return updated

    def get_stats(self) -> dict[str, int]:
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "num_free_blocks": self.kv_cache_manager.get_num_free_blocks(),
            "num_total_blocks": self.kv_cache_manager.num_total_blocks,
            "num_preemptions": self.num_preemptions,
            "prefix_cache_queries": self.kv_cache_manager.prefix_cache_stats.queries,
            "prefix_cache_hits": self.kv_cache_manager.prefix_cache_stats.hits,
        }
