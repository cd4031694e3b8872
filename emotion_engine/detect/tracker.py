"""One party of one call: scores in, events out (spike detector + call summary).

Lifecycle::

    tracker = PartyTracker(call_id="c1", party="customer", labels=model.labels)
    events = tracker.start(t=0.0, info={"sample_rate": 8000})   # [call.start]
    events += tracker.update(scores)    # per window: [emotion.update, emotion.spike...]
    events += tracker.finish(t=93.2)    # [open spike's end, call.end with the summary]

``update`` before ``start`` or after ``finish`` raises EventError; a second
``finish`` returns no events, so an error path may call it without checking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emotion_engine.config import (
    DEFAULT_DETECTOR_PARAMS,
    DEFAULT_WINDOW_PARAMS,
    FRAMES_PER_SECOND,
    PARTIES,
    DetectorParams,
)
from emotion_engine.detect.spike import SpikeDetector
from emotion_engine.detect.summary import CallSummarizer, CallSummary, valence
from emotion_engine.errors import ConfigError, EventError
from emotion_engine.frames import EmotionScores
from emotion_engine.publish.events import Event, call_end, call_start, emotion_update


class PartyTracker:
    """Turns one party's :class:`EmotionScores` into events (not stamped; see
    ``publish.events.EventSequencer``).

    ``window_s``: analysis window length in seconds, reported in ``emotion.update``.
    Raises ConfigError for an unknown party or labels/params that do not fit.
    """

    def __init__(
        self,
        *,
        call_id: str,
        party: str,
        labels: Sequence[str],
        params: DetectorParams = DEFAULT_DETECTOR_PARAMS,
        window_s: float = DEFAULT_WINDOW_PARAMS.window_frames / FRAMES_PER_SECOND,
    ) -> None:
        if party not in PARTIES:
            raise ConfigError(f"unknown party {party!r}; expected one of {PARTIES}")
        if not labels:
            raise ConfigError(f"no model labels for call_id={call_id!r} party={party!r}")
        self.call_id = call_id
        self.party = party
        self.labels = tuple(labels)
        self.params = params
        self.window_s = window_s
        self.detector = SpikeDetector(labels=self.labels, params=params)
        self.summarizer = CallSummarizer(labels=self.labels, params=params)
        self._started = False
        self._finished = False
        self._t_last = 0.0

    @property
    def finished(self) -> bool:
        return self._finished

    def start(self, *, t: float, info: Mapping[str, Any] | None = None) -> list[Event]:
        """Begin the leg at ``t`` seconds of call audio; returns ``[call.start]``."""
        if self._started:
            raise EventError(f"start() called twice for {self.call_id!r}/{self.party!r}")
        self._started = True
        self._t_last = t
        self.summarizer.reset(t_start=t)
        return [
            call_start(call_id=self.call_id, party=self.party, t=t, labels=self.labels, info=info)
        ]

    def update(self, scores: EmotionScores) -> list[Event]:
        """One scored window; returns ``[emotion.update, *emotion.spike]``."""
        if not self._started or self._finished:
            state = "finished" if self._finished else "not started"
            raise EventError(
                f"update() on a {state} tracker for {self.call_id!r}/{self.party!r} "
                f"at t={scores.t!r}"
            )
        if scores.call_id != self.call_id or scores.party != self.party:
            raise EventError(
                f"scores for {scores.call_id!r}/{scores.party!r} sent to the tracker of "
                f"{self.call_id!r}/{self.party!r}"
            )
        spikes = self.detector.update(scores)
        self.summarizer.update(scores)
        for event in spikes:
            if event.payload["phase"] == "start":
                self.summarizer.add_spike(emotion=event.payload["emotion"])
        self._t_last = max(self._t_last, scores.t)
        update = emotion_update(
            scores,
            window_s=self.window_s,
            valence=valence(scores.probabilities) if scores.is_speech else None,
            detector=self.detector.view(),
        )
        return [update, *spikes]

    def finish(self, *, t: float, reason: str = "hangup") -> list[Event]:
        """End the leg at ``t``: ``[*open spike ends, call.end]``; [] if already finished."""
        if self._finished:
            return []
        self._finished = True
        t_end = max(t, self._t_last)
        events = self.detector.finish(t=t_end)
        for event in events:
            if event.payload["phase"] == "start":
                self.summarizer.add_spike(emotion=event.payload["emotion"])
        summary = self.summarizer.summarize(t=t_end)
        events.append(
            call_end(
                call_id=self.call_id,
                party=self.party,
                t=t_end,
                reason=reason,
                summary=summary.to_dict(),
            )
        )
        return events

    def summary(self) -> CallSummary:
        """The summary so far (also valid mid-call)."""
        return self.summarizer.summarize()
