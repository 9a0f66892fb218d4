"""Block hashes for automatic prefix caching (vLLM v1's hash chain).

A sequence's tokens are cut into blocks of ``block_size``. Each *full*
block gets a hash of (the previous block's hash, its own token ids, extra
keys); the first block chains from ``NONE_HASH``. So a block's hash stands
for the whole prefix up to its end, and two sequences with equal hashes at
block ``i`` have the same first ``(i + 1) * block_size`` tokens.

The hash is sha256 over a fixed byte encoding (token ids as little-endian
int64): the same tokens give the same hash in every process, and a collision
is not a practical concern. Python's ``hash()`` is not used: it is seeded per
process and only 64 bits wide.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Optional, Sequence as Seq

import numpy as np

from folovllm.request import Sequence

BlockHash = bytes

NONE_HASH: BlockHash = hashlib.sha256(b"folovllm prefix cache root").digest()


def hash_block_tokens(
    parent_block_hash: Optional[BlockHash], block_token_ids: Seq[int] | bytes, extra_keys: Optional[tuple] = None
) -> BlockHash:
    """Hash one full block, chained to its parent's hash.

    ``extra_keys``: anything besides the tokens that changes the K/V this
    block holds (vLLM puts LoRA ids and multimodal inputs here). Nothing does
    yet, so the engine always passes None; its ``repr`` joins the hash otherwise.
    ``block_token_ids`` may come already encoded (``bytes``, little-endian int64).
    """
    data = block_token_ids if isinstance(block_token_ids, bytes) else np.asarray(block_token_ids, dtype="<i8").tobytes()
    if extra_keys is not None:
        data += repr(extra_keys).encode()
    return hashlib.sha256((parent_block_hash or NONE_HASH) + data).digest()


def update_block_hashes(seq: Sequence, block_size: int) -> list[BlockHash]:
    """Extend ``seq.block_hashes`` to every full block of its known tokens; returns the list."""
    hashes = seq.block_hashes
    num_full = seq.num_tokens // block_size
    if len(hashes) < num_full:
        # Encoded once; each block hashes a slice of the bytes (one sha256 call per block).
        tokens = _token_slice(seq, len(hashes) * block_size, num_full * block_size)
        data = struct.pack(f"<{len(tokens)}q", *tokens)  # the "<i8" bytes, ~3x faster than numpy from a list
        step = 8 * block_size
        parent = hashes[-1] if hashes else None
        for start in range(0, len(data), step):
            parent = hash_block_tokens(parent, data[start : start + step])
            hashes.append(parent)
    return hashes


def _token_slice(seq: Sequence, start: int, end: int) -> list[int]:
    """``seq.get_token_ids()[start:end]`` without building the whole list."""
    prompt, output = seq.prompt_token_ids, seq.output_token_ids
    p = len(prompt)
    if end <= p:
        return prompt[start:end]
    if start >= p:
        return output[start - p : end - p]
    return prompt[start:] + output[: end - p]
