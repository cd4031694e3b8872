"""Sans-I/O core for "one JSON text frame, then binary 16-bit PCM" websockets.

Covers jambonz ``listen`` (subprotocol ``audio.jambonz.org``), FreeSWITCH
``mod_audio_fork`` (``audio.drachtio.org``) and the Vonage Voice API websocket.
Feed text frames to :meth:`L16Session.receive_text`, binary frames to
:meth:`~L16Session.receive_bytes`, and call :meth:`~L16Session.connection_lost` at the
end (none of these protocols has an end message: the socket closing is the hang-up).

Checked against the documentation:

- jambonz ``listen``: one text frame right after the connection with the call's
  attributes (``callSid``, ``callId``, ``from``, ``to``, ``direction`` ...) plus
  ``sampleRate`` and ``mixType``, then only binary frames of 16-bit PCM. ``mixType``
  ``mono`` (one channel), ``stereo`` (two channels, one per party of the bridge) or
  ``mixed`` (both parties mixed in one channel); ``sampleRate`` 8000 (default),
  16000, 24000, 48000, 64000. With ``passDtmf`` jambonz also sends
  ``{"event": "dtmf", "dtmf": "5", "duration": ...}`` text frames.
- ``mod_audio_fork``: ``uuid_audio_fork <uuid> start <url> <mix-type> <rate>
  <metadata>``; mix-type ``mono`` (the caller), ``mixed`` or ``stereo`` (caller in one
  channel, callee in the other), rate ``8k`` / ``16k``; the metadata JSON is whatever
  the operator passed, so mix type and rate may be missing from it: the
  ``default_*`` parameters cover that.
- Vonage: first text frame ``{"event": "websocket:connected", "content-type":
  "audio/l16;rate=16000", ...headers}``, then 16-bit little-endian mono L16 (the
  socket is a call participant, so it hears the mix); DTMF arrives as
  ``{"event": "websocket:dtmf", "digit": ...}``.

Decisions:

- Stereo frames are sample-interleaved (caller, callee) -> ``stereo_parties``
  (default customer, agent; for outbound campaigns where the agent places the call,
  pass ``("agent", "customer")``). ``mono`` and ``mixed`` give one leg with
  ``default_party``: the event schema only knows customer and agent, and the leg's
  ``info["mix_type"]`` tells a consumer that "mixed" holds both voices.
- ``call_id``: the first of ``callSid``, ``call_sid``, ``callId``, ``call_id``,
  ``uuid``, ``conversationId`` that is a non-empty string, else the constructor's
  ``call_id``, else a random UUID (Vonage sends none unless the NCCO adds a header).
- Binary frames before the metadata are held (up to ``max_pending_bytes``; users
  report metadata arriving late) and released once it arrives. Past the bound the
  session either starts with the defaults (``require_metadata=False``) or ends.
- Byte counts that split a sample (or a stereo sample pair) carry over to the next
  frame. A later text frame may update metadata: unknown keys are logged and kept in
  :attr:`L16Session.metadata`; a rate or mix change once the legs have started is
  refused (their timelines would lose their meaning).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from emotion_engine.config import SUPPORTED_INPUT_RATES_HZ
from emotion_engine.errors import ConfigError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    bounded_info,
    call_id_problem,
    clip,
    loads_json,
    parse_decimal,
)

__all__ = ["MIX_TYPES", "L16Session", "parse_rate"]

logger = logging.getLogger(__name__)

MIX_TYPES: Final = ("mono", "mixed", "stereo")
_CALL_ID_KEYS: Final = ("callSid", "call_sid", "callId", "call_id", "uuid", "conversationId")
_RATE_KEYS: Final = ("sampleRate", "sample_rate", "samplingRate", "rate")
_MIX_KEYS: Final = ("mixType", "mix_type")
_CONTENT_RATE_RE: Final = re.compile(r"rate\s*=\s*(\d+)", re.IGNORECASE)
_CLOSE_UNSUPPORTED: Final = 1003  # RFC 6455: data the endpoint cannot accept
_CLOSE_POLICY: Final = 1008


def parse_rate(raw: object) -> int | None:
    """A sample rate as the platforms write it (16000, "16000", "16k", "8K") -> Hz."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        khz = parse_decimal(text[:-1]) if text.endswith("k") else None
        return khz * 1000 if khz is not None else parse_decimal(text)
    return None


class L16Session:
    """One L16 websocket: a JSON metadata frame, then binary 16-bit little-endian PCM.

    ``default_party``: the party of a mono or mixed stream. ``stereo_parties``:
    parties of the (first, second) interleaved channel. ``default_sample_rate`` /
    ``default_mix_type``: used where the metadata does not say. ``call_id``: used
    where the metadata names no call. ``max_pending_bytes``: audio held while waiting
    for metadata. ``max_message_bytes``: larger frames are dropped.
    """

    def __init__(
        self,
        *,
        default_party: str = "customer",
        stereo_parties: tuple[str, str] = ("customer", "agent"),
        default_sample_rate: int = 8000,
        default_mix_type: str = "mono",
        call_id: str | None = None,
        max_pending_bytes: int = 256 * 1024,
        require_metadata: bool = True,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        if default_sample_rate not in SUPPORTED_INPUT_RATES_HZ:
            raise ConfigError(
                f"default_sample_rate {default_sample_rate} not in {SUPPORTED_INPUT_RATES_HZ}"
            )
        if default_mix_type not in MIX_TYPES:
            raise ConfigError(f"default_mix_type {default_mix_type!r} not in {MIX_TYPES}")
        if len(stereo_parties) != 2 or stereo_parties[0] == stereo_parties[1]:
            raise ConfigError(f"stereo_parties must be two distinct parties: {stereo_parties!r}")
        if max_pending_bytes < 0 or max_message_bytes <= 0:
            raise ConfigError(
                f"bad byte limits max_pending_bytes={max_pending_bytes} "
                f"max_message_bytes={max_message_bytes}"
            )
        self._default_party = default_party
        self._stereo_parties = stereo_parties
        self._default_rate = default_sample_rate
        self._default_mix = default_mix_type
        self._fallback_call_id = call_id
        self._max_pending = max_pending_bytes
        self._require_metadata = require_metadata
        self._max_message = max_message_bytes

        self.metadata: dict[str, Any] = {}
        self.call_id: str | None = None
        self.sample_rate: int | None = None
        self.mix_type: str | None = None
        self._parties: tuple[str, ...] = ()
        self._samples = 0  # per-channel samples emitted on every leg's timeline
        self._carry = b""  # bytes of an incomplete sample frame
        self._pending: list[bytes] = []  # audio received before the metadata
        self._pending_bytes = 0
        self._open = False
        self._dead = False

    @property
    def started(self) -> bool:
        """Whether the legs have started (metadata seen or defaults applied)."""
        return self.call_id is not None

    # ------------------------------------------------------------------- input

    def receive_text(self, text: str) -> list[IngestOutput]:
        """Handle a text frame: the metadata, a metadata update or a DTMF event."""
        if self._dead:
            return []
        size = len(text.encode("utf-8"))
        if size > self._max_message:
            return [ProtocolViolation(f"l16: text frame of {size} bytes too large; dropped")]
        try:
            msg = loads_json(text)
        except ValueError as exc:
            return [ProtocolViolation(f"l16: malformed JSON ({exc}): {text[:80]!r}")]
        if not isinstance(msg, dict):
            return [ProtocolViolation(f"l16: text frame is not a JSON object: {text[:80]!r}")]
        event = msg.get("event")
        if event in ("dtmf", "websocket:dtmf"):
            return self._on_dtmf(msg)
        if not self.started:
            return self._start(msg)
        return self._update(msg)

    def receive_bytes(self, data: bytes) -> list[IngestOutput]:
        """Handle a binary frame of little-endian 16-bit PCM (interleaved when stereo)."""
        if self._dead:
            return []
        if len(data) > self._max_message:
            return [ProtocolViolation(f"l16: binary frame of {len(data)} bytes too large")]
        if not self.started:
            if self._pending_bytes + len(data) <= self._max_pending:
                self._pending.append(bytes(data))
                self._pending_bytes += len(data)
                return []
            if self._require_metadata:
                return self._fatal(
                    f"l16: {self._pending_bytes + len(data)} bytes of audio and no metadata "
                    f"(bound max_pending_bytes={self._max_pending})",
                    _CLOSE_POLICY,
                )
            out = self._start({})
            out.insert(0, ProtocolViolation("l16: no metadata in time; using the defaults"))
            return out + self._audio(data)
        return self._audio(data)

    def connection_lost(self) -> list[IngestOutput]:
        """The socket closed (the normal end for these protocols): end the legs."""
        if self._dead:
            return []
        out: list[IngestOutput] = []
        if self._carry:
            out.append(ProtocolViolation(f"l16: {len(self._carry)} trailing bytes dropped"))
        if not self.started and self._pending:
            out.append(ProtocolViolation(f"l16: {self._pending_bytes} bytes but no metadata"))
        out += self._end_legs("disconnect")
        self._dead = True
        return out

    # ---------------------------------------------------------------- metadata

    def _start(self, msg: dict[str, Any]) -> list[IngestOutput]:
        rate, mix, problem = self._read_format(msg, self._default_rate, self._default_mix)
        if problem is not None:
            return self._fatal(problem, _CLOSE_UNSUPPORTED)
        call_id = next(
            (msg[k] for k in _CALL_ID_KEYS if isinstance(msg.get(k), str) and msg[k]),
            self._fallback_call_id or str(uuid.uuid4()),
        )
        problem = call_id_problem(call_id)
        if problem is not None:
            return self._fatal(f"l16: {problem}", _CLOSE_POLICY)
        self.metadata, problems = bounded_info(msg)
        self.call_id = str(call_id)
        self.sample_rate, self.mix_type = rate, mix
        self._parties = self._stereo_parties if mix == "stereo" else (self._default_party,)
        self._open = True
        info = {"protocol": "l16", "mix_type": mix, "metadata": self.metadata}
        out: list[IngestOutput] = [ProtocolViolation(f"l16: metadata {p}") for p in problems]
        out += [LegStarted(self.call_id, party, rate, 0.0, info) for party in self._parties]
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for data in pending:
            out += self._audio(data)
        return out

    def _update(self, msg: dict[str, Any]) -> list[IngestOutput]:
        assert self.sample_rate is not None and self.mix_type is not None
        rate, mix, problem = self._read_format(msg, self.sample_rate, self.mix_type)
        out: list[IngestOutput] = []
        if problem is not None or (rate, mix) != (self.sample_rate, self.mix_type):
            # The legs were announced with this layout; switching would reinterpret every
            # later byte under timelines that no longer mean anything.
            reason = problem or f"to {rate} Hz / {mix!r}"
            out.append(ProtocolViolation(f"l16: format change refused ({reason})"))
        unknown = sorted(set(msg) - set(self.metadata))
        if unknown:
            logger.info("l16 %s: metadata update adds %s", self.call_id, clip(unknown))
        # updates merge into what is kept, within the same bounds as the first frame
        self.metadata, problems = bounded_info({**self.metadata, **msg})
        out += [ProtocolViolation(f"l16: metadata update {p}") for p in problems]
        return out

    def _read_format(
        self, msg: dict[str, Any], rate_default: int, mix_default: str
    ) -> tuple[int, str, str | None]:
        raw_rate = next((msg[k] for k in _RATE_KEYS if k in msg), None)
        rate: int | None = rate_default
        if raw_rate is not None:
            rate = parse_rate(raw_rate)
        else:
            content = msg.get("content-type", msg.get("contentType"))
            if isinstance(content, str):
                found = _CONTENT_RATE_RE.search(content)
                if "l16" not in content.lower() or found is None:
                    return (
                        rate_default,
                        mix_default,
                        f"l16: unsupported content-type {clip(content)}",
                    )
                rate = parse_decimal(found.group(1))
        if rate is None or rate not in SUPPORTED_INPUT_RATES_HZ:
            return (
                rate_default,
                mix_default,
                f"l16: unsupported sample rate {clip(raw_rate)} "
                f"(supported: {SUPPORTED_INPUT_RATES_HZ})",
            )
        mix = next((msg[k] for k in _MIX_KEYS if k in msg), mix_default)
        if mix not in MIX_TYPES:
            return (
                rate,
                mix_default,
                f"l16: unsupported mixType {clip(mix)} (supported: {MIX_TYPES})",
            )
        return rate, str(mix), None

    # ------------------------------------------------------------------- audio

    def _audio(self, data: bytes) -> list[IngestOutput]:
        assert self.call_id is not None and self.sample_rate is not None
        if not self._open:
            return [ProtocolViolation("l16: audio after the legs ended")]
        buf = self._carry + bytes(data)
        frame_bytes = 2 * len(self._parties)
        usable = len(buf) - len(buf) % frame_bytes
        self._carry = buf[usable:]
        if usable == 0:
            return []
        frames = np.frombuffer(buf[:usable], dtype="<i2").reshape(-1, len(self._parties))
        t = self._samples / self.sample_rate
        self._samples += frames.shape[0]
        return [
            AudioChunk(
                self.call_id,
                party,
                t,
                np.ascontiguousarray(frames[:, i], dtype=np.int16),
                self.sample_rate,
            )
            for i, party in enumerate(self._parties)
        ]

    def _on_dtmf(self, msg: Mapping[str, Any]) -> list[IngestOutput]:
        digit = msg.get("dtmf", msg.get("digit"))
        if not isinstance(digit, str) or len(digit) != 1:
            return [ProtocolViolation(f"l16: DTMF event without a digit: {clip(dict(msg))}")]
        if not self.started or self.call_id is None:
            return [ProtocolViolation("l16: DTMF before the metadata; dropped")]
        assert self.sample_rate is not None
        # jambonz and Vonage report the caller's keys: the first leg.
        return [Dtmf(self.call_id, self._parties[0], digit, self._samples / self.sample_rate)]

    # ----------------------------------------------------------------- endings

    def refuse(self, reason: str) -> list[IngestOutput]:
        """The engine refused this stream's call id (another session holds it): its
        legs never opened, so nothing ends; close with 1008 and ``reason``."""
        self._open = False
        self._dead = True
        return [Close(_CLOSE_POLICY, reason)]

    def _end_legs(self, reason: str) -> list[IngestOutput]:
        if not self._open or self.call_id is None:
            return []
        self._open = False
        return [LegEnded(self.call_id, party, reason) for party in self._parties]

    def _fatal(self, message: str, code: int) -> list[IngestOutput]:
        logger.warning("%s", message)
        out: list[IngestOutput] = [ProtocolViolation(message, fatal=True)]
        out += self._end_legs("error")
        out.append(Close(code, message[:120]))
        self._dead = True
        return out
