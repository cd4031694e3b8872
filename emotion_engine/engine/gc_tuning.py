"""Garbage-collector settings for a long-running engine process (``serve``).

Every RTP packet allocates a handful of short-lived containers (tuples, lists, small
arrays). Reference counting frees nearly all of them at once, but each allocation
also counts towards CPython's young-generation collection, every 700 allocations by
default: at 500 legs (25,000 packets a second) well over a hundred times a second. And
every full
collection walked every object the process holds: modules, the model, the tables,
the server. :func:`tune_gc_for_serving` moves what exists once the server is up out
of the collector's sight (``gc.freeze()``) and collects the young generation every
:data:`GC_GEN0_THRESHOLD` allocations instead. Cycles are still collected, in larger
batches.

Measured in process, RTP receive + engine at 500 legs (one core, the threshold alone,
two alternated pairs): 8-12 % less CPU per packet. The engine alone
(``benchmarks.throughput``, which allocates far less per packet) showed no difference
beyond run-to-run noise, so the benchmarks keep CPython's defaults.
"""

from __future__ import annotations

import gc

__all__ = ["GC_GEN0_THRESHOLD", "tune_gc_for_serving"]

GC_GEN0_THRESHOLD = 20_000
"""Allocations between young-generation collections while serving (CPython: 700)."""


def tune_gc_for_serving() -> None:
    """Freeze what exists now and raise the young-generation threshold (see module)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
