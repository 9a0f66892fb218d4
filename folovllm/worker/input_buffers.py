"""The step inputs' memory, allocated once: a host array the model runner fills and its device twin.

Each step the model runner writes its inputs (token ids, positions, cache slots, the attention
metadata; the sampling settings when the batch changes) into the host side with numpy and copies
what it wrote to the device. Allocating and pinning those arrays anew every step costs host time,
and the first step of a new size can pay for a pinned allocation inside a user's request; vLLM's
model runner keeps persistent buffers instead (``CpuGpuBuffer``), as here. The CUDA graphs read
the device side directly: a replay needs no copies of its own.

On a GPU the host side is pinned, so the copy runs asynchronously and the host goes on. The next
step writes the same host memory, so before it does the model runner waits until the copies that
read it have run (``ModelRunner._prepare_inputs``).
"""

from __future__ import annotations

import numpy as np
import torch


class CpuGpuBuffer:
    def __init__(self, *size: int, dtype: torch.dtype, device: torch.device, pin_memory: bool) -> None:
        self.cpu = torch.zeros(*size, dtype=dtype, pin_memory=pin_memory)
        self.np = self.cpu.numpy()
        self.gpu = torch.zeros(*size, dtype=dtype, device=device)

    def copy_to_gpu(self, values: np.ndarray, size: int | None = None, fill: int | None = None) -> torch.Tensor:
        """Write ``values`` to the front of the buffer and copy them to the device: its first ``size``
        rows (``len(values)`` by default), the ones after ``values`` set to ``fill`` (if given) or left
        as an earlier step wrote them."""
        n = len(values)
        size = n if size is None else size
        self.np[:n] = values
        if fill is not None:
            self.np[n:size] = fill
        return self.gpu[:size].copy_(self.cpu[:size], non_blocking=True)


SAMPLING_COLUMNS = {
    "temperature": torch.float32, "greedy_mask": torch.bool, "top_p": torch.float32, "top_k": torch.int64,
    "min_p": torch.float32, "presence_penalties": torch.float32, "frequency_penalties": torch.float32,
    "repetition_penalties": torch.float32,
}  # fmt: skip


class InputBuffers:
    """Every per-step input of the model and the sampler, at the largest size a step can have."""

    def __init__(
        self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int, max_prefill_tiles: int,
        device: torch.device, pin_memory: bool,
    ) -> None:  # fmt: skip
        def buffer(*size: int, dtype: torch.dtype) -> CpuGpuBuffer:
            return CpuGpuBuffer(*size, dtype=dtype, device=device, pin_memory=pin_memory)

        self.input_ids = buffer(max_num_tokens, dtype=torch.int64)
        self.positions = buffer(max_num_tokens, dtype=torch.int64)
        self.slot_mapping = buffer(max_num_tokens, dtype=torch.int64)
        self.query_start_loc = buffer(max_num_seqs + 1, dtype=torch.int32)
        self.seq_lens = buffer(max_num_seqs, dtype=torch.int32)
        # A step's [sequences, widest block list] table, laid out for that step's width.
        self.block_table = buffer(max_num_seqs * max_blocks_per_seq, dtype=torch.int32)
        self.prefill_tiles = buffer(max(max_prefill_tiles, 1), 2, dtype=torch.int32)
        # The decode kernel's program order (a permutation of a decode step's rows, padding rows included).
        self.decode_order = buffer(max_num_seqs, dtype=torch.int32)
        self.logits_indices = buffer(max_num_seqs, dtype=torch.int64)
        # Decodes whose input token the device holds (async scheduling): their rows, and the rows
        # of the last step's sampled tokens that fill them.
        self.pending_rows = buffer(max_num_tokens, dtype=torch.int64)
        self.pending_sources = buffer(max_num_tokens, dtype=torch.int64)
        # The sampling settings' per-row columns (rebuilt when the batch changes: build_sampling_metadata).
        self.sampling = {name: buffer(max_num_seqs, dtype=dtype) for name, dtype in SAMPLING_COLUMNS.items()}
