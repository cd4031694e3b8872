"""The baseline on calls built from real clips: angry from the first word, calm
throughout, calm then angry, and the same calls with every clip levelled to one RMS.

Each call is one RAVDESS actor's clips with 0.3-0.8 s pauses of quiet noise, through
mu-law and the live engine in 20 ms chunks. The detector must spike on anger whether or
not the caller was ever calm, stay quiet on calm speech, and never take anger as the
caller's "normal": every baseline it reports stays at the level of calm speech.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.config import DEFAULT_DETECTOR_PARAMS, EngineParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.augment import g711_roundtrip
from emotion_engine.training.data import read_clip
from emotion_engine.training.stitched import concat_clips

pytestmark = pytest.mark.data

SR = 8000
SPEAKER = "ravdess_03"
LEVEL_DBFS = -26.0


def clips(data_dir: Path, emotions: tuple[str, ...]) -> list[NDArray[np.float32]]:
    with (data_dir / "ravdess" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker"] == SPEAKER]
    return [read_clip(data_dir / "ravdess" / r["file"]) for r in rows if r["emotion"] in emotions]


def concat(
    pool: list[NDArray[np.float32]], seconds: float, rng: np.random.Generator, *, level: bool
) -> NDArray[np.float32]:
    return concat_clips(pool, min_s=seconds, rng=rng, level_dbfs=LEVEL_DBFS if level else None)


def run(
    model: EmotionModel, samples: NDArray[np.float32], params: EngineParams | None = None
) -> list[dict[str, Any]]:
    pcm = float32_to_int16(g711_roundtrip(samples=np.clip(samples, -1, 1), law="ulaw"))
    engine = Engine(model=model, params=params or EngineParams())
    events = engine.open_leg(call_id="c", party="customer", sample_rate=SR)
    for off in range(0, pcm.size, 160):
        engine.push(AudioChunk("c", "customer", off / SR, pcm[off : off + 160], SR))
        if off % 800 == 640:
            events += engine.process()
    events += engine.close_leg(call_id="c", party="customer")
    return [e.to_dict() for e in events]


def starts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "emotion.spike" and e["phase"] == "start"]


def baselines(events: list[dict[str, Any]]) -> list[float]:
    return [
        e["detector"]["angry"]["baseline"]
        for e in events
        if e["type"] == "emotion.update" and "detector" in e
    ]


@pytest.fixture(scope="module")
def pools(data_dir: Path) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    return clips(data_dir, ("neutral", "calm")), clips(data_dir, ("angry",))


@pytest.mark.parametrize("level", [False, True], ids=["as recorded", "levelled"])
def test_angry_from_the_first_word_spikes_and_anger_never_becomes_normal(
    model: EmotionModel, pools: Any, level: bool
) -> None:
    calm, angry = pools
    rng = np.random.default_rng(0)
    anger = concat(angry, 30.0, rng, level=level)
    events = run(model, np.concatenate([anger, concat(calm, 15.0, rng, level=level)]))
    got = starts(events)
    assert got, "an angry caller raised no spike"
    assert got[0]["detected_at"] <= anger.size / SR
    # 30 s of anger did not move the baseline off calm speech's level
    assert max(baselines(events)) <= DEFAULT_DETECTOR_PARAMS.calm_max_score
    # second path: a baseline that learns from every window, as before calm-only
    # updates (calm_max_score=1), takes the anger in; ours stays below it
    everything = EngineParams(
        detector=dataclasses.replace(DEFAULT_DETECTOR_PARAMS, calm_max_score=1.0)
    )
    learnt = run(model, np.concatenate([anger, concat(calm, 15.0, rng, level=level)]), everything)
    assert max(baselines(learnt)) > max(baselines(events))


@pytest.mark.parametrize("level", [False, True], ids=["as recorded", "levelled"])
def test_calm_throughout_raises_no_spike_before_the_voice_is_known(
    model: EmotionModel, pools: Any, level: bool
) -> None:
    """As recorded: no spike at all. Levelled to -26 dBFS (this actor's calm clips are
    quiet, so ~10 dB louder) the shipped model scores calm windows up to 0.9 -- its
    dependence on level, which a detector cannot undo once the voice is known -- but
    its first, short windows (0.86, 0.81, 0.70 ...) start no spike."""
    calm, _ = pools
    events = run(model, concat(calm, 60.0, np.random.default_rng(1), level=level))
    updates = [e for e in events if e["type"] == "emotion.update" and e["is_speech"]]
    assert len(updates) >= 80
    if not level:
        assert starts(events) == []
    assert [s for s in starts(events) if not s["baseline_ready"]] == []


@pytest.mark.parametrize("level", [False, True], ids=["as recorded", "levelled"])
def test_calm_then_angry_spikes_within_3_s_of_the_anger(
    model: EmotionModel, pools: Any, level: bool
) -> None:
    calm, angry = pools
    rng = np.random.default_rng(2)
    before = concat(calm, 20.0, rng, level=level)
    anger = concat(angry, 8.0, rng, level=level)
    events = run(model, np.concatenate([before, anger, concat(calm, 10.0, rng, level=level)]))
    got = starts(events)
    onset = before.size / SR + 1.0  # RAVDESS clips open with ~1 s of silence
    # (levelled, the model hears the first clips as angry: 0.86, 0.81, 0.70 ...; the
    # early rule keeps that from a spike)
    assert [s for s in got if s["detected_at"] < before.size / SR] == []
    assert got and got[0]["detected_at"] <= onset + 3.0, got
    assert got[0]["baseline_ready"] is True
