"""Spike detector on synthetic score streams, against hand-computed onsets and ends.

Windows arrive every 0.5 s at t = 0.5 * k (k = 1, 2, ...). With the default
3-window smoothing, a jump of P(angry) from a to b gives smoothed scores
(2a + b) / 3, (a + 2b) / 3, b on the next three windows; the expectations below
are worked out from that by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from emotion_engine.config import DEFAULT_DETECTOR_PARAMS as SHIPPED_DETECTOR_PARAMS
from emotion_engine.config import DetectorParams
from emotion_engine.detect.spike import SpikeDetector, SpikeState
from emotion_engine.errors import ConfigError, EventError
from emotion_engine.frames import EmotionScores
from emotion_engine.publish.events import Event

LABELS = ("neutral", "happy", "sad", "angry")
# The hand-worked expectations below use these parameters (3-window smoothing for
# start and end, on 0.55 / margin 0.20 / off 0.40 / early 0.75, 1 s minimum, ends reported
# at once, population baseline 0.05); the shipped defaults are tuned elsewhere
# (training/stitched.py) and checked in test_shipped_defaults_are_valid.
DEFAULT_DETECTOR_PARAMS = dataclasses.replace(
    SHIPPED_DETECTOR_PARAMS,
    smoothing_windows=3,
    on_threshold=0.55,
    on_margin=0.20,
    off_threshold=0.40,
    early_on_threshold=0.75,
    min_duration_s=1.0,
    end_smoothing_windows=0,
    merge_gap_s=0.0,
    prior_baseline=0.05,
)
HOP = 0.5


def scores(t: float, angry: float, *, speech: bool = True) -> EmotionScores:
    rest = 1.0 - angry
    return EmotionScores(
        call_id="c1",
        party="customer",
        t=t,
        probabilities={
            "neutral": 0.8 * rest,
            "happy": 0.1 * rest,
            "sad": 0.1 * rest,
            "angry": angry,
        },
        arousal=0.5,
        voiced_ratio=0.6 if speech else 0.0,
        is_speech=speech,
    )


def stream(values: Sequence[float], *, first_k: int = 1) -> list[EmotionScores]:
    return [scores(HOP * (first_k + i), v) for i, v in enumerate(values)]


def run(
    windows: Sequence[EmotionScores],
    params: DetectorParams = DEFAULT_DETECTOR_PARAMS,
    finish_t: float | None = None,
) -> list[Event]:
    det = SpikeDetector(labels=LABELS, params=params)
    events: list[Event] = []
    for w in windows:
        events += det.update(w)
    if finish_t is not None:
        events += det.finish(t=finish_t)
    return events


def phases(events: Sequence[Event]) -> list[tuple[str, float]]:
    return [(e.payload["phase"], e.t) for e in events]


def test_neutral_then_sustained_anger_gives_one_spike_at_the_onset() -> None:
    # 20 s neutral (0.05), 10 s angry (0.9), 20 s neutral; k = 41..60 angry.
    values = [0.05] * 40 + [0.9] * 20 + [0.05] * 40
    events = run(stream(values))
    # k=41: (0.05+0.05+0.9)/3 = 0.333 < 0.55; k=42 (t=21.0): 0.617 >= 0.55 and
    # 0.617 - 0.05 >= 0.20 -> onset; confirmed at t = 21.0 + 1.0 = 22.0.
    # k=61: (0.9+0.9+0.05)/3 = 0.617 >= 0.40; k=62 (t=31.0): 0.333 < 0.40 -> end.
    assert phases(events) == [("start", 21.0), ("end", 31.0)]
    start, end = (e.payload for e in events)
    assert start["detected_at"] == pytest.approx(22.0)
    assert start["score"] == pytest.approx(0.9)
    # the k=41 window (0.9) did not start a spike, but it is not calm either: the
    # baseline is the calm windows' 0.05 (equal to the prior), untouched by it
    assert start["baseline"] == pytest.approx(0.05)
    assert start["baseline_ready"] is True
    assert end["started_at"] == pytest.approx(21.0)
    assert end["duration_s"] == pytest.approx(10.0)
    assert end["peak_score"] == pytest.approx(0.9)
    assert end["reason"] == "score_fell"
    assert end["detected_at"] == pytest.approx(31.0)


def test_burst_shorter_than_min_duration_is_not_reported() -> None:
    # 1 s of anger (k=41,42): smoothed 0.333, 0.617 (onset t=21.0), 0.617 (t=21.5,
    # only 0.5 s after onset), then 0.333 < 0.40 at t=22.0 -> candidate dropped.
    assert run(stream([0.05] * 40 + [0.9] * 2 + [0.05] * 20)) == []
    # one more window (1.5 s of anger) reaches t=22.0 with smoothed 0.617: reported,
    # and ends at t=22.5 where the smoothed score is back to 0.333.
    assert phases(run(stream([0.05] * 40 + [0.9] * 3 + [0.05] * 20))) == [
        ("start", 21.0),
        ("end", 22.5),
    ]


def test_tense_sounding_calm_speaker_is_their_own_baseline_until_a_real_jump() -> None:
    # P(angry) = 0.45 from the first window: calm by the model's call (<= calm_max_score
    # 0.5), so the baseline moves from the prior (0.05) to the caller's 0.45.
    calm_for_them = [0.45] * 120  # 60 s
    det = SpikeDetector(labels=LABELS, params=DEFAULT_DETECTOR_PARAMS)
    assert [e for w in stream(calm_for_them) for e in det.update(w)] == []
    # second path: the shrunk mean (prior worth 20 windows) for 20 windows, then the
    # running mean with alpha = 1 - 0.5 ** (0.5 / 60)
    k = DEFAULT_DETECTOR_PARAMS.prior_weight_s / HOP
    alpha = 1.0 - 0.5 ** (0.5 / 60.0)
    b = 0.05
    for n in range(1, 121):
        b += max(1.0 / (k + n), alpha) * (0.45 - b)
    assert det.snapshot()["angry"].baseline == pytest.approx(b)
    assert 0.35 < b < 0.45
    # 0.58 would start a spike against the prior, not against their own calm voice
    assert run(stream([*calm_for_them, *[0.58] * 20])) == []
    # a real jump does: at k=121 the 3-window mean is (0.45 + 0.45 + 0.95) / 3 = 0.617,
    # 0.224 above the baseline -> onset t=60.5
    events = run(stream([*calm_for_them, *[0.95] * 10]), finish_t=66.0)
    assert phases(events) == [("start", 60.5), ("end", 66.0)]
    assert events[0].payload["baseline"] == pytest.approx(b)
    assert events[1].payload["reason"] == "call_end"


def test_caller_angry_from_the_first_word_still_spikes() -> None:
    # 0.7 throughout: under the early bar (0.75) while the voice is new, and never calm,
    # so the baseline stays at the prior: once baseline_s (10 s) of speech has been
    # heard, 0.7 >= 0.55 and 0.7 - 0.05 >= 0.2 starts a spike. (A baseline learnt from
    # every window would have made 0.7 this caller's normal and never fired.)
    events = run(stream([0.7] * 60), finish_t=30.5)
    assert phases(events) == [("start", 10.0), ("end", 30.5)]
    assert events[0].payload["baseline"] == pytest.approx(0.05)
    assert events[0].payload["baseline_ready"] is True
    # a long angry stretch in the middle of a calm call does not become "normal": the
    # anger comes back after 60 s of it and a calm minute, and still spikes
    values = [0.05] * 40 + [0.9] * 120 + [0.05] * 40 + [0.9] * 10
    starts = [t for ph, t in phases(run(stream(values), finish_t=106.0)) if ph == "start"]
    assert starts == [21.0, 101.0]


def test_calm_caller_with_an_early_high_window_raises_no_spike() -> None:
    # a calm caller whose 3rd-4th windows the model scores 0.7 (a laugh, a loud word):
    # the early bar (0.75) holds while the voice is new; after it, 0.7 against their
    # calm baseline would start one -- that is what the early bar is for
    p = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1)
    values = [0.05, 0.05, 0.7, 0.7, 0.7] + [0.05] * 40
    assert run(stream(values), p) == []
    late = [0.05] * 30 + [0.7, 0.7, 0.7] + [0.05] * 10
    assert [ph for ph, _ in phases(run(stream(late), p))] == ["start", "end"]


def test_flicker_around_the_threshold_does_not_chatter() -> None:
    params = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1)
    flicker = [0.6, 0.45] * 20  # crosses on_threshold 40 times, never below off_threshold
    values = [0.05] * 40 + flicker + [0.05] * 10
    naive_starts = sum(
        1 for a, b in itertools.pairwise(values) if a < 0.55 <= b
    )  # a detector without hysteresis
    assert naive_starts == 20
    events = run(stream(values), params)
    # onset at the first 0.6 (k=41, t=20.5), confirmed 1 s later; ends at k=81 (t=40.5).
    assert phases(events) == [("start", 20.5), ("end", 40.5)]


def test_non_speech_windows_move_nothing() -> None:
    values = [0.05] * 40 + [0.9] * 20 + [0.05] * 40
    speech = stream(values)
    # the same stream with non-speech windows (absurdly "angry") at every 5th slot
    mixed: list[EmotionScores] = []
    for i, w in enumerate(speech):
        if i % 5 == 0:
            mixed.append(scores(w.t - 0.25, 1.0, speech=False))
        mixed.append(w)
    det_a = SpikeDetector(labels=LABELS)
    det_b = SpikeDetector(labels=LABELS)
    ev_a = [e for w in speech for e in det_a.update(w)]
    ev_b = [e for w in mixed for e in det_b.update(w)]
    assert ev_a == ev_b
    assert len(ev_a) == 2
    assert det_a.snapshot() == det_b.snapshot()
    # non-speech alone never starts anything, nor sets a baseline
    det = SpikeDetector(labels=LABELS, params=DEFAULT_DETECTOR_PARAMS)
    assert [e for k in range(1, 100) for e in det.update(scores(k * HOP, 1.0, speech=False))] == []
    snap = det.snapshot()["angry"]
    assert snap.score is None and snap.baseline == 0.05 and not snap.baseline_ready


def test_silence_ends_a_spike_at_the_last_speech() -> None:
    values = [0.05] * 40 + [0.9] * 10  # anger from k=41 to k=50 (t=25.0)
    windows = stream(values) + [scores(25.0 + HOP * i, 0.0, speech=False) for i in range(1, 11)]
    events = run(windows)
    # onset t=21.0; last speech t=25.0; silence_end_s=3 -> noticed at t=28.0
    assert phases(events) == [("start", 21.0), ("end", 25.0)]
    assert events[1].payload["reason"] == "silence"
    assert events[1].payload["detected_at"] == pytest.approx(28.0)
    assert events[1].payload["duration_s"] == pytest.approx(4.0)


def test_finish_closes_an_open_spike_and_is_quiet_otherwise() -> None:
    events = run(stream([0.05] * 40 + [0.9] * 20), finish_t=32.0)
    assert phases(events) == [("start", 21.0), ("end", 32.0)]
    assert events[1].payload["reason"] == "call_end"
    assert events[1].payload["duration_s"] == pytest.approx(11.0)
    assert run(stream([0.05] * 40), finish_t=32.0) == []
    # a candidate that has lasted min_duration_s by the end is reported; a younger one not
    assert phases(run(stream([0.05] * 40 + [0.9] * 2), finish_t=22.0)) == [
        ("start", 21.0),
        ("end", 22.0),
    ]
    assert run(stream([0.05] * 40 + [0.9] * 2), finish_t=21.5) == []


def test_cooldown_holds_off_a_second_spike() -> None:
    # spike 1 ends at t=31.0 (as in the first test); anger returns at k=64 (t=32.0),
    # smoothed qualifies from t=32.5 but cool-down lasts until t=36.0: onset t=36.0.
    values = [0.05] * 40 + [0.9] * 20 + [0.05] * 3 + [0.9] * 20
    events = run(stream(values), finish_t=50.0)
    assert phases(events) == [("start", 21.0), ("end", 31.0), ("start", 36.0), ("end", 50.0)]
    no_cooldown = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, cooldown_s=0.0)
    assert phases(run(stream(values), no_cooldown, finish_t=50.0))[2] == ("start", 32.5)


def test_early_threshold_before_the_baseline_is_set() -> None:
    # angry from the first window: 0.9 >= early_on_threshold (0.75) -> onset t=0.5
    events = run(stream([0.9] * 10 + [0.05] * 10))
    assert phases(events) == [("start", 0.5), ("end", 6.0)]
    assert events[0].payload["baseline_ready"] is False
    # 0.7: would pass on_threshold + margin against a 0 baseline, but not the early rule
    assert run(stream([0.7] * 19)) == []


def test_state_is_reported_and_reset_forgets() -> None:
    det = SpikeDetector(labels=LABELS, params=DEFAULT_DETECTOR_PARAMS)
    for w in stream([0.05] * 40 + [0.9] * 3):
        det.update(w)
    assert det.snapshot()["angry"].state is SpikeState.CANDIDATE
    det.update(scores(22.0, 0.9))
    assert det.in_spike
    det.reset()
    assert not det.in_spike
    assert det.snapshot()["angry"].baseline_ready is False


def test_bad_input_raises_with_the_value() -> None:
    with pytest.raises(ConfigError, match="fearful"):
        SpikeDetector(
            labels=LABELS,
            params=dataclasses.replace(DEFAULT_DETECTOR_PARAMS, spike_emotions=("fearful",)),
        )
    with pytest.raises(ConfigError, match=r"off_threshold=0\.7"):
        SpikeDetector(
            labels=LABELS, params=dataclasses.replace(DEFAULT_DETECTOR_PARAMS, off_threshold=0.7)
        )
    det = SpikeDetector(labels=LABELS, params=DEFAULT_DETECTOR_PARAMS)
    det.update(scores(5.0, 0.1))
    with pytest.raises(EventError, match=r"t=4\.5"):
        det.update(scores(4.5, 0.1))
    with pytest.raises(EventError, match="'agent'"):
        det.update(dataclasses.replace(scores(6.0, 0.1), party="agent"))
    with pytest.raises(EventError, match="angry"):
        det.update(dataclasses.replace(scores(6.0, 0.1), probabilities={"neutral": 1.0}))


@pytest.mark.parametrize("seed", range(8))
def test_invariants_on_random_streams(seed: int) -> None:
    """On random piecewise streams, every reported spike obeys the rules when they are
    re-derived from the raw stream (trailing mean of the last 3 speech windows)."""
    rng = np.random.default_rng(seed)
    p = DEFAULT_DETECTOR_PARAMS
    windows: list[EmotionScores] = []
    k = 0
    while len(windows) < 600:
        level = float(rng.choice([0.05, 0.3, 0.5, 0.7, 0.95]))
        speech = bool(rng.random() > 0.15)
        for _ in range(int(rng.integers(1, 16))):
            k += 1
            a = float(np.clip(level + rng.normal(0, 0.05), 0, 1))
            windows.append(scores(HOP * k, a, speech=speech))
    events = run(windows, finish_t=HOP * (k + 1))
    speech_t = [w.t for w in windows if w.is_speech]
    raw = [w.probabilities["angry"] for w in windows if w.is_speech]
    smoothed = {t: float(np.mean(raw[max(0, i - 2) : i + 1])) for i, t in enumerate(speech_t)}
    assert [e.payload["phase"] for e in events] == ["start", "end"] * (len(events) // 2)
    prev_end = -np.inf
    for start, end in zip(events[::2], events[1::2], strict=True):
        onset, t_end = start.t, end.t
        assert end.payload["started_at"] == onset
        assert onset >= prev_end + p.cooldown_s - 1e-9
        assert start.payload["detected_at"] - onset >= p.min_duration_s - 1e-9
        assert end.payload["duration_s"] == pytest.approx(t_end - onset)
        assert end.payload["duration_s"] >= p.min_duration_s - 1e-9
        threshold = p.on_threshold if start.payload["baseline_ready"] else p.early_on_threshold
        assert smoothed[onset] >= threshold
        if start.payload["baseline_ready"]:
            assert smoothed[onset] - start.payload["baseline"] >= p.on_margin - 1e-9
        inside = [s for t, s in smoothed.items() if onset <= t < t_end]
        assert min(inside) >= p.off_threshold
        assert end.payload["peak_score"] == pytest.approx(
            max(s for t, s in smoothed.items() if onset <= t <= t_end)
        )
        if end.payload["reason"] == "score_fell":
            assert smoothed[t_end] < p.off_threshold
        elif end.payload["reason"] == "silence":
            gap = [w.t for w in windows if t_end < w.t <= end.payload["detected_at"]]
            assert not any(w.is_speech for w in windows if w.t in gap)
            assert end.payload["detected_at"] - t_end >= p.silence_end_s - 1e-9
        prev_end = t_end
    assert len(events) >= 10  # the streams are built to contain spikes (9 to 17 each)


def test_shipped_defaults_are_valid_and_keep_hysteresis() -> None:
    p = SHIPPED_DETECTOR_PARAMS
    SpikeDetector(labels=LABELS, params=p)  # validates
    assert p.off_threshold < p.on_threshold < p.early_on_threshold
    # the shipped smoothing still reports a sustained anger segment exactly once
    values = [0.05] * 40 + [0.9] * 20 + [0.05] * 40
    assert [ph for ph, _ in phases(run(stream(values), params=p))] == ["start", "end"]


def test_end_on_the_spikes_last_windows_keeps_one_dip_from_ending_it() -> None:
    """Start on one window, end on the mean of the spike's last three (the shipped shape):
    a single calm window inside the anger does not end the spike; two do."""
    fast = dataclasses.replace(
        DEFAULT_DETECTOR_PARAMS, smoothing_windows=1, min_duration_s=0.5, off_threshold=0.45
    )
    anger = [0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.2, 0.2, 0.2]
    values = [0.05] * 40 + anger + [0.05] * 10
    one_window_end = run(stream(values), fast)
    three_window_end = run(stream(values), dataclasses.replace(fast, end_smoothing_windows=3))
    # onset at the first 0.9 (k=41, t=20.5) for both
    assert phases(one_window_end)[0] == ("start", 20.5)
    assert phases(three_window_end)[0] == ("start", 20.5)
    # one-window end: the dip at k=44 (t=22.0) ends it
    assert phases(one_window_end)[1] == ("end", 22.0)
    # three-window end: k=44 averages (0.9+0.9+0.2)/3 = 0.67; it ends at k=48 (t=24.0),
    # (0.9+0.2+0.2)/3 = 0.43 < 0.45
    assert phases(three_window_end)[1] == ("end", 24.0)
    with pytest.raises(ConfigError, match="end_smoothing_windows=-1"):
        SpikeDetector(labels=LABELS, params=dataclasses.replace(fast, end_smoothing_windows=-1))


def test_a_dip_within_merge_gap_is_one_episode() -> None:
    """One episode with short dips is one spike; a return after the gap is a new one."""
    one = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1)
    merged = dataclasses.replace(one, merge_gap_s=3.0)
    dip = [0.05] * 40 + [0.9] * 10 + [0.2] * 4 + [0.9] * 10 + [0.05] * 20
    # without the gap: onset at the first 0.9 (k=41, t=20.5), ends at the first 0.2
    # (k=51, t=25.5), cool-down to 30.5; the anger is back at k=55 (t=27.5) but may
    # not start until t=30.5: two spikes for one episode
    assert phases(run(stream(dip), one)) == [
        ("start", 20.5),
        ("end", 25.5),
        ("start", 30.5),
        ("end", 32.5),
    ]
    # with it: the end met at t=25.5 is held; 0.9 at t=27.5 (2 s later) continues the
    # spike, which ends where the anger stops (k=65, t=32.5), reported 3 s later
    events = run(stream(dip), merged)
    assert phases(events) == [("start", 20.5), ("end", 32.5)]
    assert events[1].payload["detected_at"] == pytest.approx(35.5)
    assert events[1].payload["duration_s"] == pytest.approx(12.0)
    # a dip longer than the gap: two spikes, the first ending where its end was met
    long_dip = [0.05] * 40 + [0.9] * 10 + [0.2] * 14 + [0.9] * 10 + [0.05] * 20
    events = run(stream(long_dip), merged)
    assert phases(events) == [("start", 20.5), ("end", 25.5), ("start", 32.5), ("end", 37.5)]
    assert events[1].payload["detected_at"] == pytest.approx(28.5)
    # a held end at hang-up is reported as met, not as call_end
    events = run(stream([0.05] * 40 + [0.9] * 10 + [0.2] * 2), merged, finish_t=26.0)
    assert phases(events) == [("start", 20.5), ("end", 25.5)]
    assert events[1].payload["reason"] == "score_fell"


def test_low_confidence_windows_move_nothing_and_hold_off_starts() -> None:
    p = DEFAULT_DETECTOR_PARAMS
    assert (p.low_confidence_window_s, p.low_confidence_max_flagged) == (5.0, 1)

    def low(w: EmotionScores) -> EmotionScores:
        return dataclasses.replace(w, low_confidence=True, low_confidence_reason="synthetic")

    # synthetic speech the model calls angry: every window flagged -> nothing at all
    assert run([low(w) for w in stream([0.95] * 100)], p, finish_t=50.0) == []
    # one in four "angry" windows unflagged: 2+ flagged in every 5 s -> no start
    mixed = [low(w) if i % 4 else w for i, w in enumerate(stream([0.95] * 100))]
    assert run(mixed, p, finish_t=50.0) == []
    # a real caller with one flagged window in the anger still spikes
    values = [0.05] * 40 + [0.9] * 20 + [0.05] * 10
    one_flag = [low(w) if i == 41 else w for i, w in enumerate(stream(values))]
    assert [ph for ph, _ in phases(run(one_flag, p))] == ["start", "end"]
    # real calm speech, then real anger once the flags are 5 s old: it spikes
    windows = [low(w) for w in stream([0.95] * 10)] + stream([0.05] * 30 + [0.9] * 20, first_k=11)
    det = SpikeDetector(labels=LABELS, params=p)
    events = [e for w in windows for e in det.update(w)]
    assert phases(events)[0] == ("start", 21.0)
    # the flagged windows set neither the baseline nor the speech count
    assert det.snapshot()["angry"].baseline == pytest.approx(0.05)


@pytest.mark.parametrize("seed", range(4))
def test_merged_spikes_keep_their_invariants(seed: int) -> None:
    """With merge_gap_s: spikes alternate start/end, never overlap, an end is reported
    merge_gap_s (or more) after it was met, and every gap between spikes has no window
    meeting the start rule within merge_gap_s of the earlier end."""
    rng = np.random.default_rng(seed)
    p = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, merge_gap_s=3.0)
    values = []
    while len(values) < 600:
        values += [float(rng.choice([0.05, 0.3, 0.9]))] * int(rng.integers(1, 12))
    windows = stream(values)
    events = run(windows, p, finish_t=HOP * (len(values) + 1))
    assert [e.payload["phase"] for e in events] == ["start", "end"] * (len(events) // 2)
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert end.payload["started_at"] == start.t
        if end.payload["reason"] != "call_end":
            assert end.payload["detected_at"] - end.t >= p.merge_gap_s - 1e-9
    ends = [e.t for e in events[1::2]]
    starts = [e.t for e in events[2::2]]
    assert all(b - a >= p.cooldown_s - 1e-9 for a, b in zip(ends, starts, strict=False))
    assert len(events) >= 4


def test_an_early_spike_needs_its_anger_to_hold_for_early_min_duration_s() -> None:
    """Before the voice is known a candidate is confirmed only after early_min_duration_s
    (1 s) with the mean raw score since its onset at early_on_threshold (0.75)."""
    p = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1, min_duration_s=0.5)
    assert p.early_min_duration_s == 1.0
    # a calm caller's high first window: mean 0.70 over the 1 s -> dropped, no spike
    assert run(stream([0.9, 0.6, 0.6, 0.6, 0.6] + [0.05] * 30), p) == []
    # an angry caller: mean 0.83 -> onset t=0.5, confirmed at t=1.5
    events = run(stream([0.9, 0.8, 0.8, 0.8, 0.8] + [0.05] * 30), p)
    assert phases(events) == [("start", 0.5), ("end", 3.0)]
    assert events[0].payload["detected_at"] == pytest.approx(1.5)
    assert events[0].payload["baseline_ready"] is False
    # at hang-up, a young early candidate is not reported
    assert run(stream([0.9, 0.9]), p, finish_t=1.2) == []
