"""Human-readable console lines for events: cues as they happen, summaries at the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_METER_WIDTH = 10


def clock(t: float) -> str:
    """Seconds of call audio as mm:ss.s."""
    minutes, seconds = divmod(max(0.0, t), 60.0)
    return f"{int(minutes):02d}:{seconds:04.1f}"


def meter(value: float, width: int = _METER_WIDTH) -> str:
    """A text bar for a 0..1 value, so levels read at a glance without colour."""
    filled = round(min(1.0, max(0.0, value)) * width)
    return "#" * filled + "." * (width - filled)


class CueFormatter:
    """Turns events into console lines; remembers each party's dominant emotion so a
    line is printed only when something changes (or on every update when verbose)."""

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose
        self._dominant: dict[tuple[str, str], str] = {}
        self._untrusted: set[tuple[str, str]] = set()  # legs now flagged low confidence

    def format(self, event: Mapping[str, Any]) -> str | None:
        kind = event.get("type")
        t = float(event.get("t", 0.0))
        who = f"[{clock(t)}] {event.get('call_id', '?')}/{event.get('party', '?'):<8}"
        if kind == "call.start":
            rate = event.get("sample_rate") or event.get("info", {}).get("sample_rate", "?")
            return f"{who} call started ({rate} Hz)"
        if kind == "emotion.update":
            return self._update(event, who)
        if kind == "emotion.spike":
            emotion = str(event.get("emotion", "?"))
            if event.get("phase") == "start":
                return (
                    f"{who} !! {emotion.upper()} RISING  score {float(event.get('score', 0)):.2f}"
                    f" (call baseline {float(event.get('baseline', 0)):.2f})"
                )
            duration = float(event.get("duration_s", 0.0))
            return f"{who} -- {emotion} eased after {duration:.1f} s"
        if kind == "call.end":
            summary = event.get("summary", {})
            return f"{who} call ended ({event.get('reason', '?')}): " + one_line_summary(summary)
        return None

    def _update(self, event: Mapping[str, Any], who: str) -> str | None:
        if not event.get("is_speech", True):
            return f"{who} (no speech)" if self.verbose else None
        probabilities: Mapping[str, float] = event.get("probabilities", {})
        if not probabilities:
            return None
        key = (str(event.get("call_id")), str(event.get("party")))
        if event.get("low_confidence"):
            if key in self._untrusted and not self.verbose:
                return None
            self._untrusted.add(key)
            self._dominant.pop(key, None)
            reason = str(event.get("low_confidence_reason") or "out_of_domain").replace("_", " ")
            return f"{who} ?? not natural speech ({reason}): no cues until it is"
        self._untrusted.discard(key)
        dominant = max(probabilities, key=lambda k: probabilities[k])
        changed = self._dominant.get(key) != dominant
        self._dominant[key] = dominant
        if not (changed or self.verbose):
            return None
        bars = "  ".join(f"{k} {meter(v, 5)} {v:.2f}" for k, v in probabilities.items())
        arousal = float(event.get("arousal", 0.0))
        return f"{who} sounds {dominant:<8} | {bars} | arousal {meter(arousal, 5)} {arousal:.2f}"


def one_line_summary(summary: Mapping[str, Any]) -> str:
    """Peak, end and peak-end score of one party in one line."""
    if not summary or not summary.get("speech_s"):
        return "no speech detected"
    peak = summary.get("peak") or {}
    end = summary.get("end") or summary.get("end_state") or {}
    parts = []
    if peak:
        parts.append(
            f"peak {peak.get('emotion', '?')} {float(peak.get('score', 0)):.2f} at {clock(float(peak.get('t', 0)))}"
        )
    if end:
        parts.append(f"end {end.get('emotion', '?')}")
    if "peak_end_score" in summary:
        parts.append(f"peak-end score {float(summary['peak_end_score']):+.2f}")
    parts.append(f"{int(summary.get('n_spikes', 0))} spike(s)")
    parts.append(f"{float(summary.get('speech_s', 0)):.0f} s of speech")
    return ", ".join(parts)


def summary_block(*, call_id: str, party: str, summary: Mapping[str, Any]) -> str:
    """A few lines describing one party's call, for the end of ``analyze``."""
    lines = [f"  {party:<9} {one_line_summary(summary)}"]
    states: Mapping[str, float] = summary.get("time_in_state_s") or {}
    if states:
        total = sum(states.values()) or 1.0
        lines.append(
            "            time in state: "
            + ", ".join(
                f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in states.items() if v > 0
            )
        )
    return "\n".join(lines)
