"""Freezing the start-up heap: the collector skips it, an engine's start-up hands it back first
(so a dropped engine in a reference cycle is collected), and the interpreter's exit does too."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from folovllm import LLMEngine
from folovllm.utils.gc_utils import freeze_gc_heap, unfreeze_gc_heap


class _Node:
    pass


def test_a_frozen_cycle_waits_for_the_unfreeze():
    try:
        node = _Node()
        node.me = node
        ref = weakref.ref(node)
        freeze_gc_heap()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # garbage now, but frozen: no collection looks at it
        unfreeze_gc_heap()
        gc.collect()
        assert ref() is None
    finally:
        unfreeze_gc_heap()


def test_an_engine_freezes_the_heap_and_the_next_one_collects_a_dropped_one(tiny_model):
    try:
        engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64)
        assert gc.get_freeze_count() > 0
        runner = weakref.ref(engine.executor.worker.model_runner)
        engine.self_ref = engine  # a reference cycle: only the collector can free it
        del engine
        gc.collect()
        assert runner() is not None
        LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=64)
        assert runner() is None
    finally:
        unfreeze_gc_heap()


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
