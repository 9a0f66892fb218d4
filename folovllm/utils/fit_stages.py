"""Launch a Triton kernel with fewer pipeline stages where the GPU's shared memory cannot hold the ones asked for.

The tile shapes and stage counts in this codebase were chosen on an H100, which gives a block up to
227 KiB of shared memory. GPUs with less (99 KiB a block on an RTX 4090, an L40S or an A10) refuse a
launch whose stage buffers do not fit: Triton raises ``OutOfResources`` when it loads the compiled
kernel, before anything reaches the GPU, and the same tiles with a stage fewer usually fit. The
count that fits is remembered per kernel configuration, so the start-up warm-up finds it once and
every later launch (graph capture included) goes straight to it. On an H100 nothing changes: the
first try fits.
"""

from __future__ import annotations

import torch
from triton.runtime.errors import OutOfResources

# (kernel, stages asked for, tensor dtypes, keyword arguments) -> the stages that fit, where fewer
_STAGES_THAT_FIT: dict[tuple, int] = {}


def _configuration(kernel, num_stages: int, args: tuple, kwargs: dict) -> tuple:
    return (kernel, num_stages, *(a.dtype for a in args if isinstance(a, torch.Tensor)), *kwargs.items())


def launch_fitting_stages(kernel, grid, *args, num_stages: int, **kwargs) -> None:
    """``kernel[grid](*args, num_stages=num_stages, **kwargs)``, with one stage fewer at a time while
    the GPU's shared memory cannot hold the stages' buffers (down to one, then the error stands)."""
    stages = num_stages
    if _STAGES_THAT_FIT:  # looked up only once a launch has been refused: naming the configuration takes ~2 us
        stages = _STAGES_THAT_FIT.get(_configuration(kernel, num_stages, args, kwargs), num_stages)
    while True:
        try:
            kernel[grid](*args, num_stages=stages, **kwargs)
        except OutOfResources as exc:
            if exc.name != "shared memory" or stages == 1:
                raise
            stages -= 1
            continue
        if stages != num_stages:
            _STAGES_THAT_FIT[_configuration(kernel, num_stages, args, kwargs)] = stages
        return
