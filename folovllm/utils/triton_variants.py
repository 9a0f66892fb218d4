"""How many variants of each FoloVLLM Triton kernel have been compiled in this process.

A diagnostic for the start-up warm-up: a kernel whose count grows while
requests run compiled inside a user's request (hundreds of milliseconds).
Under ``TRITON_INTERPRET=1`` nothing compiles and every count is 0.
"""

from __future__ import annotations

import sys


def num_compiled_variants(kernel) -> int:
    """Variants of one ``@triton.jit`` kernel compiled so far, on every device."""
    # device_caches: device -> (kernel cache, ...); the layout of the rest varies by version
    return sum(len(entry[0]) for entry in kernel.device_caches.values())


def compiled_kernel_variants() -> dict[str, int]:
    """``{"module.kernel": number of compiled variants}`` for every kernel in an imported folovllm module."""
    from triton.runtime.jit import JITFunction

    counts = {}
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("folovllm.") or module is None:
            continue
        for name, obj in list(vars(module).items()):
            if isinstance(obj, JITFunction) and obj.__module__ == mod_name:  # not an imported helper
                counts[f"{mod_name}.{name}"] = num_compiled_variants(obj)
    return counts


def total_compiled_variants() -> int:
    """Variants compiled so far of every kernel in an imported folovllm module."""
    return sum(compiled_kernel_variants().values())
