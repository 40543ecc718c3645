"""Run an independent computation on blocks of rows, in cache-sized blocks on a small thread pool.

SCCBG's per-point QPs (docs/methods/divclust.md) are independent across points. On a CPU the row blocks are
kept small enough that one block's working arrays stay in cache (a 256 x 200 float64 block is 400 KiB),
and the blocks are spread over a pool of threads that each run PyTorch with one intra-op thread: per-op
OpenMP regions wait at a barrier after every operation, and on a machine shared with other jobs a barrier
waits for a descheduled thread (measured on this 2-core machine at load average 13: one 60,000 x 200 by
200 x 200 float64 product took 0.55 s with 2 intra-op threads against 0.35 s as 256-row blocks on one
thread). On an accelerator the blocks are large (one kernel launch per block matters there).

The block size is fixed (it does not depend on the thread count), so results are identical whatever the
number of threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["for_each_row_block", "single_intra_op_thread", "CPU_BLOCK_ROWS", "DEVICE_BLOCK_ROWS"]

CPU_BLOCK_ROWS = 256
DEVICE_BLOCK_ROWS = 16384


@contextlib.contextmanager
def single_intra_op_thread() -> Iterator[int]:
    """Set PyTorch's intra-op threads to 1 for the duration (restored afterwards); yields the previous
    count, which is how many workers ``for_each_row_block`` should use."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield previous
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def for_each_row_block(num_rows: int, device: torch.device, work: Callable[[slice], None], *, workers: int = 1,
                       block_rows: int = CPU_BLOCK_ROWS) -> None:
    """Call ``work(rows)`` for consecutive row slices covering 0..num_rows-1, on ``workers`` threads (CPU;
    call it inside ``single_intra_op_thread``) or one after the other in large blocks (other devices).

    ``work`` must only write to its own rows (the calls may run concurrently)."""
    if device.type != "cpu":
        block_rows = max(block_rows, DEVICE_BLOCK_ROWS)
    blocks = [slice(start, min(start + block_rows, num_rows)) for start in range(0, num_rows, block_rows)]
    if device.type != "cpu" or workers <= 1 or len(blocks) == 1:
        for rows in blocks:
            work(rows)
        return
    # Each worker sets its own thread count too: OpenMP's setting belongs to the calling thread.
    with ThreadPoolExecutor(max_workers=min(workers, len(blocks)), initializer=torch.set_num_threads,
                            initargs=(1,)) as pool:
        for future in [pool.submit(work, rows) for rows in blocks]:
            future.result()  # re-raises an exception from the block
