"""The contract between the model runner and an attention backend.

A step's batch is flattened: sequence ``i`` owns query rows
``query_start_loc[i]:query_start_loc[i+1]`` and has ``seq_lens[i]`` tokens of
context *including* those new rows. Its K/V live in the paged cache at the
blocks ``block_table[i]``; the new tokens' K/V are written to ``slot_mapping``
(flat slot = block_id * block_size + offset; -1 means "padding, skip").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from folovllm.utils.common import cdiv

MAX_KV_SPLITS = 64  # the most pieces the decode kernel cuts one sequence's context into
MIN_KV_SPLIT_LEN = 64  # the decode kernel's keys per iteration: a shorter split still reads a whole tile

# Whether attention over an FP8 cache rounds its query to FP8 too (e4m3, saturating at +-448, scale
# 1.0), as vLLM does beside an FP8 cache on Hopper (FlashAttention 3): the Triton kernels then take
# q.K in FP8, as one warpgroup MMA (the decode kernel turns its loop round for it). Both backends
# honour it (read when one is made), so the CPU shows what it costs in agreement. Off until an H100
# has timed it (docs/dev/performance.md, 29).
FP8_QUERY = False

# FP8 matrix products take K in steps of 32 (Triton refuses a smaller one): a head below that keeps
# its query in the model's dtype even with ``FP8_QUERY``.
MIN_FP8_QUERY_HEAD_DIM = 32


def rounds_query_to_fp8(fp8_query: bool, k_cache: torch.Tensor, head_dim: int) -> bool:
    """Whether a backend with ``fp8_query`` takes q.K in FP8 over ``k_cache``: an FP8 cache and a head
    of at least ``MIN_FP8_QUERY_HEAD_DIM``. Both backends ask this, so they round the same queries."""
    return fp8_query and k_cache.dtype == torch.float8_e4m3fn and head_dim >= MIN_FP8_QUERY_HEAD_DIM


def num_kv_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """The decode kernel's split-K factor: enough (sequence, kv head, split) programs for ~2 per SM,
    no split shorter than one 64-key tile, at most MAX_KV_SPLITS. (On an H100 at batch 1, a 2,048-token
    context took 7.2 us at 33 splits and 10.3 us at 8, the most a 256-token floor allowed there.)"""
    return max(1, min(cdiv(2 * num_sms, num_seqs * num_kv_heads), cdiv(max_seq_len, MIN_KV_SPLIT_LEN), MAX_KV_SPLITS))


@dataclass
class AttentionMetadata:
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # int32 [B + 1], on the device
    seq_lens: torch.Tensor  # int32 [B], on the device
    block_table: torch.Tensor  # int32 [B, max_blocks_per_seq], on the device
    slot_mapping: torch.Tensor  # int64 [T], on the device
    # Host copies (lists) for backends that loop over sequences.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    # Split-K factor of the decode kernel (1..MAX_KV_SPLITS); fixed per CUDA-graph batch size.
    num_kv_splits: int = 1
    # The prefill kernel's work list (see AttentionBackend.make_prefill_tiles); None when unused.
    prefill_tiles: torch.Tensor | None = None
    # A decode step's sequences in the order their programs start (AttentionBackend.make_decode_order),
    # int32 [B] on the device; None: batch order.
    decode_order: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)


class AttentionBackend(ABC):
    name: str
    # Whether decode steps pass ``make_decode_order``'s order in ``AttentionMetadata.decode_order``.
    orders_decode_rows: bool = False
    # Which decode steps hand the raw q, k, v to ``decode_with_new_token`` (which norms, rotates and
    # caches them itself) instead of running the q/k norm + RoPE + cache-write kernel first: False,
    # True (all) or "split" (those whose decode kernel splits the keys). See ``fuses_new_token_in``.
    fuses_new_token: bool | str = False
    # Whether attention over an FP8 cache rounds the query to FP8 (``FP8_QUERY``).
    fp8_query: bool = False

    def fuses_new_token_in(self, attn_metadata: AttentionMetadata) -> bool:
        """Whether this step's attention takes the raw q, k and v (``fuses_new_token``): a decode step,
        split where the setting asks for it."""
        if attn_metadata.max_query_len != 1 or not self.fuses_new_token:
            return False
        return self.fuses_new_token is True or attn_metadata.num_kv_splits > 1

    def make_prefill_tiles(self, query_lens: np.ndarray, seq_lens: np.ndarray, head_dim: int) -> np.ndarray | None:
        """The host-built work list a prefill step passes in ``prefill_tiles``, or None (the default) if unused."""
        return None

    def max_prefill_tiles(self, num_tokens: int, max_num_seqs: int, head_dim: int) -> int:
        """The most rows ``make_prefill_tiles`` can return for a batch of ``num_tokens``: a CUDA graph's buffer."""
        return 0

    def make_decode_order(self, seq_lens: np.ndarray) -> np.ndarray:
        """A decode step's sequences in the order their programs should start (``orders_decode_rows`` only)."""
        raise NotImplementedError

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Write k/v into the cache, then attend. q: [T, H, D] -> [T, H, D].

        k = v = None when the caller has already written this step's K/V
        (the GPU path's fused norm + RoPE kernel does, saving a launch per layer).

        k_cache / v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        """
