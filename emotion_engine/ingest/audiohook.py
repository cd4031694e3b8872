"""Sans-I/O core for Genesys Cloud AudioHook (protocol version 2), server side.

The adapter calls :meth:`AudioHookSession.authenticate` with the HTTP upgrade
request's headers, then feeds each websocket text frame to
:meth:`~AudioHookSession.receive_text`, each binary frame to
:meth:`~AudioHookSession.receive_bytes` and finally calls
:meth:`~AudioHookSession.connection_lost`. It sends every :class:`Reply` back as a
text frame, forwards :class:`LegStarted` / :class:`AudioChunk` / :class:`LegEnded`,
logs :class:`ProtocolViolation` and closes the socket on :class:`Close`.

What was checked, and where (the Genesys developer-center pages themselves were not
reachable from here; the Genesys-published reference server
``purecloudlabs/audiohook-reference-implementation`` and Genesys' help-center FAQ
"What happens during a successful session" were):

- Every message: ``{version: "2", id, type, seq, parameters}``; client messages add
  ``serverseq`` and ``position`` (ISO 8601 duration ``PT<seconds>S``), server messages
  add ``clientseq`` (the last client ``seq`` seen). Server ``seq`` starts at 1.
- Client ``seq`` must be exactly the previous one + 1, ``serverseq`` must not exceed
  the server's last ``seq``, ``id`` must stay the session id, a text message must not
  exceed 64 KiB, unknown types and bad parameters are errors. The server signals each
  of these with ``disconnect`` ``{reason: "error", info}`` (the client's ``error``
  message with its 4xx/5xx ``code`` is client-to-server only).
- "It is always the client that initiates and terminates the session": after a
  ``disconnect`` the client runs the close transaction (``close`` -> ``closed``) and
  closes the socket. So a fatal violation here yields the ``disconnect`` reply and a
  ``ProtocolViolation(fatal=True)``, and the :class:`Close` follows only once the
  client's ``close`` has been answered. Adapters should still close the socket
  themselves if no ``close`` arrives within a few seconds.
- ``open`` -> ``opened`` ``{media: [chosen], startPaused: false}``; the reference
  server picks the first acceptable offer and, when none is acceptable, answers
  ``opened`` with an empty ``media`` list (the client then sends no audio). Media
  offers: ``{type: "audio", format: "PCMU" | "L16", channels: ["external",
  "internal"] or one of them, rate: 8000}``.
- Audio (binary frames) only in the open, un-paused state: PCMU bytes or L16
  (16-bit little-endian: the reference reads them as native int16 on x86) at 8 kHz,
  sample-interleaved in the negotiated ``channels`` order; a frame that is not a whole
  number of sample frames is an error.
- ``ping`` -> ``pong`` ``{}``; ``update`` (language) is noted, not answered (the
  reference server sends nothing); ``paused`` / ``resumed`` toggle the paused state;
  ``discarded`` and ``resumed`` carry ``{start, discarded}`` durations: the client's
  stream position keeps running while audio is dropped or paused, so the timeline
  jumps to ``start + discarded``. ``close`` ``{reason: end | error | disconnect |
  reconnect}`` -> ``closed`` ``{}``.
- Authentication: the upgrade request carries ``X-API-KEY`` (plus an HTTP message
  signature, not verified here) and ``Audiohook-Organization-Id`` /
  ``Audiohook-Session-Id``. A wrong or missing key should fail the upgrade with HTTP
  401; :meth:`~AudioHookSession.authenticate` returns a :class:`Close` the adapter
  turns into that 401. An adapter that upgraded anyway gets ``disconnect`` with
  reason ``unauthorized`` on ``open`` (what the reference server does). An
  ``organizationId`` in ``open`` that differs from the header is also unauthorized.

Decisions: ``external`` (the customer side) -> party ``customer``, ``internal`` ->
``agent``; ``call_id`` = ``conversationId``. A ``conversationId`` of the nil UUID is a
connection probe: it is answered normally but starts no legs. Audio ``t`` counts the
samples received plus the discarded durations.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.g711 import ulaw_decode
from emotion_engine.config import MAX_STREAM_S
from emotion_engine.errors import ConfigError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    Reply,
    call_id_problem,
    clip,
    loads_json,
)

__all__ = ["CHANNEL_PARTIES", "AudioHookSession", "parse_duration"]

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ: Final = 8000
MAX_TEXT_BYTES: Final = 64 * 1024
NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"
CHANNEL_PARTIES: Final[Mapping[str, str]] = {"external": "customer", "internal": "agent"}
_FORMATS: Final = ("PCMU", "L16")
_BYTES_PER_SAMPLE: Final = {"PCMU": 1, "L16": 2}
_CLIENT_TYPES: Final = frozenset(
    {"open", "close", "ping", "paused", "resumed", "discarded", "update", "error"}
)
_CLOSE_REASONS: Final = {"end": "hangup"}  # others keep their wire name
_MAX_SEQ: Final = 2**53  # a client seq or serverseq past this is corrupt
_DURATION_RE: Final = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float | None:
    """ISO 8601 duration (``PT1.23S``, ``PT2M3S``, ``P0D``) -> seconds, or None if
    malformed or longer than ``MAX_STREAM_S`` (a stream position past a week is corrupt,
    and ``PT`` with 400 digits would be infinite)."""
    if len(text) > 64:
        return None
    match = _DURATION_RE.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        return None
    parts = match.groupdict()
    seconds = 0.0
    for key, scale in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if parts[key] is not None:
            seconds += float(parts[key]) * scale
    # "PT1e400S" is not a duration, nor is a stream position past a week
    return seconds if math.isfinite(seconds) and seconds <= MAX_STREAM_S else None


@dataclass(frozen=True, slots=True)
class _Media:
    format: str
    channels: tuple[str, ...]

    @property
    def frame_bytes(self) -> int:
        return _BYTES_PER_SAMPLE[self.format] * len(self.channels)


class AudioHookSession:
    """One AudioHook websocket (one session) seen from the server.

    ``api_key``: the key the client must present in ``X-API-KEY`` (None: no check).
    ``supported_formats``: media formats we accept, in no particular order (the
    client's offer order decides). ``session_id``: known session id (else taken from
    the ``Audiohook-Session-Id`` header or the first message).
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        supported_formats: Sequence[str] = _FORMATS,
        session_id: str | None = None,
        max_text_bytes: int = MAX_TEXT_BYTES,
    ) -> None:
        unknown = [f for f in supported_formats if f not in _FORMATS]
        if unknown or not supported_formats:
            raise ConfigError(
                f"supported_formats must be a non-empty subset of {_FORMATS}, got "
                f"{tuple(supported_formats)!r}"
            )
        if max_text_bytes <= 0:
            raise ConfigError(f"max_text_bytes must be > 0, got {max_text_bytes}")
        self._api_key = api_key
        self._formats = tuple(supported_formats)
        self._max_text = max_text_bytes
        self.session_id: str | None = session_id
        self.state = "preparing"  # preparing | active | paused | disconnecting | closed
        self.call_id: str | None = None
        self.language: str | None = None
        self.seq = 0  # last server seq sent
        self.clientseq = 0  # last client seq seen
        self.position_samples = 0  # per-channel samples on the stream timeline
        self._media: _Media | None = None
        self._parties: tuple[str, ...] = ()  # one per negotiated channel; () without legs
        self._legs_open = False
        self._authorized = api_key is None
        self._header_org: str | None = None

    # ---------------------------------------------------------- authentication

    def authenticate(self, headers: Mapping[str, str]) -> list[IngestOutput]:
        """Check the upgrade request. ``[]``: accept. A ``Close`` in the result: refuse
        the upgrade with HTTP 401 (or, once upgraded, close with that code)."""
        lower = {k.lower(): v for k, v in headers.items()}
        self._header_org = lower.get("audiohook-organization-id")
        header_sid = lower.get("audiohook-session-id")
        if self.session_id is None and header_sid and call_id_problem(header_sid) is None:
            self.session_id = header_sid  # a bad one is caught with the first message's id
        if self._api_key is None:
            self._authorized = True
            return []
        presented = lower.get("x-api-key")
        if presented is None:
            reason = "missing X-API-KEY header"
        elif not hmac.compare_digest(presented.encode(), self._api_key.encode()):
            reason = f"unknown X-API-KEY {presented[:4]}..."
        else:
            self._authorized = True
            return []
        self._authorized = False
        logger.warning("audiohook: unauthorized upgrade: %s", reason)
        return [
            ProtocolViolation(f"audiohook: unauthorized: {reason}", fatal=True),
            Close(1008, "unauthorized"),
        ]

    # ------------------------------------------------------------------- input

    def receive_text(self, text: str) -> list[IngestOutput]:
        """Handle one text frame (one JSON control message)."""
        if self.state == "closed":
            return [ProtocolViolation("audiohook: text message after the session closed")]
        size = len(text.encode("utf-8"))
        if size > self._max_text:
            return self._client_error(f"Text message too large (>64K): {size} bytes")
        try:
            msg = loads_json(text)
        except ValueError:
            return self._client_error(f"Text message not valid JSON: {text[:60]!r}")
        problem = _check_client_message(msg)
        if problem is not None:
            return self._client_error(f"Message not a well-formed client message: {problem}")

        mtype: str = msg["type"]
        if self.state == "disconnecting":
            # We asked the client to go; only the close transaction still matters.
            if mtype == "close":
                self.clientseq = max(self.clientseq, msg["seq"])
                return self._on_close(msg)
            return []
        if msg["seq"] != self.clientseq + 1:
            return self._client_error(
                f"Invalid seq value {msg['seq']} (expected {self.clientseq + 1})"
            )
        self.clientseq = msg["seq"]
        if msg["serverseq"] > self.seq:
            return self._client_error(
                f"Invalid serverseq value {msg['serverseq']} (server seq is {self.seq})"
            )
        if self.session_id is None:
            problem = call_id_problem(msg["id"], what="session id")
            if problem is not None:
                return self._client_error(f"Invalid session id: {problem}")
            self.session_id = msg["id"]
        elif msg["id"] != self.session_id:
            return self._client_error(f"Session identifier mismatch: {clip(msg['id'])}")
        if mtype not in _CLIENT_TYPES:
            return self._client_error(f"'{mtype}' is not a supported client message")

        params: dict[str, Any] = msg["parameters"]
        if mtype == "open":
            return self._on_open(params)
        if mtype == "ping":
            return [self._send("pong", {})]
        if mtype == "close":
            return self._on_close(msg)
        if mtype == "paused":
            if self.state == "active":
                self.state = "paused"
            return []
        if mtype in ("resumed", "discarded"):
            if mtype == "resumed" and self.state == "paused":
                self.state = "active"
            return self._skip_discarded(mtype, params)
        if mtype == "update":
            language = params.get("language")
            if isinstance(language, str):
                self.language = language
            logger.info("audiohook %s: update %s", self.session_id, clip(params, 200))
            return []
        # "error": the client reports a problem; it follows up with a close transaction.
        return [
            ProtocolViolation(
                f"audiohook: client error {clip(params.get('code'))}: "
                f"{clip(params.get('message'), 200)}"
            )
        ]

    def receive_bytes(self, data: bytes) -> list[IngestOutput]:
        """Handle one binary frame (audio in the negotiated format)."""
        if self.state == "disconnecting":
            return []  # frames already in flight when we sent disconnect
        if self.state == "closed":
            return [ProtocolViolation("audiohook: audio after the session closed")]
        if self.state != "active":
            return self._client_error(f"Received audio in state {self.state}")
        if self._media is None:
            return self._client_error("Unexpected binary message: No media selected")
        media = self._media
        if len(data) % media.frame_bytes:
            return self._client_error(
                f"Binary data not a valid audio frame: {len(data)} bytes is not a multiple "
                f"of {media.frame_bytes} ({media.format}, {len(media.channels)} channel(s))"
            )
        if not data:
            return []
        if media.format == "PCMU":
            pcm: NDArray[np.int16] = ulaw_decode(np.frombuffer(data, dtype=np.uint8))
        else:
            pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        frames = pcm.reshape(-1, len(media.channels))
        t = self.position_samples / SAMPLE_RATE_HZ
        self.position_samples += frames.shape[0]
        if self.call_id is None or not self._legs_open:
            return []  # connection probe: audio is counted, not analysed
        return [
            AudioChunk(self.call_id, party, t, np.ascontiguousarray(frames[:, i]), SAMPLE_RATE_HZ)
            for i, party in enumerate(self._parties)
        ]

    def connection_lost(self) -> list[IngestOutput]:
        """The socket is gone (no close transaction): end the legs with "disconnect"."""
        out = self._end_legs("disconnect")
        self.state = "closed"
        return out

    # ---------------------------------------------------------------- handlers

    def _on_open(self, params: dict[str, Any]) -> list[IngestOutput]:
        if self.state != "preparing":
            return [ProtocolViolation(f"audiohook: 'open' in state {self.state}; ignored")]
        if not self._authorized:
            return self._disconnect("unauthorized", "Invalid or missing X-API-KEY")
        org = params.get("organizationId")
        conversation = params.get("conversationId")
        offers = params.get("media")
        if (
            not isinstance(org, str)
            or not isinstance(conversation, str)
            or not conversation
            or not isinstance(offers, list)
        ):
            return self._client_error("Invalid Message: Invalid/missing 'open' parameters")
        problem = call_id_problem(conversation, what="conversationId") or call_id_problem(
            org, what="organizationId"
        )
        if problem is not None:
            return self._client_error(f"Invalid Message: {problem}")
        if self._header_org is not None and org.lower() != self._header_org.lower():
            return self._disconnect(
                "unauthorized",
                "Mismatch between organizationId open parameter and "
                "audiohook-organization-id header field",
            )
        chosen = next((o for o in offers if self._acceptable(o)), None)
        opened: dict[str, Any] = {"media": [chosen] if chosen else [], "startPaused": False}
        if params.get("supportedLanguages") is True:
            opened["supportedLanguages"] = []  # we transcribe nothing
        language = params.get("language")
        self.language = language if isinstance(language, str) else None
        self.state = "active"
        out: list[IngestOutput] = [self._send("opened", opened)]
        if chosen is None:
            out.append(
                ProtocolViolation(
                    f"audiohook: no acceptable media offer in {clip(offers, 200)} "
                    f"(supported: {self._formats} at 8000 Hz); opened without media"
                )
            )
            return out
        self._media = _Media(chosen["format"], tuple(chosen["channels"]))
        self._parties = tuple(CHANNEL_PARTIES[c] for c in self._media.channels)
        if conversation == NIL_UUID:
            logger.info("audiohook %s: connection probe", self.session_id)
            return out
        self.call_id = conversation
        self._legs_open = True
        info = {
            "protocol": "audiohook",
            "session_id": self.session_id,
            "organization_id": org,
            "conversation_id": conversation,
            "participant": params.get("participant"),
            "language": self.language,
            "custom_config": params.get("customConfig"),
            "format": self._media.format,
            "channels": list(self._media.channels),
        }
        out += [
            LegStarted(conversation, party, SAMPLE_RATE_HZ, 0.0, {**info, "channel": channel})
            for channel, party in zip(self._media.channels, self._parties, strict=True)
        ]
        return out

    def _acceptable(self, offer: object) -> bool:
        if not isinstance(offer, dict):
            return False
        channels = offer.get("channels")
        return (
            offer.get("type") == "audio"
            and offer.get("format") in self._formats
            and offer.get("rate") == SAMPLE_RATE_HZ
            and isinstance(channels, list)
            and 1 <= len(channels) <= 2
            and all(isinstance(c, str) and c in CHANNEL_PARTIES for c in channels)
            and len(set(channels)) == len(channels)
        )

    def _skip_discarded(self, mtype: str, params: dict[str, Any]) -> list[IngestOutput]:
        raw_start, raw_discarded = params.get("start"), params.get("discarded")
        if mtype == "resumed" and raw_start is None and raw_discarded is None:
            return []
        start = parse_duration(raw_start) if isinstance(raw_start, str) else None
        discarded = parse_duration(raw_discarded) if isinstance(raw_discarded, str) else None
        if start is None or discarded is None:
            return self._client_error(
                f"Invalid Message: bad '{mtype}' parameters start={clip(raw_start)} "
                f"discarded={clip(raw_discarded)}"
            )
        # The client's position counts every sample it produced, sent or not: resume at
        # start + discarded (from our own count if the client's start lags it by rounding).
        start_samples = round(start * SAMPLE_RATE_HZ)
        skip = round(discarded * SAMPLE_RATE_HZ)
        self.position_samples = max(self.position_samples, start_samples) + skip
        return []

    def _on_close(self, msg: dict[str, Any]) -> list[IngestOutput]:
        reason = msg["parameters"].get("reason", "end")
        reason = _CLOSE_REASONS.get(reason, reason) if isinstance(reason, str) else "end"
        out: list[IngestOutput] = [self._send("closed", {})]
        out += self._end_legs(reason)
        self.state = "closed"
        out.append(Close(1000, "closed"))
        return out

    def refuse(self, info: str) -> list[IngestOutput]:
        """The engine refused this session's conversation (another session holds its
        call id): the legs never opened, so nothing ends; ``disconnect`` (reason
        ``error``) with ``info``, and the client runs its close transaction."""
        self._legs_open = False
        return self._disconnect("error", info)

    # ----------------------------------------------------------------- helpers

    def _send(self, mtype: str, parameters: dict[str, Any]) -> Reply:
        self.seq += 1
        msg = {
            "version": "2",
            "type": mtype,
            "seq": self.seq,
            "clientseq": self.clientseq,
            "id": self.session_id or NIL_UUID,
            "parameters": parameters,
        }
        return Reply(json.dumps(msg, separators=(",", ":")))

    def _client_error(self, info: str) -> list[IngestOutput]:
        """The client broke the protocol: ``disconnect`` (reason error) and stop listening."""
        return self._disconnect("error", f"Client Error: {info}")

    def _disconnect(self, reason: str, info: str) -> list[IngestOutput]:
        if self.state in ("disconnecting", "closed"):
            return []  # already signalled; the reference server suppresses repeats too
        logger.warning("audiohook %s: disconnect %s: %s", self.session_id, reason, info)
        out: list[IngestOutput] = [
            ProtocolViolation(f"audiohook: {info}", fatal=True),
            self._send("disconnect", {"reason": reason, "info": info}),
        ]
        self.state = "disconnecting"
        return out

    def _end_legs(self, reason: str) -> list[IngestOutput]:
        if not self._legs_open or self.call_id is None:
            return []
        self._legs_open = False
        return [LegEnded(self.call_id, party, reason) for party in self._parties]


def _check_client_message(msg: object) -> str | None:
    """Why ``msg`` is not a well-formed client message envelope, or None if it is."""
    if not isinstance(msg, dict):
        return "not a JSON object"
    if msg.get("version") != "2":
        return f"version {clip(msg.get('version'))} is not '2'"
    for key in ("id", "type", "position"):
        if not isinstance(msg.get(key), str):
            return f"{key} {clip(msg.get(key))} is not a string"
    for key in ("seq", "serverseq"):
        value = msg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEQ:
            return f"{key} {clip(value)} is not an integer from 0 to 2**53"
    if parse_duration(msg["position"]) is None:
        return f"position {clip(msg['position'])} is not an ISO 8601 duration up to a week"
    if not isinstance(msg.get("parameters"), dict):
        return f"parameters {clip(msg.get('parameters'))} is not an object"
    return None
