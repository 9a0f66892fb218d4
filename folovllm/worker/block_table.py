"""The block table kept across steps on the host (as vLLM's InputBatch does).

Rebuilding a [num_seqs, max_blocks] array from Python lists every step costs
more than the decode step itself at large batch sizes. Instead each running
sequence keeps a row; a step only copies the blocks it gained since the last
step, then gathers the rows of the batch in batch order.
"""

from __future__ import annotations

import numpy as np


class BlockTable:
    def __init__(self, max_num_rows: int, max_blocks_per_seq: int) -> None:
        self.table = np.zeros((max_num_rows, max_blocks_per_seq), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_rows, dtype=np.int32)
        self.free_rows = list(range(max_num_rows - 1, -1, -1))
        self.row_of: dict[int, int] = {}

    def release(self, seq_id: int) -> None:
        row = self.row_of.pop(seq_id, None)
        if row is not None:
            self.num_blocks[row] = 0
            self.free_rows.append(row)

    def update(self, seq_id: int, block_ids: list[int]) -> int:
        """Sync one sequence's row with its current blocks; returns the row."""
        row = self.row_of.get(seq_id)
        if row is None:
            row = self.row_of[seq_id] = self.free_rows.pop()
        known = int(self.num_blocks[row])
        if len(block_ids) > known:
            self.table[row, known : len(block_ids)] = block_ids[known:]
            self.num_blocks[row] = len(block_ids)
        return row

    def gather(self, rows: np.ndarray) -> np.ndarray:
        width = int(self.num_blocks[rows].max())
        return self.table[rows, :width]
