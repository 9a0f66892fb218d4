"""The worker's own copy of every sequence it holds (vLLM's CachedRequestState / InputBatch).

The scheduler describes a sequence once (``NewRequestData``) and then sends
only deltas; this is where the worker keeps what it was told. Each held
sequence has a row: its token ids in ``token_ids`` (a host array the model
runner gathers a step's inputs from with one fancy index) and its KV blocks
in the block table. Rows are taken when a sequence arrives and given back
when it finishes; a preempted sequence keeps its row, its tokens and its
random generator, and only loses its blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from folovllm.core.sched.output import CachedRequestData, NewRequestData
from folovllm.sampling_params import SamplingParams
from folovllm.worker.block_table import BlockTable


@dataclass
class CachedRequestState:
    req_id: int
    row: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # as far as the scheduler has sent them
    sampling_params: SamplingParams
    generator: Optional[torch.Generator]  # a seeded sequence's own random stream
    num_computed_tokens: int

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)


class InputBatch:
    def __init__(self, max_num_reqs: int, max_model_len: int, max_blocks_per_req: int, device: torch.device) -> None:
        self.device = device
        self.requests: dict[int, CachedRequestState] = {}
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int32)
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int32)  # tokens known on the host, per row
        self.block_table = BlockTable(max_num_reqs, max_blocks_per_req)
        self.free_rows = list(range(max_num_reqs - 1, -1, -1))
        self.num_prompt_logprobs: dict[int, int] = {}  # req_id -> k, for sequences that asked for prompt_logprobs

    def add_request(self, new: NewRequestData) -> None:
        if not self.free_rows:
            raise RuntimeError(f"the worker already holds {len(self.requests)} sequences, its maximum")
        row = self.free_rows.pop()
        seed = new.sampling_params.seed
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        self.requests[new.req_id] = CachedRequestState(
            new.req_id, row, new.prompt_token_ids, [], new.sampling_params, generator, new.num_computed_tokens
        )
        if new.sampling_params.prompt_logprobs is not None:
            self.num_prompt_logprobs[new.req_id] = new.sampling_params.prompt_logprobs
        n = len(new.prompt_token_ids)
        self.token_ids[row, :n] = new.prompt_token_ids
        self.num_tokens[row] = n
        self.block_table.add_row(row, new.block_ids)

    def update_requests(self, cached: CachedRequestData) -> None:
        rows, cols, new_tokens = [], [], []  # written to the token array in one go
        grown_rows, new_lengths = [], []
        for req_id, token_ids, block_ids, num_computed in zip(
            cached.req_ids, cached.new_token_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            state = self.requests[req_id]
            state.num_computed_tokens = num_computed
            if token_ids:
                start = state.num_tokens
                state.output_token_ids.extend(token_ids)
                rows += [state.row] * len(token_ids)
                cols += range(start, start + len(token_ids))
                new_tokens += token_ids
                grown_rows.append(state.row)
                new_lengths.append(state.num_tokens)
            if block_ids:
                self.block_table.append_row(state.row, block_ids)
        if new_tokens:
            self.token_ids[rows, cols] = new_tokens
            self.num_tokens[grown_rows] = new_lengths

    def preempt_request(self, req_id: int) -> None:
        """Its blocks were freed; it keeps everything else and is recomputed when resumed.

        (An id sent again after a failed step may name a sequence already removed.)
        """
        state = self.requests.get(req_id)
        if state is not None:
            self.block_table.clear_row(state.row)

    def remove_request(self, req_id: int) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None:
            self.block_table.clear_row(state.row)
            self.free_rows.append(state.row)
            self.num_prompt_logprobs.pop(req_id, None)
