"""The engine core: chunking never changes results, legs are isolated, timelines are true."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion_engine.audio.io import read_audio
from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.engine.pipeline import MIN_FIRST_WINDOW_FRAMES, Engine
from emotion_engine.errors import AudioError, ConfigError
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import Event


@pytest.fixture(scope="module")
def angry_pcm(data_dir: Path) -> np.ndarray:
    """~10 s of one RAVDESS actor's strong-intensity angry clips at 8 kHz, int16."""
    import csv

    rows = list(csv.DictReader((data_dir / "ravdess" / "labels.csv").open()))
    clips = [
        r
        for r in rows
        if r["speaker"] == "ravdess_03" and r["emotion"] == "angry" and r["intensity"] == "strong"
    ][:4]
    parts = [read_audio(data_dir / "ravdess" / r["file"])[0][0] for r in clips]
    return float32_to_int16(np.concatenate(parts))


def _stream(engine: Engine, pcm: np.ndarray, *, rate: int, chunk: int, call_id: str) -> list[Event]:
    events = engine.open_leg(call_id=call_id, party="customer", sample_rate=rate)
    for start in range(0, len(pcm), chunk):
        engine.push(AudioChunk(call_id, "customer", start / rate, pcm[start : start + chunk], rate))
        events += engine.process()
    events += engine.close_leg(call_id=call_id, party="customer")
    return events


def _updates(events: list[Event]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events if e.type == "emotion.update"]


def test_chunk_size_never_changes_results(model: EmotionModel, angry_pcm: np.ndarray) -> None:
    """20 ms packets (live), odd 7-sample chunks and one 10 s block give the same windows."""
    results = []
    for chunk in (160, 7, len(angry_pcm)):
        engine = Engine(model=model)
        results.append(_updates(_stream(engine, angry_pcm, rate=8000, chunk=chunk, call_id="c")))
    reference = results[0]
    assert len(reference) >= 15
    for other in results[1:]:
        assert [u["t"] for u in other] == [u["t"] for u in reference]
        for a, b in zip(reference, other, strict=True):
            np.testing.assert_allclose(
                [a["probabilities"][k] for k in model.labels],
                [b["probabilities"][k] for k in model.labels],
                atol=1e-5,
            )


def test_window_times_follow_the_audio_clock(model: EmotionModel, angry_pcm: np.ndarray) -> None:
    """First window after 1 s, then every 0.5 s; t is the window's end in call time."""
    updates = _updates(_stream(Engine(model=model), angry_pcm, rate=8000, chunk=160, call_id="c"))
    first_end = ((MIN_FIRST_WINDOW_FRAMES - 1) * 80 + 200) / 8000
    assert updates[0]["t"] == pytest.approx(first_end, abs=1e-3)
    steps = np.diff([u["t"] for u in updates[:-1]])
    np.testing.assert_allclose(steps, 0.5, atol=1e-3)
    duration = len(angry_pcm) / 8000
    assert updates[-1]["t"] <= duration + 1e-3


def test_resampled_input_agrees_with_8k(model: EmotionModel, angry_pcm: np.ndarray) -> None:
    """The same speech at 16 kHz (upsampled) scores like the 8 kHz original."""
    from scipy.signal import resample_poly

    pcm16 = float32_to_int16(
        (resample_poly(angry_pcm.astype(np.float64), 2, 1) / 32768).astype(np.float32)
    )
    a = _updates(_stream(Engine(model=model), angry_pcm, rate=8000, chunk=160, call_id="a"))
    b = _updates(_stream(Engine(model=model), pcm16, rate=16000, chunk=320, call_id="b"))
    assert len(a) == len(b)
    pa = np.array([[u["probabilities"][k] for k in model.labels] for u in a])
    pb = np.array([[u["probabilities"][k] for k in model.labels] for u in b])
    # speech content is identical, only the resampling path differs
    assert np.mean(np.abs(pa - pb)) < 0.05
    assert (pa.argmax(1) == pb.argmax(1)).mean() >= 0.8


def test_angry_speech_reads_as_angry(model: EmotionModel, angry_pcm: np.ndarray) -> None:
    updates = _updates(_stream(Engine(model=model), angry_pcm, rate=8000, chunk=160, call_id="c"))
    speech = [u for u in updates if u["is_speech"]]
    mean_angry = np.mean([u["probabilities"]["angry"] for u in speech])
    assert mean_angry > 1.0 / len(model.labels)


def test_one_legs_bad_chunk_does_not_touch_another(
    model: EmotionModel, angry_pcm: np.ndarray
) -> None:
    engine = Engine(model=model)
    engine.open_leg(call_id="good", party="customer", sample_rate=8000)
    engine.open_leg(call_id="bad", party="customer", sample_rate=8000)
    with pytest.raises(AudioError, match="int16"):
        engine.push(AudioChunk("bad", "customer", 0.0, angry_pcm[:160].astype(np.float32), 8000))  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="16000 Hz"):
        engine.push(AudioChunk("bad", "customer", 0.0, angry_pcm[:160], 16000))
    with pytest.raises(AudioError, match="no open leg"):
        engine.push(AudioChunk("nobody", "customer", 0.0, angry_pcm[:160], 8000))
    engine.push(AudioChunk("good", "customer", 0.0, angry_pcm[:16000], 8000))
    events = engine.process()
    assert {e.call_id for e in events} == {"good"}
    assert any(e.type == "emotion.update" for e in events)
    assert set(engine.legs) == {("good", "customer"), ("bad", "customer")}


def test_open_leg_rejects_bad_rates_and_duplicates(model: EmotionModel) -> None:
    engine = Engine(model=model)
    with pytest.raises(ConfigError, match="unsupported sample rate 12345"):
        engine.open_leg(call_id="c", party="customer", sample_rate=12345)
    engine.open_leg(call_id="c", party="customer", sample_rate=8000)
    with pytest.raises(ConfigError, match="already open"):
        engine.open_leg(call_id="c", party="customer", sample_rate=8000)


def test_close_all_ends_every_leg_with_a_summary(
    model: EmotionModel, angry_pcm: np.ndarray
) -> None:
    engine = Engine(model=model)
    for call in ("a", "b"):
        engine.open_leg(call_id=call, party="customer", sample_rate=8000)
        engine.push(AudioChunk(call, "customer", 0.0, angry_pcm[:24000], 8000))
    engine.process()
    ends = [e for e in engine.close_all(reason="shutdown") if e.type == "call.end"]
    assert sorted(e.call_id for e in ends) == ["a", "b"]
    assert all(e.payload["reason"] == "shutdown" for e in ends)
    assert not engine.legs
