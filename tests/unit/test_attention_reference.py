"""The plain-torch paged reference against dense causal attention (checks the checker)."""

from __future__ import annotations

import torch

from folovllm.attention.ops.paged_attn_reference import (
    paged_attention_ref,
    paged_decode_attention_ref,
    store_kv_cache_ref,
)


def dense_causal(q, k, v, scale):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=scale
    ).transpose(0, 1)


def test_paged_prefill_and_decode_equal_dense_attention():
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 16, 4
    lens = [7, 13]
    k_cache = torch.zeros(10, block, kv_heads, dim)
    v_cache = torch.zeros_like(k_cache)
    block_table = torch.tensor([[5, 2, 9, 0], [1, 3, 4, 6]], dtype=torch.int32)
    qs, ks, vs, slots = [], [], [], []
    for i, n in enumerate(lens):
        qs.append(torch.randn(n, heads, dim, generator=g))
        ks.append(torch.randn(n, kv_heads, dim, generator=g))
        vs.append(torch.randn(n, kv_heads, dim, generator=g))
        slots += [int(block_table[i, p // block]) * block + p % block for p in range(n)]
    store_kv_cache_ref(torch.cat(ks), torch.cat(vs), k_cache, v_cache, torch.tensor(slots))
    out = paged_attention_ref(torch.cat(qs), k_cache, v_cache, block_table, [0, 7, 20], lens, 0.25)
    torch.testing.assert_close(out[:7], dense_causal(qs[0], ks[0], vs[0], 0.25), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[7:], dense_causal(qs[1], ks[1], vs[1], 0.25), atol=1e-5, rtol=1e-5)
    # the decode form: the last query of each sequence
    last_q = torch.stack([qs[0][-1], qs[1][-1]])
    dec = paged_decode_attention_ref(last_q, k_cache, v_cache, block_table, torch.tensor(lens), 0.25)
    torch.testing.assert_close(dec, torch.stack([out[6], out[19]]), atol=1e-5, rtol=1e-5)
