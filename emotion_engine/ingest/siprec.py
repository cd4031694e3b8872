"""SIPREC (RFC 7866) bodies: multipart/mixed splitting and recording metadata (RFC 7865).

A session recording client (an SBC, a PBX) forks a call to a recording server with
an INVITE whose body is ``multipart/mixed``: an SDP offer with one audio m-line per
recorded stream (each tagged ``a=label:N``) and an ``application/rs-metadata+xml``
document saying who the participants are and which stream each one sends.

- :func:`split_multipart` splits a multipart body into :class:`BodyPart` (RFC 2046).
- :func:`parse_metadata` reads the XML into :class:`RecordingMetadata`; it accepts
  the RFC 7865 layout (``participantstreamassoc`` with ``<send>``) and the older
  draft layout still sent by some SBCs (``<send>`` inside ``<participant>``, ``id``
  attributes), matching elements by local name whatever their namespace.
- :func:`assign_parties` maps each offered stream to ``customer`` / ``agent`` and the
  participant who sends it.

How parties are chosen: RFC 7865 has no notion of "customer", so the order of the
participants in the metadata decides (the first one is, for every SRC we know of,
the calling side), mapped through a configured order (default ``customer, agent``).
Without usable metadata the m-line order is used the same way.

No I/O; XML with a DOCTYPE is refused outright (no entity expansion from the network).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from emotion_engine.errors import ProtocolError

__all__ = [
    "METADATA_TYPE",
    "BodyPart",
    "Participant",
    "RecordingMetadata",
    "StreamParty",
    "assign_parties",
    "parse_metadata",
    "split_multipart",
]

METADATA_TYPE: Final = "application/rs-metadata+xml"
MAX_METADATA_BYTES: Final = 65_536


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One part of a multipart body: its lower-cased headers and raw content."""

    content_type: str
    headers: dict[str, str]
    body: bytes


def _param(header: str, name: str) -> str | None:
    """A parameter of a MIME header value (``multipart/mixed;boundary="x"`` -> x)."""
    match = re.search(
        rf';\s*{re.escape(name)}\s*=\s*("(?P<q>[^"]*)"|(?P<t>[^;\s]+))', header, re.IGNORECASE
    )
    if match is None:
        return None
    return match.group("q") if match.group("q") is not None else match.group("t")


def split_multipart(body: bytes, content_type: str) -> list[BodyPart]:
    """The parts of a ``multipart/*`` body, in order (preamble and epilogue dropped).

    Raises ProtocolError without a boundary parameter or when no part is delimited."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise ProtocolError(f"multipart Content-Type without boundary: {content_type!r}")
    delimiter = b"--" + boundary.encode()
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise ProtocolError(f"multipart body has no part delimited by --{boundary}")
    parts: list[BodyPart] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break  # the close delimiter: the rest is epilogue
        # each part starts after the delimiter line's CRLF and its own CRLF belongs
        # to the next delimiter (RFC 2046 §5.1.1)
        piece = piece.split(b"\n", 1)[1] if b"\n" in piece else b""
        if piece.endswith(b"\r\n"):
            piece = piece[:-2]
        elif piece.endswith(b"\n"):
            piece = piece[:-1]
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = piece.partition(b"\n\n")
        if not sep:  # no headers at all: the part starts with its blank line
            head, content = b"", piece.lstrip(b"\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", errors="replace").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        ctype = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        parts.append(BodyPart(ctype, headers, content))
    if not parts:
        raise ProtocolError("multipart body holds no parts")
    return parts


@dataclass(frozen=True, slots=True)
class Participant:
    """One participant of the recorded call. ``sends``: stream ids it sends."""

    participant_id: str
    aor: str | None = None
    name: str | None = None
    sends: tuple[str, ...] = ()

    @property
    def number(self) -> str | None:
        """The user part of the AOR (``sip:+15551234@host`` -> ``+15551234``; ``tel:``
        numbers as they are)."""
        if not self.aor:
            return None
        uri = self.aor.strip("<>")
        scheme, _, rest = uri.partition(":")
        if scheme.lower() == "tel":
            return rest.split(";")[0] or None
        user = rest.split("@")[0] if "@" in rest else None
        return user.split(";")[0] if user else None

    def to_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.participant_id}
        if self.name:
            info["name"] = self.name
        if self.aor:
            info["aor"] = self.aor
        if self.number:
            info["number"] = self.number
        return info


@dataclass(frozen=True, slots=True)
class RecordingMetadata:
    """What a recording session's metadata says. ``stream_labels``: stream id ->
    SDP label; ``participants`` in document order; ``sip_session_ids``: Call-IDs of the
    recorded call (``<sipSessionID>``)."""

    participants: tuple[Participant, ...] = ()
    stream_labels: dict[str, str] = field(default_factory=dict)
    session_ids: tuple[str, ...] = ()
    sip_session_ids: tuple[str, ...] = ()

    def sender_of_label(self, label: str) -> Participant | None:
        stream_ids = {sid for sid, lab in self.stream_labels.items() if lab == label}
        for participant in self.participants:
            if stream_ids.intersection(participant.sends):
                return participant
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def _attr(element: ET.Element, *names: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) in names:
            return value
    return None


def parse_metadata(data: bytes) -> RecordingMetadata:
    """Parse an ``application/rs-metadata+xml`` document. Raises ProtocolError for
    something that is not XML, carries a DOCTYPE, or is not a ``<recording>``."""
    if len(data) > MAX_METADATA_BYTES:
        raise ProtocolError(f"recording metadata of {len(data)} bytes exceeds {MAX_METADATA_BYTES}")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise ProtocolError("recording metadata with a DOCTYPE/ENTITY is refused")
    try:
        root = ET.fromstring(data)
    # LookupError: an unknown encoding=; ValueError: a multi-byte one (shift_jis, UTF-7)
    except (ET.ParseError, LookupError, ValueError) as exc:
        raise ProtocolError(f"recording metadata is not well-formed XML: {exc}") from exc
    if _local(root.tag) != "recording":
        raise ProtocolError(f"recording metadata root is <{_local(root.tag)}>, not <recording>")

    stream_labels: dict[str, str] = {}
    sends: dict[str, list[str]] = {}
    found: list[tuple[str, str | None, str | None]] = []
    session_ids: list[str] = []
    sip_session_ids: list[str] = []
    for element in root.iter():
        kind = _local(element.tag)
        if kind == "session":
            sid = _attr(element, "session_id", "id")
            if sid:
                session_ids.append(sid)
        elif kind == "sipsessionid" and element.text:
            sip_session_ids.append(element.text.strip())
        elif kind == "stream":
            sid = _attr(element, "stream_id", "id")
            label = next((c.text for c in element if _local(c.tag) == "label"), None)
            if sid and label:
                stream_labels[sid] = label.strip()
        elif kind == "participant":
            pid = _attr(element, "participant_id", "id")
            if not pid:
                continue
            aor, name = None, None
            for child in element.iter():
                ck = _local(child.tag)
                if ck == "nameid":
                    aor = aor or _attr(child, "aor")
                elif ck == "aor" and child.text:  # draft layout: <aor>sip:...</aor>
                    aor = aor or child.text.strip()
                elif ck == "name" and child.text:
                    name = name or child.text.strip()
                elif ck == "send" and child.text:  # draft layout
                    sends.setdefault(pid, []).append(child.text.strip())
            found.append((pid, aor, name))
        elif kind == "participantstreamassoc":
            pid = _attr(element, "participant_id", "id")
            if pid:
                sends.setdefault(pid, []).extend(
                    c.text.strip() for c in element if _local(c.tag) == "send" and c.text
                )
    seen: set[str] = set()
    participants = []
    for pid, aor, name in found:
        if pid in seen:  # a participant may be repeated per session; the first wins
            continue
        seen.add(pid)
        participants.append(Participant(pid, aor, name, tuple(sends.get(pid, ()))))
    return RecordingMetadata(
        participants=tuple(participants),
        stream_labels=stream_labels,
        session_ids=tuple(session_ids),
        sip_session_ids=tuple(sip_session_ids),
    )


@dataclass(frozen=True, slots=True)
class StreamParty:
    """Which party a recorded stream carries, and who that is (None if unknown)."""

    party: str
    participant: Participant | None = None


def assign_parties(
    labels: Sequence[str | None],
    metadata: RecordingMetadata | None,
    order: Sequence[str],
) -> list[StreamParty | None]:
    """Party of each audio stream (``labels``: each stream's ``a=label``, in m-line
    order). A stream whose label the metadata ties to a sending participant gets the
    party of that participant's position among the senders; the others take the next
    unused party of ``order`` in m-line order. None: more streams than parties."""
    senders: list[Participant] = []
    by_stream: list[Participant | None] = []
    for label in labels:
        who = metadata.sender_of_label(label) if metadata and label is not None else None
        by_stream.append(who)
        if who is not None and who not in senders:
            senders.append(who)
    if metadata:
        # the metadata's own order, not the m-line order, ranks the senders
        rank = {p.participant_id: i for i, p in enumerate(metadata.participants)}
        senders.sort(key=lambda p: rank.get(p.participant_id, len(rank)))
    party_of = {p.participant_id: order[i] for i, p in enumerate(senders) if i < len(order)}
    free = [p for p in order if p not in party_of.values()]
    taken: set[str] = set()
    out: list[StreamParty | None] = []
    for who in by_stream:
        # one leg per party and call: a second stream of the same sender takes a free party
        party = party_of.get(who.participant_id) if who is not None else None
        if party is None or party in taken:
            party = free.pop(0) if free else None
        if party is None:
            out.append(None)
            continue
        taken.add(party)
        out.append(StreamParty(party, who))
    return out
