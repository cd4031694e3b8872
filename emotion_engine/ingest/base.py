"""What every sans-I/O ingest protocol core emits.

A protocol core (RTP, Twilio Media Streams, AudioHook, L16 websocket, AudioSocket)
is a plain object fed with bytes or text from its transport; it returns a list of
these messages and never does I/O. The asyncio adapter around it sends ``Reply``
payloads back to the peer, forwards ``LegStarted`` / ``AudioChunk`` / ``LegEnded``
to the engine, logs ``ProtocolViolation`` and closes the transport on ``Close``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from emotion_engine.frames import AudioChunk


@dataclass(frozen=True, slots=True)
class LegStarted:
    """A new call leg (one party of one call) begins; audio for it follows."""

    call_id: str
    party: str
    sample_rate: int
    t: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LegEnded:
    """A call leg ended (hang-up, stop message, timeout, peer gone, error)."""

    call_id: str
    party: str
    reason: str = "hangup"


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A DTMF digit seen on the media stream."""

    call_id: str
    party: str
    digit: str
    t: float


@dataclass(frozen=True, slots=True)
class Reply:
    """Something to send back to the peer (text frame, binary frame or raw bytes)."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A malformed or unexpected input. ``fatal`` ones end the session (a ``Close``
    follows); others are logged and the input is dropped. ``cause``: a short fixed
    name for the kind of problem (e.g. ``"rtp_parse"``): the log says one line per
    cause and source per interval, with a count; empty: the message itself is the
    cause (only identical messages are folded together)."""

    message: str
    fatal: bool = False
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """The adapter should close the transport (websocket close code, reason)."""

    code: int = 1000
    reason: str = ""


IngestOutput = AudioChunk | LegStarted | LegEnded | Dtmf | Reply | ProtocolViolation | Close


def parse_decimal(text: str, *, max_digits: int = 18) -> int | None:
    """``text`` as a non-negative integer when it is 1 to ``max_digits`` ASCII digits,
    else None. ``str.isdigit`` alone also passes "\u00b2" and other digits that ``int``
    refuses, and ``int`` refuses strings of over 4,300 digits: both raised from peer input."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} out of range")
    return value


def loads_json(text: str) -> Any:
    """``json.loads`` of one peer message, strict as RFC 8259: ``NaN``, ``Infinity`` and
    numbers beyond a float are refused (they would reach the events, which cannot carry
    them), and so is nesting too deep for the decoder. Raises ValueError for all of it."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError(f"JSON nested too deeply ({len(text)} characters)") from exc
