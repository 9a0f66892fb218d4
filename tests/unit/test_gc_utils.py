"""Freezing the long-lived heap: the collector skips it; an engine freezes what came before it but
stays collectable itself; the next freeze (the next engine's start-up) and the interpreter's exit
unfreeze."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from folovllm import LLM, LLMEngine
from folovllm.utils.gc_utils import freeze_gc_heap


class _Node:
    pass


def test_a_frozen_cycle_waits_for_the_next_freeze():
    try:
        node = _Node()
        node.me = node
        ref = weakref.ref(node)
        freeze_gc_heap()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # garbage now, but frozen: no collection looks at it
        freeze_gc_heap()  # unfreezes first, so its collection finds it
        assert ref() is None
    finally:
        gc.unfreeze()


def _engine_with_a_cycle(tiny_model, front=LLMEngine.from_engine_args) -> tuple[object, weakref.ref]:
    """An engine whose model runner refers to itself, as CUDA-graph objects can: only the collector frees it."""
    made = front(str(tiny_model), device="cpu", max_model_len=64)
    runner = getattr(made, "llm_engine", made).executor.worker.model_runner
    runner.me = runner
    return made, weakref.ref(runner)


@pytest.mark.parametrize("front", [LLM, LLMEngine.from_engine_args], ids=["LLM", "LLMEngine"])
def test_an_engine_freezes_what_came_before_it_and_stays_collectable(tiny_model, front):
    """``del llm; gc.collect()`` frees an engine (its model, its KV cache) as it did before freezing."""
    try:
        engine, runner = _engine_with_a_cycle(tiny_model, front)
        assert gc.get_freeze_count() > 0
        # The LLM / LLMEngine object existed when the heap was frozen: it must not be in a cycle,
        # or it would keep everything it holds out of the collector's reach.
        engine_ref = weakref.ref(engine)
        del engine
        assert engine_ref() is None  # freed by its reference count alone
        gc.collect()
        assert runner() is None
    finally:
        gc.unfreeze()


def test_an_engine_alive_when_the_next_one_starts_is_collected_at_the_start_after(tiny_model):
    try:
        first, runner = _engine_with_a_cycle(tiny_model)
        second, _ = _engine_with_a_cycle(tiny_model)  # froze `first` with the rest of the heap
        del first
        gc.collect()
        assert runner() is not None  # frozen: the collector does not look at it
        del second
        LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64)  # unfreezes, then collects
        assert runner() is None
    finally:
        gc.unfreeze()


def test_frozen_cycles_are_collected_at_exit():
    code = (
        "from folovllm.utils.gc_utils import freeze_gc_heap\n"
        "class Node:\n"
        "    def __del__(self): print('collected')\n"
        "node = Node(); node.me = node\n"
        "freeze_gc_heap()\n"
        "del node\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "collected\n"
