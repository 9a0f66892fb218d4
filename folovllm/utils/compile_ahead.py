"""Compile Triton kernel variants on a pool of threads, ahead of the steps that launch them.

Start-up runs dummy steps so that every kernel variant a request can reach is
compiled before the first request (``ModelRunner.warm_up``). Each variant
compiles when its first launch comes, one after the other: on a machine whose
Triton cache is empty that is a few tenths of a second each, for a few dozen
variants. Inside ``compile_in_parallel()`` a Triton launch does not run its
kernel: it hands the compile to a thread pool and returns (Triton's
``AsyncCompileMode``; its compiles spend most of their time in LLVM and
``ptxas``, outside the GIL). Leaving the block waits for every compile to
land in the kernels' in-memory caches (and Triton's cache on disk), so the
same steps run again after it find every variant compiled.

Nothing a kernel would have written is written in the block: the steps run
inside it compute garbage from there on, which is fine for dummy steps whose
results nobody reads, and only for them.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator


def compile_threads() -> int:
    """Threads for ``compile_in_parallel``: ``FOLOVLLM_COMPILE_THREADS``, or one per CPU this process
    may run on, up to 16. 0 or 1 turns the parallel pass off (the warm-up then compiles each variant
    as it comes)."""
    value = os.environ.get("FOLOVLLM_COMPILE_THREADS")
    if value is not None:
        if not value.isdigit():
            raise ValueError(f"FOLOVLLM_COMPILE_THREADS must be a whole number, got {value!r}")
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(16, cpus)


def can_compile_ahead() -> bool:
    """Whether this Triton can compile on a thread pool (``AsyncCompileMode``, Triton 3.4 and later)
    and compiles at all (the interpreter does not)."""
    try:
        import triton
    except ImportError:
        return False
    return hasattr(triton, "AsyncCompileMode") and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


@contextlib.contextmanager
def compile_in_parallel(max_workers: int, ignore_errors: bool = False) -> Iterator[None]:
    """Within the block, every Triton launch asks for its variant to be compiled, on one of
    ``max_workers`` threads, and launches nothing; on leaving, every compile has finished (a failed
    compile raises here, unless ``ignore_errors``). It patches Triton's ``JITFunction`` for the whole
    process: meant for start-up, while no other thread launches kernels."""
    import triton
    from triton.runtime.jit import JITFunction

    launch, do_compile = JITFunction.run, JITFunction._do_compile
    pending = []  # (kernel cache, key, future) filed by compile_once

    def compile_only(self, *args, grid, warmup, **kwargs):
        return launch(self, *args, grid=grid, warmup=True, **kwargs)

    def compile_once(self, key, signature, device, *args, **kwargs):
        # The same variant is launched again and again (once per layer): file its future in the
        # kernel's cache at once, so that later launches find it there (~15 us) instead of asking
        # again (~150 us on Triton 3.6, which files it only when compiled; later Tritons do this).
        kernel = do_compile(self, key, signature, device, *args, **kwargs)
        cache = self.device_caches[device][0]
        if kernel is not None and key not in cache:
            cache[key] = kernel
            pending.append((cache, key, kernel))
        return kernel

    JITFunction.run, JITFunction._do_compile = compile_only, compile_once
    try:
        with ThreadPoolExecutor(max_workers, thread_name_prefix="triton-compile") as pool, triton.AsyncCompileMode(pool, ignore_errors=ignore_errors):
            yield
    finally:
        JITFunction.run, JITFunction._do_compile = launch, do_compile
        for cache, key, future in pending:  # a compiled one has replaced its future; a failed one has not
            if cache.get(key) is future:
                del cache[key]
