"""CUDA graphs for whole steps: decode steps, and mixed / prefill steps of up to 4096 tokens.

At batch 1 a decode step of a 28-layer model launches hundreds of small
kernels; launching them from Python costs more than running them. The same
holds for a prefill of a thousand tokens, whose ~300 kernels take a few
milliseconds on the GPU but far longer to launch. A CUDA graph records the
whole forward once per size and replays it with a single launch.

Two ladders of graphs share one memory pool:

* decode graphs, per batch size (one token per sequence) up to 512: the split-K
  decode kernel. A step with ``n`` sequences runs the smallest graph >= n, the
  extra rows padded (slot -1: nothing written; seq_len 0: nothing read);
* mixed graphs, per token count, for every other step (prompts, chunks,
  decodes mixed in): the prefill kernel, whose grid is the most work tiles
  any batch of that many tokens can need; the step's tile list fills the
  front of the graph's buffer and (-1, -1) rows the rest. Padding tokens
  (slot -1) belong to no tile; their rows carry garbage through the
  row-wise layers and are never read.

Everything a graph reads is a device buffer filled before each replay: the
model runner's input buffers (``InputBuffers``), which it fills padded to the
graph's size, and the graph's block table; host-side values (a step's longest
query, its sequences' lengths) are frozen at capture and must not steer the
captured work.
"""

from __future__ import annotations

import functools
import gc

import torch

from folovllm.attention.backends.abstract import AttentionMetadata
from folovllm.worker.input_buffers import InputBuffers

_DECODE_LADDER = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]
# vLLM's largest capture size (min(2 x max_num_seqs, 512)): a decode step of more sequences runs
# eagerly, its launches hidden behind a step that long on the GPU.
MAX_DECODE_GRAPH_SEQS = _DECODE_LADDER[-1]
# Beyond ~4096 tokens a prefill's GPU time exceeds its launch time: eager costs nothing more.
_MIXED_LADDER = [16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096]
MAX_MIXED_GRAPH_TOKENS = _MIXED_LADDER[-1]


def _ladder(steps: list[int], largest: int) -> list[int]:
    return sorted({s for s in steps if s < largest} | {largest})


class CUDAGraphRunner:
    def __init__(
        self, model, attn_backend, buffers: InputBuffers, max_num_seqs: int, max_num_batched_tokens: int,
        max_blocks_per_seq: int, max_model_len: int, head_dim: int, device: torch.device, num_kv_splits_fn,
    ) -> None:  # fmt: skip
        self.model = model
        self.buffers = buffers
        self.orders_decode_rows = attn_backend.orders_decode_rows
        self.max_model_len = max_model_len
        self.num_kv_splits_fn = num_kv_splits_fn
        self.decode_sizes = _ladder(_DECODE_LADDER, min(max_num_seqs, MAX_DECODE_GRAPH_SEQS))
        mixed_sizes = _ladder(_MIXED_LADDER, min(max_num_batched_tokens, MAX_MIXED_GRAPH_TOKENS))
        self.tiles_for = {t: attn_backend.max_prefill_tiles(t, max_num_seqs, head_dim) for t in mixed_sizes}
        # A backend without a prefill work list (the plain-torch one) reads host lists: no mixed graphs.
        self.mixed_sizes = mixed_sizes if self.tiles_for[mixed_sizes[-1]] else []
        # A step's block table is as wide as its longest sequence needs; a graph reads a fixed width.
        self.block_table = torch.zeros(max_num_seqs, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.decode_query_start_loc = torch.arange(max_num_seqs + 1, dtype=torch.int32, device=device)  # never written
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}

    def _metadata(self, kind: str, size: int) -> AttentionMetadata:
        decode, buf = kind == "decode", self.buffers
        return AttentionMetadata(
            max_query_len=1 if decode else size,  # only the choice of kernel reads it
            max_seq_len=self.max_model_len,
            query_start_loc=self.decode_query_start_loc[: size + 1] if decode else buf.query_start_loc.gpu,
            seq_lens=buf.seq_lens.gpu[:size] if decode else buf.seq_lens.gpu,
            block_table=self.block_table[:size] if decode else self.block_table,
            slot_mapping=buf.slot_mapping.gpu[:size],
            query_start_loc_cpu=[],
            seq_lens_cpu=[],
            num_kv_splits=self.num_kv_splits_fn(size, self.max_model_len) if decode else 1,
            prefill_tiles=None if decode else buf.prefill_tiles.gpu[: self.tiles_for[size]],
            decode_order=buf.decode_order.gpu[:size] if decode and self.orders_decode_rows else None,
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
        # Capture on inputs that touch nothing (the warm-up runs before it left real slots behind):
        # no cache slot written, no context read, no prefill tile.
        buf = self.buffers
        buf.slot_mapping.gpu.fill_(-1)
        buf.seq_lens.gpu.zero_()
        buf.prefill_tiles.gpu.fill_(-1)
        buf.decode_order.gpu.copy_(torch.arange(len(buf.decode_order.gpu), dtype=torch.int32))
        pool = None
        # Largest first, so that smaller graphs reuse its memory.
        keys = sorted([("mixed", t) for t in self.mixed_sizes] + [("decode", b) for b in self.decode_sizes], key=lambda k: -k[1])
        for kind, size in keys:
            forward = functools.partial(self.model, buf.input_ids.gpu[:size], buf.positions.gpu[:size], self._metadata(kind, size))
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
        # Its inputs are the capture's (no cache slot, no context): the replay writes no KV cache.
        graph.replay()
        return graph, out, graph.pool()

    def graph_size(self, num_tokens: int, num_seqs: int, decode: bool) -> int | None:
        """The captured size that runs a step (the smallest that holds it), or None: the step runs eagerly."""
        sizes, n = (self.decode_sizes, num_seqs) if decode else (self.mixed_sizes, num_tokens)
        return next((s for s in sizes if s >= n), None)

    def run(self, size: int, num_tokens: int, meta: AttentionMetadata) -> torch.Tensor:
        """Replay the graph of ``size`` on the inputs the model runner put in its buffers (padded to
        ``size``); its first ``num_tokens`` rows of hidden states."""
        kind = "decode" if meta.max_query_len == 1 else "mixed"
        rows, width = meta.block_table.shape
        self.block_table[:rows, :width].copy_(meta.block_table, non_blocking=True)
        self.graphs[(kind, size)].replay()
        return self.outputs[(kind, size)][:num_tokens]
