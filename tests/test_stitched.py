"""Stitched-call detection scoring, on hand-made calls and spike lists."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_engine.training.stitched import StitchedCall, resolve_speakers, score


def call(name: str, speaker: str, onset: float | None, neutral_s: float) -> StitchedCall:
    return StitchedCall(
        name=name,
        speaker=speaker,
        samples=np.zeros(8, dtype=np.float32),
        anger_onset_s=onset,
        anger_end_s=None if onset is None else onset + 6.0,
        neutral_s=neutral_s,
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
