"""SIP (RFC 3261): message codec and a sans-I/O user agent server that answers calls.

Two layers, no I/O in either:

- **Messages.** :func:`parse_message` turns one datagram (or one message framed off a
  TCP stream by :class:`SipStreamFramer`) into a :class:`SipMessage`: header names are
  case-insensitive and compact forms (``i``, ``v``, ``f``, ``t``, ``l``, ``m``, ``c``,
  ``k`` ...) are expanded; comma-joined list headers (Via, Contact, Route ...) are
  split; folded lines are unfolded; ``Content-Length`` cuts the body (a body shorter
  than it is a truncated request). :class:`BadMessage` carries whatever was parsed so
  a ``400`` can still be answered; a start line that is not SIP raises a bare
  :class:`~emotion_engine.errors.ProtocolError` and the datagram is dropped.
- **The UAS.** :class:`SipUas` is fed with :meth:`SipUas.receive` (bytes, the peer,
  ``now``) and :meth:`SipUas.poll` (``now``, whenever :meth:`SipUas.next_deadline`
  is due), and returns a list of outputs:

  ``SipSend``       wire bytes for a peer (responses, retransmissions, BYE)
  ``MediaStart``    an answered audio stream: the engine RTP ``port`` now belongs to
                    (``call_id``, ``party``); ``info`` goes into ``call.start``
  ``MediaUpdate``   hold / resume of a stream (``peer_sends``)
  ``MediaStop``     the stream is over (``reason``: hangup, cancelled, shutdown ...);
                    every port taken with ``allocate_port`` gets exactly one
  ``ProtocolViolation``  malformed or refused input, for the log and the metrics

  RTP ports come from the ``allocate_port`` callable given to the constructor (the
  adapter binds a socket there and returns its port, or None when the range is full).

What the UAS implements, per RFC 3261 where it matters to a media receiver: server
transactions (retransmitted requests get the last response again; non-2xx finals to
INVITE are retransmitted over UDP until ACK, Timer G/H), 2xx retransmission until ACK
(§13.3.1.4) and BYE when it never comes, dialogs with To-tags, CANCEL before the
answer (200 + 487), BYE from either side (a client transaction with retransmission),
OPTIONS, re-INVITE and UPDATE (hold/resume), late offers (INVITE without SDP),
merged-request detection (482), ``Require`` (420), 405 for methods a UAS knows but
does not take and 501 for the rest, 400 for malformed requests, 481 for unknown
dialogs. SDP offer/answer is in :mod:`emotion_engine.ingest.sdp`, SIPREC bodies in
:mod:`emotion_engine.ingest.siprec`. Optional digest authentication (RFC 2617/7616,
MD5, ``qop=auth``, stateless HMAC nonces) and a source allow-list guard new calls.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import logging
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from emotion_engine.config import PARTIES
from emotion_engine.errors import ConfigError, ProtocolError
from emotion_engine.ingest.base import ProtocolViolation, call_id_problem, parse_decimal
from emotion_engine.ingest.sdp import (
    DEFAULT_DTMF_PT,
    MediaDescription,
    SessionDescription,
    StreamAnswer,
    answer_offer,
    build_answer,
    build_offer,
    parse_sdp,
)
from emotion_engine.ingest.siprec import (
    METADATA_TYPE,
    RecordingMetadata,
    assign_parties,
    parse_metadata,
    split_multipart,
)

__all__ = [
    "BadMessage",
    "DigestAuth",
    "MediaStart",
    "MediaStop",
    "MediaUpdate",
    "NameAddr",
    "Peer",
    "SipMessage",
    "SipOutput",
    "SipParams",
    "SipSend",
    "SipStreamFramer",
    "SipUas",
    "SipUri",
    "Via",
    "digest_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "validate_request",
]

log = logging.getLogger(__name__)

MAGIC_COOKIE: Final = "z9hG4bK"
T1_S: Final = 0.5  # RTT estimate (RFC 3261 §17.1.1.1)
T2_S: Final = 4.0  # cap of the retransmission interval for non-INVITE requests and 2xx
MAX_MESSAGE_BYTES: Final = 65_535
MAX_TRANSACTIONS: Final = 20_000  # an OPTIONS flood must not grow memory without end
MAX_DIALOGS: Final = 1_000
MAX_CSEQ: Final = 2**31 - 1

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
_COMPACT: Final = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
_CANONICAL: Final = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rseq": "RSeq",
    "rack": "RAck",
}
# Headers whose comma-separated values are separate entries (RFC 3261 §7.3.1).
_LIST_HEADERS: Final = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
    }
)
_TOKEN: Final = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_REQUIRED: Final = ("via", "from", "to", "call-id", "cseq")

ALLOWED_METHODS: Final = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO")
# Methods a UAS knows but the engine does not take: 405 (the rest get 501).
_KNOWN_METHODS: Final = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "REFER", "PUBLISH", "PRACK"}
)
SUPPORTED_OPTIONS: Final = ("siprec",)
ACCEPTED_TYPES: Final = ("application/sdp", "multipart/mixed", METADATA_TYPE)
_ALLOW = ", ".join(ALLOWED_METHODS)


# -- messages ------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return _CANONICAL.get(name) or "-".join(w.capitalize() for w in name.split("-"))


def _split_list(value: str) -> list[str]:
    """Split ``a, b`` on commas outside quotes and angle brackets."""
    if '"' not in value and "<" not in value:  # most values: nothing to scan for
        return [v for v in (part.strip() for part in value.split(",")) if v]
    out: list[str] = []
    depth_angle = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth_angle += 1
        elif ch == ">":
            depth_angle = max(0, depth_angle - 1)
        elif ch == "," and depth_angle == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


@dataclass(slots=True)
class SipMessage:
    """A request (``method`` and ``uri`` set) or a response (``status`` set).

    ``headers``: ``(lower-case full name, value)`` in wire order; list headers hold one
    entry per element. Serialise with :meth:`to_bytes` (adds Content-Length)."""

    method: str = ""
    uri: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str) -> str | None:
        """First value of header ``name`` (any case, full or compact form)."""
        name = _COMPACT.get(name.lower(), name.lower())
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        name = _COMPACT.get(name.lower(), name.lower())
        return [value for key, value in self.headers if key == name]

    def cseq(self) -> tuple[int, str]:
        """(sequence number, method); raises ProtocolError when malformed."""
        return _parse_cseq(self.get("cseq"))

    def to_bytes(self) -> bytes:
        if self.is_request:
            lines = [f"{self.method} {self.uri} SIP/2.0"]
        else:
            lines = [f"SIP/2.0 {self.status} {self.reason}"]
        lines += [f"{_canonical(k)}: {v}" for k, v in self.headers if k != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    def __repr__(self) -> str:
        start = f"{self.method} {self.uri}" if self.is_request else f"{self.status} {self.reason}"
        return (
            f"SipMessage({start}, call-id={self.get('call-id')!r}, cseq={self.get('cseq')!r}, "
            f"{len(self.headers)} headers, body={len(self.body)} bytes)"
        )


class BadMessage(ProtocolError):
    """A message whose start line parsed but which is malformed otherwise. ``partial``
    holds what was read (enough, usually, to answer ``status`` to a request)."""

    def __init__(self, message: str, partial: SipMessage, status: int = 400) -> None:
        super().__init__(message)
        self.partial = partial
        self.status = status


def _parse_cseq(value: str | None) -> tuple[int, str]:
    if value is None:
        raise ProtocolError("missing CSeq")
    parts = value.split()
    number = parse_decimal(parts[0], max_digits=10) if len(parts) == 2 else None
    if number is None or number > MAX_CSEQ:
        raise ProtocolError(f"malformed CSeq {value[:80]!r}")
    return number, parts[1]


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one SIP message. ``stream``: it was framed off TCP (the framer already cut
    it at Content-Length). Raises :class:`BadMessage` (with the partial message) or a
    bare ProtocolError when even the start line is not SIP."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = data.partition(b"\n\n")  # bare LF line ends: tolerated
    text = head.decode("utf-8", errors="replace")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)  # RFC 3261 §7.5: CRLFs before the start line are ignored
    if not lines:
        raise ProtocolError("empty SIP message")
    start = lines[0].strip()
    msg = SipMessage()
    if start.upper().startswith("SIP/"):
        parts = start.split(" ", 2)
        status = parse_decimal(parts[1]) if len(parts) >= 2 and len(parts[1]) == 3 else None
        if status is None:
            raise ProtocolError(f"bad status line {start[:80]!r}")
        msg.status, msg.reason = status, parts[2] if len(parts) > 2 else ""
        version = parts[0]
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[2].upper().startswith("SIP/"):
            raise ProtocolError(f"not a SIP request line: {start[:80]!r}")
        msg.method, msg.uri, version = parts[0].upper(), parts[1], parts[2]
        if parts[0] != msg.method:
            msg.method = parts[0]  # methods are case-sensitive: "invite" is unknown (501)
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    problems: list[str] = []
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.match(name):
            problems.append(f"malformed header line {line[:60]!r}")
            continue
        name = _COMPACT.get(name, name)
        value = value.strip()
        if name in _LIST_HEADERS:
            msg.headers += [(name, v) for v in _split_list(value)]
        else:
            msg.headers.append((name, value))
    if version.upper() != "SIP/2.0":
        raise BadMessage(f"SIP version {version} not supported", msg, status=505)
    if problems:
        raise BadMessage(problems[0], msg)
    lengths = {v.strip() for v in msg.get_all("content-length")}
    if len(lengths) > 1:
        raise BadMessage(f"conflicting Content-Length values {sorted(lengths)}", msg)
    if lengths:
        length_text = lengths.pop()
        parsed = parse_decimal(length_text, max_digits=10)
        if parsed is None:
            raise BadMessage(f"malformed Content-Length {length_text[:80]!r}", msg)
        length = parsed
        if length > len(rest):
            raise BadMessage(f"truncated: Content-Length {length} but {len(rest)} body bytes", msg)
        msg.body = rest[:length]  # RFC 3261 §18.3: bytes past Content-Length are dropped
    else:
        msg.body = b"" if stream else rest
    return msg


class SipStreamFramer:
    """Cuts SIP messages off a TCP byte stream (RFC 3261 §18.3: Content-Length frames).

    :meth:`feed` returns complete messages; an empty ``b""`` item stands for a
    keep-alive ping (CRLFCRLF, RFC 5626 §3.5.1), to be answered with one CRLF. Raises
    ProtocolError when framing is lost (the connection must then be closed)."""

    _LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*$", re.I | re.M)

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        buf = self._buffer
        while buf:
            if buf.startswith(b"\r\n\r\n"):
                out.append(b"")
                del buf[:4]
                continue
            if buf.startswith(b"\r\n"):
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    break  # maybe the first half of a ping
                del buf[:2]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_message_bytes:
                    raise ProtocolError(f"SIP header block over {self.max_message_bytes} bytes")
                break
            head = bytes(buf[:end])
            match = self._LENGTH.search(head)
            length = 0
            if match is not None:
                found = parse_decimal(match.group(1).decode("latin-1"), max_digits=10)
                if found is None:
                    raise ProtocolError(f"malformed Content-Length {match.group(1)[:80]!r} on TCP")
                length = found
            total = end + 4 + length
            if total > self.max_message_bytes:
                raise ProtocolError(f"SIP message of {total} bytes over {self.max_message_bytes}")
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


# -- header values ------------------------------------------------------------------


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if item:
            key, _, value = item.partition("=")
            out[key.strip().lower()] = value.strip().strip('"')
    return out


@dataclass(frozen=True, slots=True)
class SipUri:
    """``sip:user@host:port;params``. ``port`` None when the URI names none."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str]

    def host_port(self, default_port: int = 5060) -> tuple[str, int]:
        return self.host, self.port if self.port is not None else default_port


def parse_uri(uri: str) -> SipUri:
    """Parse a sip:/sips: URI; raises ProtocolError for anything else."""
    scheme, colon, rest = uri.strip().strip("<>").partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise ProtocolError(f"not a sip: URI: {uri[:80]!r}")
    rest = rest.split("?", 1)[0]
    hostpart, _, params = rest.partition(";")
    user = None
    if "@" in hostpart:
        user, _, hostpart = hostpart.rpartition("@")
        user = user.split(":", 1)[0]  # drop a password
    port: int | None = None
    if hostpart.startswith("["):
        host, _, tail = hostpart[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], uri)
    else:
        host, sep, port_text = hostpart.partition(":")
        if sep:
            port = _port(port_text, uri)
    if not host:
        raise ProtocolError(f"URI without host: {uri[:80]!r}")
    return SipUri(scheme, user or None, host, port, _params(params))


def _port(text: str, whole: str) -> int:
    port = parse_decimal(text, max_digits=5)
    if port is None or not 0 < port < 65536:
        raise ProtocolError(f"bad port in {whole[:80]!r}")
    return port


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From/To/Contact/Route: display name, URI and header parameters (``tag`` ...)."""

    display: str | None
    uri: str
    params: dict[str, str]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def parse_name_addr(value: str) -> NameAddr:
    """``"Alice" <sip:a@h>;tag=1``, ``<sip:a@h>;tag=1`` or ``sip:a@h;tag=1`` (where the
    parameters belong to the header, RFC 3261 §20.10)."""
    value = value.strip()
    name: str | None = None
    if value.startswith('"'):  # quoted display name: may hold '<', ',' and \" escapes
        chars: list[str] = []
        i = 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            chars.append(value[i])
            i += 1
        if i >= len(value):
            raise ProtocolError(f"unterminated quoted display name in {value[:80]!r}")
        name, value = "".join(chars).strip() or None, value[i + 1 :].strip()
        if not value.startswith("<"):
            raise ProtocolError(f"display name without <URI> in {value[:80]!r}")
    if "<" in value:
        display, _, rest = value.partition("<")
        uri, close, params = rest.partition(">")
        if not close:
            raise ProtocolError(f"unterminated <...> in {value[:80]!r}")
        name = name or display.strip() or None
        return NameAddr(name, uri.strip(), _params(params))
    uri, _, params = value.partition(";")
    if not uri:
        raise ProtocolError("empty address")
    return NameAddr(None, uri.strip(), _params(params))


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port or 5060}"


def parse_via(value: str) -> Via:
    """``SIP/2.0/UDP host:port;branch=...``; raises ProtocolError when malformed."""
    proto, _, rest = value.strip().partition(" ")
    bits = proto.split("/")
    if len(bits) != 3 or bits[0].strip().upper() != "SIP" or not rest.strip():
        raise ProtocolError(f"malformed Via {value[:80]!r}")
    sent_by, _, params = rest.strip().partition(";")
    sent_by = sent_by.strip()
    port: int | None = None
    if sent_by.startswith("["):
        host, _, tail = sent_by[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:].strip(), value)
    else:
        host, sep, port_text = sent_by.partition(":")
        if sep:
            port = _port(port_text.strip(), value)
    if not host:
        raise ProtocolError(f"Via without host {value[:80]!r}")
    return Via(bits[2].strip().upper(), host.strip(), port, _params(params))


def _user_info(value: str | None) -> dict[str, Any]:
    """Display name, URI and number of a From/To value, for ``call.start`` info."""
    if not value:
        return {}
    try:
        addr = parse_name_addr(value)
    except ProtocolError:
        return {}
    info: dict[str, Any] = {"uri": addr.uri}
    if addr.display:
        info["name"] = addr.display
    scheme, _, rest = addr.uri.partition(":")
    if scheme.lower() == "tel":
        info["number"] = rest.split(";")[0]
    elif "@" in rest:
        info["number"] = rest.split("@")[0].split(";")[0]
    return info


def validate_request(msg: SipMessage) -> str | None:
    """What makes a parsed request unusable (RFC 3261 §8.2), or None."""
    missing = [_canonical(h) for h in _REQUIRED if msg.get(h) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        _, method = msg.cseq()
        for via in msg.get_all("via"):
            parse_via(via)
        for name in ("from", "to"):
            parse_name_addr(msg.get(name) or "")
        for contact in msg.get_all("contact"):
            if contact.strip() != "*":  # REGISTER's "all bindings"; not a target
                parse_name_addr(contact)
    except ProtocolError as exc:
        return str(exc)
    if method != msg.method:
        return f"CSeq method {method} does not match request method {msg.method}"
    if not (msg.get("call-id") or "").strip():
        return "empty Call-ID"
    return None


# -- digest authentication ----------------------------------------------------------


def digest_response(
    *,
    user: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` of RFC 2617 §3.2.2.1 with MD5 (what a client computes)."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")


class DigestAuth:
    """HTTP Digest (RFC 2617, RFC 7616 §3.4 with MD5) for one user, with stateless
    nonces: ``<issued ms, hex>.<HMAC of it>``, valid for ``nonce_ttl_s``. A stale but
    genuine nonce gets ``stale=true`` so the UAC retries without asking its user."""

    _PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')

    def __init__(
        self, *, user: str, password: str, realm: str, secret: bytes, nonce_ttl_s: float = 300.0
    ) -> None:
        self.user = user
        self.password = password
        self.realm = realm
        self.secret = secret
        self.nonce_ttl_s = nonce_ttl_s

    def _sign(self, stamp: str) -> str:
        return hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, now: float, *, stale: bool = False) -> str:
        stamp = f"{int(now * 1000):x}"
        nonce = f"{stamp}.{self._sign(stamp)}"
        return f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"' + (
            ", stale=true" if stale else ""
        )

    def _nonce_state(self, nonce: str, now: float) -> str:
        stamp, _, sig = nonce.partition(".")
        if not sig or not hmac.compare_digest(sig, self._sign(stamp)):
            return "invalid"
        try:
            issued = int(stamp, 16) / 1000
        except ValueError:
            return "invalid"
        return "fresh" if 0 <= now - issued <= self.nonce_ttl_s else "stale"

    def check(self, header: str | None, method: str, now: float) -> tuple[bool, bool]:
        """(authorised, stale) for an ``Authorization`` header value."""
        if not header or not header.strip().lower().startswith("digest"):
            return False, False
        p = {
            m.group(1).lower(): m.group(2) or m.group(3) or ""
            for m in self._PARAM.finditer(header[6:])
        }
        state = self._nonce_state(p.get("nonce", ""), now)
        if state == "invalid" or p.get("realm") != self.realm or "uri" not in p:
            return False, False
        if p.get("algorithm", "MD5").upper() != "MD5":
            return False, False
        if not hmac.compare_digest(p.get("username", "").encode(), self.user.encode()):
            return False, False

        if p.get("qop") and p["qop"].lower() != "auth":
            return False, False
        expected = digest_response(
            user=self.user,
            realm=self.realm,
            password=self.password,
            method=method,
            uri=p["uri"],
            nonce=p["nonce"],
            qop=p.get("qop") or None,
            nc=p.get("nc", ""),
            cnonce=p.get("cnonce", ""),
        )
        ok = hmac.compare_digest(expected, p.get("response", "").lower())
        if ok and state == "stale":
            return False, True
        return ok, False


# -- outputs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from / goes to. ``conn``: the adapter's id of a TCP
    connection (responses go back on it), None for UDP or a new connection."""

    transport: str
    host: str
    port: int
    conn: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipSend:
    data: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class MediaStart:
    """The engine RTP ``port`` now carries (``call_id``, ``party``) of dialog ``dialog``.
    ``dtmf_pt``: negotiated telephone-event payload type. ``peer_sends``: False while
    the peer holds the stream (no media expected; no timeout). ``info``: call facts
    for ``call.start``."""

    dialog: str
    port: int
    call_id: str
    party: str
    dtmf_pt: int | None
    peer_sends: bool
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MediaUpdate:
    dialog: str
    port: int
    peer_sends: bool


@dataclass(frozen=True, slots=True)
class MediaStop:
    dialog: str
    port: int
    reason: str


SipOutput = SipSend | MediaStart | MediaUpdate | MediaStop | ProtocolViolation


@dataclass(frozen=True, slots=True)
class SipParams:
    """Behaviour of :class:`SipUas`.

    ``party``: party of a plain call's audio (a Request-URI user ``customer`` or
    ``agent`` overrides it). ``siprec_order``: parties of SIPREC participants in
    metadata order (or of m-lines without metadata). ``answer_delay_s``: ring (180)
    this long before answering (0: answer at once). ``auth_user``/``auth_password``:
    digest credentials new calls must present (empty: none). ``allow``: source
    networks allowed to send requests (empty: any). ``advertise``: address put in
    Contact and SDP instead of the local one (NAT)."""

    party: str = "customer"
    siprec_order: tuple[str, ...] = ("customer", "agent")
    answer_delay_s: float = 0.0
    auth_user: str = ""
    auth_password: str = ""
    realm: str = "emotion-engine"
    allow: tuple[str, ...] = ()
    advertise: str = ""
    user_agent: str = "emotion-engine"
    t1_s: float = T1_S
    t2_s: float = T2_S
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        for party in (self.party, *self.siprec_order):
            if party not in PARTIES:
                raise ConfigError(f"SIP party {party!r} is not one of {', '.join(PARTIES)}")
        if len(set(self.siprec_order)) != len(self.siprec_order) or not self.siprec_order:
            raise ConfigError(f"sip_siprec_order {self.siprec_order!r} must name distinct parties")
        if self.answer_delay_s < 0 or not math.isfinite(self.answer_delay_s):
            raise ConfigError(f"sip answer delay must be >= 0 s, got {self.answer_delay_s}")
        if bool(self.auth_user) != bool(self.auth_password):
            raise ConfigError(
                "SIP digest authentication needs both sip_auth_user and sip_auth_password"
            )
        self.networks()  # validate now

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for item in self.allow:
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(f"sip_allow: {item!r} is not an address or network") from exc
        return out


# -- the user agent server ---------------------------------------------------------------


@dataclass(slots=True)
class _ServerTxn:
    key: tuple[str, ...]
    method: str
    peer: Peer
    request: SipMessage
    last: bytes | None = None  # the last response, re-sent on a retransmitted request
    final: int = 0
    acked: bool = False
    interval: float = 0.0  # Timer G for a non-2xx final over UDP
    dialog: str | None = None
    merge: tuple[str, str, int] | None = None  # an initial INVITE's (Call-ID, From tag, CSeq)


@dataclass(slots=True)
class _ClientTxn:
    """A BYE the engine sent, retransmitted over UDP until answered (Timer E/F)."""

    branch: str
    data: bytes
    peer: Peer
    interval: float
    deadline: float


@dataclass(slots=True)
class _Stream:
    index: int
    answer: StreamAnswer
    port: int | None = None
    party: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    first_direction: str = "sendrecv"


@dataclass(slots=True)
class _Invite:
    """An INVITE (initial or re-) of a dialog being answered or awaiting its ACK."""

    txn: _ServerTxn
    cseq: int
    answer_at: float | None = None  # delayed answer: when to send the 200
    sdp: bytes = b""
    ok: bytes | None = None  # the 2xx sent, retransmitted until ACK
    interval: float = 0.0
    late_offer: bool = False


@dataclass(slots=True)
class _Dialog:
    key: str
    sip_call_id: str
    call_id: str  # the engine's call id
    local_tag: str
    remote_tag: str
    local_uri: str  # our To value including our tag
    remote_uri: str  # their From value including their tag
    remote_target: str
    route_set: list[str]
    peer: Peer
    local: tuple[str, int]
    media_address: str
    remote_cseq: int
    siprec: bool
    info: dict[str, Any]
    streams: list[_Stream]
    session_id: int
    sdp_version: int = 1
    last_sdp: bytes = b""
    local_cseq: int = 0
    confirmed: bool = False
    invite: _Invite | None = None
    metadata: RecordingMetadata | None = None


@dataclass(frozen=True, slots=True)
class _Offer:
    sdp: SessionDescription | None
    metadata: RecordingMetadata | None
    siprec: bool


class _Reject(Exception):
    """Internal: answer the request with ``status`` (and extra headers)."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


_REASONS: Final = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


class SipUas:
    """Sans-I/O SIP user agent server: answers calls, SIPREC sessions and OPTIONS.

    ``allocate_port()``: bind an RTP port and return it (None: none free); every port
    it returns comes back once in a :class:`MediaStop`. ``secret``: key of the digest
    nonces (random per process is fine). Call :meth:`receive` for every datagram or
    framed TCP message, :meth:`poll` at :meth:`next_deadline`, :meth:`hangup` /
    :meth:`hangup_all` to end calls from the engine's side (BYE).
    """

    def __init__(
        self,
        *,
        params: SipParams | None = None,
        allocate_port: Callable[[], int | None],
        secret: bytes | None = None,
    ) -> None:
        self.params = params or SipParams()
        self.allocate_port = allocate_port
        self._networks = self.params.networks()
        self._auth = (
            DigestAuth(
                user=self.params.auth_user,
                password=self.params.auth_password,
                realm=self.params.realm,
                secret=secret or secrets.token_bytes(32),
            )
            if self.params.auth_user
            else None
        )
        self._txns: OrderedDict[tuple[str, ...], _ServerTxn] = OrderedDict()
        self._client: dict[str, _ClientTxn] = {}
        self._dialogs: dict[str, _Dialog] = {}
        self._initial: dict[tuple[str, str, int], tuple[str, ...]] = {}  # merged-request check
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = 0
        self._refused_sources: OrderedDict[str, None] = OrderedDict()

    # -- introspection -----------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        """Open dialogs: engine call id, SIP Call-ID, state and each stream's
        ``(party, port, peer_sends)`` (tests and logs)."""
        return [
            {
                "call_id": d.call_id,
                "sip_call_id": d.sip_call_id,
                "dialog": d.key,
                "confirmed": d.confirmed,
                "siprec": d.siprec,
                "streams": [
                    (s.party, s.port, s.answer.peer_sends) for s in d.streams if s.port is not None
                ],
            }
            for d in self._dialogs.values()
        ]

    @property
    def n_calls(self) -> int:
        """Dialogs open (ringing or answered)."""
        return len(self._dialogs)

    def allowed(self, host: str) -> bool:
        """Whether ``host`` passes the ``allow`` list (also used for RTP sources)."""
        return self._allowed(host)

    @property
    def pending_requests(self) -> int:
        """Requests the engine sent (BYE) still waiting for their answer."""
        return len(self._client)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    # -- inputs ------------------------------------------------------------------------

    def receive(
        self, data: bytes, peer: Peer, now: float, *, local: tuple[str, int]
    ) -> list[SipOutput]:
        """Handle one message from ``peer``. ``local``: the engine's SIP address as that
        peer reaches it (for Via, Contact and, unless ``advertise`` is set, SDP)."""
        if not data.strip(b"\r\n\x00 \t"):
            return []  # keep-alive (RFC 5626 CRLF, some phones send NULs)
        if len(data) > self.params.max_message_bytes:
            return [ProtocolViolation(f"SIP message of {len(data)} bytes from {peer} dropped")]
        if not self._allowed(peer.host):
            return self._refused(peer)
        try:
            msg = parse_message(data, stream=peer.transport != "udp")
        except BadMessage as exc:
            out: list[SipOutput] = [ProtocolViolation(f"SIP from {peer}: {exc}")]
            partial = exc.partial
            if partial.is_request and partial.method != "ACK" and partial.get("via"):
                phrase = f"{_REASONS.get(exc.status, 'Bad Request')} ({exc})"
                out.append(self._send(peer, self._response(partial, exc.status, phrase, peer)))
            return out
        except ProtocolError as exc:
            return [ProtocolViolation(f"SIP from {peer}: {exc}")]
        if not msg.is_request:
            return self._response_in(msg, peer)
        problem = validate_request(msg)
        if problem is not None:
            out = [ProtocolViolation(f"SIP {msg.method} from {peer}: {problem}")]
            if msg.method != "ACK" and msg.get("via"):
                out.append(
                    self._send(peer, self._response(msg, 400, f"Bad Request ({problem})", peer))
                )
            return out
        try:
            return self._request(msg, peer, now, local)
        except Exception as exc:  # a bug must cost one request, never the server
            if _first_time(exc):  # the traceback once; the violation below is counted
                log.exception("SIP %s from %s could not be handled", msg.method, peer)
            out = [ProtocolViolation(f"SIP {msg.method} from {peer}: internal error {exc!r}")]
            if msg.method != "ACK":
                out.append(
                    self._send(peer, self._response(msg, 500, "Server Internal Error", peer))
                )
            return out

    def poll(self, now: float) -> list[SipOutput]:
        """Run the timers that are due: delayed answers, retransmissions of 2xx, of
        non-2xx finals and of BYE, ACK and transaction timeouts."""
        out: list[SipOutput] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, arg = heapq.heappop(self._timers)
            out += getattr(self, f"_timer_{kind}")(arg, now)
        return out

    def hangup(self, dialog_key: str, now: float, reason: str = "hangup") -> list[SipOutput]:
        """End a call from the engine's side: BYE when answered, else a final error
        to the pending INVITE; every stream gets ``MediaStop(reason)``."""
        dialog = self._dialogs.get(dialog_key)
        if dialog is None:
            return []
        out: list[SipOutput] = []
        pending = dialog.invite
        if not dialog.confirmed and pending is not None and pending.txn.final == 0:
            out += self._final(pending.txn, 480 if reason != "shutdown" else 503, now)
        else:
            out += self._send_bye(dialog, now, reason)
        out += self._end_dialog(dialog, reason)
        return out

    def hangup_all(self, now: float, reason: str = "shutdown") -> list[SipOutput]:
        out: list[SipOutput] = []
        for key in list(self._dialogs):
            out += self.hangup(key, now, reason)
        return out

    # -- requests ----------------------------------------------------------------------

    def _request(
        self, msg: SipMessage, peer: Peer, now: float, local: tuple[str, int]
    ) -> list[SipOutput]:
        if msg.method == "ACK":
            return self._ack(msg, now)
        key = self._txn_key(msg)
        txn = self._txns.get(key)
        if txn is not None:  # a retransmission: the same answer again
            return [self._send(peer, txn.last)] if txn.last else []
        txn = self._new_txn(key, msg, peer, now)
        try:
            if msg.method == "CANCEL":
                return self._cancel(txn, now)
            uri_scheme = msg.uri.partition(":")[0].lower()
            if uri_scheme not in ("sip", "sips", "tel"):
                raise _Reject(416, "Unsupported URI Scheme")
            to_tag = parse_name_addr(msg.get("to") or "").tag
            if to_tag:
                return self._in_dialog(txn, to_tag, now, local)
            if msg.method == "INVITE":
                return self._invite(txn, now, local)
            if msg.method == "OPTIONS":
                return self._respond(txn, 200, now, headers=self._capabilities())
            if msg.method in ("BYE", "UPDATE", "INFO"):
                raise _Reject(481, "Call/Transaction Does Not Exist")
            if msg.method in _KNOWN_METHODS:
                raise _Reject(405, "Method Not Allowed", [("allow", _ALLOW)])
            raise _Reject(501, "Not Implemented", [("allow", _ALLOW)])
        except _Reject as rej:
            return _bad_request(rej, msg, peer) + self._respond(
                txn, rej.status, now, reason=rej.reason, headers=rej.headers
            )

    def _in_dialog(
        self, txn: _ServerTxn, to_tag: str, now: float, local: tuple[str, int]
    ) -> list[SipOutput]:
        msg = txn.request
        dialog = self._dialogs.get(self._dialog_key(msg.get("call-id") or "", to_tag))
        from_tag = parse_name_addr(msg.get("from") or "").tag
        if dialog is None or dialog.remote_tag != from_tag:
            raise _Reject(481, "Call/Transaction Does Not Exist")
        cseq, _ = msg.cseq()
        if cseq <= dialog.remote_cseq:
            # RFC 3261 §12.2.2: a lower CSeq is out of order
            raise _Reject(500, "Server Internal Error (CSeq out of order)")
        dialog.remote_cseq = cseq
        txn.dialog = dialog.key
        if msg.get("contact") and msg.method in ("INVITE", "UPDATE"):
            dialog.remote_target = parse_name_addr(msg.get("contact") or "").uri  # target refresh
        if msg.method == "BYE":
            out = self._respond(txn, 200, now)
            if dialog.invite is not None and dialog.invite.txn.final == 0:
                out += self._final(dialog.invite.txn, 487, now)
            return out + self._end_dialog(dialog, "hangup")
        if msg.method in ("INFO", "OPTIONS"):
            return self._respond(txn, 200, now, headers=self._capabilities())
        if msg.method == "INVITE":
            return self._reinvite(dialog, txn, now)
        if msg.method == "UPDATE":
            if not msg.body:
                return self._respond(txn, 200, now)  # a session refresh
            offer = self._parse_offer(msg)
            assert offer.sdp is not None
            sdp, out = self._apply_offer(dialog, offer)
            return out + self._respond(
                txn, 200, now, body=sdp, headers=[("content-type", "application/sdp")]
            )
        if msg.method in _KNOWN_METHODS:
            raise _Reject(405, "Method Not Allowed", [("allow", _ALLOW)])
        raise _Reject(501, "Not Implemented", [("allow", _ALLOW)])

    def _invite(self, txn: _ServerTxn, now: float, local: tuple[str, int]) -> list[SipOutput]:
        msg = txn.request
        call_id = msg.get("call-id") or ""
        from_addr = parse_name_addr(msg.get("from") or "")
        cseq, _ = msg.cseq()
        merge = (call_id, from_addr.tag or "", cseq)
        if merge in self._initial and self._initial[merge] != txn.key:
            raise _Reject(482, "Loop Detected")  # §8.2.2.2: the same request by another path
        unsupported = [o for o in msg.get_all("require") if o.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            raise _Reject(420, "Bad Extension", [("unsupported", ", ".join(unsupported))])
        if self._auth is not None:
            ok, stale = self._auth.check(msg.get("authorization"), "INVITE", now)
            if not ok:
                challenge = self._auth.challenge(now, stale=stale)
                return self._respond(txn, 401, now, headers=[("www-authenticate", challenge)])
        # recorded only now: a UAC answering a challenge may (wrongly) reuse its CSeq
        self._initial[merge] = txn.key
        txn.merge = merge
        if len(self._dialogs) >= MAX_DIALOGS:
            raise _Reject(503, "Service Unavailable (too many calls)", [("retry-after", "5")])
        contact = msg.get("contact")
        if not contact:
            raise _Reject(400, "Bad Request (INVITE without Contact)")
        problem = engine_call_id_problem(msg)
        if problem is not None:  # the call id goes into every event of the call
            raise _Reject(400, f"Bad Request ({problem})")
        offer = self._parse_offer(msg)
        dialog = _Dialog(
            key="",
            sip_call_id=call_id,
            call_id=_engine_call_id(msg),
            local_tag=secrets.token_hex(5),
            remote_tag=from_addr.tag or "",
            local_uri="",
            remote_uri=msg.get("from") or "",
            remote_target=parse_name_addr(contact).uri,
            route_set=msg.get_all("record-route"),
            peer=txn.peer,
            local=local,
            media_address=self.params.advertise or local[0],
            remote_cseq=cseq,
            siprec=offer.siprec,
            info={},
            streams=[],
            session_id=secrets.randbelow(2**31),
            metadata=offer.metadata,
        )
        dialog.key = self._dialog_key(call_id, dialog.local_tag)
        dialog.local_uri = f"{msg.get('to')};tag={dialog.local_tag}"
        dialog.info = self._call_info(msg, dialog)
        txn.dialog = dialog.key
        out: list[SipOutput] = []
        try:
            if offer.sdp is None:  # late offer: the engine offers, the ACK answers
                port = self.allocate_port()
                if port is None:
                    raise _Reject(
                        503, "Service Unavailable (no free RTP port)", [("retry-after", "5")]
                    )
                media = MediaDescription("audio", port, "RTP/AVP", ("0", "8", str(DEFAULT_DTMF_PT)))
                answer = StreamAnswer(
                    index=0, media=media, accepted=True, codecs=(0, 8), dtmf_pt=DEFAULT_DTMF_PT
                )
                party = _uri_party(msg.uri) or self.params.party
                dialog.streams = [_Stream(0, answer, port, party, self._stream_info(dialog, None))]
                sdp = build_offer(
                    port,
                    address=dialog.media_address,
                    session_id=dialog.session_id,
                    version=dialog.sdp_version,
                )
            else:
                sdp, out = self._apply_offer(dialog, offer, initial=True, request_uri=msg.uri)
        except _Reject as rej:  # ports bound so far go back before the answer goes out
            released = _bad_request(rej, msg, txn.peer) + self._release(dialog, "rejected")
            return released + self._respond(
                txn, rej.status, now, reason=rej.reason, headers=rej.headers
            )
        dialog.last_sdp = sdp
        self._dialogs[dialog.key] = dialog
        invite = _Invite(txn=txn, cseq=cseq, sdp=sdp, late_offer=offer.sdp is None)
        dialog.invite = invite
        log.info(
            "SIP call %s from %s: %s, streams %s",
            dialog.call_id,
            txn.peer,
            "SIPREC" if dialog.siprec else "plain call",
            [(s.party, s.port) for s in dialog.streams if s.port],
        )
        if self.params.answer_delay_s > 0:
            out += self._respond(txn, 100, now)
            out += self._respond(txn, 180, now, headers=self._dialog_headers(dialog), final=False)
            invite.answer_at = now + self.params.answer_delay_s
            self._schedule(invite.answer_at, "answer", (dialog.key, cseq))
            return out
        return out + self._answer(dialog, now)

    def _reinvite(self, dialog: _Dialog, txn: _ServerTxn, now: float) -> list[SipOutput]:
        msg = txn.request
        if dialog.invite is not None and dialog.invite.txn.final == 0:
            # §14.2: an INVITE arrived while the previous one is still being answered
            raise _Reject(500, "Server Internal Error (INVITE pending)", [("retry-after", "1")])
        cseq, _ = msg.cseq()
        out: list[SipOutput] = []
        if msg.body:
            offer = self._parse_offer(msg)
            sdp, out = self._apply_offer(dialog, offer)
            late = False
        else:  # offer in our 2xx, answer in the ACK (§14.1)
            sdp, late = dialog.last_sdp, True
        dialog.invite = _Invite(txn=txn, cseq=cseq, sdp=sdp, late_offer=late)
        return out + self._answer(dialog, now)

    def _answer(self, dialog: _Dialog, now: float) -> list[SipOutput]:
        invite = dialog.invite
        assert invite is not None
        invite.answer_at = None
        headers = [*self._dialog_headers(dialog), ("content-type", "application/sdp")]
        out = self._respond(invite.txn, 200, now, headers=headers, body=invite.sdp)
        invite.ok = invite.txn.last
        dialog.confirmed = True
        if invite.txn.peer.transport == "udp":
            invite.interval = self.params.t1_s
            self._schedule(now + invite.interval, "retx_ok", (dialog.key, invite.cseq))
        self._schedule(now + 64 * self.params.t1_s, "ack_timeout", (dialog.key, invite.cseq))
        for stream in dialog.streams:
            if stream.port is not None and not stream.started and stream.party is not None:
                stream.started = True
                out.append(
                    MediaStart(
                        dialog=dialog.key,
                        port=stream.port,
                        call_id=dialog.call_id,
                        party=stream.party,
                        dtmf_pt=stream.answer.dtmf_pt,
                        peer_sends=stream.answer.peer_sends,
                        info=stream.info,
                    )
                )
        return out

    def _cancel(self, txn: _ServerTxn, now: float) -> list[SipOutput]:
        msg = txn.request
        invite_key = (*txn.key[:-1], "INVITE")
        invite = self._txns.get(invite_key)
        if invite is None:  # RFC 2543 peers, or tools that vary the branch: match by ids
            call_id = msg.get("call-id") or ""
            from_tag = parse_name_addr(msg.get("from") or "").tag or ""
            cseq, _ = msg.cseq()
            key = self._initial.get((call_id, from_tag, cseq))
            invite = self._txns.get(key) if key else None
        if invite is None or invite.method != "INVITE":
            raise _Reject(481, "Call/Transaction Does Not Exist")
        dialog = self._dialogs.get(invite.dialog or "")
        to_tag = dialog.local_tag if dialog else None
        out = self._respond(txn, 200, now, to_tag=to_tag)
        if invite.final == 0:
            out += self._final(invite, 487, now)
            if dialog is not None:
                out += self._end_dialog(dialog, "cancelled")
        return out

    def _ack(self, msg: SipMessage, now: float) -> list[SipOutput]:
        txn = self._txns.get(self._txn_key(msg))
        if txn is not None and txn.final >= 300:
            txn.acked = True  # stops Timer G; the transaction ends at its expiry
            return []
        to_tag = parse_name_addr(msg.get("to") or "").tag or ""
        dialog = self._dialogs.get(self._dialog_key(msg.get("call-id") or "", to_tag))
        if dialog is None or dialog.invite is None:
            return []  # a late or duplicate ACK: nothing to do
        cseq, _ = msg.cseq()
        if cseq != dialog.invite.cseq:
            return []
        late = dialog.invite.late_offer
        dialog.invite = None  # stops the 2xx retransmission and the ACK timeout
        if late and msg.body and (msg.get("content-type") or "").startswith("application/sdp"):
            try:
                answers = answer_offer(parse_sdp(msg.body))
            except ProtocolError as exc:
                return [ProtocolViolation(f"SIP ACK SDP for {dialog.call_id}: {exc}")]
            if not any(a.accepted for a in answers):
                return [
                    ProtocolViolation(f"SIP call {dialog.call_id}: answer in ACK has no G.711"),
                    *self.hangup(dialog.key, now, "no_codec"),
                ]
        return []

    # -- offers ------------------------------------------------------------------------

    def _parse_offer(self, msg: SipMessage) -> _Offer:
        if not msg.body:
            return _Offer(None, None, False)
        encoding = (msg.get("content-encoding") or "identity").lower()
        if encoding != "identity":
            raise _Reject(415, "Unsupported Media Type", [("accept-encoding", "identity")])
        content_type = msg.get("content-type") or ""
        kind = content_type.split(";")[0].strip().lower()
        accept = [("accept", ", ".join(ACCEPTED_TYPES))]
        try:
            if kind == "application/sdp":
                return _Offer(parse_sdp(msg.body), None, _is_src(msg))
            if kind == "multipart/mixed":
                parts = split_multipart(msg.body, content_type)
                sdp_part = next((p for p in parts if p.content_type == "application/sdp"), None)
                if sdp_part is None:
                    raise _Reject(415, "Unsupported Media Type (no SDP part)", accept)
                meta_part = next((p for p in parts if p.content_type == METADATA_TYPE), None)
                metadata = parse_metadata(meta_part.body) if meta_part is not None else None
                return _Offer(
                    parse_sdp(sdp_part.body), metadata, meta_part is not None or _is_src(msg)
                )
        except ProtocolError as exc:
            raise _Reject(400, f"Bad Request ({exc})") from exc
        raise _Reject(415, "Unsupported Media Type", accept)

    def _apply_offer(
        self,
        dialog: _Dialog,
        offer: _Offer,
        *,
        initial: bool = False,
        request_uri: str = "",
    ) -> tuple[bytes, list[SipOutput]]:
        """Match an offer to the dialog's streams, binding ports for new ones; returns
        the SDP answer and MediaStart/Update/Stop for streams already running."""
        assert offer.sdp is not None
        answers = answer_offer(offer.sdp)
        if len(answers) < len(dialog.streams):
            raise _Reject(488, "Not Acceptable Here (m-lines cannot be removed)")
        if offer.metadata is not None:
            dialog.metadata = offer.metadata
        siprec = dialog.siprec
        parties: list[str | None]
        if siprec:
            usable = [a for a in answers if a.accepted]
            assigned = assign_parties(
                [a.label for a in usable], dialog.metadata, self.params.siprec_order
            )
            by_index = {a.index: s for a, s in zip(usable, assigned, strict=True)}
            parties = []
            for a in answers:
                found = by_index.get(a.index)
                parties.append(found.party if found is not None else None)
        else:
            first = next((a.index for a in answers if a.accepted), None)
            plain = _uri_party(request_uri) or self.params.party
            parties = [plain if a.index == first else None for a in answers]
        if initial and not any(p is not None for p in parties):
            reasons = "; ".join(a.why for a in answers if a.why) or "no audio stream"
            raise _Reject(
                488,
                "Not Acceptable Here",
                [("warning", f'304 emotion-engine "{reasons}"')],
            )
        out: list[SipOutput] = []
        in_use = {s.party for s in dialog.streams if s.port is not None}
        for answer, party in zip(answers, parties, strict=True):
            if answer.index < len(dialog.streams):
                stream = dialog.streams[answer.index]
                if stream.port is None:
                    continue  # a refused stream stays refused
                if not answer.accepted:
                    out.append(MediaStop(dialog.key, stream.port, "stream_removed"))
                    stream.port = None
                    stream.answer = answer
                    continue
                was, now_sends = _sending(stream, stream.answer), _sending(stream, answer)
                if was != now_sends and stream.started:
                    out.append(MediaUpdate(dialog.key, stream.port, now_sends))
                stream.answer = answer
                continue
            stream = _Stream(answer.index, answer, first_direction=answer.direction)
            dialog.streams.append(stream)
            if party is None or party in in_use or not answer.accepted:
                continue
            port = self.allocate_port()
            if port is None:
                if initial:
                    raise _Reject(
                        503, "Service Unavailable (no free RTP port)", [("retry-after", "5")]
                    )
                continue
            in_use.add(party)
            stream.port, stream.party = port, party
            who = None
            if siprec and dialog.metadata is not None and answer.label is not None:
                who = dialog.metadata.sender_of_label(answer.label)
            stream.info = self._stream_info(dialog, who)
        if initial and not any(s.port is not None for s in dialog.streams):
            raise _Reject(488, "Not Acceptable Here")
        sdp = build_answer(
            [s.answer for s in dialog.streams],
            [s.port for s in dialog.streams],
            address=dialog.media_address,
            session_id=dialog.session_id,
            version=dialog.sdp_version,
        )
        if dialog.last_sdp and sdp != dialog.last_sdp:
            # RFC 3264 §8: a changed SDP carries the next o= version
            dialog.sdp_version += 1
            sdp = build_answer(
                [s.answer for s in dialog.streams],
                [s.port for s in dialog.streams],
                address=dialog.media_address,
                session_id=dialog.session_id,
                version=dialog.sdp_version,
            )
        dialog.last_sdp = sdp
        return sdp, out

    def _call_info(self, msg: SipMessage, dialog: _Dialog) -> dict[str, Any]:
        info: dict[str, Any] = {"sip_call_id": dialog.sip_call_id}
        caller = _user_info(msg.get("from"))
        callee = _user_info(msg.get("to"))
        if caller:
            info["from"] = caller
        if callee:
            info["to"] = callee
        agent = msg.get("user-agent")
        if agent:
            info["user_agent"] = agent[:200]
        return info

    def _stream_info(self, dialog: _Dialog, who: Any) -> dict[str, Any]:
        info = dict(dialog.info)
        if dialog.siprec:
            info["siprec"] = True
            meta = dialog.metadata
            if who is not None:
                info["participant"] = who.to_info()
            if meta is not None:
                info["participants"] = [p.to_info() for p in meta.participants]
                if meta.sip_session_ids:
                    info["recorded_call_ids"] = list(meta.sip_session_ids)
        return info

    # -- responses in (to the engine's BYE) ---------------------------------------------

    def _response_in(self, msg: SipMessage, peer: Peer) -> list[SipOutput]:
        try:
            branch = parse_via(msg.get("via") or "").branch
        except ProtocolError as exc:
            return [ProtocolViolation(f"SIP response from {peer}: {exc}")]
        txn = self._client.get(branch)
        if txn is not None and msg.status >= 200:
            del self._client[branch]
        return []

    # -- timers ------------------------------------------------------------------------

    def _schedule(self, when: float, kind: str, arg: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, arg))

    def _timer_answer(self, arg: tuple[str, int], now: float) -> list[SipOutput]:
        dialog = self._dialogs.get(arg[0])
        invite = dialog.invite if dialog else None
        if dialog is None or invite is None or invite.cseq != arg[1] or invite.answer_at is None:
            return []
        return self._answer(dialog, now)

    def _timer_retx_ok(self, arg: tuple[str, int], now: float) -> list[SipOutput]:
        dialog = self._dialogs.get(arg[0])
        invite = dialog.invite if dialog else None
        if invite is None or invite.cseq != arg[1] or invite.ok is None:
            return []
        invite.interval = min(2 * invite.interval, self.params.t2_s)
        self._schedule(now + invite.interval, "retx_ok", arg)
        return [self._send(invite.txn.peer, invite.ok)]

    def _timer_ack_timeout(self, arg: tuple[str, int], now: float) -> list[SipOutput]:
        dialog = self._dialogs.get(arg[0])
        invite = dialog.invite if dialog else None
        if dialog is None or invite is None or invite.cseq != arg[1]:
            return []
        # §13.3.1.4: no ACK within 64*T1 -> the UAS ends the session with BYE
        dialog.invite = None
        return [
            ProtocolViolation(f"SIP call {dialog.call_id}: no ACK for the 2xx; hanging up"),
            *self.hangup(dialog.key, now, "no_ack"),
        ]

    def _timer_retx_final(self, key: tuple[str, ...], now: float) -> list[SipOutput]:
        txn = self._txns.get(key)
        if txn is None or txn.acked or txn.last is None:
            return []
        txn.interval = min(2 * txn.interval, self.params.t2_s)
        self._schedule(now + txn.interval, "retx_final", key)
        return [self._send(txn.peer, txn.last)]

    def _timer_expire(self, key: tuple[str, ...], now: float) -> list[SipOutput]:
        txn = self._txns.pop(key, None)
        if txn is not None:
            self._forget_initial(txn)
        return []

    def _timer_retx_bye(self, branch: str, now: float) -> list[SipOutput]:
        txn = self._client.get(branch)
        if txn is None:
            return []
        if now >= txn.deadline:
            del self._client[branch]  # Timer F: the peer is gone
            return []
        txn.interval = min(2 * txn.interval, self.params.t2_s)
        self._schedule(min(now + txn.interval, txn.deadline), "retx_bye", branch)
        return [SipSend(txn.data, txn.peer)]

    # -- helpers -----------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    def _refused(self, peer: Peer) -> list[SipOutput]:
        # Silently dropped (no 403 to reflect at a spoofed source); logged once per host.
        if peer.host in self._refused_sources:
            return []
        self._refused_sources[peer.host] = None
        if len(self._refused_sources) > 1024:
            self._refused_sources.popitem(last=False)
        return [ProtocolViolation(f"SIP from {peer} dropped: source not in sip_allow")]

    @staticmethod
    def _dialog_key(call_id: str, local_tag: str) -> str:
        return f"{call_id};{local_tag}"

    def _txn_key(self, msg: SipMessage) -> tuple[str, ...]:
        via = parse_via(msg.get("via") or "")
        method = "INVITE" if msg.method == "ACK" else msg.method
        if via.branch.startswith(MAGIC_COOKIE):
            return (via.branch, via.sent_by, method)
        # RFC 2543 peers: no unique branch, so the request's identifiers make the key
        cseq, _ = msg.cseq()
        from_tag = parse_name_addr(msg.get("from") or "").tag or ""
        return (msg.get("call-id") or "", from_tag, str(cseq), via.sent_by, method)

    def _new_txn(self, key: tuple[str, ...], msg: SipMessage, peer: Peer, now: float) -> _ServerTxn:
        txn = _ServerTxn(key=key, method=msg.method, peer=peer, request=msg)
        self._txns[key] = txn
        while len(self._txns) > MAX_TRANSACTIONS:
            _, old = self._txns.popitem(last=False)
            self._forget_initial(old)
        return txn

    def _forget_initial(self, txn: _ServerTxn) -> None:
        if txn.merge is not None and self._initial.get(txn.merge) == txn.key:
            del self._initial[txn.merge]

    def _expire(self, txn: _ServerTxn, now: float) -> None:
        # Timer J / H / I in one: a reliable transport needs no retransmission memory
        linger = 64 * self.params.t1_s if txn.peer.transport == "udp" else 0.0
        if txn.method == "INVITE":
            linger = 64 * self.params.t1_s  # absorb ACKs and late INVITE copies
        self._schedule(now + linger, "expire", txn.key)

    def _respond(
        self,
        txn: _ServerTxn,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        to_tag: str | None = None,
        final: bool | None = None,
    ) -> list[SipOutput]:
        """Send a response on ``txn`` and remember it for retransmitted requests."""
        dialog = self._dialogs.get(txn.dialog or "")
        if to_tag is None and status > 100:
            to_tag = dialog.local_tag if dialog is not None else secrets.token_hex(5)
        data = self._response(
            txn.request,
            status,
            reason or _REASONS.get(status, "Unknown"),
            txn.peer,
            to_tag=to_tag if status > 100 else None,
            headers=headers,
            body=body,
        )
        txn.last = data
        if final is None:
            final = status >= 200
        if final:
            txn.final = status
            if txn.method == "INVITE" and status >= 300 and txn.peer.transport == "udp":
                txn.interval = self.params.t1_s
                self._schedule(now + txn.interval, "retx_final", txn.key)
            self._expire(txn, now)
        return [self._send(txn.peer, data)]

    def _final(self, txn: _ServerTxn, status: int, now: float) -> list[SipOutput]:
        return self._respond(txn, status, now)

    def _response(
        self,
        request: SipMessage,
        status: int,
        reason: str,
        peer: Peer,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bytes:
        out = SipMessage(status=status, reason=reason.replace("\r", " ").replace("\n", " "))
        vias = request.get_all("via")
        for i, via in enumerate(vias):
            if i == 0:
                via = _stamp_via(via, peer)
            out.headers.append(("via", via))
        if status > 100 and request.method == "INVITE" and status < 300:
            out.headers += [("record-route", r) for r in request.get_all("record-route")]
        for name in ("from", "to", "call-id", "cseq"):
            value = request.get(name)
            if value is None:
                continue
            if name == "to" and to_tag and "tag=" not in value.lower():
                value = f"{value};tag={to_tag}"
            out.headers.append((name, value))
        out.headers.append(("server", self.params.user_agent))
        out.headers += list(headers)
        if body and not any(k == "content-type" for k, _ in headers):
            out.headers.append(("content-type", "application/sdp"))
        out.body = body
        return out.to_bytes()

    def _dialog_headers(self, dialog: _Dialog) -> list[tuple[str, str]]:
        host, port = dialog.local
        host = self.params.advertise or host
        if ":" in host:
            host = f"[{host}]"
        transport = dialog.peer.transport
        feature = ";+sip.srs" if dialog.siprec else ""  # RFC 7866 §6.1.1
        return [
            ("contact", f"<sip:engine@{host}:{port};transport={transport}>{feature}"),
            *self._capabilities(),
        ]

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("allow", _ALLOW),
            ("accept", ", ".join(ACCEPTED_TYPES)),
            ("supported", ", ".join(SUPPORTED_OPTIONS)),
        ]

    @staticmethod
    def _send(peer: Peer, data: bytes) -> SipSend:
        return SipSend(data, peer)

    def _send_bye(self, dialog: _Dialog, now: float, reason: str) -> list[SipOutput]:
        dialog.local_cseq += 1
        branch = MAGIC_COOKIE + secrets.token_hex(8)
        host, port = dialog.local
        transport = dialog.peer.transport
        target = dialog.remote_target
        routes = list(dialog.route_set)
        try:
            dest_uri = parse_uri(routes[0] if routes else target)
        except ProtocolError:
            dest_uri = None
        if dest_uri is not None and dest_uri.params.get("transport") in ("udp", "tcp"):
            transport = dest_uri.params["transport"]
        if dest_uri is None:
            dest = Peer(dialog.peer.transport, dialog.peer.host, dialog.peer.port, dialog.peer.conn)
        else:
            dest_host, dest_port = dest_uri.host_port()
            # a TCP dialog's connection serves the BYE even when the Contact names the
            # peer's listening port rather than the connection's ephemeral one
            conn = dialog.peer.conn if transport == "tcp" else None
            dest = Peer(transport, dest_host, dest_port, conn)
        via_host = f"[{host}]" if ":" in host else host
        msg = SipMessage(method="BYE", uri=target)
        msg.headers = [
            ("via", f"SIP/2.0/{transport.upper()} {via_host}:{port};branch={branch};rport"),
            ("max-forwards", "70"),
            *[("route", r) for r in routes],
            ("from", dialog.local_uri),
            ("to", dialog.remote_uri),
            ("call-id", dialog.sip_call_id),
            ("cseq", f"{dialog.local_cseq} BYE"),
            ("user-agent", self.params.user_agent),
            ("reason", f'SIP;cause=200;text="{reason}"'),
        ]
        data = msg.to_bytes()
        if dest.transport == "udp":
            self._client[branch] = _ClientTxn(
                branch, data, dest, self.params.t1_s, now + 64 * self.params.t1_s
            )
            self._schedule(now + self.params.t1_s, "retx_bye", branch)
        else:
            self._client[branch] = _ClientTxn(branch, data, dest, 0.0, now + 64 * self.params.t1_s)
            self._schedule(now + 64 * self.params.t1_s, "retx_bye", branch)
        log.info("SIP call %s: BYE (%s)", dialog.call_id, reason)
        return [SipSend(data, dest)]

    def _end_dialog(self, dialog: _Dialog, reason: str) -> list[SipOutput]:
        self._dialogs.pop(dialog.key, None)
        if dialog.invite is not None and dialog.invite.ok is not None:
            dialog.invite = None  # no more 2xx retransmissions
        log.info("SIP call %s ended (%s)", dialog.call_id, reason)
        return self._release(dialog, reason)

    @staticmethod
    def _release(dialog: _Dialog, reason: str) -> list[SipOutput]:
        out: list[SipOutput] = []
        for stream in dialog.streams:
            if stream.port is not None:
                out.append(MediaStop(dialog.key, stream.port, reason))
                stream.port = None
        return out


def _sending(stream: _Stream, answer: StreamAnswer) -> bool:
    """Will the peer send on this stream? Not when it holds it: ``inactive``,
    ``recvonly``, connection 0.0.0.0, or (RFC 3264 §8.4) a stream that began
    ``sendrecv`` and is now ``sendonly`` (music on hold is not the caller speaking). A
    stream that was ``sendonly`` from the start, as every SIPREC stream is, is not held."""
    if not answer.peer_sends:
        return False
    return not (answer.direction == "sendonly" and stream.first_direction == "sendrecv")


def _stamp_via(via: str, peer: Peer) -> str:
    """Add ``received`` (RFC 3261 §18.2.1) and fill ``rport`` (RFC 3581) so the
    response finds its way back through NAT."""
    try:
        parsed = parse_via(via)
    except ProtocolError:
        return via
    head, _, params = via.partition(";")
    items = [p for p in params.split(";") if p.strip()] if params else []
    rport = "rport" in parsed.params
    kept = [p for p in items if p.strip().lower().split("=")[0] not in ("received", "rport")]
    if parsed.host != peer.host or rport:
        kept.append(f"received={peer.host}")
    if rport:
        kept.append(f"rport={peer.port}")
    return ";".join([head, *kept])


def _is_src(msg: SipMessage) -> bool:
    """RFC 7866 §6.1.1: a recording client marks its Contact with ``+sip.src``."""
    return any("+sip.src" in c.lower() for c in msg.get_all("contact")) or any(
        o.lower() == "siprec" for o in msg.get_all("require")
    )


def _uri_party(uri: str) -> str | None:
    """``sip:agent@engine`` -> ``agent``: lets a PBX pick the party per call."""
    try:
        user = parse_uri(uri).user
    except ProtocolError:
        return None
    return user.lower() if user and user.lower() in PARTIES else None


_CALL_ID_OK: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


def _engine_call_id(msg: SipMessage) -> str:
    """``X-Emotion-Call-Id`` (e.g. a PBX's own call id, to pair two legs dialled
    separately) or the SIP Call-ID."""
    custom = (msg.get("x-emotion-call-id") or "").strip()
    return custom if _CALL_ID_OK.match(custom) else (msg.get("call-id") or "").strip()


def _bad_request(rej: _Reject, msg: SipMessage, peer: Peer) -> list[SipOutput]:
    """A 400 answers a malformed request: also a violation (logged and counted);
    other rejections (401 challenges, 488 without G.711 ...) are ordinary SIP."""
    if rej.status != 400:
        return []
    return [ProtocolViolation(f"SIP {msg.method} from {peer}: {rej.reason}")]


_BUGS_LOGGED: set[tuple[str, str]] = set()


def _first_time(exc: BaseException) -> bool:
    """Whether this kind of failure (exception type and where it was raised) is new: a
    peer repeating the datagram that found a bug gets one traceback, not one each."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    key = (type(exc).__name__, where)
    if key in _BUGS_LOGGED or len(_BUGS_LOGGED) > 256:
        return False
    _BUGS_LOGGED.add(key)
    return True


def engine_call_id_problem(msg: SipMessage) -> str | None:
    """Why the INVITE's call id cannot be the engine's (too long, control characters)."""
    return call_id_problem(_engine_call_id(msg), what="Call-ID")
