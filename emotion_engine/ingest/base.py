"""What every sans-I/O ingest protocol core emits.

A protocol core (RTP, Twilio Media Streams, AudioHook, L16 websocket, AudioSocket)
is a plain object fed with bytes or text from its transport; it returns a list of
these messages and never does I/O. The asyncio adapter around it sends ``Reply``
payloads back to the peer, forwards ``LegStarted`` / ``AudioChunk`` / ``LegEnded``
to the engine, logs ``ProtocolViolation`` and closes the transport on ``Close``.

Every core checks what it takes from the wire with the same helpers, so one limit
holds on every path (the limits are declared in :mod:`emotion_engine.config`):
:func:`call_id_problem` for call and session ids, :func:`bounded_info` for the
metadata a leg carries into ``call.start``, :func:`wire_int` for numbers written as
text, and :func:`clip` to quote a peer's value in a message without copying all of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emotion_engine.config import (
    MAX_CALL_ID_CHARS,
    MAX_META_BYTES,
    MAX_META_DEPTH,
    MAX_META_TEXT_CHARS,
)
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


def clip(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters of it."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} long)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def call_id_problem(value: object, *, what: str = "call id") -> str | None:
    """Why ``value`` cannot be a call id (or session id, named by ``what``); None when
    it can: a string of 1 to ``MAX_CALL_ID_CHARS`` printable characters (no control
    characters, no line breaks)."""
    if not isinstance(value, str):
        return f"{what} {clip(value)} is not a string"
    if not value:
        return f"{what} is empty"
    if len(value) > MAX_CALL_ID_CHARS:
        return f"{what} of {len(value):,} characters is longer than {MAX_CALL_ID_CHARS}"
    if not value.isprintable():
        return f"{what} {clip(value)} holds control or non-printable characters"
    return None


def wire_int(raw: object, *, lo: int, hi: int) -> int | None:
    """A number from the wire (an int, or ASCII digits with an optional minus) when it
    lies in ``lo..hi``; else None. Unicode digits (``'²'.isdigit()`` is True, ``int``
    refuses it) and numbers longer than 20 digits are None, never an exception."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str | bytes):
        text = raw.strip()
        digits = text[1:] if text[:1] in ("-", b"-") else text
        if not digits or len(digits) > 20 or not digits.isascii() or not digits.isdigit():
            return None
        value = int(text)
    else:
        return None
    return value if lo <= value <= hi else None


def bounded_info(info: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``info`` (a leg's metadata, JSON-like) within the metadata limits, and what was
    changed: strings cut to ``MAX_META_TEXT_CHARS`` with control characters replaced by
    U+FFFD, nesting past ``MAX_META_DEPTH``, non-finite numbers and integers past 64
    bits dropped, and the items dropped from where the JSON (UTF-8, not ASCII-escaped)
    would pass ``MAX_META_BYTES`` on. An ``info`` within the limits comes back equal, with no
    problems."""
    problems: list[str] = []
    left = MAX_META_BYTES

    def text(value: str, where: str) -> str:
        if len(value) > MAX_META_TEXT_CHARS:
            problems.append(f"{where}: {len(value):,} characters cut to {MAX_META_TEXT_CHARS}")
            value = value[:MAX_META_TEXT_CHARS]
        if not value.isprintable():
            problems.append(f"{where}: control characters replaced")
            value = "".join(c if c.isprintable() else "\ufffd" for c in value)
        return value

    def spend(cost: int, where: str) -> bool:
        nonlocal left
        if left < 0:
            return False
        left -= cost
        if left < 0:
            problems.append(
                f"{where} and what follows: dropped, metadata over {MAX_META_BYTES} bytes"
            )
            return False
        return True

    def walk(value: Any, where: str, depth: int) -> tuple[bool, Any]:
        """(keep it, the bounded value)."""
        # costs: the JSON text of the value plus a separator (", ")
        if value is None or isinstance(value, bool):
            return spend(7, where), value
        if isinstance(value, int):
            if abs(value) >= 1 << 63:
                problems.append(f"{where}: integer past 64 bits dropped")
                return False, None
            return spend(22, where), value
        if isinstance(value, float):
            if not math.isfinite(value):
                problems.append(f"{where}: {value} dropped")
                return False, None
            return spend(26, where), value
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_META_DEPTH:
                problems.append(f"{where}: nested deeper than {MAX_META_DEPTH}; dropped")
                return False, None
            if not spend(4, where):
                return False, None
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key, item in value.items():
                    name = text(str(key), f"{where} key")
                    if not spend(_utf8_len(name) + 4, f"{where}.{name[:40]}"):
                        break
                    kept, item = walk(item, f"{where}.{name[:40]}", depth + 1)
                    if kept:
                        out[name] = item
                return True, out
            items: list[Any] = []
            for i, item in enumerate(value):
                kept, item = walk(item, f"{where}[{i}]", depth + 1)
                if kept:
                    items.append(item)
                elif left < 0:
                    break
            return True, items
        cut = text(value if isinstance(value, str) else str(value), where)
        return spend(_utf8_len(cut) + 4, where), cut

    return walk(info, "info", 0)[1], problems


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "replace"))
