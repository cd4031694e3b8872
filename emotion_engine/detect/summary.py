"""Call summary for one party: peak, end state, peak-end score, time in each state.

Definitions (every statistic uses *speech* windows only, each standing for
``params.hop_s`` seconds; probabilities 0..1, times in seconds of call audio):

- valence of a window: ``sum(VALENCE_WEIGHTS[label] * P(label))`` -- positive labels
  (happy) count +1, negative ones (angry, sad, fearful, disgust) -1, the rest
  (neutral, calm, surprised) 0; so valence lies in [-1, 1].
- peak: the most negative moment of the call. Probabilities are smoothed with a
  moving average over the last ``smoothing_windows`` speech windows (the spike
  detector's smoothing, so one glitchy window is not "the peak"); the peak is the
  window with the lowest smoothed valence (earliest on a tie). Reported: ``t`` (that
  window's end), ``valence``, ``arousal`` (smoothed, its intensity), and ``emotion`` /
  ``score``: the negative label with the highest smoothed probability there (the most
  probable label if the model has no negative label).
- end state: mean probabilities, arousal and valence over the last ``end_state_s``
  seconds of speech (``round(end_state_s / hop_s)`` windows); ``emotion`` is the most
  probable label of the mean.
- peak-end score (Kahneman's peak-end rule): ``(peak.valence + end_state.valence) / 2``
  in [-1, 1]; ``peak_end_parts`` gives both terms.
- recovery: did the call end better than its worst moment? ``delta`` =
  ``end_state.valence - peak.valence``; ``outcome`` is ``no_low_point`` when the peak
  never fell to :data:`LOW_POINT_VALENCE`, else ``recovered`` when ``delta`` reaches
  :data:`RECOVERY_MARGIN` and ``not_recovered`` when it does not (the call ended about
  as badly as its worst moment).
- end mood: the end state in one word -- ``negative`` (valence <=
  :data:`END_NEGATIVE_VALENCE`), ``positive`` (>= :data:`END_POSITIVE_VALENCE`) or
  ``neutral``; what per-agent reports count.
- time in each state: seconds of speech per window's most probable label; they sum
  to ``speech_s``.
- ``duration_s``: from the leg's start to its end, speech or not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_DETECTOR_PARAMS, DetectorParams
from emotion_engine.errors import EventError
from emotion_engine.frames import EmotionScores

VALENCE_WEIGHTS: dict[str, float] = {
    "happy": 1.0,
    "angry": -1.0,
    "sad": -1.0,
    "fearful": -1.0,
    "disgust": -1.0,
    "neutral": 0.0,
    "calm": 0.0,
    "surprised": 0.0,
}
"""Sign of each label's contribution to valence; labels not listed count 0."""


# --- recovery and end mood (issue 6) ---
# The shipped model scores calm speech at a valence of about -0.1..-0.2 (neutral and
# sad overlap on the phone band), so the cut-offs sit below that noise floor.
LOW_POINT_VALENCE = -0.4
"""A peak at or below this valence is a low point the call can recover from."""
RECOVERY_MARGIN = 0.2
"""The end must beat the peak's valence by this much to count as recovered."""
END_NEGATIVE_VALENCE = -0.3
END_POSITIVE_VALENCE = 0.2


def recovery(*, peak_valence: float, end_valence: float) -> dict[str, Any]:
    """``{"outcome": recovered | not_recovered | no_low_point, "delta": end - peak}``."""
    delta = end_valence - peak_valence
    if peak_valence > LOW_POINT_VALENCE:
        outcome = "no_low_point"
    elif delta >= RECOVERY_MARGIN:
        outcome = "recovered"
    else:
        outcome = "not_recovered"
    return {"outcome": outcome, "delta": delta}


def end_mood(end_valence: float) -> str:
    """``negative`` / ``neutral`` / ``positive`` for an end-state valence."""
    if end_valence <= END_NEGATIVE_VALENCE:
        return "negative"
    return "positive" if end_valence >= END_POSITIVE_VALENCE else "neutral"


# --- end recovery and end mood ---


def valence(probabilities: Mapping[str, float]) -> float:
    """Valence of one window's probabilities: sum of weight * P over labels, in [-1, 1]."""
    return float(sum(VALENCE_WEIGHTS.get(k, 0.0) * p for k, p in probabilities.items()))


@dataclass(frozen=True, slots=True)
class PeakMoment:
    """The most negative moment: see the module docstring."""

    t: float
    emotion: str
    score: float
    valence: float
    arousal: float


@dataclass(frozen=True, slots=True)
class EndState:
    """Mean state over the last ``end_state_s`` seconds of speech."""

    emotion: str
    probabilities: dict[str, float]
    arousal: float
    valence: float
    t_from: float  # end time of the first window included
    t_to: float  # end time of the last window included
    speech_s: float


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One party's summary, published in ``call.end`` (``to_dict``)."""

    peak: PeakMoment | None
    end_state: EndState | None
    peak_end_score: float | None
    peak_end_parts: dict[str, float] | None
    recovery: dict[str, Any] | None  # see recovery(); None when the party never spoke
    end_mood: str | None  # see end_mood(); None when the party never spoke
    time_in_state_s: dict[str, float]
    mean_valence: float | None
    mean_arousal: float | None
    n_spikes: int
    spikes_by_emotion: dict[str, int]
    speech_s: float
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recent_means(
    recent: deque[tuple[NDArray[np.float64], float]],
) -> tuple[NDArray[np.float64], float]:
    """Mean probability vector (n_labels,) and mean arousal of the recent windows.

    The same numbers as ``np.mean`` over the stacked rows and over the arousals: rows
    are added in order, then divided; numpy adds fewer than 8 scalars in order too,
    longer runs pairwise (then numpy does it). Two ``np.mean`` calls on Python lists
    were ~40 % of the tracker's time per window.
    """
    if len(recent) >= 8:
        return (
            np.mean([r[0] for r in recent], axis=0),
            float(np.mean([r[1] for r in recent])),
        )
    total_p: NDArray[np.float64] | None = None
    total_a = 0.0
    for p, a in recent:
        total_p = p.copy() if total_p is None else total_p + p
        total_a += a
    assert total_p is not None
    return total_p / len(recent), total_a / len(recent)


class CallSummarizer:
    """Accumulates one party's windows; :meth:`summarize` at the end of the call.

    Keeps O(end_state_s / hop_s) state, so a 10-hour call costs no more memory than
    a short one. Non-speech windows only advance the clock.
    """

    def __init__(
        self,
        *,
        labels: Sequence[str],
        params: DetectorParams = DEFAULT_DETECTOR_PARAMS,
        t_start: float = 0.0,
    ) -> None:
        if not labels:
            raise EventError("CallSummarizer needs at least one label")
        self.labels = tuple(labels)
        self.params = params
        self._weights = np.array([VALENCE_WEIGHTS.get(k, 0.0) for k in self.labels])
        negative = [i for i, k in enumerate(self.labels) if VALENCE_WEIGHTS.get(k, 0.0) < 0]
        self._negative = np.array(negative if negative else range(len(self.labels)))
        self._n_end = max(1, round(params.end_state_s / params.hop_s))
        self.reset(t_start=t_start)

    def reset(self, *, t_start: float = 0.0) -> None:
        self.t_start = t_start
        self._t_last = t_start
        self._recent: deque[tuple[NDArray[np.float64], float]] = deque(
            maxlen=self.params.smoothing_windows
        )
        self._end: deque[tuple[float, NDArray[np.float64], float]] = deque(maxlen=self._n_end)
        self._n_speech = 0
        self._sum_valence = 0.0
        self._sum_arousal = 0.0
        # Python ints: one increment a window, cheaper than a numpy element's
        self._dominant_counts = [0] * len(self.labels)
        self._peak: PeakMoment | None = None
        self._spikes: dict[str, int] = {}

    def _vector(self, scores: EmotionScores) -> NDArray[np.float64]:
        try:
            return np.array([scores.probabilities[k] for k in self.labels], dtype=np.float64)
        except KeyError as exc:
            raise EventError(
                f"scores at t={scores.t!r} lack label {exc.args[0]!r}; "
                f"got {sorted(scores.probabilities)}"
            ) from None

    def update(self, scores: EmotionScores) -> None:
        """Add one window (speech windows count, others -- and speech flagged low
        confidence -- only move the clock)."""
        self._t_last = max(self._t_last, scores.t)
        if not scores.is_speech or scores.low_confidence:
            return
        p = self._vector(scores)
        self._n_speech += 1
        v = float(self._weights @ p)
        self._sum_valence += v
        self._sum_arousal += scores.arousal
        self._dominant_counts[int(p.argmax())] += 1  # the method: np.argmax's wrapper costs
        self._end.append((scores.t, p, scores.arousal))

        self._recent.append((p, scores.arousal))
        if len(self._recent) == 1:
            # no smoothing (the default smoothing_windows=1): the mean of one window is
            # the window, bit for bit (x / 1 == x; the arousal is 0.0 + a, as the
            # running sum of _recent_means makes it, -0.0 -> 0.0), so its valence is
            # v: a mean and a dot product saved per window
            p_s, a_s, v_s = p, 0.0 + scores.arousal, v
        else:
            p_s, a_s = _recent_means(self._recent)
            v_s = float(self._weights @ p_s)
        if self._peak is None or v_s < self._peak.valence:
            i = int(self._negative[p_s[self._negative].argmax()])
            self._peak = PeakMoment(
                t=scores.t, emotion=self.labels[i], score=float(p_s[i]), valence=v_s, arousal=a_s
            )

    def add_spike(self, *, emotion: str) -> None:
        """Count one reported spike (its start event)."""
        self._spikes[emotion] = self._spikes.get(emotion, 0) + 1

    @property
    def speech_s(self) -> float:
        return self._n_speech * self.params.hop_s

    def summarize(self, *, t: float | None = None) -> CallSummary:
        """The summary so far; ``t`` is the end of the leg (default: the last window)."""
        t_end = self._t_last if t is None else max(t, self._t_last)
        hop = self.params.hop_s
        end_state: EndState | None = None
        peak_end: float | None = None
        parts: dict[str, float] | None = None
        if self._end:
            p_end = np.mean([e[1] for e in self._end], axis=0)
            v_end = float(self._weights @ p_end)
            end_state = EndState(
                emotion=self.labels[int(np.argmax(p_end))],
                probabilities={k: float(x) for k, x in zip(self.labels, p_end, strict=True)},
                arousal=float(np.mean([e[2] for e in self._end])),
                valence=v_end,
                t_from=self._end[0][0],
                t_to=self._end[-1][0],
                speech_s=len(self._end) * hop,
            )
        if self._peak is not None and end_state is not None:
            peak_end = (self._peak.valence + end_state.valence) / 2.0
            parts = {"peak_valence": self._peak.valence, "end_valence": end_state.valence}
        n = self._n_speech
        return CallSummary(
            peak=self._peak,
            end_state=end_state,
            peak_end_score=peak_end,
            peak_end_parts=parts,
            recovery=(
                recovery(peak_valence=parts["peak_valence"], end_valence=parts["end_valence"])
                if parts is not None
                else None
            ),
            end_mood=end_mood(end_state.valence) if end_state is not None else None,
            time_in_state_s={
                k: float(c) * hop for k, c in zip(self.labels, self._dominant_counts, strict=True)
            },
            mean_valence=self._sum_valence / n if n else None,
            mean_arousal=self._sum_arousal / n if n else None,
            n_spikes=sum(self._spikes.values()),
            spikes_by_emotion=dict(self._spikes),
            speech_s=self.speech_s,
            duration_s=max(0.0, t_end - self.t_start),
        )
