"""The pool of KV-cache blocks: who is free, how many owners each has, what each caches.

Blocks are numbered 0..num_blocks-1; block ``b`` holds the K/V of
``block_size`` consecutive tokens at rows ``b * block_size ...`` of the KV
tensors.

Prefix caching (vLLM v1): a full block may carry the hash of the prefix it
ends (``block_hash``), and ``cached_block_hash_to_block`` finds it by that
hash. A block whose last owner lets go returns to the free queue but *keeps*
its hash and contents, so a later request with the same prefix can take it
back ("touch": out of the queue, one more owner). Its hash is dropped only
when the block is handed out again for new tokens. The free queue is a doubly
linked list, so a touched block leaves it from the middle in O(1), and
popping from the front evicts the least recently freed block first.
"""

from __future__ import annotations

from typing import Iterable, Optional

from folovllm.core.kv_cache.kv_cache_utils import BlockHash


class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free_block", "next_free_block")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: Optional[BlockHash] = None  # set while the block is in the prefix cache
        self.prev_free_block: Optional[KVCacheBlock] = None
        self.next_free_block: Optional[KVCacheBlock] = None

    def __repr__(self) -> str:
        cached = "" if self.block_hash is None else f", hash={self.block_hash.hex()[:8]}"
        return f"KVCacheBlock(id={self.block_id}, ref_cnt={self.ref_cnt}{cached})"


class FreeKVCacheBlockQueue:
    """Doubly linked list of free blocks: pop from the front, append at the back, remove anywhere.
    Blocks come and go a request's worth at a time (vLLM's ``popleft_n`` / ``append_n``): one walk
    over them, rather than a call and a relink of both neighbours per block."""

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self.num_free_blocks = len(blocks)
        self.head: Optional[KVCacheBlock] = blocks[0] if blocks else None
        self.tail: Optional[KVCacheBlock] = blocks[-1] if blocks else None
        for prev, nxt in zip(blocks, blocks[1:]):
            prev.next_free_block = nxt
            nxt.prev_free_block = prev

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        """The first ``n`` blocks, in order, unlinked."""
        if n > self.num_free_blocks:
            raise ValueError(f"cannot take {n} blocks: only {self.num_free_blocks} free")
        out = []
        block = self.head
        for _ in range(n):
            out.append(block)
            nxt = block.next_free_block
            block.prev_free_block = block.next_free_block = None
            block = nxt
        self.head = block
        if block is None:
            self.tail = None
        else:
            block.prev_free_block = None
        self.num_free_blocks -= n
        return out

    def remove(self, block: KVCacheBlock) -> None:
        if block.prev_free_block is not None:
            block.prev_free_block.next_free_block = block.next_free_block
        else:
            self.head = block.next_free_block
        if block.next_free_block is not None:
            block.next_free_block.prev_free_block = block.prev_free_block
        else:
            self.tail = block.prev_free_block
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        """Link ``blocks`` at the back, in order."""
        last = self.tail
        for block in blocks:
            block.prev_free_block = last
            if last is None:
                self.head = block
            else:
                last.next_free_block = block
            last = block
        if blocks:
            last.next_free_block = None
            self.tail = last
            self.num_free_blocks += len(blocks)


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        self.cached_block_hash_to_block: dict[BlockHash, KVCacheBlock] = {}

    def get_num_free_blocks(self) -> int:
        """Blocks nobody holds, cached ones included (they can be evicted at any time)."""
        return self.free_block_queue.num_free_blocks

    def get_cached_block(self, block_hash: BlockHash) -> Optional[KVCacheBlock]:
        return self.cached_block_hash_to_block.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take one more reference to cache hits; a hit nobody held leaves the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take blocks from the front of the free queue, evicting whatever they cached. More than
        are free: ValueError (from ``popleft_n``, before anything is taken)."""
        out = self.free_block_queue.popleft_n(num_blocks)
        for block in out:
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt += 1
        return out

    def cache_full_blocks(self, blocks: list[KVCacheBlock], block_hashes: list[BlockHash], num_cached_blocks: int, num_full_blocks: int) -> None:
        """Enter ``blocks[num_cached_blocks:num_full_blocks]`` into the cache under their hashes.

        Blocks already cached (hits) keep their entry. When another block
        already caches the same hash (two sequences computed the same prefix
        at the same time) the first one stays; this one just is not shared.
        """
        cache = self.cached_block_hash_to_block
        for i in range(num_cached_blocks, num_full_blocks):
            block, block_hash = blocks[i], block_hashes[i]
            if block.block_hash is None and block_hash not in cache:
                block.block_hash = block_hash
                cache[block_hash] = block

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; blocks nobody holds join the back of the free queue.

        The order given is the eviction order among them: the first freed is the first evicted.
        """
        unused = []
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                unused.append(block)
        self.free_block_queue.append_n(unused)

    def evict_cached_blocks(self) -> None:
        """Forget every cached hash; blocks in use stay with their owners, just no longer shared."""
        for block in self.cached_block_hash_to_block.values():
            block.block_hash = None
        self.cached_block_hash_to_block.clear()

    def reset_prefix_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while any block is in use, as vLLM does."""
        if self.get_num_free_blocks() != self.num_blocks:
            return False
        self.evict_cached_blocks()
        return True

    def _evict(self, block: KVCacheBlock) -> None:
        del self.cached_block_hash_to_block[block.block_hash]
        block.block_hash = None
