"""Call summary: peak, end state, peak-end score and time in state against hand
computations, and the smoothed peak against a numpy convolution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emotion_engine.config import DEFAULT_DETECTOR_PARAMS
from emotion_engine.detect.summary import CallSummarizer, valence
from emotion_engine.detect.tracker import PartyTracker
from emotion_engine.errors import EventError
from emotion_engine.frames import EmotionScores

LABELS = ("neutral", "happy", "sad", "angry")


def win(t: float, *, speech: bool = True, arousal: float = 0.5, **p: float) -> EmotionScores:
    probs = {k: p.get(k, 0.0) for k in LABELS}
    return EmotionScores("c1", "customer", t, probs, arousal, 0.5 if speech else 0.0, speech)


def test_valence_is_happy_minus_negative_emotions() -> None:
    assert valence({"happy": 0.5, "angry": 0.2, "sad": 0.1, "neutral": 0.2}) == pytest.approx(0.2)
    assert valence({"fearful": 0.3, "neutral": 0.7}) == pytest.approx(-0.3)
    assert valence({"surprised": 1.0}) == 0.0


def test_peak_end_and_time_in_state_by_hand() -> None:
    params = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1, end_state_s=2.0)
    s = CallSummarizer(labels=LABELS, params=params, t_start=0.0)
    windows = [
        win(0.5, happy=0.7, neutral=0.3, arousal=0.4),  # valence +0.7
        win(1.0, angry=0.8, neutral=0.2, arousal=0.9),  # -0.8: the peak
        win(1.5, angry=1.0, speech=False, arousal=1.0),  # ignored
        win(2.0, sad=0.6, neutral=0.4, arousal=0.2),  # -0.6
        win(2.5, happy=0.6, neutral=0.4, arousal=0.4),  # +0.6
        win(3.0, neutral=1.0, arousal=0.3),  # 0
        win(3.5, happy=0.2, sad=0.1, neutral=0.7, arousal=0.5),  # +0.1
    ]
    for w in windows:
        s.update(w)
    s.add_spike(emotion="angry")
    out = s.summarize(t=4.0)

    assert out.peak is not None and out.end_state is not None
    assert (out.peak.t, out.peak.emotion) == (1.0, "angry")
    assert out.peak.score == pytest.approx(0.8)
    assert out.peak.valence == pytest.approx(-0.8)
    assert out.peak.arousal == pytest.approx(0.9)
    # end state: last 2.0 s of speech = 4 windows t=2.0..3.5
    end_valence = (-0.6 + 0.6 + 0.0 + 0.1) / 4  # 0.025
    assert out.end_state.valence == pytest.approx(end_valence)
    assert out.end_state.arousal == pytest.approx((0.2 + 0.4 + 0.3 + 0.5) / 4)
    assert out.end_state.probabilities["neutral"] == pytest.approx((0.4 + 0.4 + 1.0 + 0.7) / 4)
    assert out.end_state.emotion == "neutral"
    assert (out.end_state.t_from, out.end_state.t_to, out.end_state.speech_s) == (2.0, 3.5, 2.0)
    assert out.peak_end_score == pytest.approx((-0.8 + 0.025) / 2)  # -0.3875
    assert out.peak_end_parts == pytest.approx({"peak_valence": -0.8, "end_valence": 0.025})
    assert out.time_in_state_s == {"neutral": 1.0, "happy": 1.0, "sad": 0.5, "angry": 0.5}
    assert out.speech_s == 3.0
    assert out.duration_s == 4.0
    assert out.mean_valence == pytest.approx((0.7 - 0.8 - 0.6 + 0.6 + 0.0 + 0.1) / 6)
    assert (out.n_spikes, out.spikes_by_emotion) == (1, {"angry": 1})


def test_smoothed_peak_matches_a_convolution() -> None:
    rng = np.random.default_rng(7)
    n = 200
    p = rng.dirichlet(np.ones(len(LABELS)), size=n)
    speech = rng.random(n) > 0.2
    s = CallSummarizer(labels=LABELS)  # default smoothing: 3 speech windows
    for i in range(n):
        s.update(win(0.5 * (i + 1), speech=bool(speech[i]), **dict(zip(LABELS, p[i], strict=True))))
    out = s.summarize()
    # reference: valence per speech window, trailing 3-window mean (shorter at the start)
    v = p[speech] @ np.array([0.0, 1.0, -1.0, -1.0])
    k = DEFAULT_DETECTOR_PARAMS.smoothing_windows
    trailing = np.convolve(v, np.ones(k), mode="full")[: len(v)] / np.minimum(
        np.arange(1, len(v) + 1), k
    )
    i_peak = int(np.argmin(trailing))
    assert out.peak is not None
    assert out.peak.valence == pytest.approx(trailing[i_peak])
    assert out.peak.t == pytest.approx(0.5 * (np.flatnonzero(speech)[i_peak] + 1))
    smoothed_p = p[speech][max(0, i_peak - k + 1) : i_peak + 1].mean(axis=0)
    neg = {"sad": 2, "angry": 3}
    worst = max(neg, key=lambda name: smoothed_p[neg[name]])
    assert out.peak.emotion == worst
    assert out.peak.score == pytest.approx(smoothed_p[neg[worst]])
    n_end = round(DEFAULT_DETECTOR_PARAMS.end_state_s / DEFAULT_DETECTOR_PARAMS.hop_s)
    assert out.end_state is not None
    assert out.end_state.valence == pytest.approx(v[-n_end:].mean())
    counts = np.bincount(np.argmax(p[speech], axis=1), minlength=len(LABELS))
    assert out.time_in_state_s == pytest.approx(dict(zip(LABELS, 0.5 * counts, strict=True)))
    assert sum(out.time_in_state_s.values()) == pytest.approx(out.speech_s)


def test_no_speech_gives_empty_summary() -> None:
    s = CallSummarizer(labels=LABELS, t_start=1.0)
    s.update(win(2.0, speech=False, neutral=1.0))
    out = s.summarize(t=5.0)
    assert out.peak is None and out.end_state is None and out.peak_end_score is None
    assert out.speech_s == 0.0 and out.duration_s == 4.0
    assert out.time_in_state_s == dict.fromkeys(LABELS, 0.0)


def test_tracker_counts_spikes_in_the_summary() -> None:
    tr = PartyTracker(call_id="c1", party="customer", labels=LABELS)
    tr.start(t=0.0, info={})
    for k in range(1, 81):
        a = 0.9 if 41 <= k <= 60 else 0.05
        tr.update(win(0.5 * k, angry=a, neutral=1.0 - a))
    events = tr.finish(t=41.0)
    summary = events[-1].payload["summary"]
    assert events[-1].type == "call.end"
    assert summary["n_spikes"] == 1 and summary["spikes_by_emotion"] == {"angry": 1}
    assert summary["peak"]["emotion"] == "angry"
    assert summary["end_state"]["emotion"] == "neutral"
    assert tr.finish(t=42.0) == []  # idempotent
    with pytest.raises(EventError, match="finished"):
        tr.update(win(41.5, neutral=1.0))


def test_missing_label_raises() -> None:
    s = CallSummarizer(labels=LABELS)
    with pytest.raises(EventError, match="'happy'"):
        s.update(EmotionScores("c1", "customer", 0.5, {"neutral": 1.0}, 0.5, 0.5, True))
