"""Seconds-long guard against gross hot-path regressions, as ratios measured in one run.

    python -m benchmarks.smoke [--json-out FILE]

Absolute times mean nothing on a shared 2-core machine, so every figure here is a
ratio of two things timed side by side in this process, each the best of a few
repeats:

- ``lld_speedup``: the per-frame numpy reference (:mod:`benchmarks.reference`) over
  the batched :func:`~emotion_engine.features.lld.compute_lld`, per frame, on the
  same speech frames (typically 25-40x). A de-vectorised or per-frame extractor
  falls below :data:`MIN_LLD_SPEEDUP`.
- ``engine_vs_reference``: the reference's LLD cost per second of audio over the
  whole engine's cost per leg-second (decode, framing, features, model, detector)
  with :data:`MANY_LEGS` legs batched (typically 15-30x).
- ``batching_scaling``: per leg-second cost with :data:`FEW_LEGS` legs over that with
  :data:`MANY_LEGS` legs; about 1 or above when batching works, well below when
  some per-tick step grows faster than the number of legs (e.g. a list scan per leg).

``tests/test_bench_smoke.py`` runs :func:`measure` and checks the floors below.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks._common import (
    CHUNK_S,
    TICK_CHUNKS,
    add_common_arguments,
    best_cpu_s,
    demo_pcm,
    emit,
    format_table,
    leg_offsets,
    open_legs,
    stream_ticks,
    ulaw_chunks,
)

MIN_LLD_SPEEDUP = 6.0
"""Floors: about a fifth of what a healthy build measures, so noise never trips them."""
MIN_ENGINE_VS_REFERENCE = 4.0
MIN_BATCHING_SCALING = 0.5

FEW_LEGS = 10
MANY_LEGS = 300
AUDIO_S = 2.0  # per leg: windows at 1.0, 1.5 and 2.0 s, so scoring is in the mix


def _speech_frames(*, n_frames: int) -> NDArray[np.float32]:
    """(n_frames, 200) frames of the demo call from 11.5 s in (voiced speech, not a pause)."""
    from emotion_engine.audio.framing import frame_signal

    pcm = demo_pcm()
    start = 11 * 8000 + 4000
    x = (pcm[start : start + (n_frames + 2) * 80].astype(np.float32) / 32768.0).astype(np.float32)
    return np.ascontiguousarray(frame_signal(samples=x)[:n_frames])


def _engine_cost_per_leg_s(*, n_legs: int, repeats: int) -> float:
    """Least CPU seconds per leg-second of audio over ``repeats`` fresh engines."""
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import EmotionModel

    model = EmotionModel.load()
    codes = ulaw_chunks()
    n_ticks = round(AUDIO_S / (TICK_CHUNKS * CHUNK_S))
    best = float("inf")
    for r in range(repeats):
        engine = Engine(model=model)
        call_ids = open_legs(engine, n_legs=n_legs)
        offsets = leg_offsets(n_legs=n_legs, n_chunks=codes.shape[0], seed=r)
        start = time.process_time()
        stream_ticks(
            engine, call_ids=call_ids, offsets=offsets, codes=codes, first_tick=0, n_ticks=n_ticks
        )
        best = min(best, time.process_time() - start)
    return best / (n_legs * AUDIO_S)


def measure(*, n_frames: int = 256, n_reference_frames: int = 64) -> dict[str, Any]:
    """Run the three comparisons; returns the ratios and the times behind them."""
    from benchmarks.reference import reference_lld
    from emotion_engine.features.lld import compute_lld

    frames = _speech_frames(n_frames=n_frames)
    ref_frames = frames[:n_reference_frames]
    compute_lld(frames=frames[:8])  # build the tables outside the timing
    reference_lld(frames=ref_frames[:2])
    ours_s = best_cpu_s(lambda: compute_lld(frames=frames), repeats=7) / n_frames
    ref_s = best_cpu_s(lambda: reference_lld(frames=ref_frames), repeats=3) / n_reference_frames
    few = _engine_cost_per_leg_s(n_legs=FEW_LEGS, repeats=5)
    many = _engine_cost_per_leg_s(n_legs=MANY_LEGS, repeats=2)
    frames_per_s = 8000 / 80
    return {
        "lld_us_per_frame": round(ours_s * 1e6, 3),
        "reference_us_per_frame": round(ref_s * 1e6, 3),
        "engine_us_per_leg_s_few": round(few * 1e6, 1),
        "engine_us_per_leg_s_many": round(many * 1e6, 1),
        "lld_speedup": round(ref_s / ours_s, 2),
        "engine_vs_reference": round(ref_s * frames_per_s / many, 2),
        "batching_scaling": round(few / many, 3),
        "floors": {
            "lld_speedup": MIN_LLD_SPEEDUP,
            "engine_vs_reference": MIN_ENGINE_VS_REFERENCE,
            "batching_scaling": MIN_BATCHING_SCALING,
        },
    }


def failures(result: dict[str, Any]) -> list[str]:
    """The ratios below their floors, each with the numbers behind it."""
    out = []
    for key, floor in result["floors"].items():
        if result[key] < floor:
            out.append(f"{key} = {result[key]} < {floor} ({result})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = measure()
    bad = failures(result)
    rows = [
        [key, result[key], floor, "ok" if result[key] >= floor else "REGRESSION"]
        for key, floor in result["floors"].items()
    ]
    table = format_table(["ratio", "measured", "floor", ""], rows)
    emit("smoke", {**result, "ok": not bad}, args=args, table=table, started=started)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
