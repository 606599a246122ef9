"""Work spread over processes, in order: what the data stages' `workers` params (ingest.workers, augment.workers)
mean.

Each item is computed by a pure function of the item alone (its own seed, its own output files), so what the stages
write is the same bytes for any number of workers; ordered_map hands the results back in the items' order, as the
stages' data.json and manifest list them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 16  # items per task sent to a worker: a 128 px pair takes a few ms, so a task is tens of ms


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve(workers: int) -> int:
    """The number of processes `workers` asks for: 0 means every core this process may run on."""
    return workers if workers > 0 else available_cores()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = CHUNK) -> Iterator[R]:
    """fn over items, in their order, on resolve(workers) processes (in this one when that is 1).

    `fn` must be a module-level function (it is sent to the workers by name). The workers are forked, so they start
    at once with what this process has imported; they run numpy and Pillow code only, none of torch's thread pools.
    """
    n = resolve(workers)
    if n <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(n) as pool:
        yield from pool.imap(fn, items, chunk)
