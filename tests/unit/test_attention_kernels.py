"""Triton attention kernels against the plain-torch reference.

On a machine without CUDA these run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), so CI checks the kernels' logic without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")

from folovllm.attention.ops.paged_attn_reference import paged_attention_ref, store_kv_cache_ref  # noqa: E402
from folovllm.attention.ops.triton_decode_attention import paged_decode_attention  # noqa: E402
from folovllm.attention.ops.triton_kv_store import store_kv_cache  # noqa: E402
from folovllm.attention.ops.triton_prefill_attention import paged_prefill_attention, prefill_block_sizes, prefill_tiles  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = torch.float8_e4m3fn


def _tiles(query_lens, block_m, pad_to=None):
    """The prefill work list on the device, optionally padded with (-1, -1) rows as a CUDA graph's buffer is."""
    tiles = torch.from_numpy(prefill_tiles(query_lens, block_m))
    if pad_to is not None:
        tiles = torch.cat([tiles, torch.full((pad_to - len(tiles), 2), -1, dtype=torch.int32)])
    return tiles.to(DEVICE)


def _random_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, seed, dtype=torch.float32):
    """Random caches holding each sequence's context in shuffled blocks."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=g)
    width = max(blocks_per_seq)
    block_table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks_per_seq):
        block_table[i, :nb] = perm[used : used + nb]
        used += nb
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g).to(dtype)
    qsl = [0]
    for ql in query_lens:
        qsl.append(qsl[-1] + ql)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return to(q), to(k_cache), to(v_cache), to(block_table), qsl


@pytest.mark.parametrize("block_size", [1, 8, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_store_kv_cache_matches_reference(block_size, num_heads, num_kv_heads):
    g = torch.Generator().manual_seed(block_size * 10 + num_kv_heads)
    head_dim, num_blocks, num_tokens = 16, 40, 19
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim)
    v_cache = torch.zeros_like(k_cache)
    # k as a strided view (rows of a wider tensor), like the split of the qkv projection
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, (num_heads + num_kv_heads) * head_dim :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[3] = -1  # padding token: must not be written
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    store_kv_cache_ref(k, v, ref_k, ref_v, slots)
    dk, dv = k_cache.to(DEVICE), v_cache.to(DEVICE)
    store_kv_cache(k.to(DEVICE), v.to(DEVICE), dk, dv, slots.to(DEVICE))
    torch.testing.assert_close(dk.cpu(), ref_k)
    torch.testing.assert_close(dv.cpu(), ref_v)


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 16), (4, 2, 32), (8, 2, 16), (2, 1, 48)])
@pytest.mark.parametrize("num_kv_splits", [1, 3])
def test_decode_attention_matches_reference(block_size, num_heads, num_kv_heads, head_dim, num_kv_splits):
    seq_lens = [1, 5, 37, 70, 130]  # mostly not multiples of the block size
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(
        seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads, head_dim, block_size, seed=head_dim + block_size
    )
    scale = head_dim**-0.5
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, scale)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens_t, scale, num_kv_splits=num_kv_splits)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


def test_decode_attention_with_the_most_splits_matches_reference():
    """MAX_KV_SPLITS pieces, most of them empty: stage 2 merges a runtime count within its fixed block."""
    from folovllm.attention.backends.abstract import MAX_KV_SPLITS

    seq_lens = [1, 70, 130]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, [1] * 3, 4, 2, 32, 16, seed=11)
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.2)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=MAX_KV_SPLITS)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)
    with pytest.raises(AssertionError):
        paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=MAX_KV_SPLITS + 1)


@pytest.mark.parametrize("num_kv_splits", [1, 3])
def test_decode_attention_in_a_given_program_order_gives_each_sequence_its_own_output(num_kv_splits):
    """With ``seq_order`` (grid row i works on sequence order[i], kv head fastest), each sequence's
    output is still its own, the same as in batch order; a padding row (no context) anywhere in it."""
    from folovllm.attention.backends.triton_backend import TritonAttentionBackend

    seq_lens = [37, 130, 0, 5, 70]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, [1] * 5, 4, 2, 32, 16, seed=5)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    plain = paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=num_kv_splits)
    longest_first = TritonAttentionBackend().make_decode_order(np.array(seq_lens))
    assert longest_first.tolist() == [1, 4, 0, 3, 2]
    for order in (longest_first, np.array([2, 0, 4, 1, 3], dtype=np.int32)):
        out = paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=num_kv_splits,
                                     seq_order=torch.from_numpy(order).to(DEVICE))  # fmt: skip
        torch.testing.assert_close(out, plain, atol=0, rtol=0)
    if num_kv_splits == 1:  # the programs follow the order: one naming sequence 1 five times writes its rows only
        out = torch.full_like(plain, float("nan"))
        ones = torch.ones(5, dtype=torch.int32, device=DEVICE)
        paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, out=out, seq_order=ones)
        torch.testing.assert_close(out[1], plain[1], atol=0, rtol=0)
        assert out[[0, 2, 3, 4]].isnan().all()


@pytest.mark.parametrize("dtype,cache_dtype,fp8_query", [(torch.float32, torch.float32, False), (torch.float16, torch.float16, False),
                                                         (torch.float16, FP8, False), (torch.float16, FP8, True)])  # fmt: skip
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("num_kv_splits", [1, 3])
def test_decode_attention_with_the_new_token_fused_in_matches_the_two_kernels(dtype, cache_dtype, fp8_query, norm, num_kv_splits):
    """``new_token``: the decode kernel norms and rotates the raw q and k, writes k and v to their
    slots, and takes this step's key from registers. Against the q/k norm + RoPE + cache-write
    kernel followed by the plain decode kernel: the same cache (v bit for bit; k up to the RMS's sum
    order, one half at a time there) and the same outputs (also up to the new key's product, a sum
    here and a matmul there). Sequences of 1 token (only the new key), a padding row (slot -1, no
    context), splits whose last is the new key alone. With ``fp8_query`` both round the query."""
    from folovllm.attention.ops.triton_decode_attention import NewTokenKV
    from folovllm.model_executor.layers.fused_kernels import fused_qk_norm_rope_store
    from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    seq_lens = [1, 37, 0, 65, 130]
    heads, kv_heads, head_dim, block_size = 4, 2, 32, 16
    _, k_cache, v_cache, block_table, _ = _random_paged_batch(seq_lens, [1] * 5, heads, kv_heads, head_dim, block_size, seed=9)
    k_cache, v_cache = k_cache.to(cache_dtype), v_cache.to(cache_dtype)
    g = torch.Generator().manual_seed(10)
    qkv = torch.randn(5, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(DEVICE)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = q.view(5, heads, head_dim), k.view(5, kv_heads, head_dim), v.view(5, kv_heads, head_dim)
    weights = [(1 + 0.1 * torch.randn(head_dim, generator=g)).to(dtype).to(DEVICE) for _ in range(2)] if norm else [None, None]
    rope = RotaryEmbedding(head_dim, 256, 10000.0).to(DEVICE)
    cos, sin = rope.cos_cache, rope.sin_cache
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    positions = (lens - 1).clamp(min=0).long()
    slots = torch.tensor([int(block_table[i, (n - 1) // block_size]) * block_size + (n - 1) % block_size if n else -1
                          for i, n in enumerate(seq_lens)], device=DEVICE)  # fmt: skip
    caches = k_cache.clone(), v_cache.clone()
    q_ready = fused_qk_norm_rope_store(q, k, v, *weights, cos, sin, positions, 1e-6, *caches, slots)
    two_kernels = paged_decode_attention(q_ready, *caches, block_table, lens, 0.2, num_kv_splits=num_kv_splits, fp8_query=fp8_query)
    fused = paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=num_kv_splits, block_n=32,
                                   new_token=NewTokenKV(k, v, *weights, cos, sin, positions, slots, 1e-6), fp8_query=fp8_query)  # fmt: skip
    reference = paged_decode_attention(q_ready, *caches, block_table, lens, 0.2, num_kv_splits=num_kv_splits, block_n=32, fp8_query=fp8_query)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert torch.equal(v_cache.view(torch.uint8), caches[1].view(torch.uint8))
    torch.testing.assert_close(k_cache.float(), caches[0].float(), atol=tol if cache_dtype != torch.float8_e4m3fn else 0.07, rtol=tol)
    torch.testing.assert_close(fused, reference, atol=tol, rtol=tol)
    torch.testing.assert_close(fused, two_kernels, atol=tol, rtol=tol)


def test_decode_split_rule_fills_the_sms_without_splits_shorter_than_a_key_tile():
    from folovllm.attention.backends.abstract import MAX_KV_SPLITS, num_kv_splits

    h100 = dict(num_kv_heads=8, num_sms=132)  # Qwen3-0.6B's kv heads
    assert num_kv_splits(1, max_seq_len=40960, **h100) == 33  # 264 programs: 2 per SM
    assert num_kv_splits(1, max_seq_len=2048, **h100) == 32  # one 64-key tile per split (the H100 sweep's fastest)
    assert num_kv_splits(1, max_seq_len=100, **h100) == 2
    assert num_kv_splits(4, max_seq_len=40960, **h100) == 9
    assert num_kv_splits(256, max_seq_len=40960, **h100) == 1  # enough programs without splitting
    assert num_kv_splits(1, num_kv_heads=1, max_seq_len=40960, num_sms=132) == MAX_KV_SPLITS


def test_decode_attention_padding_rows_are_finite():
    """Rows with seq_len 0 (CUDA-graph padding) must not produce NaN."""
    q, k_cache, v_cache, block_table, _ = _random_paged_batch([9, 9], [1, 1], 4, 2, 16, 8, seed=3)
    seq_lens = torch.tensor([9, 0], dtype=torch.int32, device=DEVICE)
    for splits in (1, 2):
        out = paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, 0.25, num_kv_splits=splits)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 16), (4, 2, 32), (8, 2, 16), (2, 1, 48)])
def test_prefill_attention_matches_reference(block_size, num_heads, num_kv_heads, head_dim):
    # fresh prompts, a later chunk with cached context, and decode rows mixed in
    seq_lens = [17, 40, 33, 9, 1]
    query_lens = [17, 11, 1, 9, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, seed=7 * head_dim + block_size
    )
    scale = head_dim**-0.5
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, scale)
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table,
        torch.tensor(qsl, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        _tiles(query_lens, 16), scale, block_m=16, block_n=16,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (16, 32), (32, 16)])
def test_prefill_attention_masks_only_what_it_must_for_any_tile_shape(block_m, block_n):
    """Key tiles before a query tile's first position run unmasked, the diagonal ones masked; the
    border between them moves with the cached context and the tile shape (here: a chunk after 63
    cached tokens, a fresh prompt, a decode row)."""
    seq_lens, query_lens = [100, 70, 45], [37, 70, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=block_m + block_n)
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.25)
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table,
        torch.tensor(qsl, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        _tiles(query_lens, block_m), 0.25, block_m=block_m, block_n=block_n,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 16), (4, 2, 32), (8, 2, 16), (8, 1, 16), (2, 1, 48)])
@pytest.mark.parametrize("cache_dtype", [torch.float32, "fp8"])
def test_prefill_attention_takes_marked_one_token_rows_by_kv_head(num_heads, num_kv_heads, head_dim, cache_dtype):
    """DECODES_BY_KV_HEAD: the list marks each one-token row (decodes, and a one-token prompt) and one
    item per kv head takes the group's query heads as a tile's rows; every row still matches the
    reference, beside prompt tiles, a chunk after cached context, a context of exactly one key tile
    and one of several with a partial last tile."""
    seq_lens, query_lens = [17, 40, 33, 9, 1, 64, 70], [17, 11, 1, 9, 1, 1, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, 8, seed=head_dim)
    if cache_dtype == "fp8":
        k_cache, v_cache = k_cache.to(FP8), v_cache.to(FP8)
    scale = head_dim**-0.5
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, scale)
    tiles = prefill_tiles(query_lens, 16, heaviest_first=True, seq_lens=seq_lens, decode_rows=True)
    assert sorted(s for s, m in tiles.tolist() if m == -1) == [2, 4, 5, 6]
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), torch.from_numpy(tiles).to(DEVICE), scale,
        block_m=16, block_n=16, decode_items=True,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


def test_marked_one_token_rows_are_left_alone_without_decode_items():
    """A marked list and a kernel without decode items must not meet (the backend gives both the same
    switch): the marked rows are skipped, so a mismatch shows as rows never written."""
    seq_lens, query_lens = [20, 9], [20, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=1)
    tiles = torch.from_numpy(prefill_tiles(query_lens, 16, decode_rows=True)).to(DEVICE)
    args = (q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
            torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), tiles, 0.25)  # fmt: skip
    out = paged_prefill_attention(*args, out=torch.full_like(q, 7.0), block_m=16, block_n=16, decode_items=False)
    assert torch.all(out[20] == 7.0) and not torch.any(out[:20] == 7.0)
    out = paged_prefill_attention(*args, out=torch.full_like(q, 7.0), block_m=16, block_n=16, decode_items=True)
    assert not torch.any(out == 7.0)


def test_prefill_tiles_cover_every_query_row_once_within_the_bound():
    import itertools

    from folovllm.attention.ops.triton_prefill_attention import max_prefill_tiles

    for lens in ([1], [64], [65], [17, 11, 1, 0, 9], [1] * 7, [130, 1, 1, 63]):
        tiles = prefill_tiles(lens, 16)
        rows = [(s, t * 16 + i) for s, t in tiles.tolist() for i in range(16) if t * 16 + i < lens[s]]
        assert rows == [(s, i) for s, n in enumerate(lens) for i in range(n)]  # all rows, once, in order
        assert len(tiles) <= max_prefill_tiles(sum(lens), len(lens), 16)
        heaviest = prefill_tiles(lens, 16, heaviest_first=True)
        assert sorted(map(tuple, heaviest.tolist())) == sorted(map(tuple, tiles.tolist()))  # the same tiles
        assert list(heaviest[:, 1]) == sorted(tiles[:, 1], reverse=True)  # highest tile index first
    # the bound is tight: one token per sequence, or full tiles plus one short tail each
    assert max(len(prefill_tiles(c, 16)) for c in itertools.product(range(0, 40), repeat=2) if sum(c) == 40) == 40 // 16 + 2


def test_the_engines_prefill_work_list_starts_with_the_tiles_that_read_the_most_keys():
    import numpy as np

    from folovllm.attention.backends.triton_backend import TritonAttentionBackend

    backend, lens = TritonAttentionBackend(), np.array([130, 1, 70])
    tiles = backend.make_prefill_tiles(lens, lens, head_dim=128)  # fresh prompts, 64-row tiles: 130, 128, 70, 64, 64, 1 keys
    assert tiles.tolist() == [[0, 2], [0, 1], [2, 1], [0, 0], [2, 0], [1, 0]]
    # beside a decode at context 900 and a chunk after 100 cached tokens, those come first
    query_lens, seq_lens = np.array([130, 1, 70]), np.array([130, 900, 170])
    tiles = backend.make_prefill_tiles(query_lens, seq_lens, head_dim=128)  # 130, 128, 64 / 900 / 164, 170 keys
    assert tiles.tolist() == [[1, 0], [2, 1], [2, 0], [0, 2], [0, 1], [0, 0]]


def _program_of(item: int, programs: int) -> int:
    """The prefill kernel's rule: round r hands items r * P .. r * P + P - 1 to programs 0 .. P - 1,
    in reverse on odd rounds."""
    r, i = divmod(item, programs)
    return i if r % 2 == 0 else programs - 1 - i


def test_the_kernels_rounds_over_the_engines_list_balance_a_mixed_step():
    """The kernel's rule (``_program_of``; the test below ties the kernel to it) over the engine's
    list, counted in key tiles per program on an H100's 264 programs: a 768-token chunk among 255
    decodes at contexts 100..2000 is within 2% of a perfect split. (Sorted by tile index instead,
    the decodes sort last: 23% over.)"""
    import numpy as np

    from folovllm.attention.backends.triton_backend import TritonAttentionBackend

    query_lens = np.array([768] + [1] * 255)
    seq_lens = np.concatenate([[768], np.random.default_rng(0).integers(100, 2001, 255)])
    tiles = TritonAttentionBackend().make_prefill_tiles(query_lens, seq_lens, head_dim=128)  # 64-row tiles
    s, m = tiles[:, 0], tiles[:, 1]
    work = np.repeat(-(-(seq_lens[s] - query_lens[s] + np.minimum((m + 1) * 64, query_lens[s])) // 64), 16)  # 16 heads
    programs = 264
    load = np.zeros(programs)
    for w, key_tiles in enumerate(work):
        load[_program_of(w, programs)] += key_tiles
    assert load.max() <= 1.02 * load.mean()


def test_prefill_attention_padding_tiles_do_nothing():
    """A CUDA graph launches the bound's worth of tiles; the (-1, -1) rows must leave every output row alone."""
    seq_lens, query_lens = [20, 9], [20, 3]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=11)
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.25)
    out = torch.full_like(q, 7.0)
    args = (torch.tensor(qsl, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE))
    paged_prefill_attention(q, k_cache, v_cache, block_table, *args, _tiles(query_lens, 16, pad_to=9), 0.25, out=out, block_m=16, block_n=16)
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)
    untouched = torch.full_like(q, 7.0)
    empty = torch.full((4, 2), -1, dtype=torch.int32, device=DEVICE)
    paged_prefill_attention(q, k_cache, v_cache, block_table, *args, empty, 0.25, out=untouched, block_m=16, block_n=16)
    assert bool((untouched == 7.0).all())


@pytest.mark.parametrize("max_programs", [1, 3, 8, 500])
def test_prefill_attention_with_fewer_programs_than_work_items(max_programs):
    """Each program walks the (tile, head) items in rounds until a padding row: any grid size, padding or
    not, gives every row its attention (16 tiles x 4 heads here, 12 padding rows after them)."""
    seq_lens, query_lens = [50, 70, 20, 9], [50, 37, 1, 9]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=max_programs)
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.25)
    args = (torch.tensor(qsl, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE))
    for tiles in (_tiles(query_lens, 8), _tiles(query_lens, 8, pad_to=28)):
        out = paged_prefill_attention(q, k_cache, v_cache, block_table, *args, tiles, 0.25, block_m=8, block_n=16,
                                      max_programs=max_programs)  # fmt: skip
        torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


@pytest.mark.parametrize("max_programs", [1, 2, 5, 64, 100])
def test_prefill_programs_take_each_work_item_once_heaviest_tiles_first(monkeypatch, max_programs):
    """The order the programs take the items in, with the tile itself replaced by a recorder: every
    (tile, head) once, none of the padding; each program's first item from the first round, the
    first round the list's first items (its heaviest tiles, all heads), and rounds alternating in
    direction, so no program takes the heaviest item of every round."""
    import os

    import folovllm.attention.ops.triton_prefill_attention as prefill

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter")
    taken = []  # (program, sequence, query tile, head)

    def record(b, m_block, h, *rest):
        taken.append(tuple(int(x.handle.data.reshape(-1)[0]) for x in (prefill.tl.program_id(0), b, m_block, h)))

    monkeypatch.setattr(prefill, "_prefill_item", record)
    query_lens, heads = [40, 9, 1, 25], 4
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(query_lens, query_lens, heads, 2, 16, 8, seed=1)
    tiles = torch.from_numpy(prefill_tiles(query_lens, 8, heaviest_first=True))
    padded = torch.cat([tiles, torch.full((9, 2), -1, dtype=torch.int32)])
    args = (torch.tensor(qsl, dtype=torch.int32), torch.tensor(query_lens, dtype=torch.int32))
    paged_prefill_attention(q, k_cache, v_cache, block_table, *args, padded, 0.25, block_m=8, block_n=16, max_programs=max_programs)
    items = [(b, m, h) for b, m in tiles.tolist() for h in range(heads)]  # the list's order, heads fastest
    assert sorted(t[1:] for t in taken) == sorted(items)  # each once, no padding
    programs = min(max_programs, len(padded) * heads)
    by_program = {p: [items.index(t[1:]) for t in taken if t[0] == p] for p in range(programs)}
    for p, order in by_program.items():
        assert order == [w for w in range(len(items)) if _program_of(w, programs) == p], p


def test_prefill_attention_does_not_depend_on_the_order_of_its_work_list():
    """Every tile writes only its own rows: heaviest-first or any shuffle gives batch order's output."""
    seq_lens, query_lens = [50, 37, 20], [50, 30, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=5)
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.25)
    args = (torch.tensor(qsl, dtype=torch.int32, device=DEVICE), torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE))
    heaviest = prefill_tiles(query_lens, 16, heaviest_first=True)
    shuffled = heaviest[torch.randperm(len(heaviest), generator=torch.Generator().manual_seed(0)).numpy()]
    for tiles in (heaviest, shuffled):
        tiles = torch.from_numpy(tiles).to(DEVICE)
        out = paged_prefill_attention(q, k_cache, v_cache, block_table, *args, tiles, 0.25, block_m=16, block_n=16)
        torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_half_precision_on_gpu(dtype):
    seq_lens = [300, 1000, 2049]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, seq_lens, 16, 8, 128, 16, seed=1, dtype=dtype)
    scale = 128**-0.5
    ref = paged_attention_ref(q.float().cpu(), k_cache.float().cpu(), v_cache.float().cpu(), block_table.cpu(), qsl, seq_lens, scale)
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), _tiles(seq_lens, prefill_block_sizes(128)[0]), scale,
    )  # fmt: skip
    torch.testing.assert_close(out.float().cpu(), ref, atol=2e-2, rtol=2e-2)
    last = [qsl[i + 1] - 1 for i in range(len(seq_lens))]
    dec = paged_decode_attention(
        q[last].contiguous(), k_cache, v_cache, block_table,
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), scale, num_kv_splits=8,
    )  # fmt: skip
    torch.testing.assert_close(dec.float().cpu(), ref[last], atol=2e-2, rtol=2e-2)


def test_store_kv_cache_to_fp8_rounds_and_saturates_like_torch():
    g = torch.Generator().manual_seed(5)
    num_blocks, block_size, kvh, d, t = 6, 8, 2, 16, 13
    k = torch.randn(t, kvh, d, generator=g) * 3
    v = torch.randn(t, kvh, d, generator=g) * 3
    k[0, 0, :4] = torch.tensor([1000.0, -1000.0, 448.0, 1e-3])  # beyond the format's range, at its edge, tiny
    slots = torch.randperm(num_blocks * block_size, generator=g)[:t]
    slots[2] = -1
    ref_k = torch.zeros(num_blocks, block_size, kvh, d, dtype=FP8)
    ref_v = torch.zeros_like(ref_k)
    store_kv_cache_ref(k, v, ref_k, ref_v, slots)
    assert ref_k.view(-1, kvh, d)[slots[0], 0, :3].float().tolist() == [448.0, -448.0, 448.0]
    dk, dv = torch.zeros_like(ref_k).to(DEVICE), torch.zeros_like(ref_v).to(DEVICE)
    store_kv_cache(k.to(DEVICE), v.to(DEVICE), dk, dv, slots.to(DEVICE))
    for got, ref in ((dk.cpu().float(), ref_k.float()), (dv.cpu().float(), ref_v.float())):
        if DEVICE == "cuda":
            assert torch.equal(got, ref)  # round to nearest even, saturating: the same as torch's cast
        else:
            # Triton's interpreter loses the carry when rounding up crosses a power of two
            # (1.94 -> 1.0 instead of 2.0) and rounds subnormals (below 2**-6) its own way;
            # every other value must match exactly.
            differ = got != ref
            carry = got * 2 == ref
            subnormal = (ref.abs() < 2**-6) & ((got - ref).abs() <= 2**-8)
            assert bool((carry | subnormal)[differ].all()) and differ.float().mean() < 0.05


@pytest.mark.parametrize("num_kv_splits", [1, 4])
def test_attention_kernels_read_an_fp8_cache_like_the_reference(num_kv_splits):
    """Both kernels upcast FP8 K/V as the reference does; what remains is the kernels' own arithmetic."""
    seq_lens, query_lens = [37, 5, 64], [6, 5, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=9)
    k_cache, v_cache = k_cache.to(FP8), v_cache.to(FP8)
    scale = 16**-0.5
    ref = paged_attention_ref(q.cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, scale)
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), _tiles(query_lens, 16), scale, block_m=16, block_n=16,
    )  # fmt: skip
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)
    last = [qsl[i + 1] - 1 for i in range(len(seq_lens))]
    outs = []
    # the engine's tile, and variants bench_kernels.py times (on a GPU, 8 warps split the tile's work
    # otherwise; the interpreter runs every program as one)
    for block_n, stages, via_registers, warps in ((None, 2, False, 4), (32, 1, False, 4), (None, 2, True, 4), (None, 2, True, 8)):
        dec = paged_decode_attention(
            q[last].contiguous(), k_cache, v_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
            scale, num_kv_splits=num_kv_splits, num_stages=stages, block_n=block_n, v_via_registers=via_registers, num_warps=warps,
        )  # fmt: skip
        torch.testing.assert_close(dec.cpu(), ref[last], atol=2e-3 if DEVICE == "cuda" else 1e-5, rtol=1e-3)
        outs.append(dec)
    assert torch.equal(outs[2], outs[0])  # the product with the mask changes no value


def test_an_fp8_cache_beside_bfloat16_queries_is_read_in_float16():
    """e4m3 -> float16 is exact and cheap, e4m3 -> bfloat16 goes through float32: the kernels take
    their products in float16 for this pair (also under the interpreter, which has no bfloat16
    matmul), and a query beyond float16's range saturates there instead of overflowing."""
    from folovllm.attention.ops.triton_paged_kv import kv_compute_dtype

    assert kv_compute_dtype(torch.bfloat16, FP8) == triton.language.float16
    assert kv_compute_dtype(torch.bfloat16, torch.bfloat16) == triton.language.bfloat16
    assert kv_compute_dtype(torch.float32, FP8) == triton.language.float32
    seq_lens, query_lens = [37, 5, 64], [6, 5, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 16, 8, seed=9)
    q, k_cache, v_cache = q.to(torch.bfloat16), k_cache.to(FP8), v_cache.to(FP8)
    q[5, 1, 0] = 1e5  # the last prompt row of sequence 0, in prefill and decode; float16's largest value is 65504
    ref = paged_attention_ref(q.float().clamp(-65504, 65504).cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.25)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_prefill_attention(
        q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE), lens,
        _tiles(query_lens, 16), 0.25, block_m=16, block_n=16,
    )  # fmt: skip
    last = [qsl[i + 1] - 1 for i in range(len(seq_lens))]
    dec = paged_decode_attention(q[last].contiguous(), k_cache, v_cache, block_table, lens, 0.25, num_kv_splits=4)
    for got, want in ((out, ref), (dec, ref[last])):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=1e-2)  # bfloat16's rounding of the output


def _query_rounding_down_to_fp8(q: torch.Tensor, dtype) -> torch.Tensor:
    """Random queries whose every value is an e4m3 value times 1 + 3/128: rounding to FP8 acts (by
    ~2%) and rounds down. Triton's interpreter loses the carry when rounding up crosses a power of
    two (see the store test above); a GPU rounds like torch either way."""
    q = q.cpu() * 3
    q = (q.sign() * q.abs().clamp(min=0.05)).to(FP8).float() * (1 + 3 / 128)  # no subnormals either
    return q.to(dtype).to(DEVICE)


def _closer_to_the_rounded_reference(out, rounded, plain, dtype) -> None:
    """``out`` matches the reference given the query rounded, and is measurably off the one given it as it is."""
    assert not torch.equal(rounded, plain)
    off_rounded, off_plain = ((out.float() - ref).abs().mean().item() for ref in (rounded, plain))  # mean distances
    tol = 1e-6 if dtype == torch.float32 and DEVICE == "cpu" else 5e-4  # float16: its probabilities and output
    assert off_rounded < tol and off_plain > 10 * off_rounded, (off_rounded, off_plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_kv_splits", [1, 4])
def test_decode_attention_with_an_fp8_query_is_the_reference_with_the_query_rounded(dtype, num_kv_splits):
    """``fp8_query`` (``FP8_QUERY``): the decode kernel rounds the query to e4m3 and takes q.K in
    FP8, the keys as the product's rows: the reference given the query rounded."""
    from folovllm.attention.ops.paged_attn_reference import paged_decode_attention_ref

    seq_lens = [37, 5, 64, 130]
    q, k_cache, v_cache, block_table, _ = _random_paged_batch(seq_lens, [1] * 4, 4, 2, 32, 8, seed=12)
    k_cache, v_cache = k_cache.to(FP8), v_cache.to(FP8)
    q = _query_rounding_down_to_fp8(q, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(q, k_cache, v_cache, block_table, lens, 0.2, num_kv_splits=num_kv_splits, fp8_query=True)
    rounded, plain = (paged_decode_attention_ref(q.float(), k_cache, v_cache, block_table, lens, 0.2, fp8_query=r) for r in (True, False))
    _closer_to_the_rounded_reference(out, rounded, plain, dtype)
    with pytest.raises(AssertionError, match="fp8_query reads an FP8 cache"):
        paged_decode_attention(q, k_cache.float(), v_cache.float(), block_table, lens, 0.2, fp8_query=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("decode_items,block", [(False, 16), (True, 16), (False, None)])
def test_prefill_attention_with_an_fp8_query_is_the_reference_with_the_query_rounded(dtype, decode_items, block):
    """``fp8_query`` in the prefill kernel: prompts, a chunk after cached context and one-token rows
    (as a tile per query head, or by kv head with ``decode_items``) all take q.K in FP8; in small
    tiles and the engine's (64 x 64: a warpgroup MMA in FP8 on Hopper)."""
    seq_lens, query_lens = [37, 5, 64, 130], [6, 5, 1, 1]
    q, k_cache, v_cache, block_table, qsl = _random_paged_batch(seq_lens, query_lens, 4, 2, 32, 8, seed=13)
    k_cache, v_cache = k_cache.to(FP8), v_cache.to(FP8)
    q = _query_rounding_down_to_fp8(q, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    tiles = torch.from_numpy(prefill_tiles(query_lens, block or prefill_block_sizes(32)[0], decode_rows=decode_items)).to(DEVICE)
    out = paged_prefill_attention(q, k_cache, v_cache, block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE), lens,
                                  tiles, 0.2, block_m=block, block_n=block, decode_items=decode_items, fp8_query=True)  # fmt: skip
    rounded, plain = (paged_attention_ref(q.float().cpu(), k_cache.cpu(), v_cache.cpu(), block_table.cpu(), qsl, seq_lens, 0.2,
                                          fp8_query=r) for r in (True, False))  # fmt: skip
    _closer_to_the_rounded_reference(out.cpu(), rounded, plain, dtype)
    with pytest.raises(AssertionError, match="fp8_query reads an FP8 cache"):
        paged_prefill_attention(q, k_cache.float(), v_cache.float(), block_table, torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
                                lens, tiles, 0.2, fp8_query=True)  # fmt: skip
