"""The token-budget scheduler, driven by a fake worker (no model needed).

The fake worker keeps only what the scheduler's plain-data outputs tell it
(new sequences once, then deltas) and samples token 7 wherever the real
worker would. Every step it checks that its copy agrees with the scheduler.
It also keeps a fake KV cache: the token id stored at each slot. Every step
it "writes" the scheduled tokens into their slots, then checks that each
scheduled sequence's whole context reads back its own tokens, which is what
paging and prefix caching must guarantee for attention to be right.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from folovllm import SamplingParams
from folovllm.config import SchedulerConfig
from folovllm.core.kv_cache import KVCacheManager
from folovllm.core.sched.scheduler import Scheduler
from folovllm.model_runner_output import ModelRunnerOutput
from folovllm.request import Request, RequestStatus


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, max_model_len=64, chunked=False, caching=False):
    cfg = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_num_seqs, max_model_len=max_model_len, enable_chunked_prefill=chunked)
    sched = Scheduler(cfg, KVCacheManager(num_blocks, block_size, enable_caching=caching))
    sched.fake_worker = FakeWorker(block_size)
    return sched


_next_seq = iter(range(10**9))


def add(sched, rid, prompt_len, max_tokens=4, n=1, first_token=1):
    """A request whose prompt counts up from ``first_token``: prompts with equal ``first_token`` share prefixes."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, n=n)
    first = next(_next_seq)
    for _ in range(n - 1):
        next(_next_seq)
    req = Request(str(rid), None, list(range(first_token, first_token + prompt_len)), params, first)
    sched.add_request(req)
    return req


class FakeWorker:
    """Mirrors the worker's state from SchedulerOutputs alone: tokens and blocks per sequence."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.tokens: dict[int, list[int]] = {}
        self.blocks: dict[int, list[int]] = {}
        self.kv: dict[int, int] = {}  # slot -> the token whose K/V it holds

    def execute(self, so) -> ModelRunnerOutput:
        for seq_id in so.finished_req_ids:
            self.tokens.pop(seq_id, None)
            self.blocks.pop(seq_id, None)
        for seq_id in so.preempted_req_ids:
            self.blocks[seq_id] = []
        for new in so.scheduled_new_reqs:
            assert new.req_id not in self.tokens, "a sequence was sent as new twice"
            self.tokens[new.req_id] = list(new.prompt_token_ids)
            self.blocks[new.req_id] = list(new.block_ids)
        cached = so.scheduled_cached_reqs
        for seq_id, toks, blocks in zip(cached.req_ids, cached.new_token_ids, cached.new_block_ids):
            self.tokens[seq_id] += toks
            self.blocks[seq_id] += blocks
        starts = {r.req_id: r.num_computed_tokens for r in so.scheduled_new_reqs}
        starts.update(zip(cached.req_ids, cached.num_computed_tokens))
        samplers = [i for i, n in so.num_scheduled_tokens.items() if starts[i] + n >= len(self.tokens[i])]
        assert min(so.num_scheduled_tokens.values(), default=1) >= 1, "a sequence scheduled with no token to compute"
        for i, n in so.num_scheduled_tokens.items():  # the whole batch stores before anyone attends
            for pos in range(starts[i], starts[i] + n):
                self.kv[self._slot(i, pos)] = self._kv_value(i, pos)
        for i, n in so.num_scheduled_tokens.items():
            context = [self.kv.get(self._slot(i, pos)) for pos in range(starts[i] + n)]
            assert context == [self._kv_value(i, pos) for pos in range(starts[i] + n)], f"sequence {i} reads wrong K/V"
        return ModelRunnerOutput(req_ids=samplers, sampled_token_ids=[7] * len(samplers))

    def _slot(self, seq_id: int, pos: int) -> int:
        return self.blocks[seq_id][pos // self.block_size] * self.block_size + pos % self.block_size

    def _kv_value(self, seq_id: int, pos: int) -> tuple[int, ...]:
        """Real K/V at ``pos`` depend on every token up to it, so the fake one is that whole prefix."""
        tokens = self.tokens[seq_id][: pos + 1]
        return tuple(tokens) + (7,) * (pos + 1 - len(tokens))  # past the known tokens: sampled in flight


def fake_step(sched, in_flight: list | None = None):
    """One step; with ``in_flight`` (async scheduling) the previous step's output is applied only now."""
    worker = sched.fake_worker
    so = sched.schedule()
    out = worker.execute(so)
    for seq_id in so.num_scheduled_tokens:
        # The worker's copy, built from deltas only, matches the scheduler's.
        seq = sched.seqs[seq_id]
        assert worker.tokens[seq_id] == seq.get_token_ids()
        assert worker.blocks[seq_id] == sched.kv_cache_manager.get_block_ids(seq_id)
    if in_flight is None:
        sched.update_from_output(out)
    else:
        if in_flight:
            sched.update_from_output(in_flight.pop())
        in_flight.append(out)
    return so


def check_invariants(sched, so):
    cfg = sched.config
    assert so.total_num_scheduled_tokens <= cfg.max_num_batched_tokens
    assert len(sched.running) <= cfg.max_num_seqs
    assert len(sched.fake_worker.tokens) <= cfg.max_num_seqs, "the worker would need more rows than max_num_seqs"
    kv = sched.kv_cache_manager
    live = list(sched.running) + list(sched.waiting)
    owners = Counter(b for seq in live for b in kv.get_block_ids(seq.seq_id))
    if not kv.enable_caching:
        assert max(owners.values(), default=1) == 1, "a block is owned twice"
    pool = kv.block_pool
    assert [b.ref_cnt for b in pool.blocks] == [owners[i] for i in range(kv.num_total_blocks)], "ref counts != owners"
    assert len(owners) + kv.get_num_free_blocks() == kv.num_total_blocks, "a block is neither free nor owned"
    for block_hash, block in pool.cached_block_hash_to_block.items():
        assert block.block_hash == block_hash
    for seq in live:
        for i, block_id in enumerate(kv.get_block_ids(seq.seq_id)):
            cached = pool.blocks[block_id].block_hash
            assert cached is None or cached == seq.block_hashes[i], "a cached block holds other tokens"
    for seq in sched.running:
        assert len(kv.get_block_ids(seq.seq_id)) * kv.block_size >= seq.num_computed_tokens


def test_first_come_first_served_and_decode_one_token_each():
    sched = make_scheduler(budget=20, max_model_len=20)
    add(sched, "a", 10)
    add(sched, "b", 8)
    add(sched, "c", 5)
    so = fake_step(sched)
    # a (10) + b (8) fit in 20; c (5) would overflow the budget and waits (no chunking)
    assert [r.req_id for r in so.scheduled_new_reqs] == [s.seq_id for s in sched.running] and len(sched.running) == 2
    so = fake_step(sched)
    assert so.num_scheduled_tokens == {sched.running[0].seq_id: 1, sched.running[1].seq_id: 1, sched.running[2].seq_id: 5}
    # The two decodes are deltas carrying the token each sampled; c arrives whole.
    assert so.scheduled_cached_reqs.new_token_ids == [[7], [7]]
    assert [r.prompt_token_ids for r in so.scheduled_new_reqs] == [[1, 2, 3, 4, 5]]


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_num_seqs=2)
    for i in range(4):
        add(sched, i, 3)
    so = fake_step(sched)
    assert len(so.num_scheduled_tokens) == 2 and len(sched.waiting) == 2


def test_chunked_prefill_splits_a_long_prompt():
    sched = make_scheduler(budget=16, max_model_len=64, chunked=True)
    add(sched, "long", 40)
    sizes = []
    while sched.running or sched.waiting:
        so = fake_step(sched)
        sizes.append(so.total_num_scheduled_tokens)
        check_invariants(sched, so)
    assert sizes[:4] == [16, 16, 8, 1]  # 40 prompt tokens in chunks, then decode
    assert sched.kv_cache_manager.get_num_free_blocks() == 64


def test_preemption_takes_the_most_recent_and_recomputes():
    # 4 blocks of 4 tokens = 16 slots; two sequences of 6 prompt tokens will outgrow it
    sched = make_scheduler(num_blocks=4, block_size=4, budget=16, max_model_len=16)
    a = add(sched, "a", 6, max_tokens=8)
    b = add(sched, "b", 6, max_tokens=8)
    fake_step(sched)  # both admitted: 2 + 2 blocks
    preempted_seen = False
    while sched.running or sched.waiting:
        so = fake_step(sched)
        check_invariants(sched, so)
        if so.preempted_req_ids:
            preempted_seen = True
            assert so.preempted_req_ids == [b.seqs[0].seq_id]  # the later admission goes
            assert sched.waiting[0] is b.seqs[0] and b.seqs[0].num_computed_tokens == 0
    assert preempted_seen and sched.get_stats()["num_preemptions"] >= 1
    assert a.seqs[0].num_output_tokens == 8 and b.seqs[0].num_output_tokens == 8
    assert sched.kv_cache_manager.get_num_free_blocks() == 4


def test_cache_smaller_than_max_model_len_is_rejected():
    with pytest.raises(ValueError, match="fewer than max_model_len=64"):
        make_scheduler(num_blocks=15, block_size=4, max_model_len=64)


def test_finish_and_abort_free_blocks_at_once():
    sched = make_scheduler()
    r1 = add(sched, "r1", 5, max_tokens=1)
    r2 = add(sched, "r2", 5, max_tokens=50)
    add(sched, "r3", 5)
    fake_step(sched)
    assert r1.is_finished() and r1.seqs[0].status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert sched.kv_cache_manager.get_block_ids(r1.seqs[0].seq_id) == []
    sched.abort_requests(["r2", "r3"])
    assert r2.seqs[0].status == RequestStatus.FINISHED_ABORTED
    assert sched.kv_cache_manager.get_num_free_blocks() == 64 and not sched.has_unfinished_requests()
    assert sched.schedule().finished_req_ids >= {r2.seqs[0].seq_id}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("caching", [False, True])
def test_randomized_invariants(seed, chunked, async_scheduling, caching):
    rng = random.Random(seed)
    block_size = rng.choice([1, 4, 8])
    num_blocks = rng.randint(48 // block_size, 96 // block_size)  # at least max_model_len tokens
    sched = make_scheduler(num_blocks=num_blocks, block_size=block_size, max_num_seqs=rng.randint(1, 6),
                           budget=48, max_model_len=48, chunked=chunked, caching=caching)  # fmt: skip
    requests = []
    in_flight = [] if async_scheduling else None
    for step in range(2000):
        if step < 60 and rng.random() < 0.5:
            requests.append(add(sched, f"{seed}-{step}", rng.randint(1, 30), max_tokens=rng.randint(1, 15),
                                n=rng.choice([1, 1, 2]), first_token=rng.choice([1, 100])))  # fmt: skip
        if rng.random() < 0.03 and requests:
            sched.abort_requests([rng.choice(requests).request_id])
        so = fake_step(sched, in_flight)
        check_invariants(sched, so)
        if step > 60 and not sched.has_unfinished_requests():
            break
    if in_flight:
        sched.update_from_output(in_flight.pop())
    assert not sched.has_unfinished_requests()
    assert all(r.is_finished() for r in requests)
    assert sched.kv_cache_manager.get_num_free_blocks() == sched.kv_cache_manager.num_total_blocks
    assert (sched.get_stats()["prefix_cache_hits"] > 0) == caching
