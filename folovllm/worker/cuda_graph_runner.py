"""CUDA graphs for whole steps: decode steps, and mixed / prefill steps of up to 4096 tokens.

At batch 1 a decode step of a 28-layer model launches hundreds of small
kernels; launching them from Python costs more than running them. The same
holds for a prefill of a thousand tokens, whose ~300 kernels take a few
milliseconds on the GPU but far longer to launch. A CUDA graph records the
whole forward once per size and replays it with a single launch.

Two ladders of graphs share one memory pool:

* decode graphs, per batch size (one token per sequence): the split-K decode
  kernel. A step with ``n`` sequences runs the smallest graph >= n, the extra
  rows padded (slot -1: nothing written; seq_len 0: nothing read);
* mixed graphs, per token count, for every other step (prompts, chunks,
  decodes mixed in): the prefill kernel, whose grid is the most work tiles
  any batch of that many tokens can need; the step's tile list fills the
  front of the graph's buffer and (-1, -1) rows the rest. Padding tokens
  (slot -1) belong to no tile; their rows carry garbage through the
  row-wise layers and are never read.

Everything a graph reads is a device buffer filled before each replay;
host-side values (a step's longest query, its sequences' lengths) are
frozen at capture and must not steer the captured work.
"""

from __future__ import annotations

import functools
import gc

import torch

from folovllm.attention.backends.abstract import AttentionMetadata

_DECODE_LADDER = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]
# Beyond ~4096 tokens a prefill's GPU time exceeds its launch time: eager costs nothing more.
_MIXED_LADDER = [16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096]
MAX_MIXED_GRAPH_TOKENS = _MIXED_LADDER[-1]


def _ladder(steps: list[int], largest: int) -> list[int]:
    return sorted({s for s in steps if s < largest} | {largest})


class CUDAGraphRunner:
    def __init__(
        self, model, attn_backend, max_num_seqs: int, max_num_batched_tokens: int, max_blocks_per_seq: int,
        max_model_len: int, head_dim: int, device: torch.device, num_kv_splits_fn,
    ) -> None:  # fmt: skip
        self.model = model
        self.max_model_len = max_model_len
        self.num_kv_splits_fn = num_kv_splits_fn
        self.decode_sizes = _ladder(_DECODE_LADDER, max_num_seqs)
        mixed_sizes = _ladder(_MIXED_LADDER, min(max_num_batched_tokens, MAX_MIXED_GRAPH_TOKENS))
        self.tiles_for = {t: attn_backend.max_prefill_tiles(t, max_num_seqs, head_dim) for t in mixed_sizes}
        # A backend without a prefill work list (the plain-torch one) reads host lists: no mixed graphs.
        self.mixed_sizes = mixed_sizes if self.tiles_for[mixed_sizes[-1]] else []
        n = max(self.decode_sizes[-1], mixed_sizes[-1] if self.mixed_sizes else 0)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_num_seqs, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(max_num_seqs, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.decode_query_start_loc = torch.arange(max_num_seqs + 1, dtype=torch.int32, device=device)  # never written
        self.query_start_loc = torch.zeros(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.prefill_tiles = torch.full((max(self.tiles_for[mixed_sizes[-1]], 1), 2), -1, dtype=torch.int32, device=device)
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def capture_sizes(self) -> dict[str, list[int]]:
        return {"decode": self.decode_sizes, "mixed": self.mixed_sizes}

    def _metadata(self, kind: str, size: int) -> AttentionMetadata:
        decode = kind == "decode"
        return AttentionMetadata(
            max_query_len=1 if decode else size,  # only the choice of kernel reads it
            max_seq_len=self.max_model_len,
            query_start_loc=self.decode_query_start_loc[: size + 1] if decode else self.query_start_loc,
            seq_lens=self.seq_lens[:size] if decode else self.seq_lens,
            block_table=self.block_table[:size] if decode else self.block_table,
            slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=[],
            seq_lens_cpu=[],
            num_kv_splits=self.num_kv_splits_fn(size, self.max_model_len) if decode else 1,
            prefill_tiles=None if decode else self.prefill_tiles[: self.tiles_for[size]],
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
        # Largest first, so that smaller graphs reuse its memory.
        keys = sorted([("mixed", t) for t in self.mixed_sizes] + [("decode", b) for b in self.decode_sizes], key=lambda k: -k[1])
        for kind, size in keys:
            forward = functools.partial(self.model, self.input_ids[:size], self.positions[:size], self._metadata(kind, size))
            forward()  # warm-up (compiles kernels)
            self.graphs[(kind, size)], self.outputs[(kind, size)], pool = self._capture_graph(forward, pool)

    @staticmethod
    def _capture_graph(forward, pool):
        """Record ``forward`` into a new graph in ``pool``: (graph, its output, the pool)."""
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = forward()
        # An instantiated graph is uploaded to the device on its first launch (cudaGraphUpload,
        # which torch does not expose, does it ahead); launch it once here rather than in a request.
        # The buffers hold the warm-up's inputs: padding slots (-1) and empty sequences, so the
        # replay writes no KV cache.
        graph.replay()
        return graph, out, graph.pool()

    def can_run(self, num_tokens: int, meta: AttentionMetadata) -> bool:
        if meta.max_query_len == 1:
            return meta.num_seqs <= self.decode_sizes[-1]
        return bool(self.mixed_sizes) and num_tokens <= self.mixed_sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n, num_seqs = input_ids.shape[0], meta.num_seqs
        kind = "decode" if meta.max_query_len == 1 else "mixed"
        size = next(s for s in self.capture_sizes[kind] if s >= n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:num_seqs].copy_(meta.seq_lens, non_blocking=True)
        self.block_table[:num_seqs, : meta.block_table.shape[1]].copy_(meta.block_table, non_blocking=True)
        if size > n:
            self.slot_mapping[n:size].fill_(-1)
        if kind == "decode":
            if size > n:
                self.seq_lens[n:size].zero_()
        else:
            self.query_start_loc[: num_seqs + 1].copy_(meta.query_start_loc, non_blocking=True)
            num_tiles = meta.prefill_tiles.shape[0]
            self.prefill_tiles[:num_tiles].copy_(meta.prefill_tiles, non_blocking=True)
            self.prefill_tiles[num_tiles : self.tiles_for[size]].fill_(-1)
        self.graphs[(kind, size)].replay()
        return self.outputs[(kind, size)][:n]
