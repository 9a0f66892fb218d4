"""Plain-torch paged attention: the reference every kernel is tested against.

Readable rather than fast: it gathers each sequence's context out of the
block table and runs ordinary causal attention on it. Runs anywhere.
"""

from __future__ import annotations

import torch

from folovllm.utils.common import cdiv


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in a float8 ``dtype``, values beyond its range at its largest (+-448 for e4m3): some torch
    versions cast overflow to NaN."""
    fmax = torch.finfo(dtype).max
    return x.clamp(-fmax, fmax).to(dtype)


def store_kv_cache_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' K/V into their slots (in the cache's dtype); slot -1 is skipped.

    Readers upcast what they gather (``.float()``), so an FP8 cache is read the same way.
    """
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        k, v, slot_mapping = k[valid], v[valid], slot_mapping[valid]
    num_kv_heads, head_dim = k_cache.shape[-2:]
    for new, cache in ((k, k_cache), (v, v_cache)):
        if cache.element_size() == 1:  # float8
            new = saturating_cast(new, cache.dtype).view(torch.uint8)  # index_copy_ has no float8 kernel
            cache = cache.view(torch.uint8)
        else:
            new = new.to(cache.dtype)
        cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, new)


def round_to_cache_dtype(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as an FP8 cache would store it (saturating at +-448), in float32."""
    return saturating_cast(x.float(), cache.dtype).float()


def gather_context(cache: torch.Tensor, block_ids: torch.Tensor, context_len: int) -> torch.Tensor:
    """The first ``context_len`` tokens of one sequence: [context_len, KVH, D]."""
    block_size = cache.shape[1]
    num_blocks = cdiv(context_len, block_size)
    return cache[block_ids[:num_blocks].long()].flatten(0, 1)[:context_len]


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: list[int],
    seq_lens: list[int],
    scale: float,
    fp8_query: bool = False,
) -> torch.Tensor:
    """Causal attention of every query row against its sequence's cached context.

    The last ``query_len`` context positions of a sequence are its queries, so
    query ``j`` (0-based within the sequence) sees keys ``0 .. seq_len - query_len + j``.
    Works for prefill, chunked prefill and decode alike. ``fp8_query`` (an FP8
    cache): the query rounded as the cache's values are (``FP8_QUERY``).
    """
    num_heads = q.shape[1]
    out = torch.empty_like(q)
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        query_len = end - start
        if query_len == 0:
            continue
        k = gather_context(k_cache, block_table[i], seq_len).float()
        v = gather_context(v_cache, block_table[i], seq_len).float()
        group = num_heads // k.shape[1]
        k = k.repeat_interleave(group, dim=1)  # GQA: each kv head serves `group` q heads
        v = v.repeat_interleave(group, dim=1)
        qi = round_to_cache_dtype(q[start:end], k_cache) if fp8_query else q[start:end].float()
        scores = torch.einsum("qhd,khd->hqk", qi, k) * scale
        q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        mask = k_pos[None, :] > q_pos[:, None]
        scores.masked_fill_(mask[None], float("-inf"))
        probs = scores.softmax(dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    fp8_query: bool = False,
) -> torch.Tensor:
    """One query per sequence, all sequences at once: q [B, H, D] -> [B, H, D].

    Gathers every sequence's blocks into a padded [B, max_len] context and
    masks the positions past each sequence's length. ``fp8_query`` (an FP8
    cache): the query rounded as the cache's values are (``FP8_QUERY``).
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    k = k_cache[block_table.long()].flatten(1, 2).float()  # [B, L, KVH, D]
    v = v_cache[block_table.long()].flatten(1, 2).float()
    qg = (round_to_cache_dtype(q, k_cache) if fp8_query else q.float()).view(num_seqs, num_kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * scale
    mask = torch.arange(k.shape[1], device=q.device)[None, :] >= seq_lens[:, None]
    scores.masked_fill_(mask[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), v)
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)
