"""What the low-confidence check costs the engine: the same ticks with it on and off.

    python -m benchmarks.confidence_cost [--legs 500] [--ticks 300]

``--legs`` legs of the demo call's customer channel (G.711 at 8 kHz, each starting at
a different point of the window hop) are pushed one 20 ms chunk per leg per tick and
processed, by two engines built alike except ``ConfidenceParams.enabled``, ticks
interleaved (on, off, on, off ...) so the machine's noise falls on both. Reported:
CPU time per tick (median, p99) and per leg-chunk for each, and their ratio. JSON on
stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import CHUNK_SAMPLES, demo_pcm
from emotion_engine.config import ConfidenceParams, EngineParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--legs", type=int, default=500)
    ap.add_argument("--ticks", type=int, default=300)
    args = ap.parse_args(argv)
    model = EmotionModel.load()
    pcm = demo_pcm()
    engines = {
        "on": Engine(model=model),
        "off": Engine(model=model, params=EngineParams(confidence=ConfidenceParams(enabled=False))),
    }
    offsets = np.random.default_rng(0).integers(0, 25, args.legs) * CHUNK_SAMPLES
    for engine in engines.values():
        for leg in range(args.legs):
            engine.open_leg(call_id=f"c{leg}", party="customer", sample_rate=8000)
    times: dict[str, list[float]] = {k: [] for k in engines}
    windows = dict.fromkeys(engines, 0)
    for tick in range(args.ticks):
        for name, engine in engines.items():
            chunks = []
            for leg in range(args.legs):
                off = (int(offsets[leg]) + tick * CHUNK_SAMPLES) % (pcm.size - CHUNK_SAMPLES)
                chunks.append(
                    AudioChunk(
                        f"c{leg}", "customer", tick * 0.02, pcm[off : off + CHUNK_SAMPLES], 8000
                    )
                )
            start = time.process_time()
            for chunk in chunks:
                engine.push(chunk)
            events = engine.process()
            times[name].append(time.process_time() - start)
            windows[name] += sum(1 for e in events if e.type == "emotion.update")
    result: dict[str, Any] = {
        name: {
            "tick_ms_median": 1e3 * float(np.median(t)),
            "tick_ms_p99": 1e3 * float(np.percentile(t, 99)),
            "us_per_leg_chunk": 1e6 * float(np.mean(t)) / args.legs,
            "windows": windows[name],
        }
        for name, t in times.items()
    }
    result["ratio_on_off_mean"] = float(np.mean(times["on"]) / np.mean(times["off"]))
    result["legs"] = args.legs
    result["ticks"] = args.ticks
    for name in engines:
        r = result[name]
        print(
            f"confidence {name:3s}: tick median {r['tick_ms_median']:.2f} ms, p99 "
            f"{r['tick_ms_p99']:.2f} ms, {r['us_per_leg_chunk']:.1f} us per leg-chunk",
            file=sys.stderr,
        )
    print(f"on / off (mean tick): {result['ratio_on_off_mean']:.3f}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
