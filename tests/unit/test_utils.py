from __future__ import annotations

import pytest
import torch

from folovllm.utils import Counter, cdiv, resolve_device, set_random_seed


def test_counter_and_cdiv():
    c = Counter()
    assert [next(c) for _ in range(3)] == [0, 1, 2]
    assert Counter(5).counter == 5
    assert (cdiv(0, 16), cdiv(1, 16), cdiv(16, 16), cdiv(17, 16)) == (0, 1, 1, 2)


def test_seeding_is_reproducible():
    set_random_seed(7)
    a = torch.rand(3)
    set_random_seed(7)
    assert torch.equal(a, torch.rand(3))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("npu")
    with pytest.raises(ValueError):
        resolve_device("cpu:1")
