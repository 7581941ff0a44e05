"""The garbage collector's settings for a process that runs detection.

Detection allocates small containers on every event (lists and dicts of machine states,
findings, outputs) and keeps a large, long-lived heap between commits (every machine's
decoded state, the peer table). CPython collects generation 0 every 700 net container
allocations, every few events here, and every tenth of those walks generation 1 as well; on
the bench's sparse traffic that was 12-16% of detection (`bench/core_speed.py`, 100,000
events: 96.2 us/event with the defaults, 85.2 with these thresholds, 80.4 with the collector
off). The per-event path makes almost no reference cycles, so collecting fifty times less
often holds back little memory, and full collections stay (every 20 x 100 collections of
generation 0).

Imports: the standard library.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLDS = (50_000, 20, 100)


def tune_for_detection() -> tuple[int, int, int]:
    """Collect less often, and leave what is built so far (modules, the config, compiled
    schemas; replay's events) out of every later collection: it lives as long as the run.
    Returns the thresholds it replaced."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return previous


@contextmanager
def tuned_for_detection() -> Iterator[None]:
    """`tune_for_detection` for a run inside a longer-lived process (replay, a benchmark),
    undone when it ends."""
    previous = tune_for_detection()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)
