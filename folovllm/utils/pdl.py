"""Programmatic dependent launch (PDL) between the Triton kernels of a step, on Hopper and later.

Normally a kernel starts only once the kernel before it in the stream has finished and its writes
are flushed. One sequence decoding Qwen3-0.6B runs ten kernels per decoder layer, ~290 per step,
most of them a few microseconds long, so that gap is paid ~290 times. With PDL a kernel may be
launched while the one before is still running; the kernel itself says from where on it needs
that kernel's results:

* ``gdc_launch_dependents``: the next kernel may launch once every program of this one has issued
  it (first thing in each kernel here);
* ``gdc_wait``: block until the kernel before has finished and its writes are visible. Every
  kernel here waits before it reads anything another kernel writes, before it writes anything,
  and before any program can exit, so kernels still finish in stream order.

What needs nothing from the kernel before runs ahead of the wait: the one-row matmul
(``triton_gemv``) asks L2 for its weight rows there, while the norm or attention before it is still
running; the q/k norm kernel reads its token's position and cos/sin, and the decode kernel its
sequence's length. Those are the step's inputs, which the host copies in before the step's first
kernel, and constant tables: no kernel writes them, so no kernel still running can be writing
them (a launched-early kernel may overlap more than the one kernel before it, since that one also
started early). The kernels that do not take part (cuBLAS, torch's own, copies) launch as usual,
and a kernel launched with PDL after one of them simply waits for it.

On by default (``FOLOVLLM_PDL=0`` turns it off) where it can run: compute capability 9.0 or later
and a Triton whose CUDA launcher has the ``launch_pdl`` option (triton 3.6 has it). On an H100
(2026-11-27, ``bench_switches.py``, two rounds) it took batch-1 TPOT down by 4.5% (median ratio
0.955), left throughput and TTFT within noise (1.003, 1.031), and changed no greedy token.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENABLED = os.environ.get("FOLOVLLM_PDL", "1") != "0"

_OFF = {"USE_PDL": False}
_ON = {"USE_PDL": True, "launch_pdl": True}


def pdl_launch_args(x: torch.Tensor) -> dict:
    """The PDL arguments of a launch of a kernel on ``x``'s device: its ``USE_PDL`` constexpr, and
    Triton's ``launch_pdl`` option when it is on."""
    return _ON if ENABLED and _sm_major(x) >= 9 else _OFF


def _sm_major(x: torch.Tensor) -> int:
    """The compute capability's major version of ``x``'s device; 0 off CUDA or with an older Triton."""
    if not x.is_cuda:
        return 0
    return _cuda_major(x.device.index if x.device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_major(index: int) -> int:
    from triton.backends.nvidia.compiler import CUDAOptions

    if "launch_pdl" not in CUDAOptions.__dataclass_fields__:
        return 0
    return torch.cuda.get_device_capability(index)[0]


@triton.jit
def launch_next_kernel(USE_PDL: tl.constexpr):
    """Let the next kernel launch (a no-op without PDL): first thing in a kernel that reads something
    before it waits, so that those reads do not hold its successor back."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr, LAUNCHED: tl.constexpr = False):
    """Let the next kernel launch (unless ``launch_next_kernel`` has, ``LAUNCHED``), then wait for the
    one before to finish and its writes to be visible (a no-op without PDL)."""
    if USE_PDL:
        if not LAUNCHED:
            tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def prefetch_rows(row_ptrs, first, last, NUM_LINES: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for ``NUM_LINES`` lines of ``LINE`` elements (128 bytes) of each row that ``row_ptrs``
    points to, from element ``first`` on, none past element ``last`` (those ask for its line again)."""
    prefetch_to_l2(row_ptrs[:, None] + tl.minimum(first + tl.arange(0, NUM_LINES) * LINE, last)[None, :])


@triton.jit
def prefetch_to_l2(ptrs):
    """Ask L2 for the 128-byte lines holding ``ptrs`` and move on: nothing waits for them and no
    register receives them. (The output is a placeholder: inline assembly must have one.)"""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1)
