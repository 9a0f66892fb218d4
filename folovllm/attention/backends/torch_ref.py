"""The plain-torch paged backend: correct everywhere, used on the CPU."""

from __future__ import annotations

import torch

from folovllm.attention.backends import abstract
from folovllm.attention.backends.abstract import AttentionBackend, AttentionMetadata, rounds_query_to_fp8
from folovllm.attention.ops.paged_attn_reference import (
    paged_attention_ref,
    paged_decode_attention_ref,
    store_kv_cache_ref,
)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def __init__(self) -> None:
        self.fp8_query = abstract.FP8_QUERY

    def forward(self, q, k, v, k_cache, v_cache, attn_metadata: AttentionMetadata, scale: float) -> torch.Tensor:
        if k is not None:
            store_kv_cache_ref(k, v, k_cache, v_cache, attn_metadata.slot_mapping)
        fp8_query = rounds_query_to_fp8(self.fp8_query, k_cache, q.shape[-1])
        if attn_metadata.max_query_len == 1:
            return paged_decode_attention_ref(
                q, k_cache, v_cache, attn_metadata.block_table, attn_metadata.seq_lens, scale, fp8_query=fp8_query
            )
        return paged_attention_ref(
            q,
            k_cache,
            v_cache,
            attn_metadata.block_table,
            attn_metadata.query_start_loc_cpu,
            attn_metadata.seq_lens_cpu,
            scale,
            fp8_query=fp8_query,
        )
