"""RTP packet codec and RtpIngest, replaying committed pcap captures."""

from __future__ import annotations

import json
import os
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.errors import ProtocolError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import Dtmf, IngestOutput, LegEnded, LegStarted, ProtocolViolation
from emotion_engine.ingest.rtp import RtpExtension, RtpIngest, RtpPacket, is_rtcp

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the independent G.711 decoder (CPython's C implementation)

DATA = Path(__file__).parent / "data" / "rtp"
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EMOTION_ENGINE_DATA", REPO.parent / "shared" / "data"))
ADDR = ("192.0.2.10", 5004)
T = TypeVar("T")


def ulaw_ref(payload: bytes) -> NDArray[np.int16]:
    return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype="<i2").astype(np.int16)


def alaw_ref(payload: bytes) -> NDArray[np.int16]:
    return np.frombuffer(audioop.alaw2lin(payload, 2), dtype="<i2").astype(np.int16)


# -- an independent pcap reader that checks every header ---------------------------------


def checksum_ok(data: bytes) -> bool:
    """Internet checksum (RFC 1071) over data that includes its checksum field."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def read_pcap(path: Path) -> list[tuple[float, tuple[str, int], bytes]]:
    """(capture time, UDP source, UDP payload) of every frame; asserts the headers."""
    blob = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", blob)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    pos, out = 24, []
    while pos < len(blob):
        sec, usec, incl, orig = struct.unpack_from("<IIII", blob, pos)
        assert incl == orig <= snaplen
        frame = blob[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        assert frame[12:14] == b"\x08\x00"  # IPv4
        ip = frame[14:34]
        assert ip[0] == 0x45 and ip[9] == 17  # no options, UDP
        assert checksum_ok(ip)
        total_len = struct.unpack("!H", ip[2:4])[0]
        udp = frame[34 : 14 + total_len]
        sport, _, udp_len, udp_sum = struct.unpack("!HHHH", udp[:8])
        assert udp_len == len(udp)
        if udp_sum:
            pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, udp_len)
            assert checksum_ok(pseudo + udp)
        src = ".".join(str(b) for b in ip[12:16])
        out.append((sec + usec / 1e6, (src, sport), udp[8:]))
    return out


def feed(
    ingest: RtpIngest, records: list[tuple[float, tuple[str, int], bytes]]
) -> list[IngestOutput]:
    out: list[IngestOutput] = []
    for t, src, payload in records:
        out.extend(ingest.receive_datagram(payload, src, t))
        out.extend(ingest.poll(t))
    return out


def audio_of(outputs: list[IngestOutput], call_id: str) -> NDArray[np.int16]:
    chunks = [o for o in outputs if isinstance(o, AudioChunk) and o.call_id == call_id]
    position = 0
    for c in chunks:  # the timeline has no holes and no overlaps
        assert c.t == pytest.approx(position / 8000)
        assert c.sample_rate == 8000 and c.pcm.dtype == np.int16
        position += c.pcm.size
    return np.concatenate([c.pcm for c in chunks])


# -- packet codec -------------------------------------------------------------------------


def test_parse_hand_assembled_header() -> None:
    # RFC 3550 5.1 layout, assembled field by field: V=2 P=1 X=1 CC=2 | M=1 PT=8 | ...
    data = bytes.fromhex(
        "b2"
        "88"
        "fffe"
        "deadbeef"
        "01020304"  # V/P/X/CC, M/PT, seq, ts, ssrc
        "0000000a"
        "0000000b"  # two CSRCs
        "bede"
        "0001"
        "12345678"  # extension: profile, 1 word, data
        "d5d5d5"  # payload
        "000003"  # 3 bytes of padding
    )
    p = RtpPacket.parse(data)
    assert (p.version, p.padding, p.marker, p.payload_type) == (2, 3, True, 8)
    assert (p.sequence, p.timestamp, p.ssrc) == (0xFFFE, 0xDEADBEEF, 0x01020304)
    assert p.csrc == (10, 11)
    assert p.extension == RtpExtension(0xBEDE, bytes.fromhex("12345678"))
    assert p.payload == b"\xd5\xd5\xd5"
    assert p.serialize() == data
    text = repr(p)
    for part in ("pt=8 PCMA", "seq=65534", "ts=3735928559", "ssrc=0x01020304", "3 bytes"):
        assert part in text


def random_packet(rng: random.Random) -> RtpPacket:
    ext = None
    if rng.random() < 0.5:
        ext = RtpExtension(rng.randrange(65536), rng.randbytes(4 * rng.randrange(4)))
    return RtpPacket(
        payload_type=rng.randrange(128),
        sequence=rng.randrange(65536),
        timestamp=rng.randrange(2**32),
        ssrc=rng.randrange(2**32),
        payload=rng.randbytes(rng.randrange(200)),
        marker=rng.random() < 0.5,
        csrc=tuple(rng.randrange(2**32) for _ in range(rng.randrange(16))),
        extension=ext,
        padding=rng.choice([0, 0, 1, 4, 255]),
    )


def test_round_trip_random_packets() -> None:
    rng = random.Random(11)
    for _ in range(500):
        p = random_packet(rng)
        data = p.serialize()
        assert RtpPacket.parse(data) == p
        assert RtpPacket.parse(data).serialize() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "too short: 3 bytes"),
        (bytes([0x40]) + bytes(11), "version 1 is not 2"),
        (bytes([0x83]) + bytes(11) + bytes(8), "CSRC count 3 needs 24 bytes but the packet has 20"),
        (bytes([0x90]) + bytes(11) + b"\xbe", "extension header at byte 12"),
        (
            bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4),
            "extension length 2 words needs 24",
        ),
        (bytes([0xA0]) + bytes(11) + b"\x01\x00", "padding length 0 invalid"),
        (bytes([0xA0]) + bytes(11) + b"\x01\x09", "padding length 9 invalid: 2 bytes"),
        (bytes([0xA0]) + bytes(11), "padding length 0 invalid: 0 bytes"),
    ],
)
def test_malformed_packets_raise_precise_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        RtpPacket.parse(data)


def test_fuzzed_datagrams_never_crash_the_ingest() -> None:
    rng = random.Random(5)
    ingest = RtpIngest()
    valid = [random_packet(rng).serialize() for _ in range(50)]
    for k in range(3000):
        base = bytearray(rng.choice(valid))
        if k % 3 == 0:
            base = base[: rng.randrange(len(base) + 1)]
        for _ in range(rng.randrange(4)):
            if base:
                base[rng.randrange(len(base))] = rng.randrange(256)
        for o in ingest.receive_datagram(bytes(base), ("198.51.100.1", 1000 + k % 7), k * 0.02):
            assert isinstance(o, AudioChunk | LegStarted | LegEnded | Dtmf | ProtocolViolation)


def test_rtcp_is_recognised() -> None:
    sr = struct.pack("!BBHI", 0x80, 200, 6, 1) + bytes(20)
    rr = struct.pack("!BBHI", 0x81, 201, 7, 1) + bytes(24)
    assert is_rtcp(sr) and is_rtcp(rr)
    for pt in (0, 8, 18, 101, 127):
        for marker in (False, True):
            packet = RtpPacket(payload_type=pt, sequence=1, timestamp=1, ssrc=1, marker=marker)
            assert not is_rtcp(packet.serialize())
    ingest = RtpIngest()
    assert ingest.receive_datagram(sr, ADDR, 0.0) == [] and ingest.rtcp_ignored == 1


# -- the committed captures ---------------------------------------------------------------


def test_clean_capture_decodes_to_the_sent_audio() -> None:
    records = read_pcap(DATA / "pcmu_8k_angry.pcap")
    packets = [RtpPacket.parse(payload) for _, _, payload in records]
    seqs = [p.sequence for p in packets]
    assert 65535 in seqs and 0 in seqs  # the capture wraps both counters
    assert any(p.timestamp < packets[0].timestamp for p in packets)
    assert all(len(p.payload) == 160 and p.payload_type == 0 for p in packets)
    assert [t for t, _, _ in records] == pytest.approx(
        [0.02 * i + records[0][0] for i in range(len(records))]
    )

    ingest = RtpIngest()
    out = feed(ingest, records)
    started = [o for o in out if isinstance(o, LegStarted)]
    assert started == [
        LegStarted(
            "rtp-10.0.0.1-40000-5eed0001",
            "customer",
            sample_rate=8000,
            info={"ssrc": 0x5EED0001, "remote": "10.0.0.1:40000", "codec": "PCMU"},
        )
    ]
    end = ingest.poll(records[-1][0] + 5.0)
    assert isinstance(end[-1], LegEnded) and end[-1].reason == "timeout"
    audio = audio_of(out + end, started[0].call_id)
    np.testing.assert_array_equal(audio, ulaw_ref(b"".join(p.payload for p in packets)))
    assert ingest.n_legs == 0


@pytest.mark.data
def test_clean_capture_matches_the_source_clip() -> None:
    manifest = json.loads((DATA / "impaired_mixed.json").read_text())
    clip = SHARED / manifest["source"]
    if not clip.exists():
        pytest.skip(f"shared data not found at {clip}")
    import soundfile as sf

    source, _ = sf.read(clip, dtype="int16")
    payload = b"".join(
        RtpPacket.parse(p).payload for _, _, p in read_pcap(DATA / "pcmu_8k_angry.pcap")
    )
    decoded = ulaw_ref(payload)[: source.size].astype(np.float64)
    # mu-law keeps about 38 dB SNR on speech; a wrong clip or codec would be far off.
    err = decoded - source
    snr_db = 10 * np.log10(np.sum(source.astype(np.float64) ** 2) / np.sum(err**2))
    assert snr_db > 30


def test_impaired_capture_replay() -> None:
    m = json.loads((DATA / "impaired_mixed.json").read_text())
    clean = [RtpPacket.parse(p) for _, _, p in read_pcap(DATA / "pcmu_8k_angry.pcap")]
    records = read_pcap(DATA / "impaired_mixed.pcap")
    ingest = RtpIngest(leg_timeout_s=5.0, jitter_depth_packets=3)
    out = feed(ingest, records)
    last_b = max(t for t, src, _ in records if src == ("10.0.0.3", 40002))
    assert ingest.poll(last_b + 4.99) == []  # network silence shorter than the timeout
    out += ingest.poll(records[-1][0] + 5.0)

    id_a = f"rtp-10.0.0.1-40000-{m['leg_a']['ssrc']:08x}"
    id_b = f"rtp-10.0.0.3-40002-{m['leg_b']['ssrc']:08x}"
    started = {o.call_id: o.info for o in out if isinstance(o, LegStarted)}
    assert started == {
        id_a: {"ssrc": m["leg_a"]["ssrc"], "remote": "10.0.0.1:40000", "codec": "PCMU"},
        id_b: {"ssrc": m["leg_b"]["ssrc"], "remote": "10.0.0.3:40002", "codec": "PCMA"},
    }
    ended = [(o.call_id, o.reason) for o in out if isinstance(o, LegEnded)]
    assert sorted(ended) == [(id_a, "timeout"), (id_b, "timeout")]
    violations = [o.message for o in out if isinstance(o, ProtocolViolation)]
    assert len(violations) == len(m["junk"])
    for needle in ("too short", "version 1", "unsupported payload type 18", "CSRC count 15"):
        assert sum(needle in v for v in violations) == 1, (needle, violations)
    dtmf = [o for o in out if isinstance(o, Dtmf)]
    n = m["packet_samples"]
    assert dtmf == [Dtmf(id_a, "customer", m["dtmf_digit"], m["dtmf_packets"][0] * n / 8000)]
    assert ingest.rtcp_ignored == m["rtcp_packets"]

    # Leg A, rebuilt from the clean stream by the documented rules: a run of lost
    # packets starts with the last good packet at half level, then silence; DTMF
    # packets carry no audio, so their time is silence.
    n_a = m["leg_a"]["n_packets"]
    sent = [ulaw_ref(p.payload).astype(np.int64) for p in clean[:n_a]]
    lost = set(m["dropped"]) | set(m["late"])
    expected: list[NDArray[np.int64]] = []
    for i in range(n_a):
        if i in m["dtmf_packets"]:
            expected.append(np.zeros(n, np.int64))
        elif i in lost:
            prev_lost = i - 1 in lost
            expected.append(np.zeros(n, np.int64) if prev_lost else np.round(sent[i - 1] * 0.5))
        else:
            expected.append(sent[i])
    np.testing.assert_array_equal(audio_of(out, id_a), np.concatenate(expected))

    leg_b = [RtpPacket.parse(p) for _, src, p in records if src == ("10.0.0.3", 40002)]
    np.testing.assert_array_equal(audio_of(out, id_b), alaw_ref(b"".join(p.payload for p in leg_b)))

    stats = ingest.leg_stats(id_a)
    assert stats is not None
    assert stats.lost == len(lost)
    assert stats.late == len(m["late"])
    assert stats.duplicates == len(m["duplicated"])
    assert stats.reordered == len(m["swapped"])


# -- the per-packet fast path ---------------------------------------------------------------


class GeneralPathOnly(RtpIngest):
    """RtpIngest with its fast path turned off: every datagram is parsed into an
    RtpPacket and decoded on its own (the reference the fast path must match)."""

    def _receive(self, data: bytes, addr: Any, now: float, out: list[IngestOutput]) -> None:
        self._receive_general(data, addr, now, out)


def assert_same_outputs(got: list[IngestOutput], want: list[IngestOutput]) -> None:
    assert [type(o) for o in got] == [type(o) for o in want]
    for g, w in zip(got, want, strict=True):
        if isinstance(g, AudioChunk) and isinstance(w, AudioChunk):
            assert (g.call_id, g.party, g.t, g.sample_rate) == (
                w.call_id,
                w.party,
                w.t,
                w.sample_rate,
            )
            assert g.pcm.dtype == w.pcm.dtype == np.int16
            np.testing.assert_array_equal(g.pcm, w.pcm)
        else:
            assert g == w


def replay_both(records: list[tuple[float, tuple[str, int], bytes]]) -> RtpIngest:
    fast, general = RtpIngest(max_legs=8), GeneralPathOnly(max_legs=8)
    got, want = feed(fast, records), feed(general, records)
    end = records[-1][0] + 10.0
    assert_same_outputs(got + fast.poll(end), want + general.poll(end))
    assert fast.packets_lost_total() == general.packets_lost_total()
    assert fast.rtcp_ignored == general.rtcp_ignored
    return fast


@pytest.mark.parametrize("capture", ["pcmu_8k_angry.pcap", "impaired_mixed.pcap"])
def test_fast_path_matches_the_general_path_on_the_captures(capture: str) -> None:
    replay_both(read_pcap(DATA / capture))


def shuffled_mixed_records() -> list[tuple[float, tuple[str, int], bytes]]:
    """Legs in both codecs (one switching codec midway), counters wrapping, packets
    reordered, duplicated and dropped, an empty payload, comfort noise, DTMF, a sender
    restart, more legs than allowed (8), and fuzzed junk in between."""
    rng = random.Random(11)
    streams: list[list[bytes]] = [
        stream(0x100, 120, seq0=65500, ts0=2**32 - 4000),
        stream(0x200, 120, pt=8),
        stream(0x300, 60) + stream(0x300, 60, pt=8, seq0=60, ts0=60 * 160),
        stream(0x400, 60) + stream(0x400, 60, seq0=30000, ts0=123456),  # restart
    ] + [stream(0x500 + i, 20) for i in range(8)]  # more than max_legs=8 in all
    extras = [
        RtpPacket(payload_type=0, sequence=7, timestamp=1120, ssrc=0x100),
        RtpPacket(payload_type=13, sequence=9, timestamp=1440, ssrc=0x200, payload=b"\x40"),
        RtpPacket(payload_type=101, sequence=11, timestamp=1760, ssrc=0x100, payload=bytes(4)),
        RtpPacket(payload_type=0, sequence=12, timestamp=1920, ssrc=0x100, marker=True),
    ]
    valid = [random_packet(rng).serialize() for _ in range(30)]
    arrivals: list[bytes] = []
    for packets in zip(*[s[:20] for s in streams], strict=True):
        arrivals.extend(packets)
    for s in streams[:4]:
        arrivals.extend(s[20:])
    arrivals += [e.serialize() for e in extras]
    for _ in range(200):
        junk = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(3)):
            if junk:
                junk[rng.randrange(len(junk))] = rng.randrange(256)
        arrivals.append(bytes(junk))
    disorder(arrivals, rng, swap=0.05, duplicate=0.03, drop=0.02, blank=lambda _: b"")
    return [(i * 0.001, ("198.51.100.7", 5004), a) for i, a in enumerate(arrivals)]


def disorder(
    items: list[T],
    rng: random.Random,
    *,
    swap: float,
    duplicate: float,
    drop: float,
    blank: Callable[[T], T],
) -> None:
    """Local disorder, as a network makes it, in place: each item is swapped with the
    next, replaced by the next (a duplicate) or blanked (a drop: an empty datagram
    keeps the list's length) with these probabilities."""
    for i in range(len(items) - 1):
        r = rng.random()
        if r < swap:
            items[i], items[i + 1] = items[i + 1], items[i]
        elif r < swap + duplicate:
            items[i] = items[i + 1]
        elif r < swap + duplicate + drop:
            items[i] = blank(items[i])


def test_fast_path_matches_the_general_path_on_shuffled_mixed_streams() -> None:
    records = shuffled_mixed_records()
    out = feed(RtpIngest(max_legs=8), records)
    assert sum(isinstance(o, AudioChunk) for o in out) > 300  # the fast path had work
    assert any("legs already open" in getattr(o, "message", "") for o in out)
    replay_both(records)


def test_coalesced_audio_is_the_per_packet_audio_held_until_taken() -> None:
    """``coalesce_audio``: the same audio, timeline and events as one chunk per packet;
    each leg's held audio comes out at ``take_audio`` (here every 37 datagrams) and
    before the leg's ``LegEnded``, whether that is a rename, a hang-up or a timeout."""
    records = shuffled_mixed_records()
    addr = records[0][1]
    plain, held = RtpIngest(max_legs=8), RtpIngest(max_legs=8, coalesce_audio=True)
    want: list[IngestOutput] = []
    got: list[IngestOutput] = []
    for i, (now, peer, data) in enumerate(records):
        want += plain.receive_datagram(data, peer, now)
        got += held.receive_datagram(data, peer, now)
        if i % 37 == 0:
            assert plain.take_audio() == []
            got += held.take_audio()
        if i == 700:  # a running leg renamed, another hung up
            want += plain.name_leg(addr, 0x100, "renamed", "agent")
            got += held.name_leg(addr, 0x100, "renamed", "agent")
            want += plain.end_leg(addr, 0x200)
            got += held.end_leg(addr, 0x200)
    end = records[-1][0] + 10.0
    want += plain.poll(end)
    got += held.poll(end)
    assert held.take_audio() == []  # the timeouts handed everything out

    def events(out: list[IngestOutput]) -> list[IngestOutput]:
        return [o for o in out if not isinstance(o, AudioChunk)]

    assert events(got) == events(want)
    assert any(isinstance(o, LegEnded) and o.reason == "renamed" for o in got)
    names = {(o.call_id, o.party) for o in want if isinstance(o, AudioChunk)}
    assert len(names) >= 5
    n_held = sum(isinstance(o, AudioChunk) for o in got)
    assert n_held < sum(isinstance(o, AudioChunk) for o in want) / 3
    for name in names:
        plain_chunks = [
            o for o in want if isinstance(o, AudioChunk) and (o.call_id, o.party) == name
        ]
        held_chunks = [o for o in got if isinstance(o, AudioChunk) and (o.call_id, o.party) == name]
        assert len(held_chunks) <= len(plain_chunks)
        np.testing.assert_array_equal(
            np.concatenate([c.pcm for c in held_chunks]),
            np.concatenate([c.pcm for c in plain_chunks]),
        )
        # every held chunk starts where a per-packet chunk started, at the same time
        assert {c.t for c in held_chunks} <= {c.t for c in plain_chunks}
        # nothing of a leg comes after its end
        ended = [
            i for i, o in enumerate(got) if isinstance(o, LegEnded) and (o.call_id, o.party) == name
        ]
        last_audio = max(i for i, o in enumerate(got) if o in held_chunks)
        assert ended and last_audio < ended[0]


# -- leg bookkeeping ----------------------------------------------------------------------


def stream(ssrc: int, n: int, *, pt: int = 0, seq0: int = 0, ts0: int = 0) -> list[bytes]:
    rng = np.random.default_rng(ssrc)
    return [
        RtpPacket(
            payload_type=pt,
            sequence=(seq0 + i) % 65536,
            timestamp=(ts0 + 160 * i) % 2**32,
            ssrc=ssrc,
            payload=rng.integers(0, 256, 160, dtype=np.uint8).tobytes(),
        ).serialize()
        for i in range(n)
    ]


def test_one_leg_per_address_and_ssrc() -> None:
    ingest = RtpIngest(jitter_depth_packets=0)
    a, b = stream(1, 3), stream(2, 3)
    out: list[IngestOutput] = []
    for i in range(3):
        out += ingest.receive_datagram(a[i], ADDR, i * 0.02)
        out += ingest.receive_datagram(b[i], ADDR, i * 0.02)
        out += ingest.receive_datagram(a[i], ("192.0.2.11", 5004), i * 0.02)
    ids = [o.call_id for o in out if isinstance(o, LegStarted)]
    assert ids == [
        "rtp-192.0.2.10-5004-00000001",
        "rtp-192.0.2.10-5004-00000002",
        "rtp-192.0.2.11-5004-00000001",
    ]
    assert ingest.n_legs == 3
    chunks = [o for o in out if isinstance(o, AudioChunk)]
    assert len(chunks) == 9  # depth 0: every packet comes straight out


def test_name_leg_before_first_packet() -> None:
    ingest = RtpIngest()
    assert ingest.name_leg(ADDR, None, "call-42", "agent") == []
    out = ingest.receive_datagram(stream(9, 1)[0], ADDR, 0.0)
    assert out == [
        LegStarted(
            "call-42", "agent", 8000, info={"ssrc": 9, "remote": "192.0.2.10:5004", "codec": "PCMU"}
        )
    ]


def test_name_leg_after_start_hands_over_on_the_same_timeline() -> None:
    ingest = RtpIngest(jitter_depth_packets=2)
    packets = stream(3, 10)
    out: list[IngestOutput] = []
    for i, p in enumerate(packets[:6]):
        out += ingest.receive_datagram(p, ADDR, i * 0.02)
    old_id = "rtp-192.0.2.10-5004-00000003"
    handover = ingest.name_leg(ADDR, 3, "call-7", "customer")
    assert handover[0] == LegEnded(old_id, "customer", reason="renamed")
    assert isinstance(handover[1], LegStarted) and handover[1].call_id == "call-7"
    assert handover[1].t == pytest.approx(4 * 160 / 8000)  # 4 packets released so far
    for i, p in enumerate(packets[6:], start=6):
        out += ingest.receive_datagram(p, ADDR, i * 0.02)
    out += ingest.close()
    new = [o for o in out if isinstance(o, AudioChunk) and o.call_id == "call-7"]
    assert new[0].t == pytest.approx(4 * 160 / 8000)
    assert sum(c.pcm.size for c in new) == 6 * 160
    assert out[-1] == LegEnded("call-7", "customer", reason="shutdown")


def test_unsupported_payload_type_on_a_running_leg() -> None:
    ingest = RtpIngest(jitter_depth_packets=0)
    packets = stream(4, 3)
    odd = RtpPacket(payload_type=18, sequence=1, timestamp=160, ssrc=4, payload=bytes(20))
    out = ingest.receive_datagram(packets[0], ADDR, 0.0)
    out += ingest.receive_datagram(odd.serialize(), ADDR, 0.02)
    out += ingest.receive_datagram(packets[2], ADDR, 0.04)
    messages = [o.message for o in out if isinstance(o, ProtocolViolation)]
    assert len(messages) == 1 and messages[0].startswith("unsupported payload type 18")
    stats = ingest.leg_stats("rtp-192.0.2.10-5004-00000004")
    assert stats is not None and stats.lost == 0
    # The dropped packet's 20 ms are silence, so the last packet sits at its true time.
    chunks = [o for o in out if isinstance(o, AudioChunk)]
    assert chunks[-1].t == pytest.approx(0.02) and chunks[-1].pcm.size == 320
    assert not chunks[-1].pcm[:160].any()


def test_comfort_noise_is_silent_and_pcma_decodes() -> None:
    ingest = RtpIngest(jitter_depth_packets=0)
    packets = stream(5, 3, pt=8)
    cn = RtpPacket(payload_type=13, sequence=1, timestamp=160, ssrc=5, payload=b"\x40")
    out = ingest.receive_datagram(packets[0], ADDR, 0.0)
    out += ingest.receive_datagram(cn.serialize(), ADDR, 0.02)
    out += ingest.receive_datagram(packets[2], ADDR, 0.04)
    assert not any(isinstance(o, ProtocolViolation) for o in out)
    audio = audio_of(out, "rtp-192.0.2.10-5004-00000005")
    expected = np.concatenate(
        [
            alaw_ref(RtpPacket.parse(packets[0]).payload),
            np.zeros(160, np.int16),
            alaw_ref(RtpPacket.parse(packets[2]).payload),
        ]
    )
    np.testing.assert_array_equal(audio, expected)


def test_timeout_needs_silence_from_that_leg_only() -> None:
    ingest = RtpIngest(leg_timeout_s=5.0, jitter_depth_packets=0)
    a, b = stream(1, 400), stream(2, 1)
    out = ingest.receive_datagram(b[0], ("192.0.2.20", 7000), 0.0)
    for i, p in enumerate(a):
        out += ingest.receive_datagram(p, ADDR, i * 0.02)
        out += ingest.poll(i * 0.02)
    ended = [o for o in out if isinstance(o, LegEnded)]
    assert ended == [LegEnded("rtp-192.0.2.20-7000-00000002", "customer", reason="timeout")]
    assert ingest.n_legs == 1


def test_max_legs() -> None:
    ingest = RtpIngest(max_legs=2)
    out: list[Any] = []
    for ssrc in (1, 2, 3):
        out += ingest.receive_datagram(stream(ssrc, 1)[0], ADDR, 0.0)
    assert ingest.n_legs == 2
    assert "2 legs already open" in out[-1].message


# -- the thin asyncio adapter, over real loopback UDP -------------------------------------


def test_datagram_adapter_over_loopback() -> None:
    import asyncio
    import socket

    from emotion_engine.ingest.rtp import RtpDatagramProtocol

    packets = [p for _, _, p in read_pcap(DATA / "pcmu_8k_angry.pcap")][:40]

    async def main() -> list[IngestOutput]:
        received: list[IngestOutput] = []
        done = asyncio.Event()

        def on_output(out: list[IngestOutput]) -> None:
            received.extend(out)
            if any(isinstance(o, LegEnded) for o in out):
                done.set()

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: RtpDatagramProtocol(
                RtpIngest(leg_timeout_s=0.3), on_output, poll_interval_s=0.05
            ),
            local_addr=("127.0.0.1", 0),
        )
        port = transport.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            for p in packets:
                client.sendto(p, ("127.0.0.1", port))
            client_port = client.getsockname()[1]
            await asyncio.wait_for(done.wait(), timeout=10)  # the leg times out
        transport.close()
        assert received[0] == LegStarted(
            f"rtp-127.0.0.1-{client_port}-5eed0001",
            "customer",
            8000,
            info={"ssrc": 0x5EED0001, "remote": f"127.0.0.1:{client_port}", "codec": "PCMU"},
        )
        return received

    out = asyncio.run(main())
    audio = np.concatenate([o.pcm for o in out if isinstance(o, AudioChunk)])
    np.testing.assert_array_equal(
        audio, ulaw_ref(b"".join(RtpPacket.parse(p).payload for p in packets))
    )
    assert [o.reason for o in out if isinstance(o, LegEnded)] == ["timeout"]


# -- receive_batch: a tick's datagrams at once ---------------------------------------------


def multi_peer_records() -> list[tuple[float, tuple[Any, ...], bytes]]:
    """Legs from many peers, as a media gateway sends them: interleaved, locally
    disordered (swaps, duplicates, drops), counters wrapping, one leg switching codec,
    one restarting, one changing packet size, one IPv6 peer (4-field address), two legs
    on one peer, more legs than allowed; plus a peer that also sends DTMF, comfort
    noise, RTCP and junk among its audio, and one padded packet."""
    rng = random.Random(5)
    legs: list[tuple[tuple[Any, ...], list[bytes]]] = [
        (("198.51.100.1", 4000), stream(0x100, 150, seq0=65450, ts0=2**32 - 9000)),
        (("198.51.100.1", 4002), stream(0x200, 150, pt=8)),
        # a second SSRC on the same peer, whose sequence numbers jump (timestamps do not)
        (("198.51.100.1", 4002), stream(0x201, 75) + stream(0x201, 75, seq0=40000, ts0=12000)),
        (
            ("198.51.100.2", 4000),
            stream(0x300, 70) + stream(0x300, 80, pt=8, seq0=70, ts0=70 * 160),
        ),
        (("198.51.100.3", 4000), stream(0x400, 70) + stream(0x400, 80, seq0=9000, ts0=77777)),
        (("2001:db8::5", 4000, 0, 0), stream(0x500, 150)),
        (("198.51.100.4", 4000), stream(0x600, 150)),  # becomes the odd peer
    ] + [(("198.51.100.9", 5000 + i), stream(0x700 + i, 40)) for i in range(4)]
    # leg 0x800: 20 ms packets, then 30 ms ones (a different size mid-stream)
    legs.append(
        (
            ("198.51.100.5", 4000),
            stream(0x800, 60)
            + [
                RtpPacket(
                    payload_type=0,
                    sequence=60 + i,
                    timestamp=60 * 160 + 240 * i,
                    ssrc=0x800,
                    payload=bytes(range(240)),
                ).serialize()
                for i in range(60)
            ],
        )
    )
    # one padded packet of the usual size (156 samples and 4 bytes of padding)
    padded = RtpPacket(0, 50, 50 * 160, 0x500, payload=bytes(range(156)), padding=4)
    legs[5][1][50] = padded.serialize()
    odd = ("198.51.100.4", 4000)
    arrivals: list[tuple[tuple[Any, ...], bytes]] = []
    longest = max(len(packets) for _, packets in legs)
    for k in range(longest):
        for peer, packets in legs:
            if k < len(packets):
                arrivals.append((peer, packets[k]))
        if k in (30, 90):
            seq, ts = (k + 1) % 65536, (k + 1) * 160
            arrivals += [
                (odd, RtpPacket(101, seq, ts, 0x600, payload=bytes(4)).serialize()),
                (odd, RtpPacket(13, seq, ts, 0x600, payload=b"\x40").serialize()),
                (odd, bytes([0x80, 200, 0, 6]) + bytes(24)),  # RTCP sender report
                (odd, rng.randbytes(rng.randrange(1, 40))),
            ]
    disorder(arrivals, rng, swap=0.04, duplicate=0.02, drop=0.02, blank=lambda a: (a[0], b""))
    return [(i * 0.0005, peer, data) for i, (peer, data) in enumerate(arrivals)]


def as_batch(
    records: list[tuple[float, tuple[Any, ...], bytes]], stride: int = 512
) -> tuple[NDArray[np.uint8], list[int], list[tuple[Any, ...]]]:
    """Datagrams as the server's reader lays them out: one row of ``stride`` each."""
    buf = np.zeros((len(records), stride), np.uint8)
    for i, (_, _, data) in enumerate(records):
        buf[i, : len(data)] = np.frombuffer(data, np.uint8)
    return buf, [len(d) for _, _, d in records], [peer for _, peer, _ in records]


def test_receive_batch_is_receive_datagram_of_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 1-400 datagrams (a tick's worth at hundreds of legs) give every leg the
    same events, the same held audio at each take and the same counters as one
    datagram at a time; most packets took the run path (few per-packet pushes)."""
    from emotion_engine.ingest import jitter

    pushes = 0
    push = jitter.JitterBuffer.push

    def counting_push(self: jitter.JitterBuffer, *args: Any) -> Any:
        nonlocal pushes
        pushes += 1
        return push(self, *args)

    monkeypatch.setattr(jitter.JitterBuffer, "push", counting_push)
    records = multi_peer_records()
    rng = random.Random(3)
    one = RtpIngest(max_legs=11, coalesce_audio=True)
    batched = RtpIngest(max_legs=11, coalesce_audio=True)
    want: list[IngestOutput] = []
    got: list[IngestOutput] = []
    pushes_one = 0
    i = 0
    while i < len(records):
        batch = records[i : i + rng.randrange(1, 400)]
        now = batch[-1][0]
        before = pushes
        for _, peer, data in batch:
            want += one.receive_datagram(data, peer, now)
        pushes_one += pushes - before
        got += batched.receive_batch(*as_batch(batch), now)
        want += one.take_audio()
        got += batched.take_audio()
        i += len(batch)
    end = records[-1][0] + 10.0
    want += one.poll(end)
    got += batched.poll(end)

    def of_leg(out: list[IngestOutput], name: str) -> list[IngestOutput]:
        return [o for o in out if getattr(o, "call_id", None) == name]

    names = {o.call_id for o in want if isinstance(o, LegStarted)}
    assert len(names) == 11  # max_legs: the 12th leg was refused
    assert names == {o.call_id for o in got if isinstance(o, LegStarted)}
    for name in names:
        assert_same_outputs(of_leg(got, name), of_leg(want, name))
        assert batched.leg_stats(name) == one.leg_stats(name)

    def violations(out: list[IngestOutput]) -> list[str]:
        return sorted(o.message for o in out if isinstance(o, ProtocolViolation))

    assert violations(got) == violations(want)
    assert any("legs already open" in m for m in violations(want))
    assert any(isinstance(o, Dtmf) for o in got)
    assert batched.rtcp_ignored == one.rtcp_ignored > 0
    assert batched.packets_lost_total() == one.packets_lost_total() > 0
    assert pushes - pushes_one < pushes_one / 2  # the run path did most of the work


def test_receive_batch_of_nothing() -> None:
    assert RtpIngest().receive_batch(np.zeros((0, 512), np.uint8), [], [], 0.0) == []
