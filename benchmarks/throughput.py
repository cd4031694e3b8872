"""Throughput: seconds of call audio the engine handles per CPU second, on one core.

    python -m benchmarks.throughput [--quick] [--legs 1 10 100 1000 2000] [--seconds 6]

For each N, a fresh engine with N legs is fed as ``serve`` feeds it: every 100 ms
tick, all legs' 20 ms G.711 payloads are decoded with one table lookup (as the RTP
port decodes a tick's datagrams), each leg's 100 ms is pushed as one chunk, then one
``Engine.process`` runs features, model and detector for all legs. The process is
pinned to one core; after a warm-up (first windows scored, detector running) the CPU
time of the next ``--seconds`` of audio per leg is measured. ``audio_s_per_cpu_s``
is then also the number of real-time legs one core sustains at 100 % load.

Memory per leg: ``tracemalloc`` (every Python and numpy allocation still alive) with
``--mem-legs`` legs after 4 s of audio (histories full), minus the engine without
legs; and the process's RSS growth over the largest N, for comparison (RSS also
counts allocator slack and pages that are not given back).

Targets (issue 5): >= 1,000 audio s per CPU s batched; <= 256 KiB per leg.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    CHUNK_S,
    TICK_CHUNKS,
    add_common_arguments,
    emit,
    format_table,
    leg_offsets,
    open_legs,
    pin_to_one_core,
    progress,
    stream_ticks,
    target,
    ulaw_chunks,
)
from emotion_engine.engine.pipeline import Engine
from emotion_engine.model.runtime import EmotionModel

NAME = "throughput"
TICK_S = TICK_CHUNKS * CHUNK_S
WARMUP_S = 2.5  # first window at 1 s, then every 0.5 s; the detector has history


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(*, model: EmotionModel, n_legs: int, seconds: float) -> dict[str, Any]:
    """CPU time of ``seconds`` of audio on each of ``n_legs`` legs, after the warm-up."""
    codes = ulaw_chunks()
    gc.collect()
    rss_before = _rss_bytes()
    engine = Engine(model=model)
    call_ids = open_legs(engine, n_legs=n_legs)
    offsets = leg_offsets(n_legs=n_legs, n_chunks=codes.shape[0])
    warm_ticks = round(WARMUP_S / TICK_S)
    stream_ticks(
        engine, call_ids=call_ids, offsets=offsets, codes=codes, first_tick=0, n_ticks=warm_ticks
    )
    n_ticks = max(1, round(seconds / TICK_S))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    events = stream_ticks(
        engine,
        call_ids=call_ids,
        offsets=offsets,
        codes=codes,
        first_tick=warm_ticks,
        n_ticks=n_ticks,
    )
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    audio = n_legs * n_ticks * TICK_S
    rss_growth = _rss_bytes() - rss_before
    return {
        "legs": n_legs,
        "audio_s": round(audio, 1),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "audio_s_per_cpu_s": round(audio / cpu, 1),
        "cpu_us_per_leg_s": round(cpu / audio * 1e6, 1),
        "events": events,
        "rss_growth_bytes_per_leg": round(rss_growth / n_legs),
    }


def memory_per_leg(*, model: EmotionModel, n_legs: int) -> dict[str, Any]:
    """Bytes still allocated per leg (tracemalloc) after 4 s of audio on each."""
    codes = ulaw_chunks()
    gc.collect()
    tracemalloc.start()
    engine = Engine(model=model)
    base = tracemalloc.get_traced_memory()[0]
    call_ids = open_legs(engine, n_legs=n_legs)
    opened = tracemalloc.get_traced_memory()[0]
    offsets = leg_offsets(n_legs=n_legs, n_chunks=codes.shape[0])
    stream_ticks(
        engine,
        call_ids=call_ids,
        offsets=offsets,
        codes=codes,
        first_tick=0,
        n_ticks=round(4.0 / TICK_S),
    )
    gc.collect()
    steady, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "legs": n_legs,
        "bytes_per_leg_at_open": round((opened - base) / n_legs),
        "bytes_per_leg": round((steady - base) / n_legs),
        "peak_bytes_per_leg": round((peak - base) / n_legs),
        "kib_per_leg": round((steady - base) / n_legs / 1024, 1),
    }


def run(*, legs: Sequence[int], seconds: float, mem_legs: int) -> dict[str, Any]:
    cpu = pin_to_one_core()
    model = EmotionModel.load()
    rows = []
    for n in legs:
        progress(NAME, f"cpu {cpu}: {n} legs x {seconds:g} s of audio")
        rows.append(measure(model=model, n_legs=n, seconds=seconds))
        progress(NAME, f"  {rows[-1]['audio_s_per_cpu_s']:,.0f} audio s per CPU s")
    progress(NAME, f"memory: {mem_legs} legs under tracemalloc")
    memory = memory_per_leg(model=model, n_legs=mem_legs)
    best = max(r["audio_s_per_cpu_s"] for r in rows)
    at_most = rows[-1]["audio_s_per_cpu_s"]
    kib = memory["kib_per_leg"]
    return {
        "cpu": cpu,
        "tick_s": TICK_S,
        "seconds_per_leg": seconds,
        "rows": rows,
        "memory": memory,
        "targets": [
            target(
                f"audio s per CPU s, features + model + detection, {rows[-1]['legs']} legs batched",
                goal=">= 1000",
                value=at_most,
                met=at_most >= 1000,
            ),
            target(
                "audio s per CPU s, best N",
                goal=">= 1000",
                value=best,
                met=best >= 1000,
            ),
            target("memory per leg (tracemalloc)", goal="<= 256 KiB", value=kib, met=kib <= 256),
        ],
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        [
            r["legs"],
            r["audio_s"],
            r["cpu_s"],
            r["audio_s_per_cpu_s"],
            r["cpu_us_per_leg_s"],
            round(r["rss_growth_bytes_per_leg"] / 1024, 1),
        ]
        for r in result["rows"]
    ]
    m = result["memory"]
    return (
        format_table(
            ["legs", "audio s", "CPU s", "audio s / CPU s", "CPU us / leg-s", "RSS KiB / leg"], rows
        )
        + f"\n\nmemory per leg (tracemalloc, {m['legs']} legs, 4 s in): {m['kib_per_leg']} KiB"
        f" (at open {m['bytes_per_leg_at_open'] / 1024:.1f} KiB)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--legs", type=int, nargs="+", default=None, help="N values")
    parser.add_argument("--seconds", type=float, default=None, help="audio per leg (default 6)")
    parser.add_argument("--mem-legs", type=int, default=None, help="legs for tracemalloc")
    args = parser.parse_args(argv)
    started = time.monotonic()
    legs = args.legs or ([1, 10, 100] if args.quick else [1, 10, 100, 1000, 2000])
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    mem_legs = args.mem_legs or (100 if args.quick else 1000)
    result = run(legs=legs, seconds=seconds, mem_legs=mem_legs)
    emit(NAME, result, args=args, table=table(result), started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
