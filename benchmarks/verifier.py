"""The cascade's cost: the engine with the Whisper-tiny verifier off and on, side by side.

    python -m benchmarks.verifier [--quick] [--legs 200] [--seconds 6]

Both engines get the same legs of the same audio (the bundled demo call looped, each
leg from its own offset: calm agent speech and a customer who grows angry) exactly as
``benchmarks.throughput`` feeds them (100 ms ticks of 20 ms G.711 payloads, one
``process`` per tick, pinned to one core), after the same warm-up. Reported per mode:
audio seconds per CPU second; with the verifier on also the share of windows stage 2
verified and the process CPU while stage 2 ran, per verified window (resampling,
log-mel, encoder on CTranslate2's own thread, head; batched per tick).
The two runs alternate twice and the better of each is kept (noisy machines).
"""

from __future__ import annotations

import argparse
import sys
import time
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
from emotion_engine.model.verifier import Verifier

NAME = "verifier"
TICK_S = TICK_CHUNKS * CHUNK_S
WARMUP_S = 2.5


def measure(
    *, model: EmotionModel, verifier: Verifier | None, n_legs: int, seconds: float
) -> dict[str, Any]:
    codes = ulaw_chunks()
    engine = Engine(model=model, verifier=verifier)
    call_ids = open_legs(engine, n_legs=n_legs)
    offsets = leg_offsets(n_legs=n_legs, n_chunks=codes.shape[0])
    warm = round(WARMUP_S / TICK_S)
    stream_ticks(
        engine, call_ids=call_ids, offsets=offsets, codes=codes, first_tick=0, n_ticks=warm
    )
    scored0, verified0, v_cpu0 = (
        engine.windows_scored,
        engine.windows_verified,
        engine.verifier_cpu_s,
    )
    n_ticks = max(1, round(seconds / TICK_S))
    cpu0 = time.process_time()
    stream_ticks(
        engine, call_ids=call_ids, offsets=offsets, codes=codes, first_tick=warm, n_ticks=n_ticks
    )
    cpu = time.process_time() - cpu0
    audio = n_legs * n_ticks * TICK_S
    scored = engine.windows_scored - scored0
    verified = engine.windows_verified - verified0
    v_cpu = engine.verifier_cpu_s - v_cpu0
    return {
        "verifier": "on" if verifier is not None else "off",
        "legs": n_legs,
        "audio_s": round(audio, 1),
        "cpu_s": round(cpu, 3),
        "audio_s_per_cpu_s": round(audio / cpu, 1),
        "windows": scored,
        "windows_verified": verified,
        "share_verified": round(verified / scored, 4) if scored else None,
        "stage2_cpu_s": round(v_cpu, 3),
        "stage2_ms_per_verified_window": round(1000 * v_cpu / verified, 2) if verified else None,
    }


def run(*, legs: int, seconds: float, repeats: int) -> dict[str, Any]:
    cpu = pin_to_one_core()
    model = EmotionModel.load()
    verifier = Verifier.load()
    best: dict[str, dict[str, Any]] = {}
    for r in range(repeats):
        for mode, v in (("off", None), ("on", verifier)):
            progress(NAME, f"cpu {cpu}: verifier {mode}, {legs} legs x {seconds:g} s ({r + 1})")
            row = measure(model=model, verifier=v, n_legs=legs, seconds=seconds)
            progress(NAME, f"  {row['audio_s_per_cpu_s']:,.0f} audio s per CPU s")
            if mode not in best or row["audio_s_per_cpu_s"] > best[mode]["audio_s_per_cpu_s"]:
                best[mode] = row
    on, off = best["on"], best["off"]
    return {
        "cpu": cpu,
        "propose_threshold": verifier.propose_threshold,
        "rows": [off, on],
        "on_over_off": round(on["audio_s_per_cpu_s"] / off["audio_s_per_cpu_s"], 3),
        "targets": [
            target(
                f"audio s per CPU s, verifier {row['verifier']}, {legs} legs (demo-call mix)",
                goal=">= 1000",
                value=row["audio_s_per_cpu_s"],
                met=row["audio_s_per_cpu_s"] >= 1000,
            )
            for row in (off, on)
        ]
        + [
            target(
                "share of windows verified (stage 2)",
                goal="report",
                value=on["share_verified"],
                met=None,
            ),
            target(
                "stage 2 CPU ms per verified window",
                goal="report",
                value=on["stage2_ms_per_verified_window"],
                met=None,
            ),
        ],
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        [
            r["verifier"],
            r["legs"],
            r["audio_s"],
            r["audio_s_per_cpu_s"],
            r["share_verified"],
            r["stage2_ms_per_verified_window"],
        ]
        for r in result["rows"]
    ]
    return (
        format_table(
            [
                "verifier",
                "legs",
                "audio s",
                "audio s / CPU s",
                "share verified",
                "stage 2 ms / window",
            ],
            rows,
        )
        + f"\n\non / off throughput: {result['on_over_off']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--legs", type=int, default=None, help="legs (default 200; quick 50)")
    parser.add_argument("--seconds", type=float, default=None, help="audio per leg (default 6)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    legs = args.legs or (50 if args.quick else 200)
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    result = run(legs=legs, seconds=seconds, repeats=1 if args.quick else 2)
    emit(NAME, result, args=args, table=table(result), started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
