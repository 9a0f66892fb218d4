"""A vLLM v1-style scheduler: one token budget per step, shared by everyone.

There is no separate "prefill phase" and "decode phase". Each step:

1. every RUNNING sequence gets the tokens it still lacks (1 when decoding,
   the rest of its prompt while a chunked prefill is under way), as long as
   the budget lasts and the KV cache can hold them; when blocks run out, the
   most recently admitted running sequence is preempted (its blocks freed, it
   goes back to the head of the queue and is recomputed later);
2. then, if nobody was preempted, WAITING sequences are admitted first come,
   first served while ``max_num_seqs``, the token budget and free blocks allow.

A prompt longer than the remaining budget waits, unless chunked prefill is
on: then it takes what is left and continues next step. That single ``min``
is all chunked prefill needs here.

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
from folovllm.core.sched.output import SchedulerOutput
from folovllm.core.sched.stop_checker import check_stop, reaches_length_limit
from folovllm.request import Request, RequestStatus, Sequence


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
        self.finished_seq_ids: set[int] = set()
        self.num_preemptions = 0

    # -- queue management ----------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
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
        self._drop_finished_requests()

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is not None:
                self.finish_seqs(request.seqs, RequestStatus.FINISHED_ABORTED)

    def _drop_finished_requests(self) -> None:
        for rid in [rid for rid, r in self.requests.items() if r.is_finished()]:
            del self.requests[rid]

    # -- the step ------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        scheduled: list[Sequence] = []
        num_tokens: dict[int, int] = {}
        preempted: list[int] = []

        # 1. running sequences, in admission order
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if self._will_finish_anyway(seq):
                i += 1  # its last token is in flight; computing another would be wasted
                continue
            n = min(seq.num_tokens + seq.num_output_placeholders - seq.num_computed_tokens, budget)
            while not self.kv_cache_manager.allocate_slots(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.seq_id)
                if victim is seq:
                    break
            else:
                scheduled.append(seq)
                num_tokens[seq.seq_id] = n
                budget -= n
                i += 1
                continue
            break  # seq preempted itself: nothing later in the list can run either

        # 2. admit waiting sequences (not in a step that had to preempt)
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = self.waiting[0]
                if seq.num_output_placeholders:
                    break  # preempted with a token still in flight; resume once it lands
                n = seq.num_tokens - seq.num_computed_tokens
                if n > budget:
                    if not chunked:
                        break
                    n = budget
                if not self.kv_cache_manager.allocate_slots(seq, n):
                    break
                self.waiting.popleft()
                seq.set_status(RequestStatus.RUNNING)
                self.running.append(seq)
                request = self.requests[seq.request_id]
                if request.metrics.first_scheduled_time is None:
                    request.metrics.first_scheduled_time = time.time()
                scheduled.append(seq)
                num_tokens[seq.seq_id] = n
                budget -= n

        # Advance the bookkeeping now, so the next step can be scheduled before
        # this one's results are back.
        computed_before, sampling = [], []
        for seq in scheduled:
            computed_before.append(seq.num_computed_tokens)
            seq.num_computed_tokens += num_tokens[seq.seq_id]
            samples = seq.num_computed_tokens == seq.num_tokens + seq.num_output_placeholders
            if samples:
                seq.num_output_placeholders += 1
            sampling.append(samples)
        out = SchedulerOutput(
            scheduled_seqs=scheduled,
            num_scheduled_tokens=num_tokens,
            total_num_scheduled_tokens=sum(num_tokens.values()),
            num_computed_tokens=computed_before,
            sampling=sampling,
            block_ids={s.seq_id: self.kv_cache_manager.get_block_ids(s.seq_id) for s in scheduled},
            preempted_seq_ids=preempted,
            finished_seq_ids=self.finished_seq_ids,
        )
        self.finished_seq_ids = set()
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
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def update_from_output(self, scheduler_output: SchedulerOutput, sampled: dict[int, int]) -> list[Sequence]:
        """Append sampled tokens and apply the token stop rules.

        ``sampled``: seq_id -> new token id, for the sequences that sampled
        (a partial prefill samples nothing). Returns the sequences that
        received a token.
        """
        updated = []
        stopped: dict[RequestStatus, list[Sequence]] = {}
        for seq, samples in zip(scheduler_output.scheduled_seqs, scheduler_output.sampling):
            if not samples:
                continue
            seq.num_output_placeholders -= 1
            if seq.is_finished():
                continue  # stopped or aborted while this step was in flight
            seq.append_token_id(sampled[seq.seq_id])
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
        }
