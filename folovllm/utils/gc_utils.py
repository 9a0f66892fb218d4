"""Keep Python's cyclic garbage collector away from the engine's start-up heap.

Everything alive when an engine is ready (torch, transformers, the model's
modules, the tokenizer: ~10^5 objects) lives as long as the engine, yet every
full collection walks all of it, and steps that build many small objects
(outputs, logprob entries) set collections off often. ``gc.freeze()`` moves the
objects alive now into a generation that collections skip (vLLM freezes its
start-up heap too). The price: a frozen object that later becomes cyclic
garbage (an engine the caller dropped) is not collected until the heap is
unfrozen, which the next engine's start-up and the interpreter's exit do.
"""

from __future__ import annotations

import atexit
import gc

_exit_hook_registered = False


def freeze_gc_heap() -> None:
    """Collect what is garbage now, then freeze everything that is left."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        # At exit the frozen objects must be collectable again, or extension modules
        # (Triton's nanobind types) report them as leaked.
        atexit.register(gc.unfreeze)
        _exit_hook_registered = True
    gc.collect()
    gc.freeze()


def unfreeze_gc_heap() -> None:
    """Hand the frozen objects back to the collector (an engine dropped since may be among them)."""
    gc.unfreeze()
