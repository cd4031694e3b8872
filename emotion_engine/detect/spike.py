"""Emotion spike detection for one party of one call: baseline, smoothing, hysteresis.

For each emotion in ``params.spike_emotions`` (default: angry) the detector follows
``score = P(emotion)`` over *speech* windows only (one every ``params.hop_s``); a
window with ``is_speech=False`` -- or speech flagged ``low_confidence`` (synthetic
speech, music, tones: ``model/confidence.py``) -- moves neither the smoothing, nor the
baseline, nor the spike state; it can only end a spike after ``silence_end_s`` without
trusted speech. No spike starts (or continues within ``merge_gap_s``) while more than
``low_confidence_max_flagged`` windows of the last ``low_confidence_window_s`` were
flagged: artificial audio the check misses now and then starts nothing, while real
speech (flagged rarely) is not held back.

Rules, per emotion (all scores are probabilities 0..1, all times seconds of call audio):

- smoothed score: mean of the raw score over the last ``smoothing_windows`` speech windows.
- baseline: P(emotion) of the caller's *calm* speech. It starts at the population's
  (``prior_baseline``) and moves to the caller's own only from speech windows judged
  calm -- raw score ``<= calm_max_score``, while idle (not in a spike, a candidate or a
  cool-down) -- as a mean shrunk towards the prior (worth ``prior_weight_s`` of
  speech), then an exponential running mean with half-life ``baseline_halflife_s``.
  A caller angry from the first word, or angry for a long stretch, therefore never
  makes anger their "normal"; a naturally tense-sounding calm speaker raises the bar.
- start rule: ``smoothed >= on_threshold`` and ``smoothed - baseline >= on_margin``.
  Until ``baseline_s`` seconds of speech have been heard (``baseline_ready``), the bar
  is ``early_on_threshold`` instead of ``on_threshold`` (the margin still applies), and
  such an early candidate is confirmed only after ``early_min_duration_s`` with the
  mean raw score since its onset still at ``early_on_threshold`` (else it is dropped):
  a caller angry from the first word is reported within about that time, a calm caller
  whose first (1 s) windows happen to score high is not.
- a window meeting the start rule opens a *candidate* at ``onset`` (its ``t``). The
  candidate is confirmed -- and the ``start`` event emitted, with ``t = onset`` and
  ``detected_at`` = the confirming window's ``t`` -- at the first speech window with
  ``t - onset >= min_duration_s`` whose smoothed score is still ``>= off_threshold``.
  A candidate that falls below ``off_threshold`` earlier is dropped silently: spikes
  shorter than ``min_duration_s`` are never reported. Detection delay is
  ``detected_at - t`` (about ``min_duration_s``).
- end rule (hysteresis): the end is met at the first speech window whose smoothed
  score is ``< off_threshold`` (``reason="score_fell"``, ``t`` = that window); with
  ``end_smoothing_windows`` > 0 that score is the mean of the confirmed spike's last
  ``end_smoothing_windows`` speech windows since its onset instead (a candidate is
  still dropped on the start's average). Or it is met when no speech has been heard
  for ``silence_end_s`` (``reason="silence"``, ``t`` = the last speech window).
- one episode, one spike: a met end is *held* for ``merge_gap_s``; a speech window
  meeting the start rule within it continues the same spike (a short dip in the anger,
  or a codec's slightly different scores around the threshold, does not split one
  episode into two spikes). The ``end`` event is emitted when the gap has passed, with
  ``t`` where the end was met and ``detected_at`` when it was confirmed; at
  :meth:`SpikeDetector.finish` a held end is reported as it was met, an open spike
  ends with ``reason="call_end"``.
- cool-down: no new candidate for ``cooldown_s`` after a spike's end ``t``.

Use: ``events = detector.update(scores)`` per window, ``detector.finish(t=...)`` at
hang-up, ``reset()`` for a new call.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from emotion_engine.config import DEFAULT_DETECTOR_PARAMS, DetectorParams
from emotion_engine.errors import ConfigError, EventError
from emotion_engine.frames import EmotionScores
from emotion_engine.publish.events import Event, spike


class SpikeState(StrEnum):
    """Per-emotion detector state."""

    IDLE = "idle"
    CANDIDATE = "candidate"  # start rule met, not yet confirmed (min duration)
    ACTIVE = "active"
    COOLDOWN = "cooldown"


@dataclass(frozen=True, slots=True)
class TrackSnapshot:
    """What the detector currently knows about one emotion (for emotion.update)."""

    state: SpikeState
    score: float | None  # smoothed score, None before the first speech window
    baseline: float  # 0.0 before any baseline sample
    baseline_ready: bool


def validate_detector_params(params: DetectorParams) -> None:
    """Raise ConfigError for detector settings that cannot work together."""
    for name in (
        "on_threshold",
        "on_margin",
        "off_threshold",
        "early_on_threshold",
        "prior_baseline",
        "calm_max_score",
    ):
        value = getattr(params, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"DetectorParams.{name}={value!r} must lie in [0, 1]")
    if params.off_threshold > params.on_threshold:
        raise ConfigError(
            f"DetectorParams.off_threshold={params.off_threshold!r} must not exceed "
            f"on_threshold={params.on_threshold!r} (hysteresis)"
        )
    if params.off_threshold > params.early_on_threshold:
        raise ConfigError(
            f"DetectorParams.off_threshold={params.off_threshold!r} must not exceed "
            f"early_on_threshold={params.early_on_threshold!r}"
        )
    if params.end_smoothing_windows < 0:
        raise ConfigError(
            f"DetectorParams.end_smoothing_windows={params.end_smoothing_windows!r} must be "
            ">= 0 (0: the same windows as smoothing_windows)"
        )
    if params.low_confidence_max_flagged < 0:
        raise ConfigError(
            f"DetectorParams.low_confidence_max_flagged={params.low_confidence_max_flagged!r} "
            "must be >= 0"
        )
    if params.smoothing_windows < 1:
        raise ConfigError(
            f"DetectorParams.smoothing_windows={params.smoothing_windows!r} must be >= 1"
        )
    if not params.hop_s > 0:
        raise ConfigError(f"DetectorParams.hop_s={params.hop_s!r} must be > 0 seconds")
    if not params.baseline_halflife_s > 0:
        raise ConfigError(
            f"DetectorParams.baseline_halflife_s={params.baseline_halflife_s!r} must be > 0"
        )
    for name in (
        "baseline_s",
        "min_duration_s",
        "cooldown_s",
        "end_state_s",
        "silence_end_s",
        "merge_gap_s",
        "prior_weight_s",
        "low_confidence_window_s",
        "early_min_duration_s",
    ):
        value = getattr(params, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"DetectorParams.{name}={value!r} must be finite and >= 0 s")
    if not params.spike_emotions:
        raise ConfigError("DetectorParams.spike_emotions is empty")


class _Track:
    """State of one emotion's detector."""

    def __init__(self, emotion: str, params: DetectorParams) -> None:
        self.emotion = emotion
        self.p = params
        self._alpha = 1.0 - 0.5 ** (params.hop_s / params.baseline_halflife_s)
        self._prior_windows = params.prior_weight_s / params.hop_s
        self.reset()

    def reset(self) -> None:
        self.state = SpikeState.IDLE
        self.recent: deque[float] = deque(maxlen=self.p.smoothing_windows)
        # raw scores since the current spike's onset, for the end rule
        self.since_onset: deque[float] = deque(maxlen=max(1, self.p.end_smoothing_windows))
        self.smoothed: float | None = None
        self.baseline = self.p.prior_baseline
        self.n_calm = 0  # speech windows judged calm that moved the baseline
        self.n_speech = 0  # speech windows heard (for baseline_ready)
        self.baseline_ready = False
        self.last_speech_t: float | None = None
        self.onset_t = 0.0
        self.onset_ready = False  # baseline_ready at the candidate's onset
        self.cand_sum = 0.0  # raw scores since the candidate's onset, for the early rule
        self.cand_n = 0
        self.onset_baseline = 0.0
        self.peak = 0.0
        self.confirm_score = 0.0
        self.cooldown_until = -math.inf
        self.flagged: deque[float] = deque()  # t of recent windows flagged low confidence
        # an end met but held for merge_gap_s: (t, reason, score)
        self.pending_end: tuple[float, str, float] | None = None

    def snapshot(self) -> TrackSnapshot:
        return TrackSnapshot(self.state, self.smoothed, self.baseline, self.baseline_ready)

    def _learn_baseline(self, raw: float) -> None:
        """Move the baseline towards a window judged calm: a mean shrunk towards the
        population prior (worth ``prior_weight_s`` of speech), then, once that mean
        moves slower than the running mean would, the running mean."""
        if raw > self.p.calm_max_score:
            return  # not calm: anger never becomes the caller's "normal"
        self.n_calm += 1
        rate = max(1.0 / (self._prior_windows + self.n_calm), self._alpha)
        self.baseline += rate * (raw - self.baseline)

    def _starts(self, smoothed: float) -> bool:
        bar = self.p.on_threshold
        if not self.baseline_ready:
            bar = max(bar, self.p.early_on_threshold)
        return smoothed >= bar and smoothed - self.baseline >= self.p.on_margin - 1e-12

    def _event(
        self,
        ctx: tuple[str, str],
        phase: str,
        t: float,
        detected_at: float,
        score: float,
        reason: str | None = None,
    ) -> Event:
        call_id, party = ctx
        end = phase == "end"
        return spike(
            call_id=call_id,
            party=party,
            phase=phase,
            t=t,
            emotion=self.emotion,
            score=score,
            baseline=self.onset_baseline,
            baseline_ready=self.baseline_ready,
            detected_at=detected_at,
            started_at=self.onset_t if end else None,
            duration_s=t - self.onset_t if end else None,
            peak_score=self.peak if end else None,
            reason=reason,
        )

    def _hold_end(self, ctx: tuple[str, str], t_end: float, now: float, reason: str) -> list[Event]:
        """The end rule is met at ``t_end``: the end is reported once ``merge_gap_s`` has
        passed without the start rule being met again (then it continues the episode)."""
        if self.pending_end is None:
            assert self.smoothed is not None
            self.pending_end = (t_end, reason, self.smoothed)
        return self._confirm_end(ctx, now)

    def _confirm_end(self, ctx: tuple[str, str], now: float) -> list[Event]:
        assert self.pending_end is not None
        t_end, reason, score = self.pending_end
        if now - t_end < self.p.merge_gap_s - 1e-9:
            return []
        event = self._event(ctx, "end", t_end, now, score, reason)
        self.pending_end = None
        self.state = SpikeState.COOLDOWN
        self.cooldown_until = t_end + self.p.cooldown_s
        return [event]

    def step(
        self, ctx: tuple[str, str], t: float, raw: float | None, *, low: bool = False
    ) -> list[Event]:
        """One window: ``raw`` is the emotion's probability, None for a window that is
        not speech or (``low``) speech flagged low confidence."""
        flagged = self.flagged
        if low:
            flagged.append(t)
            if self.state is SpikeState.CANDIDATE:
                self.state = SpikeState.IDLE
        while flagged and flagged[0] < t - self.p.low_confidence_window_s + 1e-9:
            flagged.popleft()
        if raw is None:
            silent_for = math.inf if self.last_speech_t is None else t - self.last_speech_t
            if self.state is SpikeState.ACTIVE:
                if self.pending_end is not None:
                    return self._confirm_end(ctx, t)
                if silent_for >= self.p.silence_end_s:
                    assert self.last_speech_t is not None
                    return self._hold_end(ctx, self.last_speech_t, t, "silence")
            elif self.state is SpikeState.CANDIDATE and silent_for >= self.p.silence_end_s:
                self.state = SpikeState.IDLE
            return []

        self.recent.append(raw)
        smoothed = sum(self.recent) / len(self.recent)
        self.smoothed = smoothed
        self.last_speech_t = t
        self.n_speech += 1
        if not self.baseline_ready:
            # the count, not elapsed time, so gaps in speech do not shorten the period
            self.baseline_ready = self.n_speech * self.p.hop_s >= self.p.baseline_s - 1e-9
        if self.state is SpikeState.COOLDOWN and t >= self.cooldown_until - 1e-9:
            self.state = SpikeState.IDLE

        trusted = len(flagged) <= self.p.low_confidence_max_flagged
        if self.state is SpikeState.IDLE:
            if trusted and self._starts(smoothed):
                self.state = SpikeState.CANDIDATE
                self.onset_t = t
                self.onset_ready = self.baseline_ready
                self.cand_sum, self.cand_n = raw, 1
                self.onset_baseline = self.baseline
                self.peak = smoothed
                self.since_onset.clear()
                self.since_onset.append(raw)
                return self._maybe_confirm(ctx, t, smoothed)
            self._learn_baseline(raw)
            return []
        if self.state is SpikeState.CANDIDATE:
            self.since_onset.append(raw)
            self.cand_sum += raw
            self.cand_n += 1
            # a candidate is judged on the start's own (short) average: the end rule's
            # longer one would let brief peaks through to a confirmed spike
            if smoothed < self.p.off_threshold:
                self.state = SpikeState.IDLE
                return []
            self.peak = max(self.peak, smoothed)
            return self._maybe_confirm(ctx, t, smoothed)
        if self.state is SpikeState.ACTIVE:
            if self.pending_end is not None:
                if trusted and self._starts(smoothed):  # back within the gap: one episode
                    self.pending_end = None
                    self.since_onset.clear()
                    self.since_onset.append(raw)
                    self.peak = max(self.peak, smoothed)
                    return []
                return self._confirm_end(ctx, t)
            self.since_onset.append(raw)
            ending = smoothed
            if self.p.end_smoothing_windows:
                ending = sum(self.since_onset) / len(self.since_onset)
            if ending < self.p.off_threshold:
                return self._hold_end(ctx, t, t, "score_fell")
            self.peak = max(self.peak, smoothed)
        return []

    def _maybe_confirm(self, ctx: tuple[str, str], t: float, smoothed: float) -> list[Event]:
        if self.onset_ready:
            if t - self.onset_t >= self.p.min_duration_s - 1e-9:
                self.state = SpikeState.ACTIVE
                return [self._event(ctx, "start", self.onset_t, t, smoothed)]
            return []
        # a voice the engine does not know yet: the anger must hold, on average, at the
        # early bar for early_min_duration_s (a first loud or odd window is not enough)
        if t - self.onset_t >= max(self.p.min_duration_s, self.p.early_min_duration_s) - 1e-9:
            if self.cand_sum / self.cand_n >= self.p.early_on_threshold - 1e-12:
                self.state = SpikeState.ACTIVE
                return [self._event(ctx, "start", self.onset_t, t, smoothed)]
            self.state = SpikeState.IDLE
        return []

    def finish(self, ctx: tuple[str, str], t: float) -> list[Event]:
        events: list[Event] = []
        needed = self.p.min_duration_s
        if not self.onset_ready:
            needed = max(needed, self.p.early_min_duration_s)
            if self.cand_n and self.cand_sum / self.cand_n < self.p.early_on_threshold - 1e-12:
                needed = math.inf
        if self.state is SpikeState.CANDIDATE and t - self.onset_t >= needed - 1e-9:
            assert self.smoothed is not None
            self.state = SpikeState.ACTIVE
            events.append(self._event(ctx, "start", self.onset_t, t, self.smoothed))
        if self.state is SpikeState.ACTIVE:
            if self.pending_end is not None:  # the episode had ended before the hang-up
                t_end, reason, score = self.pending_end
                events.append(self._event(ctx, "end", t_end, max(t, t_end), score, reason))
                self.pending_end = None
            else:
                assert self.smoothed is not None
                events.append(
                    self._event(ctx, "end", max(t, self.onset_t), t, self.smoothed, "call_end")
                )
        self.state = SpikeState.IDLE
        return events


class SpikeDetector:
    """Spike start/end events for one party; see the module docstring for the rules.

    ``labels``: the model's labels; every ``params.spike_emotions`` entry must be one.
    Raises ConfigError for bad params, EventError for scores out of time order, for
    another call/party than the first seen, or missing a spike emotion.
    """

    def __init__(
        self, *, labels: Sequence[str], params: DetectorParams = DEFAULT_DETECTOR_PARAMS
    ) -> None:
        validate_detector_params(params)
        missing = [e for e in params.spike_emotions if e not in labels]
        if missing:
            raise ConfigError(
                f"spike emotions {missing} are not among the model labels {tuple(labels)}"
            )
        self.labels = tuple(labels)
        self.params = params
        self._tracks = [_Track(e, params) for e in params.spike_emotions]
        self._ctx: tuple[str, str] | None = None
        self._last_t = -math.inf

    def reset(self) -> None:
        """Forget everything: a new call."""
        for track in self._tracks:
            track.reset()
        self._ctx = None
        self._last_t = -math.inf

    @property
    def in_spike(self) -> bool:
        """Whether any emotion is in a confirmed spike."""
        return any(track.state is SpikeState.ACTIVE for track in self._tracks)

    def snapshot(self) -> dict[str, TrackSnapshot]:
        """Per spike emotion: state, smoothed score and baseline right now."""
        return {track.emotion: track.snapshot() for track in self._tracks}

    def view(self) -> dict[str, dict[str, str | float | bool | None]]:
        """:meth:`snapshot` as ``emotion.update``'s ``detector`` field: per spike emotion
        ``{"state", "score", "baseline", "baseline_ready"}``, fresh dicts. Built from the
        tracks directly: the snapshot objects in between cost ~1 us a window."""
        return {
            track.emotion: {
                "state": track.state.value,
                "score": track.smoothed,
                "baseline": track.baseline,
                "baseline_ready": track.baseline_ready,
            }
            for track in self._tracks
        }

    def update(self, scores: EmotionScores) -> list[Event]:
        """Feed one window (speech or not); returns the spike events it caused."""
        ctx = (scores.call_id, scores.party)
        if self._ctx is None:
            self._ctx = ctx
        elif ctx != self._ctx:
            raise EventError(
                f"scores for call_id={scores.call_id!r} party={scores.party!r} sent to the "
                f"detector of call_id={self._ctx[0]!r} party={self._ctx[1]!r}"
            )
        if not math.isfinite(scores.t) or scores.t < self._last_t:
            raise EventError(
                f"scores out of time order: t={scores.t!r} after t={self._last_t!r} "
                f"(call_id={scores.call_id!r} party={scores.party!r})"
            )
        self._last_t = scores.t
        events: list[Event] = []
        for track in self._tracks:
            raw: float | None = None
            low = scores.is_speech and scores.low_confidence
            if scores.is_speech and not low:
                try:
                    raw = float(scores.probabilities[track.emotion])
                except KeyError:
                    raise EventError(
                        f"scores at t={scores.t!r} lack the spike emotion {track.emotion!r}; "
                        f"got {sorted(scores.probabilities)}"
                    ) from None
                if not math.isfinite(raw):
                    raise EventError(f"P({track.emotion})={raw!r} at t={scores.t!r} is not finite")
            events += track.step(ctx, scores.t, raw, low=low)
        return events

    def finish(self, *, t: float) -> list[Event]:
        """End of call at ``t``: close any open spike (a candidate that has lasted
        ``min_duration_s`` is reported as a spike too). Returns start/end events."""
        if self._ctx is None:
            return []
        events: list[Event] = []
        for track in self._tracks:
            events += track.finish(self._ctx, max(t, self._last_t))
        return events
