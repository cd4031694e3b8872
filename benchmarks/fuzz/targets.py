"""One fuzz target per ingest parser: bytes in, the parser's public entry point fed the
way the server feeds it, and a check of what came out.

A target raises only what its parser documents (``Target.allowed``); anything else is
a finding. :class:`Broken` marks outputs the server could not use (a ``t`` that is not
finite, audio that is not int16, call info that does not encode as an event, a SIP
request the UAS answered with its "internal error" catch-all, an SDP answer that its
own parser refuses, RTP whose batched read differs from the per-datagram one).

Input formats (how one fuzz input becomes what a socket delivers):

- **rtp**: datagrams, each a 2-byte big-endian header (low 15 bits: length, top bit:
  which of two peers sent it) and that many bytes. Fed one by one to
  ``RtpIngest.receive_datagram`` and, in a second ingest, as one
  ``RtpIngest.receive_batch`` (the server's tick read); both must give each leg the
  same audio and events. Then ``poll`` past the leg timeout. An input of odd length
  meets the settings of ``serve``'s RTP port (new legs on probation until they send
  audio in step, new legs rate-limited per source; shorter and smaller here so that
  small inputs reach every branch), one of even length those of a SIP call's port.
- **sip**: messages separated by ``SIP_SEPARATOR``; ``$TAG`` in a message is replaced
  by the To-tag of the UAS's last response (so mutated in-dialog requests reach the
  dialog). Each message goes to ``SipUas.receive`` over UDP; for inputs of odd
  length (half of them, at half the cost of doing both) the concatenation goes
  through ``SipStreamFramer`` and the framed messages to the UAS over TCP instead, as
  the SIP server's TCP reader does. Timers are polled to the end and every call is
  hung up.
- **sdp**: one SDP body to ``parse_sdp``, then ``answer_offer`` and ``build_answer``,
  whose answer must parse again with the same number of m-lines.
- **siprec**: first line the Content-Type value, the rest the body:
  ``split_multipart``, ``parse_metadata`` of the metadata part (or of the whole body
  when it is not multipart) and ``assign_parties``, as the UAS does for a SIPREC offer.
- **twilio**, **audiohook**, **l16**: websocket frames, one per line (``\\n``); a
  line starting with ``#`` is a binary frame holding the base64 after it, any other
  line a text frame (UTF-8, invalid bytes replaced, as a websocket text frame is
  always valid UTF-8). AudioHook: a first line starting with ``H`` is the upgrade
  request's headers as a JSON object (else the valid ones of the captures).
  ``connection_lost`` at the end.
- **audiosocket**: the byte stream of one TCP connection, handed to
  ``AudioSocketSession.receive_data`` in reads whose size comes from the first byte
  (messages split across reads and several per read both happen), then
  ``connection_lost``.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from emotion_engine.errors import ProtocolError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.audiohook import AudioHookSession
from emotion_engine.ingest.audiosocket import AudioSocketSession
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    Reply,
)
from emotion_engine.ingest.guard import SourceRateLimit
from emotion_engine.ingest.l16 import L16Session
from emotion_engine.ingest.rtp import RtpIngest, RtpPacket, is_rtcp
from emotion_engine.ingest.sdp import answer_offer, build_answer, parse_sdp
from emotion_engine.ingest.sip import (
    MediaStart,
    MediaStop,
    MediaUpdate,
    Peer,
    SipSend,
    SipStreamFramer,
    SipUas,
)
from emotion_engine.ingest.siprec import (
    METADATA_TYPE,
    assign_parties,
    parse_metadata,
    split_multipart,
)
from emotion_engine.ingest.twilio import TwilioMediaSession
from emotion_engine.publish.events import to_json

__all__ = [
    "SIP_SEPARATOR",
    "TARGETS",
    "Broken",
    "Target",
    "decode_frames",
    "encode_datagrams",
    "encode_frames",
    "mutations",
    "unexpected",
]

RTP_MAX_DATAGRAM: Final = 2048
"""``emotion_engine.server.RTP_MAX_DATAGRAM`` (a test keeps them equal): the server
reads at most this much of a datagram. Not imported, so that a fuzz worker does not
load the engine, the model and the feature kernels it never runs."""
SIP_SEPARATOR: Final = b"\r\n\x00--\x00\r\n"
TAG_PLACEHOLDER: Final = b"$TAG"
AUDIOHOOK_API_KEY: Final = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"  # the captures' key
AUDIOHOOK_HEADERS: Final = {
    "X-API-KEY": AUDIOHOOK_API_KEY,
    "Audiohook-Organization-Id": "d7934305-0972-4844-938e-9060eef73d05",
    "Audiohook-Session-Id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
}
_SIP_PEERS: Final = (Peer("udp", "127.0.0.1", 5070), Peer("tcp", "127.0.0.1", 5071, conn=1))
_SIP_LOCAL: Final = ("127.0.0.1", 5060)
_RTP_PEERS: Final = (("198.51.100.7", 4000), ("2001:db8::7", 4002, 0, 0))
_WS_OUTPUTS: Final = (AudioChunk, LegStarted, LegEnded, Dtmf, ProtocolViolation, Reply, Close)
_SIP_OUTPUTS: Final = (SipSend, MediaStart, MediaUpdate, MediaStop, ProtocolViolation)


class Broken(Exception):
    """The parser returned something the server cannot use (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parser under fuzz: ``run(data)`` feeds one input; ``allowed`` are the errors
    its entry point documents (anything else, :class:`Broken` included, is a finding)."""

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    entry: str


def unexpected(target: Target, data: bytes) -> BaseException | None:
    """Run ``target`` on ``data``; the exception it should not have raised, or None."""
    try:
        target.run(data)
    except target.allowed:
        return None
    except Exception as exc:  # the finding itself
        return exc
    return None


# -- input formats --------------------------------------------------------------------


def encode_frames(frames: Iterable[str | bytes]) -> bytes:
    """Websocket frames -> one fuzz input (the inverse of :func:`decode_frames`)."""
    lines = []
    for frame in frames:
        if isinstance(frame, bytes):
            lines.append(b"#" + binascii.b2a_base64(frame, newline=False))
        else:
            if "\n" in frame:
                raise ValueError("a text frame of a fuzz seed must be one line")
            lines.append(frame.encode())
    return b"\n".join(lines)


def decode_frames(data: bytes) -> list[str | bytes]:
    """One fuzz input -> websocket frames: text lines, ``#``-prefixed base64 binary."""
    frames: list[str | bytes] = []
    for line in data.split(b"\n"):
        if line[:1] == b"#":
            try:
                frames.append(binascii.a2b_base64(line[1:]))
            except binascii.Error:
                frames.append(line[1:])
        else:
            frames.append(line.decode("utf-8", "replace"))
    return frames


def encode_datagrams(datagrams: Iterable[tuple[bytes, int]]) -> bytes:
    """(datagram, peer 0 or 1) pairs -> one RTP fuzz input."""
    out = bytearray()
    for data, peer in datagrams:
        if len(data) > 0x7FFF:
            raise ValueError(f"datagram of {len(data)} bytes too long for the fuzz format")
        out += ((peer << 15) | len(data)).to_bytes(2, "big") + data
    return bytes(out)


def _datagrams(data: bytes) -> Iterator[tuple[bytes, int]]:
    pos = 0
    while pos + 2 <= len(data):
        head = int.from_bytes(data[pos : pos + 2], "big")
        size = min(head & 0x7FFF, RTP_MAX_DATAGRAM)  # the server reads at most this
        yield data[pos + 2 : pos + 2 + size], head >> 15
        pos += 2 + (head & 0x7FFF)


# -- output checks --------------------------------------------------------------------


def _finite(value: object, what: str) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise Broken(f"{what} is {value!r}, not a finite number")


def _check(outputs: object, kinds: tuple[type, ...]) -> list[Any]:
    if not isinstance(outputs, list):
        raise Broken(f"outputs are {type(outputs).__name__}, not a list")
    for out in outputs:
        if not isinstance(out, kinds):
            raise Broken(f"unexpected output {out!r}")
        if isinstance(out, AudioChunk):
            pcm = out.pcm
            if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
                raise Broken(f"AudioChunk pcm {type(pcm).__name__} {getattr(pcm, 'dtype', '')}")
            _finite(out.t, "AudioChunk.t")
            if out.t < 0 or out.sample_rate <= 0:
                raise Broken(f"AudioChunk t={out.t} sample_rate={out.sample_rate}")
        elif isinstance(out, LegStarted):
            _finite(out.t, "LegStarted.t")
            if not isinstance(out.call_id, str) or not isinstance(out.party, str):
                raise Broken(f"LegStarted ids {out.call_id!r} {out.party!r}")
            if not isinstance(out.sample_rate, int) or out.sample_rate <= 0:
                raise Broken(f"LegStarted sample_rate {out.sample_rate!r}")
            to_json({"info": out.info})  # as call.start carries it to subscribers
        elif isinstance(out, Dtmf):
            _finite(out.t, "Dtmf.t")
        elif isinstance(out, MediaStart):
            to_json({"info": out.info})
        elif isinstance(out, Reply) and not isinstance(out.data, str | bytes):
            raise Broken(f"Reply of {type(out.data).__name__}")
        elif isinstance(out, Close) and not 1000 <= out.code <= 4999:
            raise Broken(f"Close code {out.code}")
    return outputs


# -- the targets ----------------------------------------------------------------------


def _leg_record(outputs: Iterable[IngestOutput]) -> dict[tuple[str, str], list[Any]]:
    """Per leg: its events in order and all its audio as one array (chunking differs
    between the two RTP read paths, the audio and its timeline may not)."""
    legs: dict[tuple[str, str], list[Any]] = {}
    audio: dict[tuple[str, str], list[np.ndarray]] = {}
    for out in outputs:
        if isinstance(out, AudioChunk):
            key = (out.call_id, out.party)
            if key not in audio:
                legs.setdefault(key, []).append(("audio from", round(out.t, 6)))
            audio.setdefault(key, []).append(out.pcm)
        elif isinstance(out, LegStarted | LegEnded | Dtmf):
            key = (out.call_id, out.party)
            if isinstance(out, LegEnded) and key in audio:
                legs[key].append(("audio", np.concatenate(audio.pop(key)).tobytes()))
            legs.setdefault(key, []).append(out)
    for key, chunks in audio.items():
        legs[key].append(("audio", np.concatenate(chunks).tobytes()))
    return legs


def _rtp_ingest(serve_port: bool) -> RtpIngest:
    if not serve_port:
        return RtpIngest(coalesce_audio=True, max_legs=4)
    return RtpIngest(
        coalesce_audio=True,
        max_legs=4,
        probation_s=0.06,
        max_probation_legs=3,
        new_legs=SourceRateLimit(rate_per_s=20.0, burst=3),
    )


def fuzz_rtp(data: bytes) -> None:
    datagrams = list(_datagrams(data))
    one, batch = _rtp_ingest(len(data) % 2 == 1), _rtp_ingest(len(data) % 2 == 1)
    now = 100.0
    out_one: list[IngestOutput] = []
    for payload, peer in datagrams:
        with contextlib.suppress(ProtocolError):
            RtpPacket.parse(payload)
        is_rtcp(payload)
        out_one += _check(one.receive_datagram(payload, _RTP_PEERS[peer], now), _WS_OUTPUTS)
    out_one += _check(one.take_audio(), _WS_OUTPUTS)
    rows = np.zeros((max(len(datagrams), 1), RTP_MAX_DATAGRAM), np.uint8)
    for i, (payload, _) in enumerate(datagrams):
        rows[i, : len(payload)] = np.frombuffer(payload, np.uint8)
    sizes = [len(payload) for payload, _ in datagrams]
    addrs = [_RTP_PEERS[peer] for _, peer in datagrams]
    out_batch = _check(batch.receive_batch(rows, sizes, addrs, now), _WS_OUTPUTS)
    out_batch += _check(batch.take_audio(), _WS_OUTPUTS)
    for ingest, out in ((one, out_one), (batch, out_batch)):
        out += _check(ingest.poll(now + 1.0), _WS_OUTPUTS)
        out += _check(ingest.poll(now + 60.0), _WS_OUTPUTS)
        out += _check(ingest.close(), _WS_OUTPUTS)
    if _leg_record(out_one) != _leg_record(out_batch):
        raise Broken("receive_batch and receive_datagram disagree on a leg's audio or events")


_TO_TAG: Final = re.compile(rb"\r\nTo:[^\r\n]*;tag=([^;>\s]+)")


def _to_tag(outputs: list[Any], tag: bytes) -> bytes:
    """The To-tag of the UAS's last response (the engine writes ``To:`` headers)."""
    for out in reversed(outputs):
        if isinstance(out, SipSend):
            found = _TO_TAG.search(out.data)
            if found:
                return found.group(1)
    return tag


def _sip_internal_error(outputs: list[Any]) -> None:
    for out in outputs:
        if isinstance(out, ProtocolViolation) and "internal error" in out.message:
            raise Broken(out.message)


class _Ports:
    def __init__(self) -> None:
        self.next = 40000

    def __call__(self) -> int | None:
        self.next += 2
        return self.next if self.next < 40020 else None


def _sip_feed(uas: SipUas, messages: list[bytes], peer: Peer) -> None:
    tag = b"none"
    now = 0.0
    for message in messages:
        out = uas.receive(message.replace(TAG_PLACEHOLDER, tag), peer, now, local=_SIP_LOCAL)
        _sip_internal_error(_check(out, _SIP_OUTPUTS))
        tag = _to_tag(out, tag)
        now += 0.05
    for _ in range(64):  # timers: retransmissions, missing ACK -> BYE, expiries
        deadline = uas.next_deadline()
        if deadline is None:
            break
        _check(uas.poll(deadline), _SIP_OUTPUTS)
    _check(uas.hangup_all(now + 100.0), _SIP_OUTPUTS)


def fuzz_sip(data: bytes) -> None:
    messages = data.split(SIP_SEPARATOR)
    if len(data) % 2 == 0:
        _sip_feed(SipUas(allocate_port=_Ports(), secret=b"fuzz"), messages, _SIP_PEERS[0])
        return
    framer = SipStreamFramer()
    stream = b"".join(messages)
    framed: list[bytes] = []
    cut = len(stream) // 2
    try:
        for chunk in (stream[:cut], stream[cut:]):
            framed += framer.feed(chunk)
    except ProtocolError:
        pass  # the SIP server drops the connection; what was framed before still counts
    _sip_feed(SipUas(allocate_port=_Ports(), secret=b"fuzz"), framed, _SIP_PEERS[1])


def fuzz_sdp(data: bytes) -> None:
    offer = parse_sdp(data)
    answers = answer_offer(offer)
    ports = [40000 + 2 * i if a.accepted else None for i, a in enumerate(answers)]
    body = build_answer(answers, ports, address="192.0.2.1", session_id=1, version=1)
    try:
        again = parse_sdp(body)
    except ProtocolError as exc:
        raise Broken(f"the engine's SDP answer does not parse: {exc}: {body[:200]!r}") from exc
    if len(again.media) != len(offer.media):
        raise Broken(f"answer has {len(again.media)} m-lines for {len(offer.media)} offered")


def fuzz_siprec(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    content_type = head.decode("utf-8", "replace").strip()
    if content_type.split(";")[0].strip().lower() != "multipart/mixed":
        whole = parse_metadata(body)
        assign_parties([None, *whole.stream_labels], whole, ("customer", "agent"))
        return
    parts = split_multipart(body, content_type)
    meta = next((p for p in parts if p.content_type == METADATA_TYPE), None)
    sdp = next((p for p in parts if p.content_type == "application/sdp"), None)
    metadata = parse_metadata(meta.body) if meta is not None else None
    labels: list[str | None] = (
        [a.label for a in answer_offer(parse_sdp(sdp.body))] if sdp is not None else []
    )
    assign_parties(labels, metadata, ("customer", "agent"))


def _feed_frames(session: Any, frames: list[str | bytes]) -> None:
    for frame in frames:
        if isinstance(frame, str):
            out = _check(session.receive_text(frame), _WS_OUTPUTS)
        else:
            out = _check(session.receive_bytes(frame), _WS_OUTPUTS)
        if any(isinstance(o, Close) for o in out):
            break  # the server closes the socket
    _check(session.connection_lost(), _WS_OUTPUTS)


def fuzz_twilio(data: bytes) -> None:
    _feed_frames(TwilioMediaSession(), decode_frames(data))


def fuzz_l16(data: bytes) -> None:
    _feed_frames(L16Session(), decode_frames(data))


def fuzz_audiohook(data: bytes) -> None:
    frames = decode_frames(data)
    headers: dict[str, str] = dict(AUDIOHOOK_HEADERS)
    if frames and isinstance(frames[0], str) and frames[0].startswith("H"):
        try:
            raw = json.loads(frames.pop(0)[1:])
        except (ValueError, RecursionError):
            raw = None
        if isinstance(raw, dict):  # websockets hands over str -> str headers
            headers = {str(k): str(v) for k, v in raw.items()}
    session = AudioHookSession(api_key=AUDIOHOOK_API_KEY)
    out = _check(session.authenticate(headers), _WS_OUTPUTS)
    if any(isinstance(o, Close) for o in out):
        return  # the upgrade is refused
    _feed_frames(session, frames)


def fuzz_audiosocket(data: bytes) -> None:
    session = AudioSocketSession()
    step = 5 + 5 * (data[0] if data else 0)  # reads of 5..1280 bytes
    for pos in range(1, len(data), step):
        _check(session.receive_data(data[pos : pos + step]), _WS_OUTPUTS)
    _check(session.connection_lost(), _WS_OUTPUTS)


TARGETS: Final[dict[str, Target]] = {
    t.name: t
    for t in (
        Target("rtp", fuzz_rtp, (), "RtpIngest.receive_datagram / receive_batch"),
        Target("sip", fuzz_sip, (), "SipUas.receive (UDP; TCP via SipStreamFramer)"),
        Target("sdp", fuzz_sdp, (ProtocolError,), "parse_sdp -> answer_offer -> build_answer"),
        Target(
            "siprec",
            fuzz_siprec,
            (ProtocolError,),
            "split_multipart -> parse_metadata -> assign_parties",
        ),
        Target("twilio", fuzz_twilio, (), "TwilioMediaSession.receive_text / receive_bytes"),
        Target(
            "audiohook",
            fuzz_audiohook,
            (),
            "AudioHookSession.authenticate / receive_text / receive_bytes",
        ),
        Target("l16", fuzz_l16, (), "L16Session.receive_text / receive_bytes"),
        Target("audiosocket", fuzz_audiosocket, (), "AudioSocketSession.receive_data"),
    )
}
"""Every parser, by name; ``allowed``: what its entry point documents raising (the
session cores document none: bad input comes back as ``ProtocolViolation``)."""


# -- deterministic mutations (make test) ------------------------------------------------

_INTERESTING: Final = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    "\u00b2".encode(),  # a digit to str.isdigit, not to int()
    "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE: a digit to int() and to re's \\d
    b"-1",
    b"0",
    b"65536",
    b"4294967296",
    b"1e308",
    b"-1e308",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"99999999999999999999",
    b"9" * 5000,
    b"[" * 3000,
    b"\r\n",
    b"\n",
    b'"',
    b"[",
    b"{",
    b"null",
    b"=",
    b";",
    b":",
    b",",
    b"<",
    b">",
    b"%",
)
_TOKEN: Final = re.compile(rb'"[^"\\\n]{0,64}"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')
_VALUES: Final = (
    b"1e308",
    b'"1e308"',
    b"-1",
    b'"-1"',
    b"1e999",
    b"NaN",
    b"-Infinity",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'""',
    b"0.5",
    b"99999999999999999999999",
    b'"' + b"9" * 5000 + b'"',
    '"\u00b2"'.encode(),
    b'"' + b"x" * 3000 + b'"',
)


def mutations(seeds: list[bytes], n: int, *, seed: int = 0) -> Iterator[bytes]:
    """``n`` inputs made from ``seeds`` by a fixed sequence of libFuzzer-like edits:
    byte flips, interesting bytes, cuts, repeated and spliced slices, and JSON-aware
    swaps of a number or string token for an awkward value."""
    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(7)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice(_INTERESTING)
            elif op == 2:
                data[pos : pos + rng.randint(1, 64)] = b""
            elif op == 3:
                data = data[:pos]
            elif op == 4:
                end = min(len(data), pos + rng.randint(1, 32))
                data[pos:pos] = data[pos:end] * rng.randint(1, 8)
            elif op == 5:
                other = rng.choice(seeds)
                start = rng.randrange(len(other) + 1)
                data[pos:] = other[start:]
            else:
                tokens = list(_TOKEN.finditer(data))
                if tokens:
                    token = rng.choice(tokens)
                    data[token.start() : token.end()] = rng.choice(_VALUES)
        yield bytes(data)
