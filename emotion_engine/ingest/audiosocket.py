"""Asterisk AudioSocket (TCP): the sans-I/O core for one connection.

Wire format (https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/ and
``res/res_audiosocket.c``): every message is a 1-byte kind, a 2-byte big-endian
payload length, then the payload. Asterisk sends the call UUID first, then audio
every 20 ms, DTMF digits as they are pressed, and a hang-up or error at the end
(closing the socket is also a hang-up).

Kinds handled here (:class:`Kind`): 0x00 hang-up; 0x01 UUID (16 bytes, the call id);
0x03 DTMF (one ASCII digit); 0x10-0x18 signed linear 16-bit little-endian mono at
8, 12, 16, 24, 32, 44.1, 48, 96 and 192 kHz (:data:`KIND_RATES`, as the Asterisk
documentation lists them; an early draft of the higher-rate patch used 0x11 for
16 kHz, the released protocol does not); 0xff error (optional one-byte code, bits
0x01 calling party hung up, 0x02 frame forwarding error, 0x04 memory error).

Feed :meth:`AudioSocketSession.receive_data` with whatever the socket read (messages
split across reads or packed several to a read are both fine) and
:meth:`AudioSocketSession.connection_lost` when the peer goes away. Outputs:

- ``LegStarted`` with the first audio message (its kind gives the sample rate), then
  one ``AudioChunk`` per audio message (``t`` counts samples received, so it is call
  time as long as Asterisk sends continuously, which it does);
- ``Dtmf`` for each digit (``t`` = audio received so far; a digit pressed before any
  audio arrives comes before ``LegStarted``); ``LegEnded`` with reason ``"hangup"`` (0x00),
  ``"error"`` (0xff), ``"disconnect"`` (socket closed) followed by ``Close``;
- ``ProtocolViolation`` for anything unusable, which is dropped: audio or DTMF
  before the UUID (there is no call to give it to), a UUID that is not 16 bytes or
  comes twice, odd-length audio, an unknown kind (skipped using its length).

A sample-rate change mid-call (a new audio kind) ends the leg with reason
``"rate-change"`` and starts it again at the new rate under the same call id, with
``t`` continuing where it stopped: downstream resamplers are built per leg, so a
fresh leg is the honest way to say the audio format changed.

:class:`AudioSocketProtocol` is the thin asyncio adapter around the session.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Callable
from enum import IntEnum
from typing import Final

import numpy as np

from emotion_engine.errors import ProtocolError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    Reply,
)

__all__ = ["KIND_RATES", "AudioSocketProtocol", "AudioSocketSession", "Kind", "encode_message"]

_HEADER: Final = struct.Struct("!BH")
MAX_PAYLOAD: Final = 0xFFFF


class Kind(IntEnum):
    """AudioSocket message kinds (``enum ast_audiosocket_msg_kind``)."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


KIND_RATES: Final[dict[int, int]] = {
    Kind.SLIN: 8000,
    Kind.SLIN12: 12000,
    Kind.SLIN16: 16000,
    Kind.SLIN24: 24000,
    Kind.SLIN32: 32000,
    Kind.SLIN44: 44100,
    Kind.SLIN48: 48000,
    Kind.SLIN96: 96000,
    Kind.SLIN192: 192000,
}
_ERROR_BITS: Final = {
    0x01: "calling party hung up",
    0x02: "frame forwarding error",
    0x04: "memory allocation error",
}
_DTMF_DIGITS: Final = frozenset("0123456789*#ABCDabcd")


def encode_message(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message: kind, big-endian length, payload."""
    if not 0 <= kind <= 0xFF:
        raise ProtocolError(f"AudioSocket kind {kind} out of range 0..255")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"AudioSocket payload {len(payload)} bytes > {MAX_PAYLOAD}")
    return _HEADER.pack(kind, len(payload)) + payload


def _describe_error(payload: bytes) -> str:
    if not payload:
        return "peer sent error (no code)"
    code = payload[0]
    names = [name for bit, name in _ERROR_BITS.items() if code & bit]
    return f"peer sent error code 0x{code:02x} ({', '.join(names) or 'application-specific'})"


class AudioSocketSession:
    """Sans-I/O state of one AudioSocket TCP connection (one call leg).

    ``party``: the party this connection carries (AudioSocket has one stream per
    connection; "customer" unless the dialplan says otherwise).
    """

    def __init__(self, *, party: str = "customer") -> None:
        self.party = party
        self.call_id: str | None = None
        self.sample_rate: int | None = None
        self._buffer = bytearray()
        self._started = False
        self._closed = False
        self._reported_after_close = False
        self._t_offset = 0.0  # seconds at the start of the current rate segment
        self._samples = 0  # samples received in the current rate segment

    @property
    def closed(self) -> bool:
        """True once the session ended (hang-up, error or disconnect)."""
        return self._closed

    @property
    def position_s(self) -> float:
        """Seconds of audio received so far."""
        return self._t_offset + (self._samples / self.sample_rate if self.sample_rate else 0.0)

    def receive_data(self, data: bytes) -> list[IngestOutput]:
        """Feed bytes read from the socket; return what they completed."""
        if self._closed:
            return self._after_close()
        self._buffer += data
        out: list[IngestOutput] = []
        pos = 0
        buf = self._buffer
        while not self._closed and len(buf) - pos >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buf, pos)
            end = pos + _HEADER.size + length
            if end > len(buf):
                break
            out.extend(self._message(kind, bytes(buf[pos + _HEADER.size : end])))
            pos = end
        if self._closed and len(buf) > pos:
            out.extend(self._after_close())
            pos = len(buf)
        del buf[:pos]
        return out

    def _after_close(self) -> list[IngestOutput]:
        # Reported once, so the outputs do not depend on how the reads were split.
        if self._reported_after_close:
            return []
        self._reported_after_close = True
        return [ProtocolViolation("data after the session ended, dropped")]

    def connection_lost(self) -> list[IngestOutput]:
        """The socket closed (or failed): end the leg if it is still open."""
        if self._closed:
            return []
        out: list[IngestOutput] = []
        if self._buffer:
            out.append(
                ProtocolViolation(
                    f"connection closed inside a message ({len(self._buffer)} bytes unparsed)"
                )
            )
            self._buffer.clear()
        out.extend(self._finish("disconnect"))
        return out

    def timed_out(self) -> list[IngestOutput]:
        """The peer sent nothing for too long: end the leg (reason ``"timeout"``) and
        close (the adapter decides when; the core keeps no clock)."""
        return [] if self._closed else self._finish("timeout")

    def _message(self, kind: int, payload: bytes) -> list[IngestOutput]:
        if kind in KIND_RATES:
            return self._audio(kind, payload)
        if kind == Kind.UUID:
            return self._uuid(payload)
        if kind == Kind.DTMF:
            return self._dtmf(payload)
        if kind == Kind.HANGUP:
            return self._finish("hangup")
        if kind == Kind.ERROR:
            violation = ProtocolViolation(_describe_error(payload), fatal=True)
            return [violation, *self._finish("error")]
        return [
            ProtocolViolation(
                f"unknown AudioSocket kind 0x{kind:02x} ({len(payload)} bytes), skipped"
            )
        ]

    def _uuid(self, payload: bytes) -> list[IngestOutput]:
        if self.call_id is not None:
            return [ProtocolViolation(f"second UUID message ignored (call {self.call_id})")]
        if len(payload) != 16:
            return [ProtocolViolation(f"UUID payload is {len(payload)} bytes, expected 16")]
        self.call_id = str(uuid.UUID(bytes=payload))
        return []

    def _dtmf(self, payload: bytes) -> list[IngestOutput]:
        if self.call_id is None:
            return [ProtocolViolation("DTMF before the UUID message, dropped")]
        digit = payload.decode("ascii", errors="replace") if len(payload) == 1 else ""
        if digit not in _DTMF_DIGITS:
            return [ProtocolViolation(f"DTMF payload {payload!r} is not one digit, dropped")]
        return [Dtmf(self.call_id, self.party, digit.upper(), self.position_s)]

    def _audio(self, kind: int, payload: bytes) -> list[IngestOutput]:
        if self.call_id is None:
            return [
                ProtocolViolation(f"audio before the UUID message ({len(payload)} bytes), dropped")
            ]
        if len(payload) % 2:
            return [ProtocolViolation(f"odd-length audio payload ({len(payload)} bytes), dropped")]
        rate = KIND_RATES[kind]
        out: list[IngestOutput] = []
        if rate != self.sample_rate:
            if self._started:
                out.append(LegEnded(self.call_id, self.party, reason="rate-change"))
            self._t_offset = self.position_s
            self._samples = 0
            self.sample_rate = rate
            self._started = True
            out.append(
                LegStarted(
                    self.call_id,
                    self.party,
                    sample_rate=rate,
                    t=self._t_offset,
                    info={"protocol": "audiosocket", "kind": f"0x{kind:02x}"},
                )
            )
        if payload:
            pcm = np.frombuffer(payload, dtype="<i2").astype(np.int16)
            out.append(AudioChunk(self.call_id, self.party, self.position_s, pcm, rate))
            self._samples += pcm.size
        return out

    def refuse(self, reason: str) -> list[IngestOutput]:
        """The engine refused this connection's call (another session holds its call
        id): the leg never opened, so nothing ends; a hang-up message goes back to
        Asterisk and the connection closes (``Close.reason`` is ``reason``)."""
        self._closed = True
        self._started = False
        return [Reply(encode_message(Kind.HANGUP)), Close(1008, reason)]

    def _finish(self, reason: str) -> list[IngestOutput]:
        self._closed = True
        out: list[IngestOutput] = []
        if self._started and self.call_id is not None:
            out.append(LegEnded(self.call_id, self.party, reason=reason))
        out.append(Close(reason=reason))
        return out


class AudioSocketProtocol(asyncio.Protocol):
    """Thin asyncio adapter: one :class:`AudioSocketSession` per TCP connection; every
    non-empty output list goes to ``on_output``; a ``Close`` output closes the socket.

    ``await loop.create_server(lambda: AudioSocketProtocol(cb), "0.0.0.0", 9092)``
    """

    def __init__(
        self, on_output: Callable[[list[IngestOutput]], None], *, party: str = "customer"
    ) -> None:
        self.session = AudioSocketSession(party=party)
        self.on_output = on_output
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._emit(self.session.receive_data(data))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost ends the leg

    def connection_lost(self, exc: Exception | None) -> None:
        self._emit(self.session.connection_lost())

    def _emit(self, out: list[IngestOutput]) -> None:
        if not out:
            return
        self.on_output(out)
        if self._transport is not None and any(isinstance(o, Close) for o in out):
            self._transport.close()
