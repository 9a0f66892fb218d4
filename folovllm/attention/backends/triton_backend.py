"""The GPU backend: Triton kernels for the KV store, prefill and decode."""

from __future__ import annotations

import numpy as np
import torch

from folovllm.attention.backends import abstract
from folovllm.attention.backends.abstract import AttentionBackend, AttentionMetadata, rounds_query_to_fp8
from folovllm.attention.ops import triton_decode_attention, triton_prefill_attention
from folovllm.attention.ops.triton_decode_attention import NewTokenKV, paged_decode_attention
from folovllm.attention.ops.triton_kv_store import store_kv_cache
from folovllm.attention.ops.triton_prefill_attention import max_prefill_tiles, paged_prefill_attention, prefill_block_sizes, prefill_tiles


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def __init__(self) -> None:
        self.orders_decode_rows = triton_decode_attention.LONGEST_FIRST
        self.fuses_new_token = triton_decode_attention.FUSE_NEW_TOKEN
        assert self.fuses_new_token in (False, True, "split"), self.fuses_new_token
        self.decodes_by_kv_head = triton_prefill_attention.DECODES_BY_KV_HEAD  # the work list and the kernel agree
        self.fp8_query = abstract.FP8_QUERY

    def make_decode_order(self, seq_lens: np.ndarray) -> np.ndarray:
        # longest first (ties in batch order)
        return np.argsort(-seq_lens, kind="stable").astype(np.int32)

    def make_prefill_tiles(self, query_lens: np.ndarray, seq_lens: np.ndarray, head_dim: int) -> np.ndarray:
        # heaviest first: the kernel's programs take the list in rounds, balanced only in that order
        return prefill_tiles(
            query_lens, prefill_block_sizes(head_dim)[0], heaviest_first=True, seq_lens=seq_lens,
            decode_rows=self.decodes_by_kv_head,
        )  # fmt: skip

    def max_prefill_tiles(self, num_tokens: int, max_num_seqs: int, head_dim: int) -> int:
        return max_prefill_tiles(num_tokens, max_num_seqs, prefill_block_sizes(head_dim)[0])

    def forward(self, q, k, v, k_cache, v_cache, attn_metadata: AttentionMetadata, scale: float) -> torch.Tensor:
        if k is not None:
            store_kv_cache(k, v, k_cache, v_cache, attn_metadata.slot_mapping)
        if attn_metadata.max_query_len == 1:
            return self.decode_with_new_token(q, None, k_cache, v_cache, attn_metadata, scale)
        return paged_prefill_attention(
            q, k_cache, v_cache, attn_metadata.block_table, attn_metadata.query_start_loc,
            attn_metadata.seq_lens, attn_metadata.prefill_tiles, scale, decode_items=self.decodes_by_kv_head,
            fp8_query=rounds_query_to_fp8(self.fp8_query, k_cache, q.shape[-1]),
        )  # fmt: skip

    def decode_with_new_token(self, q, new_token: NewTokenKV | None, k_cache, v_cache, attn_metadata: AttentionMetadata, scale: float):
        """A decode step's attention from the raw q, with this step's k and v normed, rotated and cached
        by the decode kernel itself (``fuses_new_token``); without ``new_token``, from a q normed and
        rotated and K/V cached before (``forward``'s decode steps)."""
        return paged_decode_attention(
            q, k_cache, v_cache, attn_metadata.block_table, attn_metadata.seq_lens, scale,
            num_kv_splits=attn_metadata.num_kv_splits, seq_order=attn_metadata.decode_order, new_token=new_token,
            fp8_query=rounds_query_to_fp8(self.fp8_query, k_cache, q.shape[-1]),
        )  # fmt: skip
