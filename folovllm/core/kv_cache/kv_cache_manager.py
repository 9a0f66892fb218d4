"""Which blocks each sequence holds: cache hits, new blocks, and what to cache.

Admitting a sequence is two calls (vLLM v1's API):

1. ``get_computed_blocks(seq)``: the longest run of its full blocks that the
   prefix cache already holds, and how many tokens they cover;
2. ``allocate_slots(seq, n, new_computed_blocks)``: take those hits, plus
   fresh blocks for ``n`` more tokens; None (taking nothing) when the pool
   cannot cover them, so the scheduler can wait or preempt.

A running sequence calls ``allocate_slots(seq, n)`` alone. Each call also
enters the sequence's newly *full* blocks into the cache, the ones filled
by decoding included: their K/V are written by the step being scheduled,
before any later step can read them. The scheduler sends the worker the
block ids each call returns; the worker appends them to its block table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from folovllm.core.kv_cache.block_pool import BlockPool, KVCacheBlock
from folovllm.core.kv_cache.kv_cache_utils import update_block_hashes
from folovllm.request import Sequence
from folovllm.utils.common import cdiv


@dataclass
class PrefixCacheStats:
    """Counted once per admission (vLLM's ``PrefixCacheStats``): tokens asked for, tokens found."""

    requests: int = 0
    queries: int = 0
    hits: int = 0

    def record(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.requests += 1
        self.queries += num_tokens
        self.hits += num_hit_tokens


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[int, list[KVCacheBlock]] = {}
        # How many of each sequence's leading blocks are already in the cache.
        self.num_cached_block: dict[int, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def num_total_blocks(self) -> int:
        return self.block_pool.num_blocks

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def get_computed_blocks(self, seq: Sequence) -> tuple[list[KVCacheBlock], int]:
        """The cached blocks that start ``seq``, and the number of tokens they hold.

        At most ``num_tokens - 1`` tokens come from the cache: the last one is
        always computed, since its logits give the next token. A sequence that
        wants prompt logprobs gets no hits (as in vLLM v1): cached blocks have
        K/V but no logits, so its whole prompt is computed (and cached for others).
        """
        if not self._may_hit(seq):
            return [], 0
        max_hit_blocks = (seq.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in update_block_hashes(seq, self.block_size)[:max_hit_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, new_computed_blocks: Optional[list[KVCacheBlock]] = None
    ) -> Optional[list[KVCacheBlock]]:
        """Make room for ``num_new_tokens`` beyond the computed tokens and the cache hits.

        ``new_computed_blocks`` is given when a sequence is admitted (from
        ``get_computed_blocks``, possibly empty) and counts as one prefix-cache
        query. Returns the blocks the sequence gained, hits first, or None.
        """
        blocks = self.req_to_blocks.setdefault(seq.seq_id, [])
        hits = new_computed_blocks or []
        num_tokens = seq.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        needed = cdiv(num_tokens, self.block_size) - len(blocks) - len(hits)
        num_free = self.block_pool.get_num_free_blocks()
        if hits:
            # Hits that nobody holds sit in the free queue: touching them uses up free blocks too.
            num_free -= sum(1 for b in hits if b.ref_cnt == 0)
        if needed > num_free:
            return None
        if hits:
            self.block_pool.touch(hits)
            blocks += hits
        new_blocks = self.block_pool.get_new_blocks(needed) if needed > 0 else []
        blocks += new_blocks
        if self.enable_caching:
            if new_computed_blocks is not None and self._may_hit(seq):
                self.prefix_cache_stats.record(seq.num_tokens, len(hits) * self.block_size)
            self._cache_full_blocks(seq, blocks, min(num_tokens, seq.num_tokens) // self.block_size)
        return hits + new_blocks if hits else new_blocks

    def _may_hit(self, seq: Sequence) -> bool:
        return self.enable_caching and seq.sampling_params.prompt_logprobs is None

    def _cache_full_blocks(self, seq: Sequence, blocks: list[KVCacheBlock], num_full_blocks: int) -> None:
        """Cache the blocks that became full since the last call (most calls: none)."""
        num_cached = self.num_cached_block.get(seq.seq_id, 0)
        if num_full_blocks > num_cached:
            hashes = update_block_hashes(seq, self.block_size)
            self.block_pool.cache_full_blocks(blocks, hashes, num_cached, num_full_blocks)
            self.num_cached_block[seq.seq_id] = num_full_blocks

    def free(self, seq: Sequence) -> None:
        """Give back the sequence's blocks; shared ones survive with their other owners.

        Freed tail first: a sequence's last blocks are the least likely to be
        shared, so they go to the front of the eviction order.
        """
        blocks = self.req_to_blocks.pop(seq.seq_id, [])
        if self.enable_caching and blocks:
            # With async scheduling a block fills before its last token id reaches the host,
            # so allocate_slots could not hash it; by now that id may be known.
            self._cache_full_blocks(seq, blocks, min(seq.num_computed_tokens, seq.num_tokens) // self.block_size)
        self.num_cached_block.pop(seq.seq_id, None)
        self.block_pool.free_blocks(reversed(blocks))

    def reset_prefix_cache(self) -> bool:
        """Forget all cached prefixes; False (nothing done) while any block is in use."""
        return self.block_pool.reset_prefix_cache()

    def evict_cached_blocks(self) -> None:
        """Forget all cached prefixes now, even blocks in use (after a failed step wrote garbage)."""
        self.block_pool.evict_cached_blocks()

    def get_block_ids(self, seq_id: int) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(seq_id, [])]
