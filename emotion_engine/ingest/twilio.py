"""Sans-I/O core for Twilio Media Streams (and its clones: SignalWire, Fonoster).

Feed every websocket text frame to :meth:`TwilioMediaSession.receive_text`, every
binary frame to :meth:`~TwilioMediaSession.receive_bytes` and call
:meth:`~TwilioMediaSession.connection_lost` when the socket goes away; forward the
returned :class:`LegStarted` / :class:`AudioChunk` / :class:`LegEnded` / :class:`Dtmf`
to the engine, log :class:`ProtocolViolation` and close on :class:`Close`.

Wire format, checked against Twilio's "Media Streams - WebSocket Messages" page:

- ``connected`` ``{event, protocol: "Call", version}`` comes first and has no
  ``sequenceNumber``. Every later message carries ``sequenceNumber`` (a string,
  ``"1"`` for ``start``, +1 per message) and ``streamSid``.
- ``start.start``: ``streamSid``, ``accountSid``, ``callSid``, ``tracks``
  (``inbound`` / ``outbound``), ``customParameters`` and ``mediaFormat``
  ``{encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1}``.
- ``media.media``: ``track``, ``chunk`` (string from ``"1"``), ``timestamp``
  (milliseconds since the stream started, string) and ``payload`` (base64 mu-law,
  no header).
- ``dtmf.dtmf``: ``{track: "inbound_track", digit}``; ``mark.mark``: ``{name}``
  (bidirectional streams only; ignored here); ``stop.stop``: ``{accountSid, callSid}``.
- ``<Start><Stream>`` is unidirectional: the server must never send anything back,
  so this core emits no :class:`Reply` at all.

Decisions:

- ``inbound`` (the caller) is the customer and ``outbound`` the agent by default;
  change with ``track_parties``. DTMF ``track`` names (``inbound_track``) map the same.
- ``call_id`` is ``start.callSid``, unless ``start.customParameters.call_id`` is a
  non-empty string (``<Parameter name="call_id" value="...">`` in the TwiML), which
  lets a deployment join the stream to its own call id.
- Some clones do not keep order, so messages are released in ``sequenceNumber``
  order through a small window (``reorder_window`` messages): duplicates and late
  arrivals are dropped, missing numbers are counted in :attr:`stats`. ``stop``
  flushes the window (nothing the sender considers earlier is still worth waiting for).
  A late ``start`` is still used when none was seen (nothing decodes without it); a
  number more than 10,000 past the expected one is dropped as corrupt.
- Audio is placed on each leg's timeline by ``media.timestamp``; a jump forward
  larger than ``gap_tolerance_ms`` is filled with silence (digital zero) up to
  ``max_gap_fill_s``, beyond which the timeline jumps without filling. A timestamp
  that goes backwards is appended at the current end (the timeline never rewinds).
- ``audio/x-alaw`` is accepted as well (some clones offer PCMA); anything else, a
  rate other than 8000 Hz or more than one channel ends the session.
- Telnyx speaks a look-alike with snake_case fields (``sequence_number``,
  ``stream_id``); it is not handled here.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.g711 import alaw_decode, ulaw_decode
from emotion_engine.errors import ConfigError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    call_id_problem,
    clip,
    loads_json,
    parse_decimal,
)

__all__ = ["DEFAULT_TRACK_PARTIES", "TwilioMediaSession", "TwilioStats"]

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ: Final = 8000
DEFAULT_TRACK_PARTIES: Final[Mapping[str, str]] = {"inbound": "customer", "outbound": "agent"}
_DECODERS: Final = {"audio/x-mulaw": ulaw_decode, "audio/x-alaw": alaw_decode}
_CLOSE_UNSUPPORTED: Final = 1003  # RFC 6455: data the endpoint cannot accept
_MAX_SEQ_JUMP: Final = 10_000  # ~100 s of two-track media; farther is a corrupt number
MAX_TIMESTAMP_MS: Final = 2**31  # ~25 days into a stream: a later media timestamp is corrupt
_MAX_TRACKS: Final = 4  # 'start.tracks' entries looked at (Twilio sends one or two)
_CLOSE_POLICY: Final = 1008


@dataclass(slots=True)
class TwilioStats:
    """Counters of one stream, for logs and tests."""

    messages: int = 0  # text frames received
    media: int = 0  # media messages decoded
    duplicates: int = 0  # sequence numbers seen twice
    late: int = 0  # arrived after the window had moved past them (dropped)
    missing: int = 0  # sequence numbers skipped when the window moved on
    silence_samples: int = 0  # samples of silence inserted for timestamp gaps


@dataclass(slots=True)
class _Leg:
    party: str
    next_sample: int = 0  # where the next audio lands on this leg's timeline
    open: bool = True


class TwilioMediaSession:
    """One Twilio Media Streams websocket: JSON text in, call-leg messages out.

    ``track_parties``: Twilio track name -> party. ``reorder_window``: messages held
    back to restore ``sequenceNumber`` order (0 releases each message at once, in
    arrival order past the expected one). ``max_message_bytes``: larger text frames
    are dropped. ``gap_tolerance_ms`` / ``max_gap_fill_s``: see the module docstring.
    """

    def __init__(
        self,
        *,
        track_parties: Mapping[str, str] = DEFAULT_TRACK_PARTIES,
        reorder_window: int = 8,
        max_message_bytes: int = 64 * 1024,
        gap_tolerance_ms: float = 2.0,
        max_gap_fill_s: float = 5.0,
    ) -> None:
        if reorder_window < 0:
            raise ConfigError(f"reorder_window must be >= 0, got {reorder_window}")
        if max_message_bytes <= 0:
            raise ConfigError(f"max_message_bytes must be > 0, got {max_message_bytes}")
        if gap_tolerance_ms < 0 or max_gap_fill_s < 0:
            raise ConfigError(
                f"gap_tolerance_ms and max_gap_fill_s must be >= 0, got "
                f"{gap_tolerance_ms} and {max_gap_fill_s}"
            )
        self._track_parties = dict(track_parties)
        self._window = reorder_window
        self._max_bytes = max_message_bytes
        self._gap_tolerance = round(gap_tolerance_ms * SAMPLE_RATE_HZ / 1000)
        self._max_gap_fill = round(max_gap_fill_s * SAMPLE_RATE_HZ)

        self.stats = TwilioStats()
        self.call_id: str | None = None
        self.stream_sid: str | None = None
        self._decode = ulaw_decode
        self._legs: dict[str, _Leg] = {}  # by track name
        self._pending: dict[int, dict[str, Any]] = {}  # sequence number -> message
        self._next_seq: int | None = None  # unknown until ``start`` is released
        # Recently released numbers tell a duplicate from a late arrival, in bounded memory.
        self._recent: deque[int] = deque(maxlen=256)
        self._unsequenced_warned = False
        self._stopped = False
        self._dead = False  # a fatal violation happened: ignore everything

    # ------------------------------------------------------------------ input

    def receive_text(self, text: str) -> list[IngestOutput]:
        """Handle one websocket text frame (one JSON message)."""
        if self._dead:
            return []
        self.stats.messages += 1
        if len(text) > self._max_bytes or len(text.encode("utf-8")) > self._max_bytes:
            return [
                ProtocolViolation(
                    f"twilio: text frame of {len(text.encode('utf-8'))} bytes exceeds "
                    f"max_message_bytes={self._max_bytes}; dropped"
                )
            ]
        try:
            msg = loads_json(text)
        except ValueError as exc:
            return [ProtocolViolation(f"twilio: malformed JSON ({exc}): {text[:80]!r}")]
        if not isinstance(msg, dict):
            return [ProtocolViolation(f"twilio: message is not a JSON object: {text[:80]!r}")]
        event = msg.get("event")
        if not isinstance(event, str):
            return [ProtocolViolation(f"twilio: message without a string 'event': {text[:80]!r}")]
        if event == "connected":
            return []  # carries no sequence number and nothing we need

        raw_seq = msg.get("sequenceNumber")
        if raw_seq is None:
            out: list[IngestOutput] = []
            if not self._unsequenced_warned:
                self._unsequenced_warned = True
                out.append(
                    ProtocolViolation(
                        f"twilio: {event!r} without sequenceNumber; processing in arrival order"
                    )
                )
            return out + self._process(msg)
        seq = _parse_seq(raw_seq)
        if seq is None:
            return [ProtocolViolation(f"twilio: bad sequenceNumber {raw_seq!r} in {event!r}")]
        return self._accept(seq, msg)

    def receive_bytes(self, data: bytes) -> list[IngestOutput]:
        """Twilio never sends binary frames: each one is a (non-fatal) violation."""
        if self._dead:
            return []
        return [ProtocolViolation(f"twilio: unexpected binary frame of {len(data)} bytes")]

    def connection_lost(self) -> list[IngestOutput]:
        """The socket is gone: release what is buffered, end every open leg."""
        if self._dead:
            return []
        out = self._flush()
        out += self._end_legs("disconnect")
        self._dead = True
        return out

    # --------------------------------------------------------------- ordering

    def _accept(self, seq: int, msg: dict[str, Any]) -> list[IngestOutput]:
        if seq in self._pending or seq in self._recent:
            self.stats.duplicates += 1
            return []
        if self._next_seq is not None:
            if seq < self._next_seq:
                self.stats.late += 1
                if msg.get("event") == "start" and self.call_id is None:
                    # Without it nothing else can be decoded: better late than never.
                    return self._process(msg)
                return [ProtocolViolation(f"twilio: message {seq} arrived too late; dropped")]
            if seq > self._next_seq + _MAX_SEQ_JUMP:
                # Trusting a wild jump would make every later (sane) number look stale.
                return [
                    ProtocolViolation(
                        f"twilio: sequenceNumber {seq} jumps more than {_MAX_SEQ_JUMP} past "
                        f"{self._next_seq}; dropped"
                    )
                ]
        self._pending[seq] = msg
        if msg.get("event") == "stop":
            return self._flush()  # nothing after stop is coming; do not wait for gaps
        return self._drain()

    def _drain(self) -> list[IngestOutput]:
        out: list[IngestOutput] = []
        while self._pending:
            first = min(self._pending)
            if self._next_seq is None:
                ready = self._pending[first].get("event") == "start"
            else:
                ready = first == self._next_seq
            if not ready and len(self._pending) <= self._window:
                break
            out += self._release(first)
        return out

    def _flush(self) -> list[IngestOutput]:
        out: list[IngestOutput] = []
        while self._pending:
            out += self._release(min(self._pending))
        return out

    def _release(self, seq: int) -> list[IngestOutput]:
        msg = self._pending.pop(seq)
        if self._next_seq is not None and seq > self._next_seq:
            self.stats.missing += seq - self._next_seq
        self._next_seq = seq + 1
        self._recent.append(seq)
        return self._process(msg)

    # -------------------------------------------------------------- dispatch

    def _process(self, msg: dict[str, Any]) -> list[IngestOutput]:
        if self._dead:
            return []
        event = msg["event"]
        if self._stopped:
            return [ProtocolViolation(f"twilio: {event!r} after stop; ignored")]
        if event != "start" and self.stream_sid is not None:
            sid = msg.get("streamSid")
            if sid is not None and sid != self.stream_sid:
                return [
                    ProtocolViolation(
                        f"twilio: streamSid {sid!r} does not match {self.stream_sid!r}; dropped"
                    )
                ]
        if event == "start":
            return self._on_start(msg)
        if event == "media":
            return self._on_media(msg)
        if event == "dtmf":
            return self._on_dtmf(msg)
        if event == "stop":
            self._stopped = True
            return [*self._end_legs("hangup"), Close(1000, "stream stopped")]
        if event == "mark":
            return []  # echo of a mark we never send (bidirectional streams only)
        return [ProtocolViolation(f"twilio: unknown event {event!r}; ignored")]

    def _on_start(self, msg: dict[str, Any]) -> list[IngestOutput]:
        if self.call_id is not None:
            return [ProtocolViolation("twilio: second 'start' message; ignored")]
        start = msg.get("start")
        if not isinstance(start, dict):
            return self._fatal("twilio: 'start' message without a 'start' object", 1008)

        fmt = start.get("mediaFormat", {})
        if not isinstance(fmt, dict):
            return self._fatal(f"twilio: bad mediaFormat {fmt!r}", _CLOSE_UNSUPPORTED)
        encoding = fmt.get("encoding", "audio/x-mulaw")
        rate = fmt.get("sampleRate", SAMPLE_RATE_HZ)
        channels = fmt.get("channels", 1)
        if (
            not isinstance(encoding, str)
            or encoding not in _DECODERS
            or rate != SAMPLE_RATE_HZ
            or channels != 1
        ):
            return self._fatal(
                f"twilio: unsupported mediaFormat encoding={encoding!r} sampleRate={rate!r} "
                f"channels={channels!r} (need audio/x-mulaw or audio/x-alaw, 8000, 1)",
                _CLOSE_UNSUPPORTED,
            )
        self._decode = _DECODERS[encoding]

        custom = start.get("customParameters")
        custom = custom if isinstance(custom, dict) else {}
        call_sid = start.get("callSid")
        stream_sid = start.get("streamSid", msg.get("streamSid"))
        custom_id = custom.get("call_id")
        if isinstance(custom_id, str) and custom_id:
            call_id: object = custom_id
        else:
            call_id = call_sid if isinstance(call_sid, str) and call_sid else stream_sid
        if not isinstance(call_id, str) or not call_id:
            return self._fatal("twilio: 'start' has neither callSid nor streamSid", _CLOSE_POLICY)
        problem = call_id_problem(call_id)
        if problem is not None:
            return self._fatal(f"twilio: {problem}", _CLOSE_POLICY)
        if stream_sid is not None and call_id_problem(stream_sid, what="streamSid") is not None:
            return self._fatal(
                f"twilio: {call_id_problem(stream_sid, what='streamSid')}", _CLOSE_POLICY
            )
        self.call_id = call_id
        self.stream_sid = stream_sid if isinstance(stream_sid, str) else None

        tracks = start.get("tracks")
        if not isinstance(tracks, list) or not tracks:
            tracks = ["inbound"]
        tracks = [t for t in tracks[:_MAX_TRACKS] if isinstance(t, str)]
        info = {
            "protocol": "twilio",
            "stream_sid": self.stream_sid,
            "account_sid": start.get("accountSid"),
            "call_sid": call_sid,
            "tracks": list(tracks),
            "custom_parameters": custom,
            "encoding": encoding,
        }
        out: list[IngestOutput] = []
        for track in tracks:
            out += self._open_leg(str(track), info)
        return out

    def _open_leg(self, track: str, info: dict[str, Any]) -> list[IngestOutput]:
        party = self._track_parties.get(track)
        if party is None:
            return [ProtocolViolation(f"twilio: track {clip(track)} has no party; ignored")]
        if track in self._legs:
            return []
        self._legs[track] = _Leg(party)
        assert self.call_id is not None
        return [LegStarted(self.call_id, party, SAMPLE_RATE_HZ, 0.0, {**info, "track": track})]

    def _on_media(self, msg: dict[str, Any]) -> list[IngestOutput]:
        if self.call_id is None:
            return [ProtocolViolation("twilio: 'media' before 'start'; dropped")]
        media = msg.get("media")
        if not isinstance(media, dict):
            return [ProtocolViolation("twilio: 'media' message without a 'media' object")]
        track = media.get("track", "inbound")
        if not isinstance(track, str):
            return [ProtocolViolation(f"twilio: bad media track {clip(track)}")]
        out: list[IngestOutput] = []
        if track not in self._legs:
            out += self._open_leg(track, {"protocol": "twilio", "stream_sid": self.stream_sid})
            if track not in self._legs:
                return out
        payload = media.get("payload")
        if not isinstance(payload, str):
            return [
                *out,
                ProtocolViolation(f"twilio: media payload is not a string: {clip(payload)}"),
            ]
        try:
            codes = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            return [*out, ProtocolViolation(f"twilio: bad base64 media payload ({exc})")]
        if not codes:
            return out
        leg = self._legs[track]
        pcm = self._decode(np.frombuffer(codes, dtype=np.uint8))
        out += self._place(leg, media.get("timestamp"), pcm)
        self.stats.media += 1
        return out

    def _place(self, leg: _Leg, raw_ts: object, pcm: NDArray[np.int16]) -> list[IngestOutput]:
        """Put ``pcm`` on the leg's timeline at ``raw_ts`` ms, filling gaps with silence."""
        assert self.call_id is not None
        out: list[IngestOutput] = []
        ts_ms = _parse_number(raw_ts)
        if ts_ms is None:
            if raw_ts is not None:
                out.append(
                    ProtocolViolation(
                        f"twilio: bad media timestamp {clip(raw_ts)} (need 0 to "
                        f"{MAX_TIMESTAMP_MS} ms); audio appended at the end"
                    )
                )
        else:
            at = round(ts_ms * SAMPLE_RATE_HZ / 1000)
            gap = at - leg.next_sample
            if gap > self._max_gap_fill:
                out.append(
                    ProtocolViolation(
                        f"twilio: timestamp jumps {gap / SAMPLE_RATE_HZ:.3f} s on {leg.party}; "
                        "timeline advanced without filling"
                    )
                )
                leg.next_sample = at
            elif gap > self._gap_tolerance:
                out.append(
                    AudioChunk(
                        self.call_id,
                        leg.party,
                        leg.next_sample / SAMPLE_RATE_HZ,
                        np.zeros(gap, dtype=np.int16),
                        SAMPLE_RATE_HZ,
                    )
                )
                self.stats.silence_samples += gap
                leg.next_sample = at
        out.append(
            AudioChunk(
                self.call_id, leg.party, leg.next_sample / SAMPLE_RATE_HZ, pcm, SAMPLE_RATE_HZ
            )
        )
        leg.next_sample += pcm.shape[0]
        return out

    def _on_dtmf(self, msg: dict[str, Any]) -> list[IngestOutput]:
        if self.call_id is None:
            return [ProtocolViolation("twilio: 'dtmf' before 'start'; dropped")]
        dtmf = msg.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or len(digit) != 1:
            return [ProtocolViolation(f"twilio: 'dtmf' without a digit: {clip(dtmf)}")]
        track = dtmf.get("track", "inbound_track") if isinstance(dtmf, dict) else "inbound_track"
        track = str(track).removesuffix("_track")
        party = self._track_parties.get(track, self._track_parties.get("inbound", "customer"))
        leg = self._legs.get(track)
        t = leg.next_sample / SAMPLE_RATE_HZ if leg is not None else 0.0
        return [Dtmf(self.call_id, party, digit, t)]

    # ----------------------------------------------------------------- endings

    def refuse(self, reason: str) -> list[IngestOutput]:
        """The engine refused this stream's call id (another session holds it): its
        legs never opened, so nothing ends; close with 1008 and ``reason``."""
        for leg in self._legs.values():
            leg.open = False
        self._dead = True
        return [Close(_CLOSE_POLICY, reason)]

    def _end_legs(self, reason: str) -> list[IngestOutput]:
        out: list[IngestOutput] = []
        for leg in self._legs.values():
            if leg.open and self.call_id is not None:
                leg.open = False
                out.append(LegEnded(self.call_id, leg.party, reason))
        return out

    def _fatal(self, message: str, code: int) -> list[IngestOutput]:
        logger.warning("%s", message)
        out: list[IngestOutput] = [ProtocolViolation(message, fatal=True)]
        out += self._end_legs("error")
        out.append(Close(code, message[:120]))
        self._dead = True
        return out


def _parse_seq(raw: object) -> int | None:
    """``sequenceNumber`` is a decimal string on the wire; tolerate a plain integer."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    return parse_decimal(raw) if isinstance(raw, str) else None


def _parse_number(raw: object) -> float | None:
    """A media timestamp (ms, a string on the wire; a number tolerated) within
    0..``MAX_TIMESTAMP_MS``, else None: NaN, infinities, negatives, 1e308 and
    integers too large for a float all land here, never in an exception."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:  # an int beyond a float
            return None
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return None
    else:
        return None
    return value if 0 <= value <= MAX_TIMESTAMP_MS else None
