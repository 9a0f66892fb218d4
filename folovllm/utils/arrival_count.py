"""Which program of a kernel arrives last at a job several of them share, so that it can finish
the job without a second kernel: the split-K matmul sums its partial tiles that way
(``triton_skinny_gemm``).

Each program stores its part, counts itself in on an int32 in global memory, and the one whose
count completes the set goes on to read every part. The order is CUTLASS's split-K semaphore's: a
block-wide barrier after the stores (every thread's share is written before the count goes up),
one atomic add with acquire-release semantics at GPU scope (the parts of the programs counted in
before are visible after it), Triton's barrier handing the count to every thread, and then loads
that bypass L1 (``cache_modifier=".cg"``), where this SM might hold a stale line of another SM's
part. The last program sets the count back to zero, so the same counters serve the next call on
the stream; a caller allocates them once, zeroed.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def arrived_last(counter_ptr, num_arrivals):
    """Count this program in on ``counter_ptr``; True in the one that arrives ``num_arrivals``-th
    (which resets the count), after every other arrival's stores are visible to it."""
    tl.debug_barrier()
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == num_arrivals - 1
    if last:
        tl.store(counter_ptr, 0)  # every part has arrived: no program of this call touches it again
    return last
