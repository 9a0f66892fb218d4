"""Seeding, request ids and integer helpers."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) in one call."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Counter:
    """Monotonic counter used to hand out request ids ("0", "1", ...)."""

    def __init__(self, start: int = 0) -> None:
        self.counter = start

    def __next__(self) -> int:
        value = self.counter
        self.counter += 1
        return value


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative integers."""
    return -(a // -b)
