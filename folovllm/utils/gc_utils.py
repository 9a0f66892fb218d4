"""Keep Python's cyclic garbage collector away from the process's long-lived heap.

A process that runs an engine holds ~10^5 objects that never become garbage
(the modules of torch and transformers, the HF config), yet every full
collection walks all of them, and streaming steps that build many small
objects (outputs, logprob entries) set collections off often. ``gc.freeze()``
moves the objects alive now into a generation that collections skip (vLLM
freezes its engine process's heap after start-up).

``LLMEngine`` freezes at the start of its start-up, not at the end: its own
objects (the model and its GPU tensors, the KV cache) stay collectable, so
``del llm; gc.collect()`` still frees an engine caught in reference cycles.
The price: an object frozen while alive that later becomes cyclic garbage (an
engine that was alive when a newer one started) waits for the next freeze,
which unfreezes first (the next engine's start-up), or for the interpreter's exit.
"""

from __future__ import annotations

import atexit
import gc

_exit_hook_registered = False


def freeze_gc_heap() -> None:
    """Freeze the heap as it is now: unfreeze what an earlier call froze (some of it may have
    become garbage since, an engine dropped in a reference cycle), collect, freeze what is left."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        # At exit the frozen objects must be collectable again, or extension modules
        # (Triton's nanobind types) report them as leaked.
        atexit.register(gc.unfreeze)
        _exit_hook_registered = True
    gc.unfreeze()
    gc.collect()
    gc.freeze()
