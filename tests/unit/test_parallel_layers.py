"""Each tensor-parallel layer, run by 2 gloo processes, equals its unsharded counterpart.

The checks run in child processes (``_check_rank``); a failing check sends its
traceback back, and the test fails with it.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback

import torch
import torch.nn.functional as F

from folovllm.executor.multiproc_executor import get_open_port

WORLD = 2


def _full(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _check_layers(rank: int) -> None:
    from folovllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    from folovllm.model_executor.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding

    x = _full((5, 8), 0)

    # Column: this rank's half of the outputs.
    w, b = _full((6, 8), 1), _full((6,), 2)
    col = ColumnParallelLinear(8, 6, bias=True)
    col.weight.weight_loader(col.weight, w)
    col.bias.weight_loader(col.bias, b)
    torch.testing.assert_close(col(x), F.linear(x, w, b)[:, rank * 3 : rank * 3 + 3])

    # Merged gate/up: this rank's half of each part, side by side.
    gate, up = _full((4, 8), 3), _full((4, 8), 4)
    merged = MergedColumnParallelLinear(8, [4, 4])
    merged.weight.weight_loader(merged.weight, gate, 0)
    merged.weight.weight_loader(merged.weight, up, 1)
    half = slice(rank * 2, rank * 2 + 2)
    torch.testing.assert_close(merged(x), torch.cat([F.linear(x, gate)[:, half], F.linear(x, up)[:, half]], dim=1))

    # QKV, 4 q heads and 1 kv head of dim 2: q split (2 heads per rank), the kv head replicated on both ranks.
    q, k, v = _full((8, 8), 5), _full((2, 8), 6), _full((2, 8), 7)
    qkv = QKVParallelLinear(8, head_dim=2, num_heads=4, num_kv_heads=1, bias=False)
    assert (qkv.num_heads, qkv.num_kv_heads, qkv.num_kv_head_replicas) == (2, 1, 2)
    for shard_id, part in enumerate((q, k, v)):
        qkv.weight.weight_loader(qkv.weight, part, shard_id)
    expected = torch.cat([F.linear(x, q)[:, rank * 4 : rank * 4 + 4], F.linear(x, k), F.linear(x, v)], dim=1)
    torch.testing.assert_close(qkv(x), expected)
    # ... and with 2 kv heads, one per rank
    k2, v2 = _full((4, 8), 12), _full((4, 8), 13)
    qkv = QKVParallelLinear(8, head_dim=2, num_heads=4, num_kv_heads=2, bias=False)
    for shard_id, part in enumerate((q, k2, v2)):
        qkv.weight.weight_loader(qkv.weight, part, shard_id)
    mine = slice(rank * 2, rank * 2 + 2)
    expected = torch.cat([F.linear(x, q)[:, rank * 4 : rank * 4 + 4], F.linear(x, k2)[:, mine], F.linear(x, v2)[:, mine]], dim=1)
    torch.testing.assert_close(qkv(x), expected)

    # Row: this rank's half of the inputs; partial sums all-reduced, bias added once.
    w, b = _full((3, 8), 8), _full((3,), 9)
    row = RowParallelLinear(8, 3, bias=True)
    row.weight.weight_loader(row.weight, w)
    row.bias.weight_loader(row.bias, b)
    torch.testing.assert_close(row(x[:, rank * 4 : rank * 4 + 4]), F.linear(x, w, b))

    # A wrong checkpoint shape is refused in full-tensor terms on every rank.
    try:
        row.weight.weight_loader(row.weight, _full((3, 6), 10))
        raise AssertionError("a (3, 6) tensor loaded into a (3, 8) row-parallel layer")
    except ValueError as exc:
        assert "expected shape (3, 8)" in str(exc), exc

    # Vocabulary of 11 over 2 ranks: rows 0..5 and 6..10 (+ one zero pad row).
    table = _full((11, 4), 11)
    embed = VocabParallelEmbedding(11, 4)
    embed.weight.weight_loader(embed.weight, table)
    ids = torch.tensor([0, 5, 6, 10, 3, 7])
    torch.testing.assert_close(embed(ids), F.embedding(ids, table))
    torch.testing.assert_close(embed.compute_logits(x[:, :4]), F.linear(x[:, :4], table))
    head = ParallelLMHead(11, 4)
    head.weight.weight_loader(head.weight, table * 2)
    torch.testing.assert_close(head.compute_logits(x[:, :4]), F.linear(x[:, :4], table * 2))


def _check_rank(rank: int, port: int, errors) -> None:
    from folovllm.distributed.parallel_state import destroy_distributed_environment, init_distributed_environment

    try:
        init_distributed_environment(WORLD, rank, f"tcp://127.0.0.1:{port}", "gloo")
        _check_layers(rank)
    except BaseException:  # noqa: BLE001
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
    finally:
        destroy_distributed_environment()


def test_parallel_layers_over_two_gloo_processes_equal_the_unsharded_layers():
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = get_open_port()
    procs = [ctx.Process(target=_check_rank, args=(rank, port, errors)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    found = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert not found, "\n".join(found)
    assert [p.exitcode for p in procs] == [0, 0]


def test_one_rank_layers_are_plain_layers():
    from folovllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
    from folovllm.model_executor.layers.vocab_embedding import VocabParallelEmbedding

    qkv = QKVParallelLinear(8, head_dim=2, num_heads=4, num_kv_heads=2)
    assert qkv.weight.shape == (16, 8) and (qkv.num_heads, qkv.num_kv_heads) == (4, 2)
    row = RowParallelLinear(8, 3)
    assert row.weight.shape == (3, 8)
    assert VocabParallelEmbedding(11, 4).weight.shape == (11, 4)
