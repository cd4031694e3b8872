"""Stitched-call detection scoring, on hand-made calls and spike lists."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_engine.training.stitched import (
    StitchedCall,
    resolve_speakers,
    score,
    speech_onset_s,
)


def call(
    name: str,
    speaker: str,
    onset: float | None,
    neutral_s: float,
    clip_start: float | None = None,
) -> StitchedCall:
    return StitchedCall(
        name=name,
        speaker=speaker,
        samples=np.zeros(8, dtype=np.float32),
        anger_onset_s=onset,
        anger_end_s=None if onset is None else onset + 6.0,
        neutral_s=neutral_s,
        anger_clip_start_s=clip_start,
    )


def spike(detected_at: float) -> dict[str, object]:
    return {
        "type": "emotion.spike",
        "phase": "start",
        "emotion": "angry",
        "t": detected_at - 1,
        "detected_at": detected_at,
    }


def test_recall_delays_and_false_alarms_by_hand() -> None:
    calls = [
        call("a-anger", "ravdess_01", 20.0, 20.0),  # hit after 2.5 s
        call("b-anger", "ravdess_02", 20.0, 20.0),  # late: 4 s, plus one false alarm at 10 s
        call("c-anger", "turevdb_9", 20.0, 20.0),  # missed
        call("d-calm", "turevdb_9", None, 60.0),  # two false alarms
    ]
    found = [[spike(22.5)], [spike(10.0), spike(24.0)], [], [spike(5.0), spike(30.0)]]
    result = score(calls, found)
    assert result["anger_segments"] == 3
    assert result["detected_within_3s"] == 1
    assert result["spike_recall_3s"] == pytest.approx(1 / 3)
    assert result["median_delay_s"] == pytest.approx(2.5)
    assert result["detected_at_all"] == 2
    assert result["median_delay_all_s"] == pytest.approx(3.25)
    assert result["false_spikes"] == 3
    assert result["false_spikes_per_hour"] == pytest.approx(3 / (120 / 3600))
    by = result["by_corpus"]
    assert by["ravdess"]["false_spikes"] == 1 and by["turevdb"]["false_spikes"] == 2
    assert by["turevdb"]["detected_at_all"] == 0


def test_prefix_resolves_to_a_speaker_with_both_classes() -> None:
    rows = [
        {"speaker": "turevdb_1", "emotion": "angry"},
        {"speaker": "turevdb_1", "emotion": "sad"},
        {"speaker": "turevdb_2", "emotion": "angry"},
        {"speaker": "turevdb_2", "emotion": "calm"},
    ]
    assert resolve_speakers(rows, ["turevdb_"]) == ["turevdb_2"]


def test_delays_from_the_clip_start_add_the_leading_silence() -> None:
    calls = [call("a-anger", "ravdess_01", 21.0, 21.0, clip_start=20.0)]
    result = score(calls, [[spike(22.5)]])
    assert result["median_delay_all_s"] == pytest.approx(1.5)
    assert result["median_delay_all_from_clip_start_s"] == pytest.approx(2.5)
    assert result["calls"][0]["clip_start_s"] == 20.0


def test_a_spike_before_the_speech_onset_is_a_false_alarm() -> None:
    # detected in the leading silence of the angry clip: anger had not been heard yet
    calls = [call("a-anger", "ravdess_01", 21.0, 21.0, clip_start=20.0)]
    result = score(calls, [[spike(20.6)]])
    assert result["false_spikes"] == 1 and result["detected_at_all"] == 0


def test_speech_onset_is_the_first_frame_near_the_peak() -> None:
    rng = np.random.default_rng(0)
    quiet = rng.normal(0, 1e-4, 8000).astype(np.float32)  # 1 s, -80 dB
    t = np.arange(8000) / 8000
    voice = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    samples = np.concatenate([quiet, voice, quiet])
    assert speech_onset_s(samples=samples, below_peak_db=40.0) == pytest.approx(1.0)
    # a soft start 30 dB down counts at a 40 dB bar, not at a 20 dB one
    soft = (voice[:800] * 10 ** (-30 / 20)).astype(np.float32)
    samples = np.concatenate([quiet, soft, voice])
    assert speech_onset_s(samples=samples, below_peak_db=40.0) == pytest.approx(1.0)
    assert speech_onset_s(samples=samples, below_peak_db=20.0) == pytest.approx(1.1)
    # the same onset from a second path: the first sample whose 20 ms block is loud
    blocks = np.square(samples[: samples.size // 160 * 160].reshape(-1, 160)).mean(axis=1)
    first = int(np.flatnonzero(blocks >= blocks.max() * 1e-4)[0])
    assert speech_onset_s(samples=samples, below_peak_db=40.0) == first * 160 / 8000
    assert speech_onset_s(samples=np.zeros(4000, np.float32), below_peak_db=40.0) == 0.0
    assert speech_onset_s(samples=np.zeros(10, np.float32), below_peak_db=40.0) == 0.0
