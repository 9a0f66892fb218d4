"""launch_fitting_stages: a launch refused for its shared memory is retried with fewer pipeline stages,
and the count that fits is remembered for that configuration."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from folovllm.utils.fit_stages import launch_fitting_stages  # noqa: E402


class FakeKernel:
    """``kernel[grid](...)`` as Triton's launcher: refuses more stages than ``fits`` for the shared memory."""

    def __init__(self, fits: int, resource: str = "shared memory") -> None:
        self.fits, self.resource, self.tried = fits, resource, []

    def __getitem__(self, grid):
        def launch(*args, num_stages, **kwargs):
            self.tried.append(num_stages)
            if num_stages > self.fits:
                raise OutOfResources(40_000 * num_stages, 40_000 * self.fits, self.resource)

        return launch


def test_a_refused_launch_runs_with_fewer_stages_and_later_launches_go_straight_to_them():
    kernel, x = FakeKernel(fits=2), torch.zeros(4, dtype=torch.bfloat16)
    launch_fitting_stages(kernel, (1,), x, 7, num_stages=4, BLOCK=64)
    assert kernel.tried == [4, 3, 2]
    launch_fitting_stages(kernel, (1,), x, 9, num_stages=4, BLOCK=64)
    assert kernel.tried[3:] == [2]
    # another configuration (tile, dtype) is found on its own
    launch_fitting_stages(kernel, (1,), x.float(), 7, num_stages=4, BLOCK=64)
    launch_fitting_stages(kernel, (1,), x, 7, num_stages=4, BLOCK=128)
    assert kernel.tried[4:] == [4, 3, 2, 4, 3, 2]


def test_a_launch_that_fits_is_tried_once_as_asked():
    kernel = FakeKernel(fits=3)
    launch_fitting_stages(kernel, (1,), torch.zeros(2), num_stages=3)
    launch_fitting_stages(kernel, (1,), torch.zeros(2), num_stages=3)
    assert kernel.tried == [3, 3]


@pytest.mark.parametrize("fits,resource", [(0, "shared memory"), (1, "threads")])
def test_what_fewer_stages_cannot_fix_is_raised(fits, resource):
    kernel = FakeKernel(fits=fits, resource=resource)
    with pytest.raises(OutOfResources, match=resource):
        launch_fitting_stages(kernel, (1,), torch.zeros(2), num_stages=3)
    assert kernel.tried == ([3, 2, 1] if resource == "shared memory" else [3])
