"""Detection delay on stitched calls: anger onset -> ``emotion.spike`` start.

    python -m benchmarks.detection_delay [--quick] [--data DIR] [--model DIR]

Reuses :mod:`emotion_engine.training.stitched`: calls built from the held-out speakers
(neutral/calm speech, then anger, then neutral; and calm-only calls), G.711 mu-law
round-tripped, streamed through the live engine in 20 ms chunks with a 100 ms tick.
Reported: median and p90 delay from the anger onset to the spike start's
``detected_at`` (over every detected anger segment, and over those detected within
3 s), recall within 3 s, false spikes per hour of calm speech. The anger onset is where
the angry voice starts (the anger segment's first 20 ms frame within 40 dB of its
loudest); the median delay from the segment's first sample, which adds the clips'
leading silence (~1 s on RAVDESS), is reported beside it.

By default the shipped model (``models/``) is used. It was trained on every speaker of
``../shared/data``, the held-out ones included, so these delays are optimistic; the
result says so. For speaker-independent figures pass ``--model DIR`` with a model
trained without them (``python -m emotion_engine.training.stitched --save-model DIR``).
Needs ``../shared/data`` (or ``$EMOTION_ENGINE_DATA``); without it the result is
marked skipped.

Target (issue 5): median detection delay <= 2 s from anger onset.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, add_common_arguments, emit, format_table, progress, target

NAME = "detection_delay"


def default_data_dir() -> Path:
    env = os.environ.get("EMOTION_ENGINE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def run(
    *, data_dir: Path, model_dir: Path | None, calls_per_speaker: int, seed: int
) -> dict[str, Any]:
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR, EmotionModel
    from emotion_engine.training import stitched

    if not data_dir.is_dir():
        progress(NAME, f"skipped: no corpora at {data_dir}")
        return {
            "skipped": f"shared corpora not found at {data_dir} (set EMOTION_ENGINE_DATA)",
            "targets": [target("median detection delay", goal="<= 2 s", value=None, met=None)],
        }
    shipped = model_dir is None
    model = EmotionModel.load(DEFAULT_MODEL_DIR if model_dir is None else model_dir)
    speakers = stitched.resolve_speakers(stitched._rows(data_dir), stitched.DEFAULT_HELD_OUT)
    progress(NAME, f"building calls: {speakers}, {calls_per_speaker} per speaker")
    calls = stitched.build_calls(
        data_dir=data_dir, speakers=speakers, seed=seed, calls_per_speaker=calls_per_speaker
    )
    found = []
    for i, call in enumerate(calls):
        progress(NAME, f"call {i + 1}/{len(calls)} {call.name} ({call.samples.size / 8000:.0f} s)")
        found.append(stitched.run_call(Engine(model=model), call))
    result = stitched.score(calls, found)
    median = result.get("median_delay_all_s")
    return {
        "data_dir": str(data_dir),
        "model": str(DEFAULT_MODEL_DIR if model_dir is None else model_dir),
        "model_saw_held_out_speakers": shipped,
        "note": (
            "the shipped model was trained on all speakers of the shared corpora, including "
            "these held-out ones: delays are optimistic; pass --model with a model from "
            "`python -m emotion_engine.training.stitched --save-model DIR` for "
            "speaker-independent figures"
            if shipped
            else "model given with --model"
        ),
        "held_out_speakers": speakers,
        "calls_per_speaker": calls_per_speaker,
        **result,
        "targets": [
            target(
                "median detection delay from anger speech onset (all detected segments)"
                + (" [shipped model saw these speakers]" if shipped else ""),
                goal="<= 2 s",
                value=None if median is None else round(median, 2),
                met=None if median is None else median <= 2.0,
            )
        ],
    }


def table(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"detection delay: skipped ({result['skipped']})"

    def r(v: Any) -> Any:
        return round(v, 2) if isinstance(v, float) else v

    rows = [
        [
            "all detected",
            f"{result['detected_at_all']}/{result['anger_segments']}",
            r(result["median_delay_all_s"]),
            r(result["p90_delay_all_s"]),
        ],
        [
            "within 3 s",
            f"{result['detected_within_3s']}/{result['anger_segments']}",
            r(result["median_delay_s"]),
            r(result["p90_delay_s"]),
        ],
    ]
    fph = result["false_spikes_per_hour"]
    return (
        format_table(["anger segments", "detected", "median delay s", "p90 delay s"], rows)
        + "\n\ndelays from the angry voice's onset; median from the anger clip's first"
        f" sample (leading silence included): {r(result['median_delay_all_from_clip_start_s'])} s"
        + f"\nfalse spikes: {result['false_spikes']} in {result['neutral_hours'] * 60:.1f} min of"
        f" calm speech ({fph:.1f} per hour); model: {result['model']}\n{result['note']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--data", type=Path, default=None, help="shared corpora")
    parser.add_argument("--model", type=Path, default=None, help="model directory")
    parser.add_argument("--calls-per-speaker", type=int, default=None, help="default 4 (quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run(
        data_dir=args.data or default_data_dir(),
        model_dir=args.model,
        calls_per_speaker=args.calls_per_speaker or (1 if args.quick else 4),
        seed=args.seed,
    )
    emit(NAME, result, args=args, table=table(result), started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
