"""Events the engine publishes: envelope, sequencing, builders and compact JSON.

Every event is one flat JSON object::

    {"v": 1, "epoch": "6b1f0c2a9d3e4f57", "seq": 7, "type": "emotion.spike",
     "call_id": "c1", "party": "customer", "t": 42.5, ...payload}

``v`` is :data:`SCHEMA_VERSION`, ``seq`` rises by 1 from 1 on each published stream
(stamped by :class:`EventSequencer`, so a subscriber can spot a gap), ``epoch`` names
that stream (a new one at every server start: seqs of two epochs are unrelated), ``t``
is seconds of call audio. The payload of each ``type`` is described field by field, with units,
in ``emotion_engine/schema/events.schema.json`` (:func:`schema_path`).

Builders return an unstamped :class:`Event`; whoever publishes stamps it once::

    seq = EventSequencer()
    line = to_json(seq.stamp(call_start(call_id="c1", party="agent", t=0.0, labels=labels)))
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from emotion_engine.config import DEFAULT_WINDOW_PARAMS, FRAMES_PER_SECOND, PARTIES
from emotion_engine.errors import EventError
from emotion_engine.frames import EmotionScores

SCHEMA_VERSION: Final = 1

CALL_START: Final = "call.start"
EMOTION_UPDATE: Final = "emotion.update"
EMOTION_SPIKE: Final = "emotion.spike"
CALL_END: Final = "call.end"
EVENT_TYPES: tuple[str, ...] = (CALL_START, EMOTION_UPDATE, EMOTION_SPIKE, CALL_END)

# --- routing hints (emotion_engine.routing) ---
ROUTE_HINT: Final = "route.hint"
DERIVED_EVENT_TYPES: tuple[str, ...] = (ROUTE_HINT,)
"""Types derived from the engine's events by consumers inside the engine (the routing
rules), kept apart from EVENT_TYPES, which lists what a call's tracker emits."""
ROUTE_ACTIONS: tuple[str, ...] = (
    "escalate",
    "offer_callback",
    "supervisor_listen_in",
    "leave_script",
)
# --- end routing hints ---

SPIKE_PHASES: tuple[str, ...] = ("start", "end")
SPIKE_END_REASONS: tuple[str, ...] = ("score_fell", "silence", "call_end")

FLOAT_DECIMALS: Final = 4
"""Floats in published JSON are rounded to this many decimals (0.1 ms, 1e-4 probability)."""

DEFAULT_WINDOW_S: Final = DEFAULT_WINDOW_PARAMS.window_frames / FRAMES_PER_SECOND

# --- stream notices: sent to subscribers, not part of the seq stream ---
EVENTS_LOST: Final = "events.lost"
EVENTS_RESYNC: Final = "events.resync"
NOTICE_TYPES: tuple[str, ...] = (EVENTS_LOST, EVENTS_RESYNC)
RESYNC_REASONS: tuple[str, ...] = ("epoch_changed", "since_ahead")

_ENVELOPE_KEYS = frozenset({"v", "epoch", "seq", "type", "call_id", "party", "t"})


def new_epoch() -> str:
    """A fresh stream id: 16 random hex digits (opaque; compare for equality only)."""
    return secrets.token_hex(8)


def schema_path() -> Path:
    """Path of the JSON Schema (draft 2020-12) that every published event satisfies."""
    return Path(__file__).resolve().parent.parent / "schema" / "events.schema.json"


def load_schema() -> dict[str, Any]:
    """The event JSON Schema as a dict."""
    with schema_path().open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


@dataclass(frozen=True, slots=True)
class Event:
    """One unstamped event: the envelope fields plus a type-specific payload.

    ``t``: seconds of call audio the event refers to (see each builder). ``payload``
    keys become top-level JSON keys, so they may not reuse an envelope name.
    """

    type: str
    call_id: str
    party: str
    t: float
    payload: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES and self.type not in DERIVED_EVENT_TYPES:
            raise EventError(
                f"unknown event type {self.type!r}; "
                f"expected one of {EVENT_TYPES + DERIVED_EVENT_TYPES}"
            )
        if self.party not in PARTIES:
            raise EventError(f"unknown party {self.party!r}; expected one of {PARTIES}")
        if not math.isfinite(self.t) or self.t < 0:
            raise EventError(f"event time t={self.t!r} must be finite and >= 0 seconds")
        clash = _ENVELOPE_KEYS.intersection(self.payload)
        if clash:
            raise EventError(f"payload keys {sorted(clash)} clash with the event envelope")

    def to_dict(self) -> dict[str, Any]:
        """Envelope (without ``v``/``seq``) and payload as one flat dict."""
        return {
            "type": self.type,
            "call_id": self.call_id,
            "party": self.party,
            "t": self.t,
            **self.payload,
        }


class EventSequencer:
    """Stamps events of one published stream with ``v``, its ``epoch`` and a ``seq``
    rising by 1 from 1.

    Use one sequencer per stream a subscriber reads (e.g. per call, or per websocket
    feed), so a missing ``seq`` means a lost event. ``epoch`` (default: a new
    :func:`new_epoch`) tells a reader which stream a seq belongs to, so one that sees
    the epoch change knows the seqs started again from 1.
    """

    def __init__(self, *, epoch: str | None = None) -> None:
        self._last_seq = 0
        self.epoch = epoch or new_epoch()

    @property
    def last_seq(self) -> int:
        """``seq`` of the last stamped event (0 before the first)."""
        return self._last_seq

    def stamp(self, event: Event) -> dict[str, Any]:
        """``{"v", "epoch", "seq", "type", "call_id", "party", "t", ...payload}``."""
        self._last_seq += 1
        return {"v": SCHEMA_VERSION, "epoch": self.epoch, "seq": self._last_seq, **event.to_dict()}

    def reset(self) -> None:
        """Start again from seq 1, under a new epoch (the old seqs mean nothing now)."""
        self._last_seq = 0
        self.epoch = new_epoch()


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays become Python, floats are rounded.

    The engine's events hold plain floats, strings, dicts and lists: those go by exact
    type first. The ``isinstance`` chain against unions and ABCs (``Mapping``,
    ``Sequence``, ``np.integer``) that everything else takes made an
    ``emotion.update`` cost 61 us to encode (25 us now), at 1,000 updates a second for
    500 legs. Both paths give the same output (tests/test_events_schema.py).
    """
    kind = type(value)
    if kind is float:
        return _plain_float(value)
    if kind is str or kind is bool or kind is int or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    return _plain_any(value)


def _plain_float(x: float) -> float:
    """``x`` rounded to ``FLOAT_DECIMALS``; EventError for NaN and infinities."""
    if not math.isfinite(x):
        raise EventError(f"non-finite number {x!r} in an event")
    # +0.0 avoids "-0.0" in the output after rounding a tiny negative
    return round(x, FLOAT_DECIMALS) + 0.0


def _plain_any(value: Any) -> Any:
    """:func:`_plain` for every other type (numpy scalars and arrays, mappings, ...)."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _plain_float(float(value))
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    raise EventError(f"cannot encode {type(value).__name__} value {value!r} in an event")


def to_json(d: Mapping[str, Any]) -> str:
    """Compact one-line JSON of a stamped event; floats rounded to 4 decimals.

    Raises EventError for NaN/inf or values JSON cannot hold.
    """
    return json.dumps(_plain(d), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dominant_label(probabilities: Mapping[str, float]) -> str | None:
    """Label with the highest probability (first in order on a tie); None if empty."""
    best: str | None = None
    best_p = -math.inf
    for label, p in probabilities.items():
        if p > best_p:
            best, best_p = label, p
    return best


def call_start(
    *,
    call_id: str,
    party: str,
    t: float,
    labels: Sequence[str],
    info: Mapping[str, Any] | None = None,
) -> Event:
    """``call.start`` at ``t`` (the leg's first audio): model labels and free-form ``info``
    (e.g. ``sample_rate``, source)."""
    return Event(CALL_START, call_id, party, t, {"labels": list(labels), "info": dict(info or {})})


def emotion_update(
    scores: EmotionScores,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    valence: float | None = None,
    detector: Mapping[str, Mapping[str, Any]] | None = None,
) -> Event:
    """``emotion.update`` for one scored window; ``t`` is the window's end.

    ``window_s``: window length in seconds (``window`` = ``[t - window_s, t]``, clipped
    at 0). ``dominant`` is the most probable label, or None for a non-speech window.
    ``valence`` and ``detector`` (per spike emotion: state, smoothed score, baseline)
    are added when given; speech windows carry ``low_confidence`` (with its reason and
    the ``ood_distance`` when checked: ``model/confidence.py``).
    """
    payload: dict[str, Any] = {
        "probabilities": dict(scores.probabilities),
        "arousal": scores.arousal,
        "voiced_ratio": scores.voiced_ratio,
        "is_speech": scores.is_speech,
        "window": [max(0.0, scores.t - window_s), scores.t],
        "dominant": dominant_label(scores.probabilities) if scores.is_speech else None,
        "stage": scores.stage,
    }
    if valence is not None:
        payload["valence"] = valence
    if scores.is_speech:
        payload["low_confidence"] = scores.low_confidence
        if scores.low_confidence_reason is not None:
            payload["low_confidence_reason"] = scores.low_confidence_reason
        if scores.ood_distance is not None:
            payload["ood_distance"] = scores.ood_distance
    if detector is not None:
        payload["detector"] = {k: dict(v) for k, v in detector.items()}
    return Event(EMOTION_UPDATE, scores.call_id, scores.party, scores.t, payload)


def spike(
    *,
    call_id: str,
    party: str,
    phase: str,
    t: float,
    emotion: str,
    score: float,
    baseline: float,
    baseline_ready: bool,
    detected_at: float,
    started_at: float | None = None,
    duration_s: float | None = None,
    peak_score: float | None = None,
    reason: str | None = None,
) -> Event:
    """``emotion.spike`` start or end.

    start: ``t`` = onset (window end where the smoothed score first met the start rule),
    ``detected_at`` = when it was confirmed (onset + min duration), ``score`` = smoothed
    score at confirmation, ``baseline`` = the call's baseline at onset.
    end: ``t`` = end of the spike, plus ``started_at`` (= the start's ``t``),
    ``duration_s``, ``peak_score`` (highest smoothed score) and ``reason``.
    """
    if phase not in SPIKE_PHASES:
        raise EventError(f"spike phase {phase!r} is not one of {SPIKE_PHASES}")
    payload: dict[str, Any] = {
        "phase": phase,
        "emotion": emotion,
        "score": score,
        "baseline": baseline,
        "baseline_ready": baseline_ready,
        "detected_at": detected_at,
    }
    if phase == "end":
        if started_at is None or duration_s is None or peak_score is None or reason is None:
            raise EventError(
                "a spike end needs started_at, duration_s, peak_score and reason; got "
                f"started_at={started_at!r} duration_s={duration_s!r} "
                f"peak_score={peak_score!r} reason={reason!r}"
            )
        if reason not in SPIKE_END_REASONS:
            raise EventError(f"spike end reason {reason!r} is not one of {SPIKE_END_REASONS}")
        payload |= {
            "started_at": started_at,
            "duration_s": duration_s,
            "peak_score": peak_score,
            "reason": reason,
        }
    return Event(EMOTION_SPIKE, call_id, party, t, payload)


def call_end(
    *, call_id: str, party: str, t: float, reason: str, summary: Mapping[str, Any]
) -> Event:
    """``call.end`` at ``t`` (the leg's last audio) with ``reason`` (hangup, error,
    shutdown, ...) and the party's call summary (see ``detect.summary.CallSummary``)."""
    return Event(CALL_END, call_id, party, t, {"reason": reason, "summary": dict(summary)})


def route_hint(
    *,
    call_id: str,
    party: str,
    t: float,
    rule: str,
    condition: str,
    action: str,
    skill: str | None,
    priority: int,
    reason: str,
    evidence: Mapping[str, Any],
) -> Event:
    """``route.hint`` at ``t`` (call time when ``rule``'s ``condition`` held for
    ``party``): what a routing system or supervisor should do (``action`` in
    :data:`ROUTE_ACTIONS`, ``skill`` to route to, ``priority`` 1..10, higher more
    urgent), a human ``reason`` and the numbers behind it (``evidence``)."""
    if action not in ROUTE_ACTIONS:
        raise EventError(f"route action {action!r} is not one of {ROUTE_ACTIONS}")
    payload = {
        "rule": rule,
        "condition": condition,
        "action": action,
        "skill": skill,
        "priority": priority,
        "reason": reason,
        "evidence": dict(evidence),
    }
    return Event(ROUTE_HINT, call_id, party, t, payload)
