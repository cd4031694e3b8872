"""Seed inputs of every fuzz target: the committed wire captures under ``tests/data``
and valid messages built here, in each target's input format
(:mod:`benchmarks.fuzz.targets`). Seeds are kept to a few KiB: libFuzzer mutates
small inputs much faster, and every path of the parsers is reached within that."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks.fuzz.targets import (
    AUDIOHOOK_HEADERS,
    SIP_SEPARATOR,
    TAG_PLACEHOLDER,
    encode_datagrams,
    encode_frames,
)
from emotion_engine.ingest.audiosocket import Kind, encode_message
from emotion_engine.ingest.rtp import RtpExtension, RtpPacket

__all__ = ["SEEDS", "seeds"]

DATA: Final = Path(__file__).resolve().parents[2] / "tests" / "data"
MAX_SEED_BYTES: Final = 6144


def _pcap_payloads(path: Path) -> list[bytes]:
    """UDP payloads of a little-endian Ethernet/IPv4 pcap, in file order."""
    blob = path.read_bytes()
    pos, out = 24, []
    while pos + 16 <= len(blob):
        incl = struct.unpack_from("<I", blob, pos + 8)[0]
        frame = blob[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip_header = (frame[14] & 0x0F) * 4
        out.append(frame[14 + ip_header + 8 :])
    return out


def rtp_seeds() -> list[bytes]:
    seeds = []
    for name in ("pcmu_8k_angry.pcap", "impaired_mixed.pcap"):
        payloads = _pcap_payloads(DATA / "rtp" / name)
        for start in (0, len(payloads) // 2):
            seeds.append(encode_datagrams((p, 0) for p in payloads[start : start + 12]))
    odd = [
        RtpPacket(payload_type=8, sequence=65534, timestamp=2**32 - 160, ssrc=7, payload=b"\xd5" * 160),
        RtpPacket(payload_type=101, sequence=65535, timestamp=2**32 - 160, ssrc=7, marker=True, payload=bytes([5, 0x0A, 0, 160])),
        RtpPacket(payload_type=101, sequence=0, timestamp=2**32 - 160, ssrc=7, payload=bytes([5, 0x8A, 1, 64])),
        RtpPacket(payload_type=13, sequence=1, timestamp=0, ssrc=7, payload=b"\x40"),
        RtpPacket(payload_type=8, sequence=2, timestamp=160, ssrc=7, payload=b"\x55" * 160, csrc=(1, 2), extension=RtpExtension(0xBEDE, b"\x10\x01\x00\x00"), padding=4),
        RtpPacket(payload_type=0, sequence=3, timestamp=320, ssrc=7, payload=b"\xff" * 80),
        RtpPacket(payload_type=18, sequence=4, timestamp=480, ssrc=7, payload=b"\x00" * 10),
    ]  # fmt: skip
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 7) + bytes(20)
    seeds.append(
        encode_datagrams([*((p.serialize(), i % 2) for i, p in enumerate(odd)), (rtcp, 1)])
    )
    seeds.append(encode_datagrams((p.serialize(), 1) for p in odd))
    return [*seeds, *(s + b"\x00" for s in seeds)]  # odd length: serve's RTP port settings


def sip_request(
    method: str,
    *,
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
    to_tag: bool = False,
    body: bytes = b"",
    content_type: str = "application/sdp",
    uri: str = "sip:engine@127.0.0.1",
    extra: str = "",
) -> bytes:
    """A valid request of the fuzzed dialog (To-tag: the placeholder the target fills)."""
    to = "<sip:engine@127.0.0.1>" + (f";tag={TAG_PLACEHOLDER.decode()}" if to_tag else "")
    ctype = f"Content-Type: {content_type}\r\n" if body else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        f'From: "Caller" <sip:+15550001@127.0.0.1>;tag=from-1\r\nTo: {to}\r\n'
        f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n{extra}{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


SDP_OFFER: Final = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
SDP_TWO_STREAMS: Final = (
    b"v=0\r\no=- 2 2 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\na=sendonly\r\n"
    b"m=audio 6000 RTP/AVP 8 0\r\na=label:1\r\nm=audio 6002 RTP/SAVP 0\r\n"
    b"m=video 6004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"m=audio 6006 RTP/AVPF 0\r\nc=IN IP4 0.0.0.0\r\na=label:2\r\na=inactive\r\n"
)


def _siprec_parts() -> tuple[str, bytes]:
    """Content-Type and body of the committed SIPREC INVITE."""
    head, _, body = (DATA / "sip" / "siprec_invite.sip").read_bytes().partition(b"\r\n\r\n")
    for line in head.decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() in ("content-type", "c"):
            return value.strip(), body
    raise ValueError("siprec_invite.sip has no Content-Type")


def sip_seeds() -> list[bytes]:
    captures = [
        (DATA / "sip" / n).read_bytes()
        for n in ("baresip_invite.sip", "compact_invite.sip", "siprec_invite.sip")
    ]
    hold = SDP_OFFER.replace(b"a=sendrecv", b"a=sendonly")
    dialog = [
        sip_request("INVITE", body=SDP_OFFER, extra="Supported: timer\r\n"),
        sip_request("ACK", branch="z9hG4bK-a", to_tag=True),
        sip_request("INVITE", branch="z9hG4bK-h", cseq=2, to_tag=True, body=hold),
        sip_request("ACK", branch="z9hG4bK-ha", cseq=2, to_tag=True),
        sip_request("UPDATE", branch="z9hG4bK-u", cseq=3, to_tag=True, body=SDP_OFFER),
        sip_request("INFO", branch="z9hG4bK-i", cseq=4, to_tag=True),
        sip_request("BYE", branch="z9hG4bK-b", cseq=5, to_tag=True),
    ]
    late = [
        sip_request("INVITE", uri="sip:agent@127.0.0.1"),
        sip_request("ACK", branch="z9hG4bK-a", to_tag=True, body=SDP_OFFER),
        sip_request("BYE", branch="z9hG4bK-b", cseq=2, to_tag=True),
    ]
    cancel = [
        sip_request("INVITE", body=SDP_TWO_STREAMS, extra="Require: 100rel\r\n"),
        sip_request("CANCEL"),
        sip_request("OPTIONS", branch="z9hG4bK-o", cseq=9),
    ]
    ctype, body = _siprec_parts()
    siprec = [
        sip_request("INVITE", body=body, content_type=ctype, extra="Require: siprec\r\n"),
        sip_request("ACK", branch="z9hG4bK-a", to_tag=True),
        sip_request("BYE", branch="z9hG4bK-b", cseq=2, to_tag=True),
    ]
    response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x\r\n"
        b"From: <sip:engine@127.0.0.1>;tag=e\r\nTo: <sip:a@127.0.0.1>;tag=a\r\n"
        b"Call-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    return [
        *captures,
        SIP_SEPARATOR.join(dialog),
        SIP_SEPARATOR.join(late),
        SIP_SEPARATOR.join(cancel),
        SIP_SEPARATOR.join(siprec),
        SIP_SEPARATOR.join([captures[1], response, b"\r\n\r\n"]),
    ]  # fmt: skip


def sdp_seeds() -> list[bytes]:
    bodies = [SDP_OFFER, SDP_TWO_STREAMS]
    for name in ("baresip_invite.sip", "compact_invite.sip"):
        bodies.append((DATA / "sip" / name).read_bytes().partition(b"\r\n\r\n")[2])
    ctype, body = _siprec_parts()
    boundary = ctype.split("boundary=")[1].strip('"')
    for part in body.split(b"--" + boundary.encode()):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"application/sdp" in head:
            bodies.append(content)
    return bodies


def siprec_seeds() -> list[bytes]:
    ctype, body = _siprec_parts()
    draft = (DATA / "sip" / "siprec_metadata_draft.xml").read_bytes()
    rfc = body.partition(b"<?xml")[2].partition(b"</recording>")[0]
    return [
        ctype.encode() + b"\n" + body,
        b"application/rs-metadata+xml\n" + draft,
        b"application/rs-metadata+xml\n<?xml" + rfc + b"</recording>",
    ]


def _client_frames(name: str, limit: int) -> list[str | bytes]:
    frames: list[str | bytes] = []
    for line in (DATA / "audiohook" / name).read_text().splitlines():
        item = json.loads(line)
        if "client" in item:
            frames.append(item["client"])
        elif "client_binary" in item:
            frames.append(base64.b64decode(item["client_binary"])[:limit])
    return frames


def audiohook_seeds() -> list[bytes]:
    headers = "H" + json.dumps(AUDIOHOOK_HEADERS, separators=(",", ":"))
    stereo = _client_frames("stereo_pcmu.jsonl", 320)
    mono = _client_frames("mono_l16.jsonl", 320)
    return [
        encode_frames(stereo),
        encode_frames([headers, *mono]),
        encode_frames(["H{}", *stereo[:3]]),
    ]


def twilio_seeds() -> list[bytes]:
    lines = (DATA / "twilio" / "both_tracks.jsonl").read_text().splitlines()
    start = json.loads(lines[1])
    start["start"]["customParameters"] = {"agent": "a-17", "n": 3}
    return [
        encode_frames([*lines[:8], lines[44], lines[80], lines[-1]]),
        encode_frames([lines[0], json.dumps(start), *lines[2:6][::-1], lines[-1]]),
        encode_frames([*lines[:4], b"\x00\x01", lines[-1]]),
    ]


L16_JAMBONZ: Final[dict[str, Any]] = {
    "callSid": "b7a1c3e2-5f2a-4d8e-9b1c-6a3f2e1d0c9b",
    "direction": "inbound",
    "from": "+15083084809",
    "to": "+15083728299",
    "callId": "a1b2c3@10.0.0.1",
    "sampleRate": 16000,
    "mixType": "stereo",
}


def l16_seeds() -> list[bytes]:
    pcm = struct.pack("<160h", *range(-32768, 32768, 410))[:320]
    return [
        encode_frames([json.dumps(L16_JAMBONZ), pcm, pcm[:6], pcm[6:], json.dumps({"event": "dtmf", "dtmf": "5", "duration": 100}), pcm]),
        encode_frames([pcm, json.dumps({**L16_JAMBONZ, "mixType": "mono", "sampleRate": 8000}), pcm, pcm[:3]]),
        encode_frames([json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}), pcm, json.dumps({"event": "websocket:dtmf", "digit": "#"}), pcm]),
        encode_frames([json.dumps({"uuid": "x", "mixType": "mixed", "sampleRate": "8k"}), pcm]),
    ]  # fmt: skip


def audiosocket_seeds() -> list[bytes]:
    call = (DATA / "audiosocket" / "call_slin8.bin").read_bytes()
    malformed = (DATA / "audiosocket" / "malformed.bin").read_bytes()
    uuid = bytes.fromhex("40325ec25efd4bd3805f53576e581d13")
    audio = struct.pack("<160h", *range(0, 16000, 100))
    built = b"".join(
        [
            encode_message(Kind.UUID, uuid),
            encode_message(0x10, audio),
            encode_message(Kind.DTMF, b"7"),
            encode_message(0x12, audio[:100]),
            encode_message(0x42, b"??"),
            encode_message(Kind.ERROR, b"\x01"),
        ]
    )
    return [
        b"\x07" + call[:2000] + encode_message(Kind.HANGUP),
        b"\x00" + malformed[:2000],
        b"\x02" + built,
    ]


SEEDS: Final[dict[str, Callable[[], list[bytes]]]] = {
    "rtp": rtp_seeds,
    "sip": sip_seeds,
    "sdp": sdp_seeds,
    "siprec": siprec_seeds,
    "twilio": twilio_seeds,
    "audiohook": audiohook_seeds,
    "l16": l16_seeds,
    "audiosocket": audiosocket_seeds,
}


def seeds(name: str) -> list[bytes]:
    """The seed inputs of target ``name``, each at most ``MAX_SEED_BYTES``."""
    return [s[:MAX_SEED_BYTES] for s in SEEDS[name]()]
