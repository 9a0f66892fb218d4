"""The model runner: SchedulerOutput -> flattened batch -> model -> sampled tokens.

It owns the model, the KV cache tensor and the per-sequence random
generators. ``execute_model`` lays the scheduled tokens of all sequences end
to end (``input_ids[T]``, ``positions[T]``), builds the attention metadata
(where each sequence's rows start, its context length, its block table, the
cache slot of every new token), runs the model, and samples at the last row
of every sequence the scheduler marked as sampling (a partial prefill does not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from folovllm.attention.backends.abstract import AttentionMetadata
from folovllm.attention.selector import get_attn_backend
from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.model_executor.models import get_model_class
from folovllm.model_loader import ModelLoadError, iterate_weights
from folovllm.request import Sequence
from folovllm.sample.sampler import Sampler
from folovllm.utils.common import cdiv
from folovllm.worker.block_table import BlockTable
from folovllm.worker.cuda_graph_runner import CUDAGraphRunner
from folovllm.worker.runner_output import AsyncModelRunnerOutput
from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

logger = logging.getLogger(__name__)


@dataclass
class _StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor
    sample_seqs: list[Sequence]
    is_decode_only: bool


class ModelRunner:
    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.config = config
        self.model_config = config.model_config
        self.device = device
        self.dtype = config.dtype
        self.block_size = config.cache_config.block_size
        self.max_model_len = config.model_config.max_model_len
        self.max_num_seqs = config.scheduler_config.max_num_seqs
        self.max_blocks_per_seq = cdiv(self.max_model_len, self.block_size)
        self.vocab_size = config.model_config.get_vocab_size()
        self.num_kv_heads = config.model_config.get_num_kv_heads()
        self.pin_memory = device.type == "cuda"
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        self.sampler = Sampler()
        self.generators: dict[int, torch.Generator] = {}
        self.block_table = BlockTable(self.max_num_seqs, self.max_blocks_per_seq)
        # The last step's sampled ids (on the device) and each sampler's row in it:
        # with async scheduling they are the next step's inputs before the host sees them.
        self.prev_sampled: torch.Tensor | None = None
        self.prev_sampled_rows: dict[int, int] = {}
        self.model = None
        self.kv_cache: torch.Tensor | None = None
        self.graph_runner: CUDAGraphRunner | None = None

    # -- set-up ------------------------------------------------------------------
    def load_model(self) -> None:
        hf_config = self.model_config.hf_config
        model_cls = get_model_class(hf_config)
        backend = get_attn_backend(self.device)
        old_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = model_cls(hf_config, backend)
        finally:
            torch.set_default_dtype(old_dtype)
        loaded = model.load_weights(iterate_weights(self.model_config.model, self.model_config.revision))
        missing = sorted({name for name, _ in model.named_parameters()} - loaded)
        if missing:
            raise ModelLoadError(f"Checkpoint {self.model_config.model!r} lacks weights for: {missing[:8]}"
                                 + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        self.model = model.eval()
        logger.info("Loaded %s (%s, attention backend: %s)", model_cls.__name__, self.dtype, backend.name)

    def get_kv_cache_bytes_per_block(self) -> int:
        mc = self.model_config
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * mc.get_num_layers() * self.block_size * mc.get_num_kv_heads() * mc.get_head_dim() * elem

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate the one KV tensor and give each attention layer its slice."""
        mc = self.model_config
        shape = (mc.get_num_layers(), 2, num_blocks, self.block_size, mc.get_num_kv_heads(), mc.get_head_dim())
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.attn.kv_cache = self.kv_cache[i]

    def capture_model(self) -> None:
        if self.device.type != "cuda" or self.config.enforce_eager:
            return
        self.graph_runner = CUDAGraphRunner(
            self.model, self.max_num_seqs, self.max_blocks_per_seq, self.max_model_len, self.device, self._num_kv_splits,
        )  # fmt: skip
        self.graph_runner.capture()
        logger.info("Captured CUDA graphs for decode batch sizes %s", self.graph_runner.capture_sizes)

    @torch.inference_mode()
    def profile_run(self) -> None:
        """One forward at the largest batch the scheduler can form, plus sampling.

        Run before the real KV cache exists (a throw-away cache covers the
        dummy batch), so the worker can measure peak activation memory.
        """
        num_tokens = self.config.scheduler_config.max_num_batched_tokens
        num_seqs = min(self.max_num_seqs, cdiv(num_tokens, self.max_model_len))
        num_tokens = min(num_tokens, num_seqs * self.max_model_len)
        lens = [num_tokens // num_seqs] * num_seqs
        lens[-1] += num_tokens - sum(lens)
        blocks = [cdiv(n, self.block_size) for n in lens]
        self.initialize_kv_cache(sum(blocks))
        block_table = np.zeros((num_seqs, max(blocks)), dtype=np.int32)
        start = 0
        for i, nb in enumerate(blocks):
            block_table[i, :nb] = np.arange(start, start + nb)
            start += nb
        positions = np.concatenate([np.arange(n) for n in lens])
        seq_of_token = np.repeat(np.arange(num_seqs), lens)
        slots = block_table[seq_of_token, positions // self.block_size].astype(np.int64) * self.block_size + positions % self.block_size
        qsl = [0] + np.cumsum(lens).tolist()
        meta = self._make_metadata(qsl, lens, block_table, slots, max(lens))
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        hidden = self.model(ids, self._to_device(positions.astype(np.int64)), meta)
        logits = self.model.compute_logits(hidden[-1:].expand(self.max_num_seqs, -1))
        self.sampler.sample(logits.float(), _profile_sampling_metadata(logits.shape[0], self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.kv_cache = None
        for layer in self.model.model.layers:
            layer.self_attn.attn.kv_cache = None

    # -- one step ----------------------------------------------------------------
    def _num_kv_splits(self, num_seqs: int, max_seq_len: int) -> int:
        """Split long contexts so that at least ~2 programs per SM exist."""
        programs = num_seqs * self.num_kv_heads
        return max(1, min(cdiv(2 * self.num_sms, programs), cdiv(max_seq_len, 256), 64))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.pin_memory:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _make_metadata(self, qsl, seq_lens, block_table: np.ndarray, slots: np.ndarray, max_query_len: int) -> AttentionMetadata:
        max_seq_len = max(seq_lens)
        return AttentionMetadata(
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            query_start_loc=self._to_device(np.asarray(qsl, dtype=np.int32)),
            seq_lens=self._to_device(np.asarray(seq_lens, dtype=np.int32)),
            block_table=self._to_device(block_table),
            slot_mapping=self._to_device(np.asarray(slots, dtype=np.int64)),
            query_start_loc_cpu=list(qsl),
            seq_lens_cpu=list(seq_lens),
            num_kv_splits=self._num_kv_splits(len(seq_lens), max_seq_len),
        )

    def _prepare_inputs(self, so: SchedulerOutput) -> _StepInputs:
        bs = self.block_size
        seqs = so.scheduled_seqs
        rows = np.fromiter((self.block_table.update(s.seq_id, so.block_ids[s.seq_id]) for s in seqs), np.int64, len(seqs))
        block_table = self.block_table.gather(rows)
        starts = np.asarray(so.num_computed_tokens, dtype=np.int64)
        counts = np.fromiter((so.num_scheduled_tokens[s.seq_id] for s in seqs), np.int64, len(seqs))
        ends = starts + counts
        max_query_len = int(counts.max())
        qsl = np.concatenate([[0], np.cumsum(counts)])
        ids: list[int] = []
        pending_dst: list[int] = []  # flat rows whose input is a token still on the device
        pending_src: list[int] = []
        for i, (s, a, b) in enumerate(zip(seqs, starts.tolist(), ends.tolist())):
            if a >= s.num_tokens:  # a decode whose input was sampled by the step still in flight
                ids.append(0)
                pending_dst.append(int(qsl[i]))
                pending_src.append(self.prev_sampled_rows[s.seq_id])
            elif b - a == 1:
                ids.append(s.token_id_at(a))
            else:
                ids.extend(s.get_token_ids()[a:b])
        input_ids = np.asarray(ids, dtype=np.int64)
        seq_of_token = np.repeat(np.arange(len(seqs)), counts)
        positions = np.arange(int(qsl[-1])) - np.repeat(qsl[:-1], counts) + np.repeat(starts, counts)
        slots = block_table[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        sampling = np.asarray(so.sampling, dtype=bool)
        sample_seqs = [s for s, flag in zip(seqs, so.sampling) if flag]
        meta = self._make_metadata(qsl.tolist(), ends.tolist(), block_table, slots, max_query_len)
        input_ids_dev = self._to_device(input_ids)
        if pending_dst:
            src = self._to_device(np.asarray(pending_src, dtype=np.int64))
            input_ids_dev[self._to_device(np.asarray(pending_dst, dtype=np.int64))] = self.prev_sampled[src]
        return _StepInputs(
            input_ids=input_ids_dev,
            positions=self._to_device(positions),
            attn_metadata=meta,
            logits_indices=self._to_device(qsl[1:][sampling] - 1),
            sample_seqs=sample_seqs,
            is_decode_only=max_query_len == 1,
        )

    def _generators_for(self, seqs: list[Sequence]) -> dict[int, torch.Generator]:
        for seq in seqs:
            seed = seq.sampling_params.seed
            if seed is not None and seq.seq_id not in self.generators:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seed + seq.index)  # n > 1: each sibling its own stream
                self.generators[seq.seq_id] = gen
        return self.generators

    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> AsyncModelRunnerOutput:
        """Launch one step; the returned handle's ``get()`` brings the tokens to the host."""
        for seq_id in so.finished_seq_ids:
            self.generators.pop(seq_id, None)
            self.block_table.release(seq_id)
        for seq_id in so.preempted_seq_ids:
            self.block_table.release(seq_id)  # its blocks were freed; it restarts from scratch
        if so.is_empty:
            return AsyncModelRunnerOutput([], None, self.device)
        inputs = self._prepare_inputs(so)
        meta = inputs.attn_metadata
        if inputs.is_decode_only and self.graph_runner is not None and self.graph_runner.can_run(meta.num_seqs):
            hidden = self.graph_runner.run(inputs.input_ids, inputs.positions, meta.slot_mapping, meta.seq_lens, meta.block_table)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, meta)
        if not inputs.sample_seqs:
            return AsyncModelRunnerOutput([], None, self.device)
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        md = build_sampling_metadata(inputs.sample_seqs, self._generators_for(inputs.sample_seqs), self.vocab_size, self.device)
        out = self.sampler(logits, md)
        self.prev_sampled = out.sampled_token_ids
        self.prev_sampled_rows = {s.seq_id: i for i, s in enumerate(inputs.sample_seqs)}
        return AsyncModelRunnerOutput(inputs.sample_seqs, out, self.device)


def _profile_sampling_metadata(num_rows: int, device: torch.device):
    from folovllm.sample.metadata import SamplingMetadata

    return SamplingMetadata(
        temperature=torch.ones(num_rows, device=device), all_greedy=False, all_random=True, greedy_mask=None,
        top_p=torch.full((num_rows,), 0.9, device=device), top_k=torch.full((num_rows,), 50, device=device),
        min_p=None, generators={}, prompt_token_ids=None, output_token_ids=None, presence_penalties=None,
        frequency_penalties=None, repetition_penalties=None, min_tokens_stop_ids={}, max_num_logprobs=None,
    )  # fmt: skip
