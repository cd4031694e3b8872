"""SDP (RFC 4566) parsing and the engine's side of offer/answer (RFC 3264).

The engine only ever *receives* media, so every answer it writes is ``recvonly``
(or ``inactive``) and names one engine RTP port per accepted audio stream.

- :func:`parse_sdp` turns an SDP body into a :class:`SessionDescription`; it raises
  :class:`~emotion_engine.errors.ProtocolError` naming the bad line.
- :func:`answer_offer` decides, per offered m-line, whether the engine can take the
  stream (audio over RTP/AVP or RTP/AVPF with PCMU or PCMA; RFC 4733
  telephone-event is kept alongside) and returns :class:`StreamAnswer` for each m-line.
- :func:`build_answer` / :func:`build_offer` serialise the engine's SDP once the
  caller has bound the RTP ports.

Nothing here does I/O; ports come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from emotion_engine.errors import ProtocolError
from emotion_engine.ingest.base import parse_decimal, wire_int

__all__ = [
    "DIRECTIONS",
    "MediaDescription",
    "SessionDescription",
    "StreamAnswer",
    "answer_offer",
    "build_answer",
    "build_offer",
    "parse_sdp",
]

DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
# Static payload types of G.711 (RFC 3551): RtpIngest decodes exactly these two.
_STATIC_G711: Final = {0: "PCMU", 8: "PCMA"}
_RTP_PROTOS: Final = ("RTP/AVP", "RTP/AVPF")
TELEPHONE_EVENT: Final = "telephone-event"
DEFAULT_DTMF_PT: Final = 101
MAX_SDP_BYTES: Final = 16_384


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section. ``formats``: payload types as offered (strings, in order);
    ``attributes``: ``(name, value or None)`` in order; ``connection``: the media-level
    ``c=`` address, if any."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name:value`` (``""`` for a flag), None if absent."""
        for key, value in self.attributes:
            if key == name:
                return value if value is not None else ""
        return None

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type -> (encoding name upper-cased, clock rate) from ``a=rtpmap``."""
        out: dict[int, tuple[str, int]] = {}
        for key, value in self.attributes:
            if key != "rtpmap" or not value:
                continue
            pt_text, _, encoding = value.partition(" ")
            name, _, rest = encoding.strip().partition("/")
            rate_text = rest.partition("/")[0]
            pt = wire_int(pt_text, lo=0, hi=127)
            rate = wire_int(rate_text, lo=1, hi=1_000_000)
            if pt is None or rate is None:
                continue  # a broken rtpmap only loses that format
            out[pt] = (name.upper(), rate)
        return out

    def direction(self, session_default: str = "sendrecv") -> str:
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return session_default

    @property
    def label(self) -> str | None:
        """RFC 4574 ``a=label``: SIPREC ties each stream to its metadata with it."""
        return self.attribute("label")


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body. ``connection`` is the session-level ``c=`` address."""

    origin: str
    connection: str | None
    media: tuple[MediaDescription, ...]
    attributes: tuple[tuple[str, str | None], ...] = ()

    @property
    def direction(self) -> str:
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return "sendrecv"

    def media_connection(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection


def _connection_address(value: str, line_no: int) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise ProtocolError(f"SDP line {line_no}: bad c= {value!r} (want 'IN IP4|IP6 ADDRESS')")
    # multicast TTL / count suffixes ("224.2.1.1/127") do not matter to a receiver
    return parts[2].split("/")[0]


@dataclass(slots=True)
class _MediaBuilder:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def build(self) -> MediaDescription:
        return MediaDescription(
            self.media, self.port, self.proto, self.formats, self.connection, tuple(self.attributes)
        )


def parse_sdp(body: bytes | str) -> SessionDescription:
    """Parse an SDP body (CRLF or LF line ends). Raises ProtocolError naming the line."""
    if isinstance(body, bytes):
        if len(body) > MAX_SDP_BYTES:
            raise ProtocolError(f"SDP body of {len(body)} bytes exceeds {MAX_SDP_BYTES}")
        text = body.decode("utf-8", errors="replace")
    else:
        text = body
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise ProtocolError("SDP must start with v=0")
    origin = ""
    connection: str | None = None
    session_attrs: list[tuple[str, str | None]] = []
    media: list[MediaDescription] = []
    current: _MediaBuilder | None = None

    for line_no, line in enumerate(lines, start=1):
        if len(line) < 2 or line[1] != "=":
            raise ProtocolError(f"SDP line {line_no} is not 'x=value': {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            if current is not None:
                media.append(current.build())
            parts = value.split()
            if len(parts) < 4:
                raise ProtocolError(f"SDP line {line_no}: m= needs media, port, proto, formats")
            # "port/count": the first port is ours to use
            port = parse_decimal(parts[1].split("/")[0], max_digits=5)
            if port is None or port > 65535:
                raise ProtocolError(f"SDP line {line_no}: bad port {parts[1][:40]!r} in m=")
            current = _MediaBuilder(parts[0], port, parts[2], tuple(parts[3:]))
        elif kind == "o":
            origin = value
        elif kind == "c":
            address = _connection_address(value, line_no)
            if current is None:
                connection = address
            else:
                current.connection = address
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            item = (name.strip(), attr_value.strip() if sep else None)
            (session_attrs if current is None else current.attributes).append(item)
    if current is not None:
        media.append(current.build())
    return SessionDescription(
        origin=origin, connection=connection, media=tuple(media), attributes=tuple(session_attrs)
    )


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """The engine's decision on one offered m-line.

    ``accepted``: an engine RTP port must be bound for it. ``codecs``: accepted G.711
    payload types in the offer's order. ``dtmf_pt``: the offered telephone-event
    payload type (None if not offered). ``peer_sends``: the offerer will send media
    (direction sendrecv or sendonly and a connection address that is not 0.0.0.0, the
    RFC 2543 way of putting a call on hold). ``direction``: the offer's direction.
    ``why``: reason a stream was refused.
    """

    index: int
    media: MediaDescription
    accepted: bool
    codecs: tuple[int, ...] = ()
    dtmf_pt: int | None = None
    dtmf_fmtp: str | None = None
    direction: str = "sendrecv"
    peer_sends: bool = True
    why: str = ""
    label: str | None = None
    ptime: str | None = None


def answer_offer(offer: SessionDescription) -> list[StreamAnswer]:
    """Decide, m-line by m-line, what the engine takes from ``offer`` (RFC 3264 §6).

    Audio over RTP/AVP(F) with PCMU (PT 0) or PCMA (PT 8) is accepted; SRTP profiles,
    other media, port 0 and other codecs are refused (the answer carries port 0 for
    them). No accepted stream means the offer must be rejected with 488.
    """
    out: list[StreamAnswer] = []
    for index, m in enumerate(offer.media):
        direction = m.direction(offer.direction)
        address = offer.media_connection(m)
        base = StreamAnswer(
            index=index,
            media=m,
            accepted=False,
            direction=direction,
            peer_sends=direction in ("sendrecv", "sendonly") and address not in ("0.0.0.0", "::"),
            label=m.label,
            ptime=m.attribute("ptime"),
        )
        if m.media != "audio":
            out.append(replace(base, why=f"{m.media} is not audio"))
            continue
        if m.proto not in _RTP_PROTOS:
            # SRTP (RTP/SAVP...) would need keys the engine does not hold
            out.append(replace(base, why=f"transport {m.proto} is not RTP/AVP"))
            continue
        if m.port == 0:
            out.append(replace(base, why="stream disabled (port 0)"))
            continue
        rtpmap = m.rtpmap()
        codecs: list[int] = []
        dtmf_pt: int | None = None
        for fmt in m.formats:
            pt = parse_decimal(fmt, max_digits=3)
            if pt is not None and pt > 127:  # RTP payload types are 7 bits
                pt = None
            if pt is None:
                continue
            name = rtpmap.get(pt)
            if pt in _STATIC_G711 and (name is None or name == (_STATIC_G711[pt], 8000)):
                codecs.append(pt)
            elif name == (TELEPHONE_EVENT.upper(), 8000) and dtmf_pt is None:
                dtmf_pt = pt
        if not codecs:
            why = f"no PCMU/PCMA among offered formats {' '.join(m.formats)}"
            out.append(replace(base, why=why))
            continue
        fmtp = None
        if dtmf_pt is not None:
            for key, value in m.attributes:
                if key == "fmtp" and value and value.split(" ", 1)[0] == str(dtmf_pt):
                    fmtp = value.split(" ", 1)[1] if " " in value else None
        out.append(
            replace(base, accepted=True, codecs=tuple(codecs), dtmf_pt=dtmf_pt, dtmf_fmtp=fmtp)
        )
    return out


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _header(address: str, session_id: int, version: int) -> list[str]:
    return [
        "v=0",
        f"o=emotion-engine {session_id} {version} IN {_addr_type(address)} {address}",
        "s=emotion-engine",
        f"c=IN {_addr_type(address)} {address}",
        "t=0 0",
    ]


def build_answer(
    streams: list[StreamAnswer],
    ports: list[int | None],
    *,
    address: str,
    session_id: int,
    version: int,
) -> bytes:
    """SDP answer: one m-line per offered m-line, in order (RFC 3264 §6); refused or
    unbound streams get port 0 and their first offered format. ``ports[i]`` is the
    engine RTP port bound for stream ``i`` (None where refused)."""
    lines = _header(address, session_id, version)
    for stream, port in zip(streams, ports, strict=True):
        m = stream.media
        if not stream.accepted or port is None:
            lines.append(f"m={m.media} 0 {m.proto} {m.formats[0] if m.formats else '0'}")
            continue
        fmts = [str(pt) for pt in stream.codecs]
        if stream.dtmf_pt is not None:
            fmts.append(str(stream.dtmf_pt))
        lines.append(f"m=audio {port} {m.proto} {' '.join(fmts)}")
        for pt in stream.codecs:
            lines.append(f"a=rtpmap:{pt} {_STATIC_G711[pt]}/8000")
        if stream.dtmf_pt is not None:
            lines.append(f"a=rtpmap:{stream.dtmf_pt} telephone-event/8000")
            lines.append(f"a=fmtp:{stream.dtmf_pt} {stream.dtmf_fmtp or '0-16'}")
        if stream.label is not None:
            lines.append(f"a=label:{stream.label}")
        if stream.ptime is not None:
            lines.append(f"a=ptime:{stream.ptime}")
        # The engine never sends: it receives what the peer sends, or nothing.
        lines.append("a=recvonly" if stream.peer_sends else "a=inactive")
    return ("\r\n".join(lines) + "\r\n").encode()


def build_offer(port: int, *, address: str, session_id: int, version: int) -> bytes:
    """SDP offer for an INVITE that came without one (RFC 3261 §13.2.1 late offer):
    one receive-only audio stream, PCMU, PCMA and telephone-event."""
    lines = _header(address, session_id, version)
    lines += [
        f"m=audio {port} RTP/AVP 0 8 {DEFAULT_DTMF_PT}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        f"a=rtpmap:{DEFAULT_DTMF_PT} telephone-event/8000",
        f"a=fmtp:{DEFAULT_DTMF_PT} 0-16",
        "a=recvonly",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()
