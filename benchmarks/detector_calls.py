"""The detector and the confidence check on calls built from real clips, per corpus.

    python -m benchmarks.detector_calls --data ../shared/data [--speakers 6] [--out FILE]

For up to ``--speakers`` speakers of every corpus with neutral/calm and angry clips,
three calls are built (clips in random order with 0.3-0.8 s pauses of quiet noise,
through G.711 mu-law), each as recorded and with every clip levelled to -26 dBFS:
*calm* (60 s), *angry from the start* (20 s angry, 15 s calm), *calm then angry*
(20 s calm, 8 s angry, 10 s calm). Each call goes once through the live engine; the
spike detector is then replayed on its ``emotion.update`` stream under two settings:

- ``shipped``: the shipped detector (population prior, calm-only baseline, episode
  merging, early rule) and the low-confidence flags;
- ``previous``: the rules before them, emulated (baseline learnt from every idle
  window from 0, no episode merging, no early hold, low-confidence flags ignored).

Reported per corpus: the share of real speech windows flagged low confidence, false
spikes per hour of calm speech (calm calls, and before the anger on calm-then-angry
calls), angry-start calls with a spike during the anger, calm-then-angry calls with a
spike within 3 s of the angry clip's speech onset, and extra spikes inside one anger
segment. JSON on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.config import DEFAULT_DETECTOR_PARAMS, DetectorParams
from emotion_engine.detect.spike import SpikeDetector
from emotion_engine.engine.pipeline import Engine
from emotion_engine.frames import AudioChunk, EmotionScores
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.augment import g711_roundtrip
from emotion_engine.training.data import read_clip
from emotion_engine.training.stitched import (
    SPEECH_ONSET_BELOW_PEAK_DB,
    concat_clips,
    speech_onset_s,
)

SR = 8000
LEVEL_DBFS = -26.0  # every clip's RMS level in the levelled calls
PREVIOUS = dataclasses.replace(
    DEFAULT_DETECTOR_PARAMS,
    prior_baseline=0.0,
    prior_weight_s=1e-6,
    calm_max_score=1.0,
    merge_gap_s=0.0,
    early_min_duration_s=0.0,
    low_confidence_window_s=0.0,
)


def _windows(engine: Engine, samples: NDArray[np.float32]) -> list[dict[str, Any]]:
    pcm = float32_to_int16(g711_roundtrip(samples=np.clip(samples, -1, 1), law="ulaw"))
    engine.open_leg(call_id="c", party="customer", sample_rate=SR)
    events = []
    for off in range(0, pcm.size, 160):
        engine.push(AudioChunk("c", "customer", off / SR, pcm[off : off + 160], SR))
        if off % 800 == 640:
            events += engine.process()
    events += engine.close_leg(call_id="c", party="customer")
    return [e.payload | {"t": e.t} for e in events if e.type == "emotion.update"]


def _starts(
    updates: list[dict[str, Any]], params: DetectorParams, labels: tuple[str, ...], end_t: float
) -> list[float]:
    det = SpikeDetector(labels=labels, params=params)
    out = []
    for u in updates:
        scores = EmotionScores(
            call_id="c",
            party="customer",
            t=u["t"],
            probabilities=u["probabilities"],
            arousal=u["arousal"],
            voiced_ratio=u["voiced_ratio"],
            is_speech=u["is_speech"],
            low_confidence=bool(u.get("low_confidence", False)) and params is not PREVIOUS,
        )
        out += [
            e.payload["detected_at"] for e in det.update(scores) if e.payload["phase"] == "start"
        ]
    out += [e.payload["detected_at"] for e in det.finish(t=end_t) if e.payload["phase"] == "start"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--speakers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    model = EmotionModel.load()
    engine = Engine(model=model)
    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {"settings": {"shipped": dataclasses.asdict(DEFAULT_DETECTOR_PARAMS)}}
    per_corpus: dict[str, Any] = {}
    for labels_csv in sorted(args.data.glob("*/labels.csv")):
        corpus = labels_csv.parent.name
        by: dict[str, dict[str, list[str]]] = {}
        with labels_csv.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                kind = "calm" if r["emotion"] in ("neutral", "calm") else r["emotion"]
                by.setdefault(r["speaker"], {}).setdefault(kind, []).append(r["file"])
        speakers = sorted(s for s, e in by.items() if "calm" in e and "angry" in e)
        if not speakers:
            continue
        chosen = rng.choice(speakers, size=min(args.speakers, len(speakers)), replace=False)
        stats: dict[str, dict[str, float]] = {}
        low = [0, 0]
        for speaker in chosen:
            calm = [read_clip(labels_csv.parent / f) for f in by[speaker]["calm"]]
            angry = [read_clip(labels_csv.parent / f) for f in by[speaker]["angry"]]
            for level in (False, True):
                tag = "levelled" if level else "as recorded"
                level_dbfs = LEVEL_DBFS if level else None
                calls: dict[str, tuple[NDArray[np.float32], tuple[float, float] | None]] = {
                    "calm": (concat_clips(calm, min_s=60, rng=rng, level_dbfs=level_dbfs), None)
                }
                a = concat_clips(angry, min_s=20, rng=rng, level_dbfs=level_dbfs)
                calls["angry start"] = (
                    np.concatenate(
                        [a, concat_clips(calm, min_s=15, rng=rng, level_dbfs=level_dbfs)]
                    ),
                    (0.0, a.size / SR),
                )
                b = concat_clips(calm, min_s=20, rng=rng, level_dbfs=level_dbfs)
                a = concat_clips(angry, min_s=8, rng=rng, level_dbfs=level_dbfs)
                onset = b.size / SR + speech_onset_s(
                    samples=a, below_peak_db=SPEECH_ONSET_BELOW_PEAK_DB
                )
                calls["calm then angry"] = (
                    np.concatenate(
                        [b, a, concat_clips(calm, min_s=10, rng=rng, level_dbfs=level_dbfs)]
                    ),
                    (onset, (b.size + a.size) / SR),
                )
                for kind, (samples, seg) in calls.items():
                    updates = _windows(engine, samples)
                    speech = [u for u in updates if u["is_speech"]]
                    low[0] += sum(bool(u["low_confidence"]) for u in speech)
                    low[1] += len(speech)
                    dur = samples.size / SR
                    for name, params in (
                        ("shipped", DEFAULT_DETECTOR_PARAMS),
                        ("previous", PREVIOUS),
                    ):
                        s = stats.setdefault(f"{name} / {tag}", {})
                        got = _starts(updates, params, model.labels, dur)
                        calm_s = dur if seg is None else seg[0]
                        false = got if seg is None else [t for t in got if t < seg[0]]
                        s["calm_s"] = s.get("calm_s", 0.0) + calm_s
                        s["false"] = s.get("false", 0) + len(false)
                        if seg is not None:
                            inside = [t for t in got if seg[0] <= t <= seg[1] + 3.0]
                            key = "angry_start_hit" if kind == "angry start" else "within_3s"
                            ok = (
                                bool(inside)
                                if kind == "angry start"
                                else bool(inside and inside[0] <= seg[0] + 3.0)
                            )
                            s[key] = s.get(key, 0) + int(ok)
                            s["extra_spikes_in_anger"] = s.get("extra_spikes_in_anger", 0) + max(
                                0, len(inside) - 1
                            )
        n = len(chosen)
        per_corpus[corpus] = {
            "speakers": n,
            "low_confidence_rate": low[0] / max(1, low[1]),
            "speech_windows": low[1],
            **{
                k: {
                    "false_per_hour": v["false"] / v["calm_s"] * 3600,
                    "angry_start_detected": f"{v['angry_start_hit']}/{n}",
                    "calm_then_angry_within_3s": f"{v['within_3s']}/{n}",
                    "extra_spikes_in_anger": v["extra_spikes_in_anger"],
                }
                for k, v in stats.items()
            },
        }
        row = per_corpus[corpus]
        print(
            f"{corpus}: {n} speakers, low confidence {100 * row['low_confidence_rate']:.2f} % of {low[1]} speech windows",
            file=sys.stderr,
        )
        for k, v in row.items():
            if isinstance(v, dict):
                print(f"  {k:24s} {v}", file=sys.stderr)
    result["corpora"] = per_corpus
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
