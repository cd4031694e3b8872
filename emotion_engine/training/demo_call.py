"""Build the bundled demo call: a stereo 8 kHz FLAC made of RAVDESS clips, plus its timeline.

Channel 0 is the customer (one actor), channel 1 the agent (another actor). The parties
take turns (one talks, the other is silent; 0.3-0.8 s between turns). The customer is
neutral/calm for the first ~30 s, then angry (normal, then strong intensity) for about
15 s of speech, then calm/neutral to the end; the agent stays neutral/calm throughout.
Clips keep their corpus level (anger is louder, as recorded) and are trimmed to their
speech with 0.12 s margins and 10 ms fades.

Run ``python -m emotion_engine.training.demo_call [--data DIR] [--out PATH] [--seed 0]``;
it writes ``PATH`` and ``PATH.with_suffix('.json')``, the ground truth per segment
(party, start_s, end_s, emotion, intensity, source clip) and the customer's phases,
which the demo and its tests compare detections against. ``emotion-engine demo`` plays
the result.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from emotion_engine.audio.framing import frame_signal
from emotion_engine.audio.io import read_audio
from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.config import MODEL_SAMPLE_RATE_HZ
from emotion_engine.errors import DatasetError

PACKAGE_DIR: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUT: Final = PACKAGE_DIR / "data" / "demo_call.flac"
DEFAULT_CUSTOMER: Final = "ravdess_07"
"""Male actor with a wide neutral-to-angry contrast (about +28 dB in strong anger)."""
DEFAULT_AGENT: Final = "ravdess_10"
"""Female actor with a steady, clear neutral/calm delivery."""

TURN_GAP_S: Final = (0.3, 0.8)
"""Silence between one party's turn and the other's."""
PAUSE_S: Final = (0.2, 0.45)
"""Silence between two clips of the same turn."""
TRIM_BELOW_PEAK_DB: Final = 35.0
TRIM_MARGIN_S: Final = 0.12
FADE_S: Final = 0.01

# The call's script: turns of (party, [(emotion, intensity), ...]); one clip per item.
N, C = ("neutral", "normal"), ("calm", "normal")
CS = ("calm", "strong")
AN, AS = ("angry", "normal"), ("angry", "strong")
SCRIPT: Final[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = (
    ("agent", (N,)),
    ("customer", (N, N)),
    ("agent", (C,)),
    ("customer", (C, CS)),
    ("agent", (N,)),
    ("customer", (N, C)),
    ("agent", (CS,)),
    ("customer", (C,)),
    ("agent", (N,)),
    ("customer", (AN, AN, AS, AS, AS)),
    ("agent", (C,)),
    ("customer", (AS,)),
    ("agent", (CS,)),
    ("customer", (C, CS)),
    ("agent", (C,)),
    ("customer", (N, CS)),
    ("agent", (CS,)),
    ("customer", (CS,)),
)

CITATION: Final = (
    "Livingstone SR, Russo FA (2018) The Ryerson Audio-Visual Database of Emotional Speech "
    "and Song (RAVDESS). PLoS ONE 13(5): e0196391. https://doi.org/10.1371/journal.pone.0196391"
)


@dataclass(frozen=True, slots=True)
class Segment:
    """One clip placed in the call (times in seconds of call audio)."""

    party: str
    start_s: float
    end_s: float
    emotion: str
    intensity: str
    clip: str
    speaker: str
    sentence: str


def default_data_dir() -> Path:
    """``$EMOTION_ENGINE_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("EMOTION_ENGINE_DATA")
    return Path(env) if env else PACKAGE_DIR.parent.parent / "shared" / "data"


def load_index(ravdess_dir: Path) -> list[dict[str, str]]:
    """Rows of ``ravdess/labels.csv``; raises DatasetError when it is missing."""
    labels = ravdess_dir / "labels.csv"
    if not labels.is_file():
        raise DatasetError(f"RAVDESS labels not found: {labels} (pass --data)")
    with labels.open(newline="") as f:
        return list(csv.DictReader(f))


def trim_to_speech(*, samples: NDArray[np.float32], sample_rate_hz: int) -> NDArray[np.float32]:
    """(n,) -> the span from the first to the last 25 ms frame within 35 dB of the
    loudest, plus margins, with 10 ms fades (RAVDESS clips carry ~1 s of room tone)."""
    hop = sample_rate_hz // 100
    frames = frame_signal(samples=samples, frame_length=2 * hop + hop // 2, hop_length=hop)
    energy_db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=-1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - TRIM_BELOW_PEAK_DB)
    margin = int(TRIM_MARGIN_S * sample_rate_hz)
    start = max(0, int(loud[0]) * hop - margin)
    stop = min(samples.size, int(loud[-1]) * hop + frames.shape[-1] + margin)
    out = samples[start:stop].copy()
    fade = int(FADE_S * sample_rate_hz)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)
    out[:fade] *= ramp
    out[-fade:] *= ramp[::-1]
    return out


class _ClipPool:
    """Each speaker's clips per (emotion, intensity), in a seeded order, never reused."""

    def __init__(self, rows: list[dict[str, str]], rng: np.random.Generator) -> None:
        self._pool: dict[tuple[str, str, str], list[dict[str, str]]] = {}
        for row in rows:
            key = (row["speaker"], row["emotion"], row["intensity"])
            self._pool.setdefault(key, []).append(row)
        for clips in self._pool.values():
            clips.sort(key=lambda r: r["file"])
            rng.shuffle(clips)

    def take(self, speaker: str, emotion: str, intensity: str) -> dict[str, str]:
        clips = self._pool.get((speaker, emotion, intensity), [])
        if not clips:
            raise DatasetError(
                f"no unused RAVDESS clip left for speaker={speaker!r} emotion={emotion!r} "
                f"intensity={intensity!r}"
            )
        return clips.pop()


def build_demo_call(
    *, data_dir: Path, seed: int = 0, customer: str = DEFAULT_CUSTOMER, agent: str = DEFAULT_AGENT
) -> tuple[NDArray[np.int16], list[Segment]]:
    """Render the script: ((2, n_samples) int16 at 8 kHz, segments in time order)."""
    ravdess = data_dir / "ravdess"
    rows = load_index(ravdess)
    rng = np.random.default_rng(seed)
    pool = _ClipPool(rows, rng)
    speakers = {"customer": customer, "agent": agent}
    channel = {"customer": 0, "agent": 1}
    pieces: list[tuple[int, int, NDArray[np.float32]]] = []  # (channel, start sample, clip)
    segments: list[Segment] = []
    t = 0.5  # the call opens with a moment of silence
    for turn_index, (party, items) in enumerate(SCRIPT):
        if turn_index:
            t += float(rng.uniform(*TURN_GAP_S))
        for item_index, (emotion, intensity) in enumerate(items):
            if item_index:
                t += float(rng.uniform(*PAUSE_S))
            row = pool.take(speakers[party], emotion, intensity)
            samples, rate = read_audio(ravdess / row["file"])
            if rate != MODEL_SAMPLE_RATE_HZ:
                raise DatasetError(f"{row['file']}: {rate} Hz, expected {MODEL_SAMPLE_RATE_HZ}")
            clip = trim_to_speech(samples=samples[0], sample_rate_hz=rate)
            start = round(t * rate)
            pieces.append((channel[party], start, clip))
            end_s = (start + clip.size) / rate
            segments.append(
                Segment(
                    party=party,
                    start_s=round(start / rate, 6),  # exact: whole samples at 8 kHz
                    end_s=round(end_s, 6),
                    emotion=emotion,
                    intensity=intensity,
                    clip=row["file"],
                    speaker=row["speaker"],
                    sentence=row["sentence"],
                )
            )
            t = end_s
    n_total = round((t + 0.5) * MODEL_SAMPLE_RATE_HZ)
    mix = np.zeros((2, n_total), dtype=np.float32)
    for ch, start, clip in pieces:
        mix[ch, start : start + clip.size] += clip
    return float32_to_int16(mix), segments


def customer_phases(segments: Sequence[Segment], duration_s: float) -> list[dict[str, Any]]:
    """The customer's ground-truth states: neutral until the first angry clip starts,
    angry until the last one ends, then calm to the end of the call."""
    angry = [s for s in segments if s.party == "customer" and s.emotion == "angry"]
    start, end = angry[0].start_s, angry[-1].end_s
    return [
        {"party": "customer", "state": "neutral", "start_s": 0.0, "end_s": start},
        {"party": "customer", "state": "angry", "start_s": start, "end_s": end},
        {"party": "customer", "state": "calm", "start_s": end, "end_s": duration_s},
    ]


def timeline(
    *, segments: Sequence[Segment], n_samples: int, out: Path, seed: int, customer: str, agent: str
) -> dict[str, Any]:
    """The sidecar JSON document."""
    duration_s = round(n_samples / MODEL_SAMPLE_RATE_HZ, 6)
    return {
        "file": out.name,
        "sample_rate_hz": MODEL_SAMPLE_RATE_HZ,
        "channels": ["customer", "agent"],
        "duration_s": duration_s,
        "seed": seed,
        "command": (
            f"python -m emotion_engine.training.demo_call --seed {seed} "
            f"--customer {customer} --agent {agent}"
        ),
        "source": {
            "corpus": "RAVDESS (speech, 8 kHz telephone-band copy)",
            "licence": "CC BY-NC-SA 4.0",
            "citation": CITATION,
            "customer_speaker": customer,
            "agent_speaker": agent,
        },
        "phases": customer_phases(segments, duration_s),
        "segments": [asdict(s) for s in segments],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emotion_engine.training.demo_call", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="shared corpora root")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="FLAC to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--customer", default=DEFAULT_CUSTOMER, help="RAVDESS speaker id")
    parser.add_argument("--agent", default=DEFAULT_AGENT, help="RAVDESS speaker id")
    args = parser.parse_args(argv)
    if args.customer == args.agent:
        parser.error(f"customer and agent must be different actors, got {args.customer!r} twice")
    try:
        pcm, segments = build_demo_call(
            data_dir=args.data, seed=args.seed, customer=args.customer, agent=args.agent
        )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, pcm.T, MODEL_SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16")
    doc = timeline(
        segments=segments,
        n_samples=pcm.shape[1],
        out=out,
        seed=args.seed,
        customer=args.customer,
        agent=args.agent,
    )
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    phases = ", ".join(f"{p['state']} {p['start_s']:.1f}-{p['end_s']:.1f} s" for p in doc["phases"])
    print(
        f"wrote {out} ({doc['duration_s']:.1f} s, {out.stat().st_size / 1e6:.2f} MB, "
        f"{len(segments)} clips); customer: {phases}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
