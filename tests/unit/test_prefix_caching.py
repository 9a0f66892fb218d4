"""Automatic prefix caching at the KV-cache-manager level: hashes, hits, ref counts, eviction."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import SamplingParams
from folovllm.core.kv_cache import KVCacheManager
from folovllm.core.kv_cache.kv_cache_utils import NONE_HASH, hash_block_tokens, update_block_hashes
from folovllm.request import Sequence
from tests.unit.test_scheduler import add, check_invariants, fake_step, make_scheduler

_ids = iter(range(10**9))


def seq(tokens: list[int]) -> Sequence:
    i = next(_ids)
    return Sequence(i, str(i), tokens, SamplingParams())


def admit(kv: KVCacheManager, s: Sequence) -> int:
    """Admit ``s`` as the scheduler does; returns the tokens that came from the cache."""
    hits, num_cached = kv.get_computed_blocks(s)
    assert kv.allocate_slots(s, s.num_tokens - num_cached, hits) is not None
    s.num_computed_tokens = s.num_tokens
    return num_cached


def test_block_hash_chains_over_the_whole_prefix():
    a = hash_block_tokens(None, [1, 2, 3, 4])
    assert a == hash_block_tokens(NONE_HASH, [1, 2, 3, 4]) and len(a) == 32
    assert a != hash_block_tokens(None, [1, 2, 3, 5])
    b = hash_block_tokens(a, [5, 6, 7, 8])
    assert b != hash_block_tokens(hash_block_tokens(None, [0, 2, 3, 4]), [5, 6, 7, 8])  # same block, other parent
    assert hash_block_tokens(a, [5, 6, 7, 8], extra_keys=("lora-1",)) not in (b, hash_block_tokens(a, [5, 6, 7, 8], ("lora-2",)))
    # Large ids are not truncated.
    assert hash_block_tokens(None, [2**40]) != hash_block_tokens(None, [0])


def test_block_hash_is_the_same_in_every_process():
    code = "from folovllm.core.kv_cache.kv_cache_utils import hash_block_tokens as h; print(h(h(None, [1, 2]), [3, 4]).hex())"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert runs == {hash_block_tokens(hash_block_tokens(None, [1, 2]), [3, 4]).hex() + "\n"}


def test_sequence_hashes_cover_full_blocks_of_prompt_and_output():
    s = seq(list(range(10)))
    assert len(update_block_hashes(s, 4)) == 2  # tokens 8, 9 are not a full block yet
    s.append_token_id(10)
    s.append_token_id(11)
    hashes = update_block_hashes(s, 4)
    assert len(hashes) == 3
    assert hashes[2] == hash_block_tokens(hashes[1], [8, 9, 10, 11])


def test_a_shared_prefix_is_computed_once_and_the_last_token_always_again():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    system = list(range(100, 108))  # two full blocks
    first, second = seq(system + [1, 2, 3]), seq(system + [4, 5])
    assert admit(kv, first) == 0
    assert admit(kv, second) == 8
    assert kv.get_block_ids(second.seq_id)[:2] == kv.get_block_ids(first.seq_id)[:2]
    assert kv.get_block_ids(second.seq_id)[2] != kv.get_block_ids(first.seq_id)[2]
    # A prompt that is exactly the cached blocks still computes its last block's tokens.
    exact = seq(list(system))
    assert admit(kv, exact) == 4
    assert (kv.prefix_cache_stats.requests, kv.prefix_cache_stats.queries, kv.prefix_cache_stats.hits) == (3, 11 + 10 + 8, 12)


def test_a_shared_block_survives_when_one_owner_is_preempted():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a, b = seq(list(range(9))), seq(list(range(9)))
    admit(kv, a)
    admit(kv, b)
    shared = kv.get_block_ids(a.seq_id)[:2]
    kv.free(a)  # preempted or aborted
    pool = kv.block_pool
    assert [pool.blocks[i].ref_cnt for i in shared] == [1, 1]
    assert kv.get_num_free_blocks() == 8 - 3  # b's three blocks stay out of the free queue
    a.num_computed_tokens = 0
    assert admit(kv, a) == 8  # resumed: its prefix is still there
    kv.free(a)
    kv.free(b)
    assert kv.get_num_free_blocks() == 8 and all(block.ref_cnt == 0 for block in pool.blocks)


def test_eviction_takes_the_least_recently_freed_prefix_first():
    kv = KVCacheManager(num_blocks=6, block_size=4)
    old, recent = seq(list(range(1, 10))), seq(list(range(50, 59)))
    admit(kv, old)
    admit(kv, recent)
    kv.free(old)
    kv.free(recent)
    # A request needing 3 fresh blocks takes the 3 blocks freed first: all of `old`.
    big = seq(list(range(200, 210)))
    assert admit(kv, big) == 0
    kv.free(big)
    assert kv.get_computed_blocks(seq(list(range(1, 10))))[1] == 0
    assert kv.get_computed_blocks(seq(list(range(50, 59))))[1] == 8


def test_within_a_request_the_tail_block_is_evicted_first():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = seq(list(range(12)) + [99])
    admit(kv, a)  # 3 full blocks + 1
    kv.free(a)
    admit(kv, seq(list(range(300, 306))))  # takes 2 blocks: a's partial last block, then its third
    assert kv.get_computed_blocks(seq(list(range(12)) + [98]))[1] == 8  # the first two blocks survive


def test_a_hit_in_the_free_queue_counts_against_free_blocks():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = seq(list(range(13)))
    admit(kv, a)
    kv.free(a)  # 4 free blocks, 3 of them caching a's prefix
    b = seq(list(range(12)) + [70, 71, 72, 73, 74, 75])  # 3 hits + 6 tokens = 5 blocks: one too many
    hits, n = kv.get_computed_blocks(b)
    assert n == 12 and kv.allocate_slots(b, b.num_tokens - n, hits) is None
    assert kv.get_num_free_blocks() == 4 and all(block.ref_cnt == 0 for block in kv.block_pool.blocks)


def test_reset_prefix_cache_is_refused_while_blocks_are_in_use():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = seq(list(range(9)))
    admit(kv, a)
    assert kv.reset_prefix_cache() is False
    kv.free(a)
    assert kv.get_computed_blocks(seq(list(range(9))))[1] == 8
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks(seq(list(range(9))))[1] == 0


def test_caching_off_never_hits_nor_counts():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    admit(kv, seq(list(range(9))))
    assert admit(kv, seq(list(range(9)))) == 0
    assert kv.prefix_cache_stats.queries == 0 and not kv.block_pool.cached_block_hash_to_block


def test_a_failed_step_leaves_nothing_to_hit():
    sched = make_scheduler(caching=True)
    add(sched, "a", 9, max_tokens=3)
    fake_step(sched)
    add(sched, "b", 9)
    so = sched.schedule()  # b hits a's blocks; then this step fails
    assert sched.get_stats()["prefix_cache_hits"] == 8
    sched.fail_steps([so])
    assert not sched.kv_cache_manager.block_pool.cached_block_hash_to_block
    add(sched, "c", 9)
    fake_step(sched)
    assert sched.get_stats()["prefix_cache_hits"] == 8  # c found nothing



def test_a_block_filled_under_async_scheduling_is_cached_when_its_sequence_ends():
    """Async scheduling schedules the step that fills a block before that block's last token id
    reaches the host, so the block cannot be hashed then; it is cached when the sequence ends."""
    sched = make_scheduler(caching=True)
    req = add(sched, "a", 8, max_tokens=5)  # KV for tokens 0..11: three full blocks of 4
    in_flight = []
    while sched.has_unfinished_requests():
        fake_step(sched, in_flight)
    tokens = req.seqs[0].get_token_ids()
    assert len(tokens) == 13
    assert sched.kv_cache_manager.get_computed_blocks(seq(tokens[:12] + [999]))[1] == 12

_op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.sampled_from([1, 2, 4]), st.sampled_from([1, 100, 200])),
    st.tuples(st.just("abort"), st.integers(0, 40)),
    st.tuples(st.just("step"), st.integers(1, 4)),
)


@settings(max_examples=80, deadline=None)
@given(
    ops=st.lists(_op, min_size=1, max_size=40),
    block_size=st.sampled_from([1, 4, 8]),
    extra_blocks=st.integers(0, 40),
    async_scheduling=st.booleans(),
)
def test_block_pool_invariants_under_random_traffic(ops, block_size, extra_blocks, async_scheduling):
    """Random arrivals, aborts and steps with caching on. Every step: ref counts equal owners, every
    block free or owned, cached hashes match the blocks' tokens, every context reads back its own
    tokens (check_invariants and the fake worker). At the end every block is free again."""
    sched = make_scheduler(num_blocks=48 // block_size + extra_blocks, block_size=block_size, max_num_seqs=4,
                           budget=48, max_model_len=48, chunked=True, caching=True)  # fmt: skip
    requests = []
    in_flight = [] if async_scheduling else None
    for op in ops:
        if op[0] == "add":
            _, prompt_len, max_tokens, n, first_token = op
            requests.append(add(sched, f"r{len(requests)}", prompt_len, max_tokens, n, first_token))
        elif op[0] == "abort" and requests:
            sched.abort_requests([requests[op[1] % len(requests)].request_id])
        else:
            for _ in range(op[1]):
                check_invariants(sched, fake_step(sched, in_flight))
    while sched.has_unfinished_requests():
        check_invariants(sched, fake_step(sched, in_flight))
    if in_flight:
        sched.update_from_output(in_flight.pop())
    kv = sched.kv_cache_manager
    assert kv.get_num_free_blocks() == kv.num_total_blocks  # cached blocks count as free
    assert all(block.ref_cnt == 0 for block in kv.block_pool.blocks)
