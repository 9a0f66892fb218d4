"""BlockPool / FreeKVCacheBlockQueue / KVCacheManager."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from folovllm import SamplingParams
from folovllm.core.kv_cache import BlockPool, FreeKVCacheBlockQueue, KVCacheBlock, KVCacheManager
from folovllm.request import Sequence


def _walk(q: FreeKVCacheBlockQueue) -> list[int]:
    """The queue's block ids from the head, checked against the walk back from the tail."""
    ids, block = [], q.head
    while block is not None:
        ids.append(block.block_id)
        block = block.next_free_block
    back, block = [], q.tail
    while block is not None:
        back.append(block.block_id)
        block = block.prev_free_block
    assert back[::-1] == ids and len(ids) == q.num_free_blocks
    return ids


def test_free_queue_pop_append_and_remove_from_the_middle():
    blocks = [KVCacheBlock(i) for i in range(5)]
    q = FreeKVCacheBlockQueue(blocks)
    q.remove(blocks[2])
    assert _walk(q) == [0, 1, 3, 4]
    assert q.popleft_n(0) == [] and [b.block_id for b in q.popleft_n(1)] == [0]
    q.append_n([blocks[2]])
    q.remove(blocks[4])  # the tail
    assert _walk(q) == [1, 3, 2]
    taken = q.popleft_n(3)
    assert [b.block_id for b in taken] == [1, 3, 2] and _walk(q) == [] and q.head is None
    assert all(b.prev_free_block is None and b.next_free_block is None for b in taken)
    with pytest.raises(ValueError, match="only 0 free"):
        q.popleft_n(1)
    q.append_n([])
    q.append_n([blocks[4], blocks[0]])  # an emptied queue takes blocks again, in the order given
    q.append_n([blocks[3]])
    assert _walk(q) == [4, 0, 3]
    assert [b.block_id for b in q.popleft_n(2)] == [4, 0] and _walk(q) == [3]


def test_pool_ref_counts():
    pool = BlockPool(4)
    a = pool.get_new_blocks(3)
    assert [b.ref_cnt for b in a] == [1, 1, 1] and pool.get_num_free_blocks() == 1
    with pytest.raises(ValueError, match="only 1 free"):
        pool.get_new_blocks(2)
    a[0].ref_cnt += 1  # a second owner
    pool.free_blocks(a)
    assert pool.get_num_free_blocks() == 3 and a[0].ref_cnt == 1
    pool.free_blocks([a[0]])
    assert pool.get_num_free_blocks() == 4


def _seq(i: int, prompt_len: int) -> Sequence:
    return Sequence(i, str(i), list(range(prompt_len)), SamplingParams())


def test_kv_cache_manager_allocates_only_what_is_needed():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    s = _seq(0, 9)
    first = kv.allocate_slots(s, 9)
    assert len(first) == 3 and kv.get_block_ids(0) == [b.block_id for b in first]  # 9 tokens -> 3 blocks
    s.num_computed_tokens = 9
    assert kv.allocate_slots(s, 1) == [] and len(kv.get_block_ids(0)) == 3  # 10th token fits in block 3
    s.num_computed_tokens = 12
    new = kv.allocate_slots(s, 1)
    assert len(new) == 1 and kv.get_block_ids(0)[-1] == new[0].block_id
    big = _seq(1, 40)
    assert kv.allocate_slots(big, 40) is None  # needs 10, only 6 free: nothing taken
    assert kv.get_num_free_blocks() == 6
    kv.free(s)
    assert kv.get_num_free_blocks() == 10 and kv.get_block_ids(0) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(1, 20), st.booleans()), min_size=1, max_size=60))
def test_kv_cache_manager_invariants(ops):
    """Random grow/free sequences: no block owned twice; free + used == total."""
    kv = KVCacheManager(num_blocks=16, block_size=4)
    seqs = {i: _seq(i, 1) for i in range(8)}
    for sid, n, free in ops:
        seq = seqs[sid]
        if free:
            kv.free(seq)
            seq.num_computed_tokens = 0
        elif kv.allocate_slots(seq, n) is not None:
            seq.num_computed_tokens += n
        owned = [b for s in seqs.values() for b in kv.get_block_ids(s.seq_id)]
        assert len(owned) == len(set(owned))
        assert len(owned) + kv.get_num_free_blocks() == 16
        for s in seqs.values():
            assert len(kv.get_block_ids(s.seq_id)) * 4 >= s.num_computed_tokens
