"""The model runner: SchedulerOutput -> flattened batch -> model -> sampled tokens.

It owns the model, the KV cache tensor and the worker's copy of every
sequence (``InputBatch``). ``execute_model`` first applies the step's deltas
to that copy, then lays the scheduled tokens of all sequences end to end
(``input_ids[T]``, ``positions[T]``), builds the attention metadata (where
each sequence's rows start, its context length, its block table, the cache
slot of every new token), runs the model, and samples at the last row of
every sequence whose step reaches the end of its known tokens (a partial
prefill does not sample).
"""

from __future__ import annotations

import contextlib
import logging
import operator
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from folovllm.attention.backends.abstract import AttentionMetadata, num_kv_splits
from folovllm.attention.selector import get_attn_backend
from folovllm.config import EngineConfig
from folovllm.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from folovllm.model_executor.layers.attention import Attention
from folovllm.model_executor.layers.linear import LinearBase
from folovllm.model_executor.models import get_model_class
from folovllm.model_executor.weight_loading import load_weights
from folovllm.model_loader import iterate_weights
from folovllm.sample.metadata import SamplingMetadata
from folovllm.sample.sampler import LogprobsTensors, Sampler, gather_logprobs
from folovllm.sampling_params import SamplingParams
from folovllm.utils.common import cdiv
from folovllm.utils.compile_ahead import compile_in_parallel
from folovllm.utils.device import HAS_TRITON, num_sms
from folovllm.worker.cuda_graph_runner import CUDAGraphRunner
from folovllm.worker.input_batch import CachedRequestState, InputBatch
from folovllm.worker.input_buffers import InputBuffers
from folovllm.worker.runner_output import AsyncGPUModelRunnerOutput
from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

logger = logging.getLogger(__name__)

# Prompt logprobs are computed this many positions at a time: a [rows, vocab] float32 tensor
# each, kept below what profile_run's sampler pass (max_num_seqs rows) already measured.
_PROMPT_LOGPROBS_ROWS = 128


@dataclass
class _StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    graph_size: int | None  # the CUDA graph that runs the step (its inputs padded to that size), or None: eager
    logits_indices: torch.Tensor | None  # the rows that sample; None: every row (a step of decodes only)
    sample_states: list[CachedRequestState]  # the sequences that sample, in sampler-row order
    sampling_metadata: SamplingMetadata | None  # their settings (None: no sequence samples)
    # (sequence, first prompt position, its first row in the batch, rows) for prompt logprobs
    prompt_logprob_rows: list[tuple[CachedRequestState, int, int, int]]


def slot_mapping(block_table: np.ndarray, batch_index: np.ndarray, positions: np.ndarray, block_size: int) -> np.ndarray:
    """The cache slot of each token: its sequence's block for that position, and the offset in it."""
    blocks = block_table[batch_index, positions // block_size].astype(np.int64)
    return blocks * block_size + positions % block_size


class ModelRunner:
    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.config = config
        self.model_config = config.model_config
        self.device = device
        self.dtype = config.dtype
        self.kv_cache_dtype = config.get_kv_cache_dtype()
        self.block_size = config.cache_config.block_size
        self.max_model_len = config.model_config.max_model_len
        self.max_num_seqs = config.scheduler_config.max_num_seqs
        self.max_blocks_per_seq = cdiv(self.max_model_len, self.block_size)
        self.vocab_size = config.model_config.get_vocab_size()
        self.num_kv_heads = config.get_num_kv_heads()
        self.num_sms = num_sms(device)
        self.sampler = Sampler(config.model_config.seed, device)
        self.input_batch = InputBatch(self.max_num_seqs, self.max_model_len, self.max_blocks_per_seq, device)
        self.attn_backend = get_attn_backend(device)
        max_num_tokens = config.scheduler_config.max_num_batched_tokens
        self.buffers = InputBuffers(
            max_num_tokens, self.max_num_seqs, self.max_blocks_per_seq,
            self.attn_backend.max_prefill_tiles(max_num_tokens, self.max_num_seqs, config.model_config.get_head_dim()),
            device, pin_memory=device.type == "cuda",
        )  # fmt: skip
        # Recorded after a step's copies to the device: the next step waits for it before it
        # writes the (pinned) host buffers those copies read.
        self.inputs_copied = torch.cuda.Event() if device.type == "cuda" else None
        # The last step's sampled ids (on the device) and each sampler's row in it:
        # with async scheduling they are the next step's inputs before the host sees them.
        self.prev_sampled: torch.Tensor | None = None
        self.prev_sampled_rows: dict[int, int] = {}
        # The last step's sampling settings and the sequences they were built for (_sampling_metadata).
        self.sampling_cache: tuple[list[CachedRequestState], SamplingMetadata] | None = None
        self.model = None
        self.kv_cache: torch.Tensor | None = None
        self.graph_runner: CUDAGraphRunner | None = None

    # -- set-up ------------------------------------------------------------------
    def load_model(self) -> None:
        hf_config = self.model_config.hf_config
        model_cls = get_model_class(hf_config)
        backend = self.attn_backend
        old_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = model_cls(hf_config, backend, self.model_config.quant_config)
        finally:
            torch.set_default_dtype(old_dtype)
        load_weights(model, iterate_weights(self.model_config.model, self.model_config.revision))
        for module in model.modules():
            if isinstance(module, LinearBase):
                module.quant_method.process_weights_after_loading(module)
        self.model = model.eval()
        quant = self.model_config.quantization or "float weights"
        logger.info("Loaded %s (%s, %s, attention backend: %s)", model_cls.__name__, self.dtype, quant, backend.name)

    def get_kv_cache_bytes_per_block(self) -> int:
        mc = self.model_config
        elem = torch.tensor([], dtype=self.kv_cache_dtype).element_size()
        return 2 * mc.get_num_layers() * self.block_size * self.num_kv_heads * mc.get_head_dim() * elem

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """Allocate the one KV tensor and give each attention layer its slice."""
        mc = self.model_config
        shape = (mc.get_num_layers(), 2, num_blocks, self.block_size, self.num_kv_heads, mc.get_head_dim())
        self.kv_cache = torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)
        self._bind_kv_cache(list(self.kv_cache))

    def _bind_kv_cache(self, per_layer: list[torch.Tensor | None]) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        assert len(layers) == len(per_layer), f"{len(layers)} attention layers but {len(per_layer)} KV caches"
        for layer, cache in zip(layers, per_layer):
            layer.kv_cache = cache

    def capture_model(self) -> None:
        if self.device.type != "cuda" or self.config.enforce_eager:
            return
        self.graph_runner = self.new_graph_runner()
        self.graph_runner.capture()
        logger.info("Captured CUDA graphs: decode batch sizes %s, mixed-step token counts %s",
                    self.graph_runner.decode_sizes, self.graph_runner.mixed_sizes)  # fmt: skip

    def new_graph_runner(self) -> CUDAGraphRunner:
        """A graph runner sized for this engine (its ladders, buffers, split rule); not captured yet."""
        sc = self.config.scheduler_config
        return CUDAGraphRunner(
            self.model, self.attn_backend, self.buffers, self.max_num_seqs, sc.max_num_batched_tokens,
            self.max_blocks_per_seq, self.max_model_len, self.model_config.get_head_dim(), self.device, self._num_kv_splits,
        )  # fmt: skip

    def profile_num_tokens(self) -> int:
        """Tokens of the profile run's step: the budget, or fewer if the seats cannot hold that many."""
        return min(self.config.scheduler_config.max_num_batched_tokens, self.max_num_seqs * self.max_model_len)

    @torch.inference_mode()
    def profile_run(self) -> int:
        """One step at the largest batch the scheduler can form: the most tokens, every seat sampling.

        Runs before the real KV cache exists, on a throw-away cache just big
        enough for the dummy batch. Returns that cache's size in bytes, so the
        worker can take it out of the peak memory it measures.
        """
        num_seqs, num_tokens = self.max_num_seqs, self.profile_num_tokens()
        lens = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
        self.initialize_kv_cache(sum(cdiv(n, self.block_size) for n in lens))
        self._dummy_run(lens, SamplingParams(temperature=1.0, top_p=0.9, top_k=50))  # the sampler's hungriest path
        cache_bytes = self.kv_cache.numel() * self.kv_cache.element_size()
        self._drop_kv_cache()
        return cache_bytes

    def _drop_kv_cache(self) -> None:
        self.kv_cache = None
        self._bind_kv_cache([None] * self.model_config.get_num_layers())

    @torch.inference_mode()
    def compile_kernels(self, threads: int) -> None:
        """Compile every Triton variant that the profile run, the warm-up and graph capture will
        launch, ``threads`` at a time (``compile_in_parallel``): the profile step, then the warm-up's
        steps as without CUDA graphs (which reach every variant the graphs do), each launch only
        compiling. What they compute is garbage and is dropped. No kernel runs, so the warm-up's
        one-block KV cache is never read past: it only gives the kernels their arguments."""
        try:
            with compile_in_parallel(threads), self._sampler_generators_kept():
                self.profile_run()
                self.initialize_kv_cache(1)
                self.warm_up(compile_only=True)
        finally:
            self._drop_kv_cache()

    @contextlib.contextmanager
    def _sampler_generators_kept(self) -> Iterator[None]:
        """The sampler's generators back as they were after the block: its dummy steps' draws leave
        seeded runs unchanged."""
        generators = [g for g in (self.sampler.generator, self.sampler.host_generator) if g is not None]
        states = [g.get_state() for g in generators]
        try:
            yield
        finally:
            for gen, state in zip(generators, states):
                gen.set_state(state)

    @torch.inference_mode()
    def warm_up(self, compile_only: bool = False) -> None:
        """Run, before the first request, every kernel variant a step can reach outside the CUDA graphs.

        The profile run compiled the big-batch paths; these short steps add the
        small-batch ones (e.g. GPTQ's split-K GEMM) and each sampler path:
        greedy, plain temperature (the fused sampler kernels on a GPU), the
        two side by side (their variant with greedy rows) and top-k/top-p; on a
        GPU every fused sampling kernel is also launched on the model's logits
        and on float32 ones (after penalties). Triton would otherwise compile
        them inside a user's request. Without CUDA graphs (``enforce_eager``) decode steps run the
        decode kernel eagerly too, split and unsplit, and the GEMV at 1, 2 and 4
        rows: four decode steps compile them, and prompts of 32 to 256 tokens the
        skinny GEMM's configurations by row count (graph capture compiles them
        otherwise). The dummy K/V land in
        blocks no request owns yet, and the sampler's generators are put back,
        so seeded runs do not change.

        ``compile_only``: inside ``compile_kernels``' pass, where no kernel runs: the eager-only
        steps too, and the split decode at the model's longest context, whatever the cache holds.
        """
        with self._sampler_generators_kept():
            self._warm_up_steps(compile_only)

    def _warm_up_steps(self, compile_only: bool) -> None:
        budget = self.config.scheduler_config.max_num_batched_tokens
        greedy, temperature = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)
        for params in (greedy, temperature, SamplingParams(top_k=8, top_p=0.9)):
            self._dummy_run([min(8, self.max_model_len, budget)], params)
        if self.device.type == "cuda" and HAS_TRITON:  # every fused sampling kernel, on logits as the model's
            from folovllm.sample.sampler import warm_up_fused_kernels

            hidden = torch.zeros(2, self.model_config.hf_config.hidden_size, dtype=self.dtype, device=self.device)
            warm_up_fused_kernels(self.model.compute_logits(hidden))
        if self.max_num_seqs > 1:  # (the budget holds max_num_seqs tokens at least)
            self._dummy_run([min(8, self.max_model_len, budget // 2)] * 2, [greedy, temperature])
        if self.config.enforce_eager or compile_only:
            longest = self.max_model_len  # the longest a sequence can get
            if not compile_only:
                longest = min(longest, self.kv_cache.shape[2] * self.block_size)
            self._dummy_run([min(2, longest)], greedy, decode=True)  # unsplit
            if self._num_kv_splits(1, longest) > 1:  # one sequence at the longest context: split
                self._dummy_run([longest], greedy, decode=True)
            for n in (2, 4):  # the GEMV's 2- and 4-row variants (3 rows run as 4)
                if n <= self.max_num_seqs:
                    self._dummy_run([min(2, longest)] * n, greedy, decode=True)
            for n in (32, 64, 128, 256):  # the skinny GEMM's row buckets beyond the 8 and 16 above
                if n <= min(budget, longest):
                    self._dummy_run([n], greedy)

    def _dummy_run(self, lens: list[int], params: SamplingParams | list[SamplingParams], decode: bool = False) -> None:
        """One step of dummy sequences (token 0) of ``lens`` tokens, in blocks 0, 1, ...; then forgets them.
        A prefill of every token, or with ``decode`` only each sequence's last (the rest count as cached).
        ``params``: the sequences' sampling settings, one for all or a list of one each."""
        num_blocks = [cdiv(n, self.block_size) for n in lens]
        first_block = np.cumsum([0] + num_blocks)
        each = params if isinstance(params, list) else [params] * len(lens)
        new_reqs = [
            NewRequestData(-1 - i, [0] * n, each[i], list(range(first_block[i], first_block[i + 1])), n - 1 if decode else 0)
            for i, n in enumerate(lens)
        ]
        ids = [r.req_id for r in new_reqs]
        counts = [1 if decode else n for n in lens]
        try:
            self.execute_model(SchedulerOutput(new_reqs, CachedRequestData(), dict(zip(ids, counts)), sum(counts))).get()
        finally:  # also when the step fails: nothing of it stays behind
            for req_id in ids:
                self.input_batch.remove_request(req_id)
            self.prev_sampled, self.prev_sampled_rows = None, {}

    # -- one step ----------------------------------------------------------------
    def _num_kv_splits(self, num_seqs: int, max_seq_len: int) -> int:
        return num_kv_splits(num_seqs, self.num_kv_heads, max_seq_len, self.num_sms)

    def _make_metadata(
        self, qsl: np.ndarray, seq_lens: np.ndarray, block_table: np.ndarray, slots: np.ndarray, graph_size: int | None,
        decode: bool,
    ) -> AttentionMetadata:  # fmt: skip
        """The step's attention metadata, its arrays copied to the device buffers; for a CUDA graph,
        padded to the graph's size: padding tokens write no cache slot (-1), padding decode rows
        have no context (0) and come last, as themselves, in a decode order, and the work list's
        unused rows are (-1, -1). ``decode``: one query token per sequence."""
        buf, num_seqs = self.buffers, len(seq_lens)
        query_lens = np.diff(qsl)
        max_query_len, max_seq_len = int(query_lens.max()), int(seq_lens.max())
        tiles = self.attn_backend.make_prefill_tiles(query_lens, seq_lens, self.model_config.get_head_dim()) if not decode else None
        if tiles is not None:
            num_tiles = self.graph_runner.tiles_for[graph_size] if graph_size is not None else len(tiles)
            tiles = buf.prefill_tiles.copy_to_gpu(tiles, num_tiles, fill=-1)
        order = None
        if decode and self.attn_backend.orders_decode_rows:
            # a graph's padding rows (no context) run last, each as itself
            padding = np.arange(num_seqs, graph_size or num_seqs, dtype=np.int32)
            order = buf.decode_order.copy_to_gpu(np.concatenate([self.attn_backend.make_decode_order(seq_lens), padding]))[:num_seqs]
        return AttentionMetadata(
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            query_start_loc=buf.query_start_loc.copy_to_gpu(qsl),
            seq_lens=buf.seq_lens.copy_to_gpu(seq_lens, graph_size if decode else None, fill=0)[:num_seqs],
            block_table=buf.block_table.copy_to_gpu(block_table.ravel()).view(block_table.shape),
            slot_mapping=buf.slot_mapping.copy_to_gpu(slots, graph_size, fill=-1)[: len(slots)],
            query_start_loc_cpu=qsl.tolist(),
            seq_lens_cpu=seq_lens.tolist(),
            num_kv_splits=self._num_kv_splits(num_seqs, max_seq_len),
            prefill_tiles=tiles,
            decode_order=order,
        )

    def _update_states(self, so: SchedulerOutput) -> None:
        """Apply the step's deltas to the worker's copy of the sequences."""
        batch = self.input_batch
        for req_id in so.finished_req_ids:
            batch.remove_request(req_id)
        for req_id in so.preempted_req_ids:
            batch.preempt_request(req_id)
        for new in so.scheduled_new_reqs:
            batch.add_request(new)
        batch.update_requests(so.scheduled_cached_reqs)

    def _prepare_inputs(self, so: SchedulerOutput) -> _StepInputs:
        batch = self.input_batch
        states = [batch.requests[req_id] for req_id in so.num_scheduled_tokens]
        num_seqs = len(states)
        rows = np.fromiter((s.row for s in states), np.int64, num_seqs)
        counts = np.fromiter(so.num_scheduled_tokens.values(), np.int64, num_seqs)
        starts = np.fromiter((s.num_computed_tokens for s in states), np.int64, num_seqs)
        ends = starts + counts
        qsl = np.concatenate([[0], np.cumsum(counts)])
        batch_index = np.repeat(np.arange(num_seqs), counts)
        positions = np.arange(int(qsl[-1])) - np.repeat(qsl[:-1] - starts, counts)
        token_rows = rows[batch_index]
        input_ids = batch.token_ids[token_rows, positions].astype(np.int64)
        # A decode whose input was sampled by the step still in flight: the host
        # does not know the token yet, the device does (prev_sampled).
        pending = np.flatnonzero(positions >= batch.num_tokens[token_rows])
        # A sequence samples when this step reaches the end of its known tokens.
        sampling = ends >= batch.num_tokens[rows]
        block_table = batch.block_table.gather(rows)
        slots = slot_mapping(block_table, batch_index, positions, self.block_size)
        num_tokens = len(positions)
        decode = bool(counts.max() == 1)
        graph_size = None
        if self.graph_runner is not None:
            graph_size = self.graph_runner.graph_size(num_tokens, num_seqs, decode=decode)
        if self.inputs_copied is not None:
            self.inputs_copied.synchronize()  # the last step's copies have read the host buffers
        buf = self.buffers
        meta = self._make_metadata(qsl, ends, block_table, slots, graph_size, decode)
        input_ids_dev = buf.input_ids.copy_to_gpu(input_ids, graph_size)[:num_tokens]
        if len(pending):
            src = [self.prev_sampled_rows[states[i].req_id] for i in batch_index[pending].tolist()]
            input_ids_dev[buf.pending_rows.copy_to_gpu(pending)] = self.prev_sampled[buf.pending_sources.copy_to_gpu(np.asarray(src))]
        positions_dev = buf.positions.copy_to_gpu(positions, graph_size)[:num_tokens]
        every_row_samples = int(sampling.sum()) == num_tokens
        logits_indices = None if every_row_samples else buf.logits_indices.copy_to_gpu(qsl[1:][sampling] - 1)
        sample_states = [s for s, flag in zip(states, sampling.tolist()) if flag]
        sampling_metadata = self._sampling_metadata(sample_states) if sample_states else None
        if self.inputs_copied is not None:
            self.inputs_copied.record()
        prompt_logprob_rows = []
        if batch.num_prompt_logprobs:
            for i, state in enumerate(states):
                # Position p predicts prompt token p + 1; the last prompt position predicts an output.
                last = min(int(ends[i]), len(state.prompt_token_ids) - 1)
                if state.req_id in batch.num_prompt_logprobs and last > starts[i]:
                    prompt_logprob_rows.append((state, int(starts[i]), int(qsl[i]), last - int(starts[i])))
        return _StepInputs(
            input_ids=input_ids_dev,
            positions=positions_dev,
            attn_metadata=meta,
            graph_size=graph_size,
            logits_indices=logits_indices,
            sample_states=sample_states,
            sampling_metadata=sampling_metadata,
            prompt_logprob_rows=prompt_logprob_rows,
        )

    def _sampling_metadata(self, states: list[CachedRequestState]) -> SamplingMetadata:
        """The sampling settings of the sequences that sample this step, as tensors.

        Steady decoding samples the same sequences step after step, so the last step's are reused
        when the rows are the same sequences in the same order, unless a row's settings follow its
        tokens so far (penalties, a min_tokens not yet reached). vLLM's InputBatch likewise
        rebuilds them only when the batch changes. (Building them: ~0.3-0.5 ms at 256 rows.)
        """
        cached = self.sampling_cache
        if cached is not None and len(cached[0]) == len(states) and all(map(operator.is_, cached[0], states)):
            return cached[1]
        md = build_sampling_metadata(states, self.vocab_size, self.device, self.buffers.sampling)
        reusable = md.repetition_penalties is None and not md.min_tokens_stop_ids
        self.sampling_cache = (states, md) if reusable else None
        return md

    def _compute_prompt_logprobs(self, hidden: torch.Tensor, rows) -> dict[int, tuple[int, LogprobsTensors]]:
        """Logprobs of the prompt tokens this step computed, for sequences that asked for them."""
        out = {}
        for state, start, row, n in rows:
            k = self.input_batch.num_prompt_logprobs[state.req_id]
            targets = torch.tensor(state.prompt_token_ids[start + 1 : start + 1 + n], device=self.device)
            pieces = []
            for a in range(0, n, _PROMPT_LOGPROBS_ROWS):  # bounds the [rows, vocab] float32 logits
                b = min(n, a + _PROMPT_LOGPROBS_ROWS)
                logprobs = self.model.compute_logits(hidden[row + a : row + b]).float().log_softmax(dim=-1)
                pieces.append(gather_logprobs(logprobs, k, targets[a:b]))
            out[state.req_id] = (start, LogprobsTensors(
                torch.cat([p.logprob_token_ids for p in pieces]),
                torch.cat([p.logprobs for p in pieces]),
                torch.cat([p.selected_token_ranks for p in pieces]),
            ))  # fmt: skip
        return out

    @staticmethod
    def sampled_rows(hidden: torch.Tensor, inputs: _StepInputs) -> torch.Tensor:
        """The hidden states of the rows that sample: all of them in a step of decodes only (as many
        rows as sampling sequences), with no gather to launch."""
        return hidden if inputs.logits_indices is None else hidden[inputs.logits_indices]

    def _forward(self, inputs: _StepInputs) -> torch.Tensor:
        """The model's hidden states for the step: a CUDA graph's replay where one fits, else eager."""
        meta = inputs.attn_metadata
        if inputs.graph_size is not None:
            return self.graph_runner.run(inputs.graph_size, inputs.input_ids.shape[0], meta)
        return self.model(inputs.input_ids, inputs.positions, meta)

    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> AsyncGPUModelRunnerOutput:
        """Launch one step; the returned handle's ``get()`` brings the tokens to the host."""
        self._update_states(so)
        if so.is_empty:
            return AsyncGPUModelRunnerOutput([], None, self.device)
        inputs = self._prepare_inputs(so)
        hidden = self._forward(inputs)
        prompt_logprobs = self._compute_prompt_logprobs(hidden, inputs.prompt_logprob_rows) if inputs.prompt_logprob_rows else None
        if not inputs.sample_states:
            return AsyncGPUModelRunnerOutput([], None, self.device, prompt_logprobs)
        logits = self.model.compute_logits(self.sampled_rows(hidden, inputs))
        out = self.sampler(logits, inputs.sampling_metadata)
        req_ids = [s.req_id for s in inputs.sample_states]
        self.prev_sampled = out.sampled_token_ids
        self.prev_sampled_rows = {req_id: i for i, req_id in enumerate(req_ids)}
        return AsyncGPUModelRunnerOutput(req_ids, out, self.device, prompt_logprobs)
