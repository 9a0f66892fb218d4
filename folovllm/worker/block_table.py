"""The block table kept across steps on the host (as vLLM's InputBatch does).

Rebuilding a [num_seqs, max_blocks] array from Python lists every step costs
more than the decode step itself at large batch sizes. Instead each sequence
the worker holds keeps a row; a step appends only the blocks the scheduler
says it gained, then gathers the rows of the batch in batch order.
"""

from __future__ import annotations

import numpy as np


class BlockTable:
    def __init__(self, max_num_rows: int, max_blocks_per_row: int) -> None:
        self.table = np.zeros((max_num_rows, max_blocks_per_row), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_rows, dtype=np.int32)

    def add_row(self, row: int, block_ids: list[int]) -> None:
        self.num_blocks[row] = 0
        self.append_row(row, block_ids)

    def append_row(self, row: int, block_ids: list[int]) -> None:
        start = int(self.num_blocks[row])
        self.table[row, start : start + len(block_ids)] = block_ids
        self.num_blocks[row] = start + len(block_ids)

    def clear_row(self, row: int) -> None:
        self.num_blocks[row] = 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        width = int(self.num_blocks[rows].max())
        return self.table[rows, :width]
