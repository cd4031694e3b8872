"""Hot path per 20 ms chunk: latency of one chunk through the engine, 1 leg and N legs.

    python -m benchmarks.hot_path [--quick] [--legs 100 1000] [--json-out FILE]

One *chunk* is one RTP packet's worth of audio (20 ms). Timed per chunk, from the
payload bytes to the events: decode (G.711 mu-law lookup, or L16 bytes at 16 kHz)
-> ``Engine.push`` -> ``Engine.process`` (int16 -> float, resample to 8 kHz, framing,
LLDs of the new frames, and when a 0.5 s window hop completes: functionals, the ONNX
model and the spike detector). Reported as p50/p99/max, over all chunks and over the
chunks that completed a window (about one in 25).

- ``one_leg``: one leg, ``Engine.process`` after every chunk (the latency a single call
  sees), for G.711 at 8 kHz and for L16 at 16 kHz (adds the resampler).
- ``batched``: N legs; per 20 ms tick every leg pushes one chunk, then one
  ``process`` runs for all of them. Reported per tick and per leg-chunk (tick / N).
  Legs start at different points of their window hop, as real calls do.
- ``stages``: the same path taken apart for one leg, each step timed on its own
  (median and p99 per call), to show where the time goes.

Target (issue 5): one leg p99 <= 1 ms per chunk. Runs pinned to one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks._common import (
    CHUNK_S,
    CHUNK_SAMPLES,
    add_common_arguments,
    demo_pcm,
    emit,
    format_table,
    leg_offsets,
    open_legs,
    pin_to_one_core,
    progress,
    summarize_ms,
    target,
    ulaw_chunks,
)
from emotion_engine.audio.g711 import ulaw_decode
from emotion_engine.engine.pipeline import Engine
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import EMOTION_UPDATE, Event

NAME = "hot_path"
HOP_CHUNKS = 25  # 0.5 s window hop in 20 ms chunks
WARMUP_CHUNKS = 150  # 3 s: past the first windows, detector running


def _l16_16k_payloads() -> list[bytes]:
    """The demo audio upsampled to 16 kHz, as 20 ms L16 payloads (640 bytes)."""
    from scipy.signal import resample_poly

    from emotion_engine.audio.pcm import float32_to_int16

    up = resample_poly(demo_pcm().astype(np.float64) / 32768.0, 2, 1)
    pcm = float32_to_int16(up).astype("<i2")
    step = 2 * CHUNK_SAMPLES
    return [pcm[i : i + step].tobytes() for i in range(0, pcm.size - step + 1, step)]


def _has_window(events: list[Event]) -> bool:
    return any(e.type == EMOTION_UPDATE for e in events)


def one_leg(*, model: EmotionModel, codec: str, n_chunks: int) -> dict[str, Any]:
    """Per-chunk latency of one leg; ``codec``: "pcmu-8k" or "l16-16k"."""
    engine = Engine(model=model)
    if codec == "pcmu-8k":
        rate = 8000
        payloads = [row.tobytes() for row in ulaw_chunks()]

        def decode(p: bytes) -> NDArray[np.int16]:
            return ulaw_decode(np.frombuffer(p, dtype=np.uint8))

    else:
        rate = 16000
        payloads = _l16_16k_payloads()

        def decode(p: bytes) -> NDArray[np.int16]:
            return np.frombuffer(p, dtype="<i2").astype(np.int16, copy=False)

    engine.open_leg(call_id="one", party="customer", sample_rate=rate)
    times = np.empty(n_chunks)
    windows = np.zeros(n_chunks, dtype=bool)
    clock = time.perf_counter
    for k in range(WARMUP_CHUNKS + n_chunks):
        payload = payloads[k % len(payloads)]
        start = clock()
        pcm = decode(payload)
        engine.push(AudioChunk("one", "customer", k * CHUNK_S, pcm, rate))
        events = engine.process()
        elapsed = clock() - start
        if k >= WARMUP_CHUNKS:
            times[k - WARMUP_CHUNKS] = elapsed
            windows[k - WARMUP_CHUNKS] = _has_window(events)
    return {
        "codec": codec,
        "chunks": n_chunks,
        "all": summarize_ms(seconds=times),
        "window_chunks": summarize_ms(seconds=times[windows]),
        "other_chunks": summarize_ms(seconds=times[~windows]),
    }


def batched(*, model: EmotionModel, n_legs: int, n_ticks: int) -> dict[str, Any]:
    """Per-tick latency with ``n_legs`` legs, one 20 ms chunk each per tick."""
    engine = Engine(model=model)
    codes = ulaw_chunks()
    n_src = codes.shape[0]
    call_ids = open_legs(engine, n_legs=n_legs)
    offsets = leg_offsets(n_legs=n_legs, n_chunks=n_src)
    # leg i gets i % 25 extra chunks first, so window hops fall on different ticks
    head_start = np.arange(n_legs) % HOP_CHUNKS
    fed = np.zeros(n_legs, dtype=np.int64)

    def tick(active: Sequence[int]) -> list[Event]:
        for i in active:
            pcm = ulaw_decode(codes[(offsets[i] + fed[i]) % n_src])
            engine.push(AudioChunk(call_ids[i], "customer", fed[i] * CHUNK_S, pcm, 8000))
            fed[i] += 1
        return engine.process()

    all_legs = range(n_legs)
    for k in range(WARMUP_CHUNKS + HOP_CHUNKS):
        tick([i for i in all_legs if k < WARMUP_CHUNKS + head_start[i]])
    times = np.empty(n_ticks)
    n_windows = 0
    clock = time.perf_counter
    for k in range(n_ticks):
        start = clock()
        events = tick(all_legs)
        times[k] = clock() - start
        n_windows += sum(1 for e in events if e.type == EMOTION_UPDATE)
    per_leg = summarize_ms(seconds=times / n_legs)
    return {
        "legs": n_legs,
        "ticks": n_ticks,
        "windows_scored": n_windows,
        "tick": summarize_ms(seconds=times),
        "per_leg_chunk_us": {
            k.replace("_ms", "_us"): round(float(v) * 1e3, 2)
            for k, v in per_leg.items()
            if k != "n"
        },
        "realtime_load": round(float(times.mean()) / CHUNK_S, 3),
    }


def _time_calls(fn: Callable[[int], object], *, n: int) -> dict[str, float]:
    times = np.empty(n)
    for k in range(n):
        start = time.perf_counter()
        fn(k)
        times[k] = time.perf_counter() - start
    return {
        "median_us": round(float(np.median(times)) * 1e6, 2),
        "p99_us": round(float(np.percentile(times, 99)) * 1e6, 2),
    }


def stages(*, model: EmotionModel, n: int) -> dict[str, dict[str, float]]:
    """Each step of the path on its own, for one leg (per chunk, or per window)."""
    from emotion_engine.audio.framing import Framer
    from emotion_engine.audio.pcm import int16_to_float32
    from emotion_engine.audio.resample import StreamingResampler
    from emotion_engine.detect.tracker import PartyTracker
    from emotion_engine.features.functionals import compute_functionals, voiced_ratio
    from emotion_engine.features.lld import compute_lld
    from emotion_engine.frames import EmotionScores
    from emotion_engine.publish.events import EventSequencer, to_json

    payloads = [row.tobytes() for row in ulaw_chunks()]
    pcm = [ulaw_decode(np.frombuffer(p, dtype=np.uint8)) for p in payloads[:n]]
    floats = [int16_to_float32(p) for p in pcm]
    l16 = _l16_16k_payloads()[:n]
    l16_float = [int16_to_float32(np.frombuffer(p, dtype="<i2").astype(np.int16)) for p in l16]
    resampler = StreamingResampler(rate_in_hz=16000)
    framer = Framer()
    frames = [np.ascontiguousarray(framer.push(f)) for f in floats]
    framer.reset()
    window_lld = compute_lld(frames=np.concatenate(frames[:100]))[:200]
    tracker = PartyTracker(call_id="c", party="customer", labels=model.labels)
    tracker.start(t=0.0)
    features = compute_functionals(lld=window_lld[None])
    probabilities = model.predict(features).probabilities[0]
    seq = EventSequencer()

    def scores(k: int) -> EmotionScores:
        return EmotionScores(
            call_id="c",
            party="customer",
            t=1.0 + 0.5 * k,
            probabilities=dict(zip(model.labels, map(float, probabilities), strict=True)),
            arousal=0.5,
            voiced_ratio=0.6,
            is_speech=True,
        )

    out = {
        "decode_pcmu (per chunk)": _time_calls(
            lambda k: ulaw_decode(np.frombuffer(payloads[k], dtype=np.uint8)), n=n
        ),
        "int16_to_float32 (per chunk)": _time_calls(lambda k: int16_to_float32(pcm[k]), n=n),
        "resample 16k->8k (per chunk)": _time_calls(lambda k: resampler.process(l16_float[k]), n=n),
        "framing (per chunk)": _time_calls(lambda k: framer.push(floats[k]), n=n),
        "lld, 2 frames (per chunk)": _time_calls(
            lambda k: compute_lld(frames=frames[k] if len(frames[k]) else frames[k + 1]), n=n - 1
        ),
        "functionals, 1 window": _time_calls(
            lambda k: (
                compute_functionals(lld=window_lld[None]),
                voiced_ratio(lld=window_lld[None]),
            ),
            n=n // 4,
        ),
        "model, 1 window": _time_calls(lambda k: model.predict(features), n=n // 4),
        "detector + events, 1 window": _time_calls(lambda k: tracker.update(scores(k)), n=n // 4),
        "event to JSON, 1 window": _time_calls(
            lambda k: [to_json(seq.stamp(e)) for e in tracker.update(scores(n + k))], n=n // 4
        ),
    }
    return out


def run(*, quick: bool, legs: Sequence[int]) -> dict[str, Any]:
    cpu = pin_to_one_core()
    model = EmotionModel.load()
    n_chunks = 1000 if quick else 3000
    progress(NAME, f"pinned to cpu {cpu}; one leg, {n_chunks} chunks, pcmu-8k and l16-16k")
    single = [
        one_leg(model=model, codec="pcmu-8k", n_chunks=n_chunks),
        one_leg(model=model, codec="l16-16k", n_chunks=n_chunks),
    ]
    multi = []
    for n_legs in legs:
        progress(NAME, f"{n_legs} legs batched")
        multi.append(batched(model=model, n_legs=n_legs, n_ticks=100 if quick else 250))
    progress(NAME, "stages")
    parts = stages(model=model, n=400 if quick else 2000)
    p99 = float(single[0]["all"]["p99_ms"])
    return {
        "cpu": cpu,
        "one_leg": single,
        "batched": multi,
        "stages": parts,
        "targets": [
            target(
                "hot path p99 per 20 ms chunk, one leg (pcmu-8k)",
                goal="<= 1 ms",
                value=p99,
                met=p99 <= 1.0,
            )
        ],
    }


def table(result: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for r in result["one_leg"]:
        for part in ("all", "window_chunks", "other_chunks"):
            s = r[part]
            rows.append([f"1 leg {r['codec']}", part, s["p50_ms"], s["p99_ms"], s["max_ms"]])
    for r in result["batched"]:
        s = r["tick"]
        rows.append(
            [f"{r['legs']} legs pcmu-8k", "tick (all legs)", s["p50_ms"], s["p99_ms"], s["max_ms"]]
        )
        u = r["per_leg_chunk_us"]
        rows.append(
            [
                f"{r['legs']} legs pcmu-8k",
                "per leg-chunk",
                u["p50_us"] / 1e3,
                u["p99_us"] / 1e3,
                u["max_us"] / 1e3,
            ]
        )
    lines = [format_table(["config", "chunks", "p50 ms", "p99 ms", "max ms"], rows), ""]
    stage_rows = [[k, v["median_us"], v["p99_us"]] for k, v in result["stages"].items()]
    lines.append(format_table(["stage (one leg)", "median us", "p99 us"], stage_rows))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument(
        "--legs",
        type=int,
        nargs="+",
        default=None,
        help="N for the batched run (default 100 1000; quick 100)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    legs = args.legs or ([100] if args.quick else [100, 1000])
    result = run(quick=args.quick, legs=legs)
    emit(NAME, result, args=args, table=table(result), started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
