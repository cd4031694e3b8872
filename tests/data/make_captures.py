"""Regenerate the committed wire captures under tests/data/rtp and tests/data/audiosocket.

    .venv/bin/python tests/data/make_captures.py

Needs the shared corpora (EMOTION_ENGINE_DATA, else <repo>/../shared/data). Output is
deterministic: same inputs, same bytes. Writes:

rtp/pcmu_8k_angry.pcap
    Classic libpcap (Ethernet / IPv4 / UDP, real IPv4 and UDP checksums) of one G.711
    mu-law RTP stream, 20 ms packets, from a RAVDESS angry clip. The sequence number
    wraps 65535 -> 0 and the timestamp wraps 2**32 -> 0 inside the capture. Usable by
    sipp's pcap play and Wireshark.
rtp/impaired_mixed.pcap + .json
    What a receiver could see on one port: the first 2 s of that stream with loss,
    a burst, a duplicate, a swap, a late packet, RFC 4733 DTMF and RTCP; a second
    leg (A-law, another address); junk datagrams. The JSON lists every impairment so a
    test can build the expected output from the clean stream.
audiosocket/call_slin8.bin + .json
    The bytes Asterisk sends on an AudioSocket connection: UUID, 20 ms slin frames of
    the angry clip, a DTMF digit, hang-up.
audiosocket/malformed.bin
    A hand-written stream of every malformation the session must survive.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from emotion_engine.audio.g711 import alaw_encode, ulaw_encode
from emotion_engine.ingest.audiosocket import Kind, encode_message
from emotion_engine.ingest.rtp import RtpPacket

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ANGRY_CLIP = "ravdess/03-01-05-02-01-01-01.flac"  # actor 01, angry, strong intensity
NEUTRAL_CLIP = "ravdess/03-01-01-01-01-01-01.flac"  # actor 01, neutral
PACKET_SAMPLES = 160
SEQ0 = 65500  # wraps after 36 packets
TS0 = (1 << 32) - 50 * PACKET_SAMPLES  # wraps after 50 packets
SSRC_A = 0x5EED0001
SSRC_B = 0x5EED0002
SENDER_A = ("10.0.0.1", 40000)
SENDER_B = ("10.0.0.3", 40002)
RECEIVER = ("10.0.0.2", 4000)
EPOCH = 1_700_000_000  # capture start, seconds since 1970
CALL_UUID = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")


def data_dir() -> Path:
    return Path(os.environ.get("EMOTION_ENGINE_DATA", REPO.parent / "shared" / "data"))


def read_int16(relative: str) -> np.ndarray:
    pcm, rate = sf.read(data_dir() / relative, dtype="int16")
    assert rate == 8000, rate
    return np.asarray(pcm, dtype=np.int16)


def packets_of(pcm: np.ndarray) -> list[np.ndarray]:
    n = -(-pcm.size // PACKET_SAMPLES) * PACKET_SAMPLES
    padded = np.zeros(n, dtype=np.int16)
    padded[: pcm.size] = pcm
    return list(padded.reshape(-1, PACKET_SAMPLES))


# -- libpcap ------------------------------------------------------------------------


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_bytes(host: str) -> bytes:
    return bytes(int(part) for part in host.split("."))


def udp_frame(payload: bytes, src: tuple[str, int], dst: tuple[str, int], ip_id: int) -> bytes:
    udp_len = 8 + len(payload)
    pseudo = ip_bytes(src[0]) + ip_bytes(dst[0]) + struct.pack("!BBH", 0, 17, udp_len)
    udp_header = struct.pack("!HHHH", src[1], dst[1], udp_len, 0)
    checksum = 0xFFFF - ones_complement_sum(pseudo + udp_header + payload)
    udp_header = struct.pack("!HHHH", src[1], dst[1], udp_len, checksum or 0xFFFF)
    # DSCP EF (0xb8), the usual marking for voice; don't-fragment; TTL 64.
    ip_header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xB8,
        20 + udp_len,
        ip_id & 0xFFFF,
        0x4000,
        64,
        17,
        0,
        ip_bytes(src[0]),
        ip_bytes(dst[0]),
    )
    ip_checksum = 0xFFFF - ones_complement_sum(ip_header)
    ip_header = ip_header[:10] + struct.pack("!H", ip_checksum) + ip_header[12:]
    ethernet = bytes.fromhex("020000000002020000000001") + struct.pack("!H", 0x0800)
    return ethernet + ip_header + udp_header + payload


def write_pcap(path: Path, records: list[tuple[float, bytes, tuple[str, int]]]) -> None:
    """records: (capture time in s from EPOCH, UDP payload, source address)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # LINKTYPE_ETHERNET
    for ip_id, (t, payload, src) in enumerate(records):
        frame = udp_frame(payload, src, RECEIVER, ip_id)
        usec_total = round(t * 1_000_000)
        sec, usec = divmod(usec_total, 1_000_000)
        out.append(struct.pack("<IIII", EPOCH + sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


# -- RTP --------------------------------------------------------------------------------


def rtp_stream(frames: list[np.ndarray], *, pt: int, ssrc: int) -> list[bytes]:
    encode = ulaw_encode if pt == 0 else alaw_encode
    return [
        RtpPacket(
            payload_type=pt,
            sequence=(SEQ0 + i) & 0xFFFF,
            timestamp=(TS0 + i * PACKET_SAMPLES) & 0xFFFFFFFF,
            ssrc=ssrc,
            payload=encode(frame).tobytes(),
            marker=i == 0,
        ).serialize()
        for i, frame in enumerate(frames)
    ]


def rtcp_sender_report(ssrc: int, rtp_ts: int, n_packets: int) -> bytes:
    # V=2, no report blocks, PT=200 (SR), length 6 words; NTP time is arbitrary here.
    return struct.pack(
        "!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE8E8E8E8, 0, rtp_ts & 0xFFFFFFFF, n_packets, 0
    )


def telephone_event(seq: int, ts: int, event: int, duration: int, end: bool) -> bytes:
    payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
    return RtpPacket(
        payload_type=101,
        sequence=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=SSRC_A,
        payload=payload,
        marker=duration == PACKET_SAMPLES,
    ).serialize()


def make_rtp() -> None:
    out_dir = HERE / "rtp"
    out_dir.mkdir(exist_ok=True)
    angry = packets_of(read_int16(ANGRY_CLIP))
    clean = rtp_stream(angry, pt=0, ssrc=SSRC_A)
    write_pcap(
        out_dir / "pcmu_8k_angry.pcap", [(i * 0.02, p, SENDER_A) for i, p in enumerate(clean)]
    )

    n_a = 100  # 2 s of leg A
    dropped = [10, 11, 70]
    duplicated = {20: 20, 5: 15}  # packet -> delivered again after this packet
    swapped = [30]  # delivered after its successor
    late = {40: 45}  # delivered after packet 45: its slot has been played out by then
    dtmf_packets = [60, 61, 62]  # audio replaced by RFC 4733 events (digit 5)
    records: list[tuple[float, bytes, tuple[str, int]]] = []
    for i in range(n_a):
        if i in dropped:
            continue
        t = i * 0.02 + 0.001
        if i in dtmf_packets:
            k = i - dtmf_packets[0]
            payload = telephone_event(
                SEQ0 + i,
                TS0 + dtmf_packets[0] * PACKET_SAMPLES,
                5,
                (k + 1) * PACKET_SAMPLES,
                end=i == dtmf_packets[-1],
            )
        else:
            payload = clean[i]
        if i in swapped:
            t += 0.02 + 0.0005
        if i in late:
            t = late[i] * 0.02 + 0.0015
        records.append((t, payload, SENDER_A))
        if i in duplicated:
            records.append((duplicated[i] * 0.02 + 0.0012, payload, SENDER_A))
    for i in (25, 75):
        records.append(
            (i * 0.02 + 0.005, rtcp_sender_report(SSRC_A, TS0 + i * PACKET_SAMPLES, i), SENDER_A)
        )

    neutral = packets_of(read_int16(NEUTRAL_CLIP))[:50]
    leg_b = rtp_stream(neutral, pt=8, ssrc=SSRC_B)
    records.extend((0.5 + i * 0.02 + 0.007, p, SENDER_B) for i, p in enumerate(leg_b))

    junk_src = ("10.0.0.9", 5555)
    junk = [
        (0.101, b"\x80\x00\x00", "too short"),
        (0.201, bytes([0x40]) + clean[3][1:], "version 1"),
        (
            0.301,
            RtpPacket(
                payload_type=18, sequence=1, timestamp=0, ssrc=0x0BAD0BAD, payload=bytes(20)
            ).serialize(),
            "payload type 18 (G.729)",
        ),
        (0.401, bytes([0x8F]) + clean[3][1:20], "CSRC count beyond the data"),
    ]
    records.extend((t, p, junk_src) for t, p, _ in junk)
    records.sort(key=lambda r: r[0])
    write_pcap(out_dir / "impaired_mixed.pcap", records)
    manifest = {
        "source": ANGRY_CLIP,
        "leg_b_source": NEUTRAL_CLIP,
        "packet_samples": PACKET_SAMPLES,
        "seq0": SEQ0,
        "ts0": TS0,
        "leg_a": {"ssrc": SSRC_A, "remote": "10.0.0.1:40000", "codec": "PCMU", "n_packets": n_a},
        "leg_b": {
            "ssrc": SSRC_B,
            "remote": "10.0.0.3:40002",
            "codec": "PCMA",
            "n_packets": len(leg_b),
        },
        "dropped": dropped,
        "duplicated": sorted(duplicated),
        "swapped": swapped,
        "late": sorted(late),
        "dtmf_packets": dtmf_packets,
        "dtmf_digit": "5",
        "rtcp_packets": 2,
        "junk": [reason for _, _, reason in junk],
    }
    (out_dir / "impaired_mixed.json").write_text(json.dumps(manifest, indent=2) + "\n")


# -- AudioSocket --------------------------------------------------------------------------


def make_audiosocket() -> None:
    out_dir = HERE / "audiosocket"
    out_dir.mkdir(exist_ok=True)
    pcm = read_int16(ANGRY_CLIP)[: 2 * 8000 + 100]  # 2 s and a short last frame
    frame_bytes = 2 * PACKET_SAMPLES
    raw = pcm.astype("<i2").tobytes()
    messages = [encode_message(Kind.UUID, CALL_UUID.bytes)]
    dtmf_after = 50
    for k, start in enumerate(range(0, len(raw), frame_bytes)):
        messages.append(encode_message(Kind.SLIN, raw[start : start + frame_bytes]))
        if k + 1 == dtmf_after:
            messages.append(encode_message(Kind.DTMF, b"7"))
    messages.append(encode_message(Kind.HANGUP))
    (out_dir / "call_slin8.bin").write_bytes(b"".join(messages))
    manifest = {
        "source": ANGRY_CLIP,
        "uuid": str(CALL_UUID),
        "n_samples": int(pcm.size),
        "frame_samples": PACKET_SAMPLES,
        "dtmf": {"digit": "7", "after_samples": dtmf_after * PACKET_SAMPLES},
    }
    (out_dir / "call_slin8.json").write_text(json.dumps(manifest, indent=2) + "\n")

    tone16 = (8000 * np.sin(2 * np.pi * 440 * np.arange(320) / 16000)).astype("<i2").tobytes()
    ramp8 = np.arange(-160, 160, 2, dtype="<i2").tobytes()  # 160 samples
    malformed = [
        encode_message(Kind.SLIN, ramp8),  # audio before the UUID
        encode_message(Kind.UUID, CALL_UUID.bytes[:15]),  # short UUID
        encode_message(Kind.UUID, CALL_UUID.bytes),
        encode_message(0x02, b"hello"),  # unknown kind
        encode_message(Kind.SLIN, b"\x01\x02\x03"),  # odd-length audio
        encode_message(Kind.SLIN, ramp8),
        encode_message(Kind.DTMF, b"12"),  # two digits
        encode_message(Kind.DTMF, b"x"),  # not a digit
        encode_message(Kind.DTMF, b"#"),
        encode_message(Kind.SLIN16, tone16),  # rate change 8 -> 16 kHz
        encode_message(Kind.UUID, uuid.UUID(int=1).bytes),  # second UUID
        encode_message(Kind.SLIN16, b""),  # empty audio: nothing to do
        encode_message(Kind.ERROR, b"\x02"),  # frame forwarding error: session ends
        encode_message(Kind.HANGUP),  # after the end
    ]
    (out_dir / "malformed.bin").write_bytes(b"".join(malformed))


if __name__ == "__main__":
    make_rtp()
    make_audiosocket()
    for path in sorted((HERE / "rtp").iterdir()) + sorted((HERE / "audiosocket").iterdir()):
        print(f"{path.relative_to(REPO)}\t{path.stat().st_size} bytes")
