"""Which blocks each sequence holds, and handing out more as it grows.

The scheduler asks ``allocate_slots(seq, n)`` before it schedules ``n`` more
tokens of ``seq``; the answer is the blocks it gained (often none), or None
when the pool cannot cover them (the scheduler then preempts someone). The
scheduler sends the worker those new block ids; the worker appends them to
the sequence's row of its block table.
"""

from __future__ import annotations

from typing import Optional

from folovllm.core.kv_cache.block_pool import BlockPool, KVCacheBlock
from folovllm.request import Sequence
from folovllm.utils.common import cdiv


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.block_pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[int, list[KVCacheBlock]] = {}

    @property
    def num_total_blocks(self) -> int:
        return self.block_pool.num_blocks

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> Optional[list[KVCacheBlock]]:
        """Make room for ``num_new_tokens`` beyond the sequence's computed tokens.

        Returns the newly allocated blocks, or None (taking nothing) when too few are free.
        """
        blocks = self.req_to_blocks.setdefault(seq.seq_id, [])
        needed = cdiv(seq.num_computed_tokens + num_new_tokens, self.block_size) - len(blocks)
        if needed <= 0:
            return []
        if needed > self.block_pool.get_num_free_blocks():
            return None
        new_blocks = self.block_pool.get_new_blocks(needed)
        blocks.extend(new_blocks)
        return new_blocks

    def free(self, seq: Sequence) -> None:
        blocks = self.req_to_blocks.pop(seq.seq_id, [])
        # Free the tail first so that, later, the most reusable blocks are evicted last (M6).
        self.block_pool.free_blocks(reversed(blocks))

    def get_block_ids(self, seq_id: int) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(seq_id, [])]
