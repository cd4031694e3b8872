"""Routing hints: rules over the engine's events -> ``route.hint`` events; no I/O in the core.

A rules file (TOML) maps conditions on one party of a call to a hint for a routing
system, a supervisor or the agent. Every rule has a ``name``, a condition (``when``)
with its own parameters, the ``party`` it watches (default ``customer``), an
``action``, an optional ``skill``, a ``priority`` (1..10, higher is more urgent) and a
``reason`` template filled with the evidence (``{duration_s:.0f}``)::

    version = 1

    [[rules]]
    name = "anger-sustained"
    when = "spike_lasting"          # condition
    emotion = "angry"               # its parameters
    min_duration_s = 20.0
    action = "supervisor_listen_in"
    skill = "empathy"
    priority = 6
    reason = "customer angry for {duration_s:.0f} s"

Conditions (times are seconds of call audio):

- ``spike_lasting`` (``emotion``, ``min_duration_s``): a spike of ``emotion`` has lasted
  ``min_duration_s`` and is still going. Fires once per spike, at the first event that
  shows it (the spike start if ``detected_at - onset`` already covers it, else the
  first ``emotion.update`` at or past ``onset + min_duration_s``).
  Evidence: ``emotion``, ``duration_s``, ``started_at``, ``min_duration_s``.
- ``repeated_spikes`` (``emotion``, ``count`` >= 2, ``within_s``, ``min_gap_s``):
  ``count`` episodes of ``emotion`` started within ``within_s``. An episode is a spike
  that started at least ``min_gap_s`` (default 10 s) after the previous spike of that
  emotion ended; a spike back sooner continues the episode and is not counted (the
  detector already joins returns within its ``merge_gap_s``; this also covers events
  recorded with other detector settings). Once per call. Evidence: ``emotion``,
  ``count``, ``within_s``, ``first_at``.
- ``high_arousal_at_start`` (``speech_s``, ``min_arousal``): the mean arousal over the
  party's first ``speech_s`` seconds of speech (windows flagged ``low_confidence`` left
  out) reached ``min_arousal``; judged once,
  when that much speech has been heard. Evidence: ``arousal``, ``speech_s``,
  ``min_arousal``.
- ``ended_upset`` (``max_end_valence``): the leg ended with an end-state valence
  (``call.end`` summary, last 12 s of speech) at or below ``max_end_valence``.
  Evidence: ``end_valence``, ``end_emotion``, ``max_end_valence``, ``peak_end_score``,
  ``recovery`` (the summary's recovery outcome).

Every reason may also use ``{party}`` and ``{call_id}``. Actions: ``escalate`` (route or
transfer to an agent with ``skill``), ``offer_callback``, ``supervisor_listen_in``,
``leave_script`` (tell the agent the moment calls for leaving the script).

Rules are checked when loaded (:func:`load_rules`, :func:`parse_rules`): unknown keys,
wrong types, values out of range, duplicate names, unknown placeholders in a reason
all raise ConfigError naming the file, the rule and the value; :class:`RuleEngine`
also checks the emotions against the model's labels and the detector's spike emotions.

Use::

    rules = load_rules(None)                       # the built-in DEFAULT_RULES_TOML
    engine = RuleEngine(rules, labels=model.labels, spike_emotions=("angry",))
    hints = engine.update(event)                   # per published event -> [route.hint...]

:class:`WebhookSender` POSTs each hint (one JSON object, as published) to a URL from a
thread, with retries and a bounded queue; :class:`Routing` wires both into an
``EngineService``. ``emotion-engine rules`` (:func:`add_arguments`, :func:`main`)
checks a rules file, prints the default, and replays recorded events through rules.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from emotion_engine import __version__
from emotion_engine.config import DEFAULT_DETECTOR_PARAMS, PARTIES, ServeParams
from emotion_engine.errors import ConfigError, EngineError
from emotion_engine.publish.events import (
    CALL_END,
    CALL_START,
    EMOTION_SPIKE,
    EMOTION_UPDATE,
    ROUTE_ACTIONS,
    Event,
    route_hint,
    to_json,
)

if TYPE_CHECKING:
    from emotion_engine.engine.service import EngineService

log = logging.getLogger(__name__)

RULES_VERSION: Final = 1
PRIORITY_RANGE: Final = (1, 10)

DEFAULT_RULES_TOML: Final = """\
# emotion-engine routing rules (built in; `emotion-engine rules --default` prints them).
# Copy this file, edit it and pass it with routing_rules = "FILE" (or --routing-rules).
version = 1

# Let the agent leave the script: a few seconds of sustained customer anger is the
# moment when reading the next scripted line makes it worse.
[[rules]]
name = "leave-script-on-anger"
when = "spike_lasting"
emotion = "angry"
min_duration_s = 3.0
action = "leave_script"
skill = "empathy"
priority = 3
reason = "Customer frustration for {duration_s:.0f} s: leave the script, acknowledge the problem"

# Anger that does not settle: a supervisor listens in before it becomes a complaint.
[[rules]]
name = "listen-in-on-long-anger"
when = "spike_lasting"
emotion = "angry"
min_duration_s = 20.0
action = "supervisor_listen_in"
skill = "empathy"
priority = 6
reason = "Customer angry for {duration_s:.0f} s without settling"

# A moment of truth: anger comes back (a new episode: at least min_gap_s after the last
# one ended). Route the call to the agents best at it.
[[rules]]
name = "escalate-on-repeated-anger"
when = "repeated_spikes"
emotion = "angry"
count = 2
within_s = 180.0
min_gap_s = 10.0
action = "escalate"
skill = "empathy"
priority = 8
reason = "{count} anger spikes within {within_s:.0f} s: route to an agent skilled at de-escalation"

# The caller is already agitated when the call starts (e.g. still in the IVR or queue):
# hand them to an agent who is good with upset callers from the first word.
[[rules]]
name = "agitated-caller"
when = "high_arousal_at_start"
speech_s = 6.0
min_arousal = 0.75
action = "escalate"
skill = "empathy"
priority = 5
reason = "Caller agitated from the start (arousal {arousal:.2f} over the first {speech_s:.0f} s of speech)"

# The customer hung up upset: a call back is the last chance to recover the relationship.
[[rules]]
name = "callback-after-upset-end"
when = "ended_upset"
max_end_valence = -0.4
action = "offer_callback"
skill = "retention"
priority = 4
reason = "Customer ended the call upset ({end_emotion}, valence {end_valence:+.2f})"
"""


# -- rules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpikeLasting:
    emotion: str = "angry"
    min_duration_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RepeatedSpikes:
    emotion: str = "angry"
    count: int = 2
    within_s: float = 180.0
    # a spike starting less than this after the previous one ended continues that
    # episode and is not counted again
    min_gap_s: float = 10.0


@dataclass(frozen=True, slots=True)
class HighArousalAtStart:
    speech_s: float = 6.0
    min_arousal: float = 0.75


@dataclass(frozen=True, slots=True)
class EndedUpset:
    max_end_valence: float = -0.4


Condition = SpikeLasting | RepeatedSpikes | HighArousalAtStart | EndedUpset

CONDITIONS: Final[Mapping[str, type[Condition]]] = {
    "spike_lasting": SpikeLasting,
    "repeated_spikes": RepeatedSpikes,
    "high_arousal_at_start": HighArousalAtStart,
    "ended_upset": EndedUpset,
}

_SAMPLE_EVIDENCE: Final[Mapping[str, Mapping[str, Any]]] = {
    "spike_lasting": {
        "emotion": "angry",
        "duration_s": 12.5,
        "started_at": 30.0,
        "min_duration_s": 10.0,
    },
    "repeated_spikes": {"emotion": "angry", "count": 2, "within_s": 180.0, "first_at": 30.0},
    "high_arousal_at_start": {"arousal": 0.8, "speech_s": 6.0, "min_arousal": 0.75},
    "ended_upset": {
        "end_valence": -0.5,
        "end_emotion": "angry",
        "max_end_valence": -0.4,
        "peak_end_score": -0.6,
        "recovery": "not_recovered",
    },
}
"""Evidence each condition provides, with example values: used to check reason
templates at load time and to document the placeholders."""

_COMMON_KEYS: Final = ("name", "when", "party", "action", "skill", "priority", "reason", "enabled")


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule (see the module docstring)."""

    name: str
    condition: Condition
    action: str
    priority: int
    reason: str
    skill: str | None = None
    party: str = "customer"

    @property
    def when(self) -> str:
        return next(k for k, v in CONDITIONS.items() if isinstance(self.condition, v))

    def describe(self) -> str:
        """One line: name, party, condition with parameters, action."""
        params = ", ".join(
            f"{k}={getattr(self.condition, k)!r}" for k in self.condition.__dataclass_fields__
        )
        skill = f" skill={self.skill}" if self.skill else ""
        return (
            f"{self.name}: {self.party} {self.when}({params}) -> {self.action}{skill} "
            f"priority={self.priority}"
        )


def _number(where: str, key: str, value: object, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: {key} must be {kind}, got {value!r}")
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise ConfigError(f"{where}: {key} must be finite, got {value!r}")
    return x


def _parse_condition(where: str, when: str, raw: Mapping[str, Any]) -> Condition:
    kind = CONDITIONS[when]
    defaults = kind()
    values: dict[str, Any] = {}
    for key in kind.__dataclass_fields__:
        default = getattr(defaults, key)
        value = raw.get(key, default)
        if isinstance(default, str):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
            values[key] = value
        elif isinstance(default, int):
            values[key] = int(_number(where, key, value, integer=True))
        else:
            values[key] = _number(where, key, value)
    condition = kind(**values)
    problems: list[str] = []
    if isinstance(condition, SpikeLasting) and condition.min_duration_s < 0:
        problems.append(f"min_duration_s must be >= 0 s, got {condition.min_duration_s!r}")
    if isinstance(condition, RepeatedSpikes):
        if condition.count < 2:
            problems.append(f"count must be >= 2, got {condition.count!r}")
        if condition.within_s <= 0:
            problems.append(f"within_s must be > 0 s, got {condition.within_s!r}")
        if condition.min_gap_s < 0:
            problems.append(f"min_gap_s must be >= 0 s, got {condition.min_gap_s!r}")
    if isinstance(condition, HighArousalAtStart):
        if condition.speech_s <= 0:
            problems.append(f"speech_s must be > 0 s, got {condition.speech_s!r}")
        if not 0 <= condition.min_arousal <= 1:
            problems.append(f"min_arousal must lie in [0, 1], got {condition.min_arousal!r}")
    if isinstance(condition, EndedUpset) and not -1 <= condition.max_end_valence <= 1:
        problems.append(f"max_end_valence must lie in [-1, 1], got {condition.max_end_valence!r}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return condition


def _parse_rule(where: str, raw: object) -> Rule | None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a rule must be a table ([[rules]]), got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' is required (a non-empty string), got {name!r}")
    where = f"{where} ({name!r})"
    when = raw.get("when")
    if not isinstance(when, str) or when not in CONDITIONS:
        raise ConfigError(f"{where}: 'when' must be one of {', '.join(CONDITIONS)}; got {when!r}")
    allowed = (*_COMMON_KEYS, *CONDITIONS[when].__dataclass_fields__)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for when = {when!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: enabled must be true or false, got {enabled!r}")
    party = raw.get("party", "customer")
    if party not in PARTIES:
        raise ConfigError(f"{where}: party must be one of {', '.join(PARTIES)}; got {party!r}")
    action = raw.get("action")
    if action not in ROUTE_ACTIONS:
        raise ConfigError(
            f"{where}: action must be one of {', '.join(ROUTE_ACTIONS)}; got {action!r}"
        )
    skill = raw.get("skill")
    if skill is not None and (not isinstance(skill, str) or not skill.strip()):
        raise ConfigError(f"{where}: skill must be a non-empty string, got {skill!r}")
    if "priority" not in raw:
        raise ConfigError(
            f"{where}: 'priority' is required ({PRIORITY_RANGE[0]}..{PRIORITY_RANGE[1]})"
        )
    priority = int(_number(where, "priority", raw["priority"], integer=True))
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise ConfigError(
            f"{where}: priority must lie in {PRIORITY_RANGE[0]}..{PRIORITY_RANGE[1]} "
            f"(higher is more urgent), got {priority!r}"
        )
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError(f"{where}: 'reason' is required (a non-empty string), got {reason!r}")
    sample = {**_SAMPLE_EVIDENCE[when], "party": party, "call_id": "c1"}
    try:
        reason.format_map(sample)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"{where}: reason {reason!r} cannot be filled ({type(exc).__name__}: {exc}); "
            f"placeholders for {when}: {', '.join('{' + k + '}' for k in sample)}"
        ) from None
    condition = _parse_condition(where, when, raw)
    if not enabled:
        return None
    return Rule(
        name=name,
        condition=condition,
        action=str(action),
        priority=priority,
        reason=reason,
        skill=skill,
        party=str(party),
    )


def parse_rules(data: Mapping[str, Any], *, source: str = "rules") -> tuple[Rule, ...]:
    """Validated rules from a parsed TOML document (disabled rules are checked, then
    left out). Raises ConfigError naming ``source``, the rule and the bad value."""
    unknown = sorted(set(data) - {"version", "rules"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(unknown)}")
    version = data.get("version", RULES_VERSION)
    if version != RULES_VERSION:
        raise ConfigError(f"{source}: version must be {RULES_VERSION}, got {version!r}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: no [[rules]] tables found")
    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_rules, start=1):
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and name in names:
            raise ConfigError(f"{source}: rule {i}: duplicate name {name!r}")
        if isinstance(name, str):
            names.add(name)
        rule = _parse_rule(f"{source}: rule {i}", raw)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def load_rules(path: str | Path | None) -> tuple[Rule, ...]:
    """Rules from a TOML file; ``None`` or ``""``: the built-in :data:`DEFAULT_RULES_TOML`."""
    if path is None or str(path) == "":
        return parse_rules(tomllib.loads(DEFAULT_RULES_TOML), source="built-in rules")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"rules file {path} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rules file {path} is not valid TOML: {exc}") from None
    return parse_rules(data, source=str(path))


# -- the rule engine (sans-I/O) --------------------------------------------------------


@dataclass(slots=True)
class _LegState:
    active: dict[str, float] = field(default_factory=dict)  # emotion -> onset t
    # emotion -> (onset t, end t or None while open) of every spike, for episode counting
    starts: dict[str, deque[tuple[float, float | None]]] = field(default_factory=dict)
    fired: set[tuple[str, float]] = field(default_factory=set)  # (rule, onset or -1)
    start_arousal: list[float] = field(default_factory=list)  # first speech windows


def _episodes(spikes: Iterable[tuple[float, float | None]], *, min_gap_s: float) -> list[float]:
    """Onsets of the episodes among ``(onset, end)`` spikes in time order: a spike whose
    onset is less than ``min_gap_s`` after the previous spike's end joins its episode."""
    onsets: list[float] = []
    last_end: float | None = None
    for onset, end in spikes:
        if not onsets or last_end is None or onset - last_end >= min_gap_s - 1e-9:
            onsets.append(onset)
        last_end = end if end is not None else None
    return onsets


class RuleEngine:
    """Events in (stamped dicts or :class:`Event`), ``route.hint`` events out.

    ``labels`` / ``spike_emotions``: when given, rules watching an emotion the model
    does not score, or spikes the detector never reports, raise ConfigError here
    instead of silently never firing. ``hop_s``: seconds each speech window stands for.
    State is per (call_id, party) and dropped at that leg's ``call.end``.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        labels: Sequence[str] | None = None,
        spike_emotions: Sequence[str] | None = None,
        hop_s: float = DEFAULT_DETECTOR_PARAMS.hop_s,
    ) -> None:
        for rule in rules:
            emotion = getattr(rule.condition, "emotion", None)
            if emotion is None:
                continue
            if labels is not None and emotion not in labels:
                raise ConfigError(
                    f"rule {rule.name!r}: emotion {emotion!r} is not a model label "
                    f"({', '.join(labels)})"
                )
            if spike_emotions is not None and emotion not in spike_emotions:
                raise ConfigError(
                    f"rule {rule.name!r} watches spikes of {emotion!r}, but the detector "
                    f"only reports spikes of {', '.join(spike_emotions)}"
                )
        self.rules = tuple(rules)
        self.hop_s = hop_s
        self.hints_total = 0
        self._legs: dict[tuple[str, str], _LegState] = {}
        # the longest window any rule needs, so per-leg state stays bounded
        self._max_within_s = max(
            (r.condition.within_s for r in rules if isinstance(r.condition, RepeatedSpikes)),
            default=0.0,
        )
        self._max_gap_s = max(
            (r.condition.min_gap_s for r in rules if isinstance(r.condition, RepeatedSpikes)),
            default=0.0,
        )
        self._max_start_windows = max(
            (
                self._windows(r.condition.speech_s)
                for r in rules
                if isinstance(r.condition, HighArousalAtStart)
            ),
            default=0,
        )

    def _windows(self, seconds: float) -> int:
        return max(1, math.ceil(seconds / self.hop_s - 1e-9))

    def reset(self) -> None:
        self._legs.clear()
        self.hints_total = 0

    @property
    def open_legs(self) -> int:
        return len(self._legs)

    def update(self, event: Mapping[str, Any] | Event) -> list[Event]:
        """One published event; returns the hints it triggers (usually none)."""
        e = event.to_dict() if isinstance(event, Event) else event
        kind = e.get("type")
        if kind not in (CALL_START, EMOTION_UPDATE, EMOTION_SPIKE, CALL_END):
            return []  # route.hint, events.lost, ...: nothing to watch
        key = (str(e.get("call_id")), str(e.get("party")))
        if kind == CALL_START:
            self._legs[key] = _LegState()
            return []
        rules = [r for r in self.rules if r.party == key[1]]
        if kind == CALL_END:
            self._legs.pop(key, None)
            return self._on_end(e, rules) if rules else []
        state = self._legs.setdefault(key, _LegState())
        if not rules:
            return []
        if kind == EMOTION_UPDATE:
            return self._on_update(e, state, rules)
        return self._on_spike(e, state, rules)

    # -- per event type

    def _on_update(self, e: Mapping[str, Any], state: _LegState, rules: list[Rule]) -> list[Event]:
        t = float(e["t"])
        hints: list[Event] = []
        trusted = e.get("is_speech") and not e.get("low_confidence")
        if trusted and len(state.start_arousal) < self._max_start_windows:
            state.start_arousal.append(float(e["arousal"]))
            n = len(state.start_arousal)
            for rule in rules:
                c = rule.condition
                if isinstance(c, HighArousalAtStart) and n == self._windows(c.speech_s):
                    mean = sum(state.start_arousal) / n
                    if mean >= c.min_arousal:
                        hints += self._fire(
                            rule,
                            e,
                            t,
                            state,
                            key=-1.0,
                            evidence={
                                "arousal": mean,
                                "speech_s": n * self.hop_s,
                                "min_arousal": c.min_arousal,
                            },
                        )
        for emotion, onset in state.active.items():
            hints += self._lasting(rules, e, state, emotion=emotion, onset=onset, now=t)
        return hints

    def _on_spike(self, e: Mapping[str, Any], state: _LegState, rules: list[Rule]) -> list[Event]:
        emotion = str(e["emotion"])
        onset = float(e["t"])
        starts = state.starts.setdefault(emotion, deque())
        if e.get("phase") != "start":
            state.active.pop(emotion, None)
            if starts and starts[-1][1] is None:
                starts[-1] = (starts[-1][0], onset)  # an end's t is where the spike ended
            return []
        state.active[emotion] = onset
        now = float(e.get("detected_at", onset))
        starts.append((onset, None))
        # keep what can still matter: an episode counts by its first onset, and a spike
        # ended less than min_gap_s before a later one carries that one's episode
        horizon = onset - self._max_within_s - self._max_gap_s
        while len(starts) > 1 and (starts[0][1] is not None and starts[0][1] < horizon):
            starts.popleft()
        hints = self._lasting(rules, e, state, emotion=emotion, onset=onset, now=now)
        for rule in rules:
            c = rule.condition
            if isinstance(c, RepeatedSpikes) and c.emotion == emotion:
                recent = _episodes(starts, min_gap_s=c.min_gap_s)
                recent = [s for s in recent if s >= onset - c.within_s]
                if len(recent) >= c.count:
                    hints += self._fire(
                        rule,
                        e,
                        now,
                        state,
                        key=-1.0,
                        evidence={
                            "emotion": emotion,
                            "count": len(recent),
                            "within_s": c.within_s,
                            "first_at": recent[0],
                        },
                    )
        return hints

    def _lasting(
        self,
        rules: list[Rule],
        e: Mapping[str, Any],
        state: _LegState,
        *,
        emotion: str,
        onset: float,
        now: float,
    ) -> list[Event]:
        hints: list[Event] = []
        for rule in rules:
            c = rule.condition
            if (
                isinstance(c, SpikeLasting)
                and c.emotion == emotion
                and now - onset >= c.min_duration_s - 1e-6
            ):
                hints += self._fire(
                    rule,
                    e,
                    now,
                    state,
                    key=onset,
                    evidence={
                        "emotion": emotion,
                        "duration_s": now - onset,
                        "started_at": onset,
                        "min_duration_s": c.min_duration_s,
                    },
                )
        return hints

    def _on_end(self, e: Mapping[str, Any], rules: list[Rule]) -> list[Event]:
        summary = e.get("summary") or {}
        end_state = summary.get("end_state")
        if not end_state:
            return []
        hints: list[Event] = []
        for rule in rules:
            c = rule.condition
            if isinstance(c, EndedUpset) and float(end_state["valence"]) <= c.max_end_valence:
                recovery = summary.get("recovery") or {}
                hints += self._fire(
                    rule,
                    e,
                    float(e["t"]),
                    None,
                    key=-1.0,
                    evidence={
                        "end_valence": float(end_state["valence"]),
                        "end_emotion": str(end_state["emotion"]),
                        "max_end_valence": c.max_end_valence,
                        "peak_end_score": summary.get("peak_end_score"),
                        "recovery": recovery.get("outcome"),
                    },
                )
        return hints

    def _fire(
        self,
        rule: Rule,
        e: Mapping[str, Any],
        t: float,
        state: _LegState | None,
        *,
        key: float,
        evidence: dict[str, Any],
    ) -> list[Event]:
        """The hint for ``rule`` unless it already fired for ``key`` (a spike's onset,
        or -1 for once-per-call rules) on this leg."""
        if state is not None:
            if (rule.name, key) in state.fired:
                return []
            state.fired.add((rule.name, key))
        call_id, party = str(e["call_id"]), str(e["party"])
        self.hints_total += 1
        return [
            route_hint(
                call_id=call_id,
                party=party,
                t=t,
                rule=rule.name,
                condition=rule.when,
                action=rule.action,
                skill=rule.skill,
                priority=rule.priority,
                reason=rule.reason.format_map({**evidence, "party": party, "call_id": call_id}),
                evidence=evidence,
            )
        ]


# -- webhook delivery (a thread around blocking urllib) ---------------------------------


_RETRY_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookSender:
    """POSTs events (one compact JSON object each) to ``url`` from one thread.

    :meth:`offer` never blocks (call it on the event loop): at most ``max_queue``
    events wait; when full, the oldest is dropped (``dropped`` counts them), since a
    routing system wants the newest hint. A POST is retried ``retries`` times after a
    network error, a timeout or a 408/425/429/5xx answer, waiting ``backoff_s * 2**n``;
    other answers (e.g. 400, 401) are not retried. ``delivered`` / ``failed`` count
    the outcomes. :meth:`stop` delivers what is queued for up to ``timeout_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str = "",
        max_queue: int = 1_000,
        retries: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"route webhook URL must start with http:// or https://, got {url!r}")
        if max_queue < 1:
            raise ConfigError(f"route webhook queue must hold >= 1 event, got {max_queue!r}")
        if retries < 0:
            raise ConfigError(f"route webhook retries must be >= 0, got {retries!r}")
        self.url = url
        self.token = token
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._queue: deque[str] = deque(maxlen=max_queue)
        self._cond = threading.Condition()
        self._stopping = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def offer(self, event: Mapping[str, Any]) -> None:
        body = to_json(event)
        with self._cond:
            if self._stopping:
                self.dropped += 1
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(body)
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._busy)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="route-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then end the thread; blocking,
        so call it with ``asyncio.to_thread`` from a coroutine."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()  # cut retries short; an in-flight POST ends by its timeout
            self._thread.join(self.timeout_s + 1.0)
        with self._cond:
            self.dropped += len(self._queue)
            self._queue.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue or self._abort.is_set():
                    return
                body = self._queue.popleft()
                self._busy = True
            try:
                ok = self._deliver(body)
            finally:
                with self._cond:
                    self._busy = False
            if ok:
                self.delivered += 1
            else:
                self.failed += 1

    def _deliver(self, body: str) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"emotion-engine/{__version__}",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            if attempt and self._abort.wait(self.backoff_s * 2 ** (attempt - 1)):
                return False
            request = urllib.request.Request(
                self.url, data=body.encode(), headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                retry = exc.code in _RETRY_STATUSES
                log.warning(
                    "route webhook %s answered %s%s",
                    self.url,
                    exc.code,
                    "" if retry else "; dropped",
                )
                if not retry:
                    return False
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                log.warning("route webhook %s: %s (attempt %d)", self.url, exc, attempt + 1)
        return False


# -- wiring into the service ------------------------------------------------------------


class Routing:
    """The rule engine and the optional webhook, attached to an ``EngineService``:
    hints are published on ``/v1/events`` like any event, and POSTed when a webhook
    is set."""

    def __init__(self, engine: RuleEngine | None, webhook: WebhookSender | None) -> None:
        self.engine = engine
        self.webhook = webhook

    @classmethod
    def from_params(
        cls,
        params: ServeParams,
        *,
        labels: Sequence[str] | None = None,
        spike_emotions: Sequence[str] | None = None,
    ) -> Routing:
        """Rules from ``params.routing_rules`` ("" built-in, "off" none) and the webhook
        from ``params.route_webhook_*``. Raises ConfigError for bad rules or settings."""
        engine = None
        if params.routing_rules.strip().lower() != "off":
            rules = load_rules(params.routing_rules or None)
            engine = RuleEngine(rules, labels=labels, spike_emotions=spike_emotions)
            if not params.analyze_agent:
                for rule in rules:
                    if rule.party == "agent":
                        log.warning(
                            "rule %r watches the agent, but analyze_agent is off: it never fires",
                            rule.name,
                        )
        webhook = None
        if params.route_webhook_url:
            webhook = WebhookSender(
                params.route_webhook_url,
                token=params.route_webhook_token,
                max_queue=params.route_webhook_queue,
                retries=params.route_webhook_retries,
            )
        return cls(engine, webhook)

    def attach(self, service: EngineService) -> None:
        engine, webhook = self.engine, self.webhook
        if engine is not None:
            service.add_processor(engine.update)
            service.metrics.counter_fn(
                "emotion_engine_route_hints_total",
                "route.hint events raised by the routing rules.",
                lambda: float(engine.hints_total),
            )
        if webhook is not None:

            def forward(event: dict[str, Any]) -> None:
                if event.get("type") == "route.hint":
                    webhook.offer(event)

            service.add_listener(forward)
            for outcome in ("delivered", "failed", "dropped"):
                service.metrics.counter_fn(
                    f"emotion_engine_route_webhook_{outcome}_total",
                    f"route.hint POSTs {outcome} (after retries).",
                    _reader(webhook, outcome),
                )

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Blocking (webhook flush): run it in a thread from async code."""
        if self.webhook is not None:
            self.webhook.stop(timeout_s)


def _reader(obj: object, attr: str) -> Callable[[], float]:
    return lambda: float(getattr(obj, attr))


# -- `emotion-engine rules` ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rules",
        nargs="?",
        default=None,
        metavar="RULES.toml",
        help="rules file to check (default: the built-in rules)",
    )
    parser.add_argument(
        "--default", action="store_true", help="print the built-in rules file and exit"
    )
    parser.add_argument(
        "--events",
        type=Path,
        default=None,
        metavar="EVENTS.jsonl",
        help="replay recorded events (analyze --out, or a /v1/events capture) through the "
        "rules and print the route.hint events they raise, one JSON line each",
    )


def _read_events(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not a JSON event ({exc})") from None


def main(args: argparse.Namespace) -> int:
    """``emotion-engine rules [RULES.toml] [--default] [--events EVENTS.jsonl]``."""
    if args.default:
        sys.stdout.write(DEFAULT_RULES_TOML)
        return 0
    try:
        rules = load_rules(args.rules)
        if args.events is None:
            print(f"{args.rules or 'built-in rules'}: {len(rules)} rule(s) OK")
            for rule in rules:
                print(f"  {rule.describe()}")
            return 0
        engine = RuleEngine(rules)
        n = 0
        for event in _read_events(args.events):
            for hint in engine.update(event):
                print(to_json(hint.to_dict()))
                n += 1
        print(f"{n} route.hint event(s) from {args.events}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
