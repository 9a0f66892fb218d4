"""CUDA graphs for decode steps.

At batch 1 a decode step of a 28-layer model launches hundreds of small
kernels; launching them from Python costs more than running them. A CUDA
graph records the whole forward once per batch size and replays it with a
single launch. Graphs are captured for a ladder of batch sizes; a step with
``n`` sequences runs the smallest graph >= n, with the extra rows padded
(slot -1: nothing written; seq_len 0: nothing read).
"""

from __future__ import annotations

import gc

import torch

from folovllm.attention.backends.abstract import AttentionMetadata

_LADDER = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]


class CUDAGraphRunner:
    def __init__(self, model, max_num_seqs: int, max_blocks_per_seq: int, max_model_len: int, device: torch.device, num_kv_splits_fn) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.num_kv_splits_fn = num_kv_splits_fn
        sizes = [s for s in _LADDER if s < max_num_seqs] + [max_num_seqs]
        self.capture_sizes = sorted(set(sizes))
        n = self.capture_sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_table=self.block_table[:bs],
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc_cpu=[],
            seq_lens_cpu=[],
            num_kv_splits=self.num_kv_splits_fn(bs, self.max_model_len),
        )

    @torch.inference_mode()
    def capture(self) -> None:
        # A graph of an earlier engine freed by the garbage collector *during*
        # capture would make CUDA reject the capture; collect now, then hold off.
        gc.collect()
        gc.disable()
        try:
            self._capture_all()
        finally:
            gc.enable()

    def _capture_all(self) -> None:
        pool = None
        for bs in reversed(self.capture_sizes):  # largest first, so smaller graphs reuse its memory
            meta = self._metadata(bs)
            self.model(self.input_ids[:bs], self.positions[:bs], meta)  # warm-up (compiles kernels)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(self.input_ids[:bs], self.positions[:bs], meta)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.capture_sizes[-1]

    def run(self, input_ids, positions, slot_mapping, seq_lens, block_table) -> torch.Tensor:
        n = input_ids.shape[0]
        bs = next(s for s in self.capture_sizes if s >= n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self.block_table[:n, : block_table.shape[1]].copy_(block_table, non_blocking=True)
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].zero_()
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
