"""Detection on stitched calls from speakers the model never heard.

    python -m emotion_engine.training.stitched --data ../shared/data [--model DIR] [--out models/detection.json]

Builds calls from held-out speakers of the shared corpora (RAVDESS actors 21-24 and
one TurEV-DB speaker by default), each G.711 mu-law round-tripped like a phone call:

- *anger calls*: neutral/calm speech for >= 20 s, then angry speech for >= 6 s, then
  neutral/calm again for >= 10 s, clips separated by 0.3-0.8 s pauses;
- *calm calls*: neutral/calm speech only, about 60 s each.

Each call is streamed through the live engine (20 ms chunks). Reported:

- spike recall: share of anger segments whose ``emotion.spike`` start is *emitted*
  within 3 s of the anger onset (the emission time is the start event's
  ``detected_at``, which includes the detector's confirmation time). The onset is
  where the angry voice starts: the anger segment's first 20 ms frame within 40 dB of
  its loudest frame, not the segment's first sample -- RAVDESS clips
  open with ~1 s of silence, which no detector can hear as anger. The median delay
  from the clip's first sample is reported too (``median_delay_all_from_clip_start_s``);
- the median and 90th percentile of that delay (over detected segments);
- false spikes per hour: spike starts on calm calls, and before the onset on anger
  calls, per hour of that neutral/calm speech.

Unless ``--model`` is given, a model is first trained without the held-out speakers
(same pipeline and seed as the shipped one), so the figures are speaker-independent.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.config import MODEL_SAMPLE_RATE_HZ, engine_params_with_detector
from emotion_engine.engine.pipeline import Engine
from emotion_engine.errors import DatasetError
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.augment import g711_roundtrip
from emotion_engine.training.data import read_clip
from emotion_engine.training.train import DEFAULT_NORMALISATION, NORMALISATIONS

log = logging.getLogger(__name__)

DEFAULT_HELD_OUT: tuple[str, ...] = (
    "ravdess_21",
    "ravdess_22",
    "ravdess_23",
    "ravdess_24",
    "turevdb_",  # prefix: the first TurEV-DB speaker with neutral/calm and angry clips
)
NEUTRAL_EMOTIONS = ("neutral", "calm")
RECALL_WINDOW_S = 3.0
CHUNK_SAMPLES = 160  # 20 ms packets, as RTP delivers them
# Speech onset: the first 20 ms frame no more than this far below the loudest frame.
# 30 and 40 dB give the same onsets on RAVDESS (~1.0 s into each clip); the lower
# bar puts the onset no later, so delays are not flattered by a missed soft start.
SPEECH_ONSET_BELOW_PEAK_DB = 40.0


@dataclass(frozen=True, slots=True)
class StitchedCall:
    name: str
    speaker: str
    samples: NDArray[np.float32]  # (n,) 8 kHz, G.711 round-tripped
    # where the angry voice starts (the first clip's speech onset, see speech_onset_s);
    # None for calm-only calls
    anger_onset_s: float | None
    anger_end_s: float | None
    neutral_s: float  # seconds of neutral/calm material where a spike is a false alarm
    # where the anger segment's audio starts, the first clip's leading silence included
    # (RAVDESS clips open with ~1 s of it); delays are also reported from here
    anger_clip_start_s: float | None = None


def _rows(data_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for csv_path in sorted(data_dir.glob("*/labels.csv")):
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                row["_corpus_dir"] = str(csv_path.parent)
                rows.append(row)
    if not rows:
        raise DatasetError(f"no */labels.csv under {data_dir}")
    return rows


def resolve_speakers(rows: Sequence[dict[str, str]], wanted: Sequence[str]) -> list[str]:
    """Exact speaker ids, or for an entry ending in ``_`` the first speaker with that
    prefix who has both neutral/calm and angry clips (a stitched call needs both)."""
    speakers = sorted({r["speaker"] for r in rows})
    emotions: dict[str, set[str]] = {}
    for r in rows:
        emotions.setdefault(r["speaker"], set()).add(r["emotion"])

    def usable(speaker: str) -> bool:
        have = emotions[speaker]
        return "angry" in have and bool(have & set(NEUTRAL_EMOTIONS))

    out: list[str] = []
    for w in wanted:
        if w.endswith("_"):
            match = [s for s in speakers if s.startswith(w) and usable(s)]
            if match:
                out.append(match[0])
        elif w in speakers:
            out.append(w)
    if not out:
        raise DatasetError(f"none of the held-out speakers {list(wanted)} is in the data")
    return out


def concat_clips(
    clips: list[NDArray[np.float32]],
    *,
    min_s: float,
    rng: np.random.Generator,
    level_dbfs: float | None = None,
) -> NDArray[np.float32]:
    """Clips (each (n,) at 8 kHz) in a random order with 0.3-0.8 s pauses (quiet noise,
    not digital zero) until ``min_s``; with ``level_dbfs`` each clip is first scaled to
    that RMS level (a levelled recording). Returns (n,) float32."""
    parts: list[NDArray[np.float32]] = []
    total = 0
    i = 0
    order = rng.permutation(len(clips))
    while total < min_s * MODEL_SAMPLE_RATE_HZ:
        clip = clips[order[i % len(order)]]
        i += 1
        if level_dbfs is not None:
            rms = max(1e-6, float(np.sqrt(np.mean(np.square(clip)))))
            clip = clip * np.float32(10 ** (level_dbfs / 20) / rms)
        pause = (rng.normal(0, 1e-4, int(rng.uniform(0.3, 0.8) * MODEL_SAMPLE_RATE_HZ))).astype(
            np.float32
        )
        parts += [clip, pause]
        total += clip.size + pause.size
    return np.concatenate(parts)


def speech_onset_s(*, samples: NDArray[np.float32], below_peak_db: float) -> float:
    """Seconds from the start of ``samples`` (n,) at 8 kHz to the first 20 ms frame whose
    RMS is within ``below_peak_db`` of the loudest frame's (0.0 for silence throughout)."""
    n_frames = samples.size // CHUNK_SAMPLES
    if n_frames == 0:
        return 0.0
    frames = samples[: n_frames * CHUNK_SAMPLES].reshape(n_frames, CHUNK_SAMPLES)
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    peak = float(power.max())
    if peak <= 0.0:
        return 0.0
    loud = power >= peak * 10.0 ** (-below_peak_db / 10.0)
    return float(np.argmax(loud)) * CHUNK_SAMPLES / MODEL_SAMPLE_RATE_HZ


def calm_call(
    *, speaker: str, k: int, neutral: list[NDArray[np.float32]], rng: np.random.Generator
) -> StitchedCall:
    """Calm-only call ``k`` of ``speaker``: about 60 s of its neutral/calm clips, mu-law."""
    calm = g711_roundtrip(samples=concat_clips(neutral, min_s=60.0, rng=rng), law="ulaw")
    return StitchedCall(
        name=f"{speaker}-calm-{k}",
        speaker=speaker,
        samples=calm,
        anger_onset_s=None,
        anger_end_s=None,
        neutral_s=calm.size / MODEL_SAMPLE_RATE_HZ,
    )


def build_calls(
    *, data_dir: Path, speakers: Sequence[str], seed: int = 0, calls_per_speaker: int = 2
) -> list[StitchedCall]:
    rows = _rows(data_dir)
    rng = np.random.default_rng(seed)
    calls: list[StitchedCall] = []
    for speaker in speakers:
        mine = [r for r in rows if r["speaker"] == speaker]
        neutral = [
            read_clip(Path(r["_corpus_dir"]) / r["file"])
            for r in mine
            if r["emotion"] in NEUTRAL_EMOTIONS
        ]
        angry = [
            read_clip(Path(r["_corpus_dir"]) / r["file"]) for r in mine if r["emotion"] == "angry"
        ]
        if not neutral or not angry:
            log.warning("speaker %s lacks neutral or angry clips; skipped", speaker)
            continue
        for k in range(calls_per_speaker):
            before = concat_clips(neutral, min_s=20.0, rng=rng)
            anger = concat_clips(angry, min_s=6.0, rng=rng)
            after = concat_clips(neutral, min_s=10.0, rng=rng)
            samples = g711_roundtrip(samples=np.concatenate([before, anger, after]), law="ulaw")
            clip_start = before.size / MODEL_SAMPLE_RATE_HZ
            onset = clip_start + speech_onset_s(
                samples=anger, below_peak_db=SPEECH_ONSET_BELOW_PEAK_DB
            )
            calls.append(
                StitchedCall(
                    name=f"{speaker}-anger-{k}",
                    speaker=speaker,
                    samples=samples,
                    anger_onset_s=onset,
                    anger_end_s=clip_start + anger.size / MODEL_SAMPLE_RATE_HZ,
                    neutral_s=onset,
                    anger_clip_start_s=clip_start,
                )
            )
            calls.append(calm_call(speaker=speaker, k=k, neutral=neutral, rng=rng))
    return calls


def stream_events(engine: Engine, call: StitchedCall) -> list[dict[str, Any]]:
    """Stream one call in 20 ms chunks (a 100 ms scheduler tick, as ``serve``), hang up,
    and return every event it caused, as dicts."""
    pcm = float32_to_int16(call.samples)
    engine.open_leg(call_id=call.name, party="customer", sample_rate=MODEL_SAMPLE_RATE_HZ)
    events = []
    for start in range(0, pcm.size, CHUNK_SAMPLES):
        t = start / MODEL_SAMPLE_RATE_HZ
        engine.push(AudioChunk(call.name, "customer", t, pcm[start : start + CHUNK_SAMPLES], 8000))
        if (start // CHUNK_SAMPLES) % 5 == 4:
            events += engine.process()
    events += engine.process()
    events += engine.close_leg(call_id=call.name, party="customer")
    return [e.to_dict() for e in events]


def spike_starts(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``emotion.spike`` start events among ``events``."""
    return [d for d in events if d["type"] == "emotion.spike" and d.get("phase") == "start"]


def run_call(engine: Engine, call: StitchedCall) -> list[dict[str, Any]]:
    """Stream one call in 20 ms chunks; returns its spike-start events as dicts."""
    return spike_starts(stream_events(engine, call))


def score(
    calls: Sequence[StitchedCall], spikes: Sequence[Sequence[dict[str, Any]]]
) -> dict[str, Any]:
    delays: list[float] = []  # detected within the recall window
    all_delays: list[float] = []  # detected at all during the anger segment
    # the same detections timed from the anger segment's first sample, leading silence
    # included: how these figures were measured before speech onsets were used
    from_clip_start: list[float] = []
    hits = 0
    n_anger = 0
    false_spikes = 0
    neutral_s = 0.0
    per_call = []
    for call, found in zip(calls, spikes, strict=True):
        angry_found = [s for s in found if s.get("emotion") == "angry"]
        neutral_s += call.neutral_s
        if call.anger_onset_s is None:
            false_spikes += len(found)
            per_call.append({"call": call.name, "spikes": len(found)})
            continue
        n_anger += 1
        onset = call.anger_onset_s
        false_spikes += sum(1 for s in found if float(s.get("detected_at", s["t"])) < onset)
        after = [float(s.get("detected_at", s["t"])) - onset for s in angry_found]
        after = [d for d in after if d >= 0]
        delay = min(after) if after else None
        if delay is not None:
            all_delays.append(delay)
            clip_start = onset if call.anger_clip_start_s is None else call.anger_clip_start_s
            from_clip_start.append(delay + onset - clip_start)
        if delay is not None and delay <= RECALL_WINDOW_S:
            hits += 1
            delays.append(delay)
        per_call.append(
            {
                "call": call.name,
                "onset_s": round(onset, 2),
                "clip_start_s": None
                if call.anger_clip_start_s is None
                else round(call.anger_clip_start_s, 2),
                "delay_s": delay,
            }
        )
    hours = neutral_s / 3600
    return {
        **_totals(hits, n_anger, false_spikes, hours, delays, all_delays),
        "median_delay_all_from_clip_start_s": (
            float(np.median(from_clip_start)) if from_clip_start else None
        ),
        "by_corpus": _by_corpus(calls, spikes),
        "calls": per_call,
    }


def _by_corpus(
    calls: Sequence[StitchedCall], spikes: Sequence[Sequence[dict[str, Any]]]
) -> dict[str, Any]:
    """The same figures per corpus (the speaker id's prefix): languages differ."""
    groups: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(call.speaker.split("_")[0], []).append(i)
    if len(groups) < 2:
        return {}
    out: dict[str, Any] = {}
    for corpus, idx in groups.items():
        sub = score([calls[i] for i in idx], [spikes[i] for i in idx])
        out[corpus] = {k: v for k, v in sub.items() if k not in ("calls", "by_corpus")}
    return out


def _totals(
    hits: int,
    n_anger: int,
    false_spikes: int,
    hours: float,
    delays: list[float],
    all_delays: list[float],
) -> dict[str, Any]:
    return {
        "anger_segments": n_anger,
        "detected_within_3s": hits,
        "spike_recall_3s": hits / n_anger if n_anger else None,
        "median_delay_s": float(np.median(delays)) if delays else None,
        "p90_delay_s": float(np.percentile(delays, 90)) if delays else None,
        "detected_at_all": len(all_delays),
        "median_delay_all_s": float(np.median(all_delays)) if all_delays else None,
        "p90_delay_all_s": float(np.percentile(all_delays, 90)) if all_delays else None,
        "false_spikes": false_spikes,
        "neutral_hours": round(hours, 4),
        "false_spikes_per_hour": false_spikes / hours if hours else None,
    }


def _filtered_data_dir(data_dir: Path, exclude: Sequence[str], into: Path) -> Path:
    """A copy of the shared layout without ``exclude`` speakers (symlinked audio)."""
    # absolute targets: a relative --data path would give dangling symlinks
    for csv_path in sorted(data_dir.resolve().glob("*/labels.csv")):
        corpus = into / csv_path.parent.name
        corpus.mkdir(parents=True)
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            kept = [r for r in reader if r["speaker"] not in exclude]
        with (corpus / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        for r in kept:
            (corpus / r["file"]).symlink_to(csv_path.parent / r["file"])
    return into


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emotion_engine.training.stitched",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared corpora")
    parser.add_argument(
        "--model",
        type=Path,
        help="use this model instead of training one without the held-out speakers",
    )
    parser.add_argument(
        "--speakers", nargs="+", default=list(DEFAULT_HELD_OUT), help="held-out speakers"
    )
    parser.add_argument("--calls-per-speaker", type=int, default=4)
    parser.add_argument(
        "--save-model",
        type=Path,
        metavar="DIR",
        help="keep the model trained without the held-out speakers in DIR (reuse with --model)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--normalisation",
        choices=NORMALISATIONS,
        default=DEFAULT_NORMALISATION,
        help="recipe of the model trained without the held-out speakers (train --normalisation)",
    )
    parser.add_argument("--out", type=Path, default=Path("models/detection.json"))
    parser.add_argument(
        "--detector",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override spike-detector parameters (config.DetectorParams), e.g. "
        "smoothing_windows=2 min_duration_s=0.5",
    )
    args = parser.parse_args(argv)
    params = engine_params_with_detector(args.detector)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    speakers = resolve_speakers(_rows(args.data), args.speakers)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from emotion_engine.training.train import run_train

            log.info("training a model without %s", speakers)
            filtered = _filtered_data_dir(args.data, speakers, Path(tmp) / "data")
            model_dir = args.save_model or Path(tmp) / "model"
            model_path = run_train(
                data_dir=filtered,
                out_dir=model_dir,
                seed=args.seed,
                normalisation=args.normalisation,
            )
            model = EmotionModel.load(model_path)
        else:
            model = EmotionModel.load(args.model)
        calls = build_calls(
            data_dir=args.data,
            speakers=speakers,
            seed=args.seed,
            calls_per_speaker=args.calls_per_speaker,
        )
        found = [run_call(Engine(model=model, params=params), call) for call in calls]
    result = score(calls, found)
    result["held_out_speakers"] = speakers
    result["detector"] = dataclasses.asdict(params.detector)
    result["model"] = (
        f"trained without held-out speakers (normalisation: {args.normalisation})"
        if args.model is None
        else str(args.model)
    )
    result["normalisation"] = "per_call" if model.call_norm is not None else "none (raw features)"
    result["command"] = "python -m emotion_engine.training.stitched " + " ".join(
        argv or sys.argv[1:]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"anger segments: {result['anger_segments']}, spike within 3 s: {result['detected_within_3s']}"
        f" ({100 * (result['spike_recall_3s'] or 0):.0f}%), median delay "
        f"{result['median_delay_s']} s, p90 {result['p90_delay_s']} s; false spikes "
        f"{result['false_spikes']} in {result['neutral_hours'] * 60:.1f} min of neutral/calm speech "
        f"= {result['false_spikes_per_hour']:.1f} per hour"
    )
    print(
        f"detected at all: {result['detected_at_all']} of {result['anger_segments']}, "
        f"median delay {result['median_delay_all_s']} s, p90 {result['p90_delay_all_s']} s"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import exit_with

    exit_with(main)
