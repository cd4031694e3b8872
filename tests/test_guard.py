"""The guards of listeners that cannot authenticate (ingest/guard.py) and the RTP
core's probation, each checked with bytes and a clock the test passes in."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from emotion_engine.clients import rtp_packets
from emotion_engine.errors import ConfigError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import IngestOutput, LegStarted, ProtocolViolation
from emotion_engine.ingest.guard import (
    RateLimitedLog,
    SourceAllowList,
    SourceRateLimit,
    parse_networks,
)
from emotion_engine.ingest.rtp import RtpIngest, RtpPacket

SRC = ("198.51.100.7", 5004)


def test_allow_list_matches_networks_and_mapped_addresses() -> None:
    allow = SourceAllowList(parse_networks("10.0.0.0/8, 192.0.2.7", setting="media_allow"))
    assert allow.allowed("10.1.2.3") and allow.allowed("192.0.2.7")
    assert allow.allowed("::ffff:10.9.9.9")  # an IPv4 peer on a dual-stack socket
    assert not allow.allowed("192.0.2.8") and not allow.allowed("not-an-address")
    assert SourceAllowList().allowed("203.0.113.1")  # empty: everyone
    with pytest.raises(ConfigError, match=r"media_allow: '10\.0\.0\.300' is not an address"):
        parse_networks("10.0.0.300", setting="media_allow")


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    limit = SourceRateLimit(rate_per_s=2.0, burst=3)
    assert [limit.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.take("b", 0.0)  # another source has its own bucket
    assert not limit.take("a", 0.4)  # 0.8 of a token refilled
    assert limit.take("a", 0.5)  # one token after 0.5 s at 2/s
    assert [limit.take("a", 100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_rate_limited_log_one_line_per_cause_and_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RateLimitedLog(logging.getLogger("test.guard"), interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger="test.guard"):
        for i in range(1000):
            log.log("flood", f"packet {i} dropped", now=i * 0.001)
        log.log("other", "something else", now=0.5)
        log.flush(now=5.0)  # the interval is not over: nothing yet
        log.flush(now=10.0)
        log.log("flood", "packet 1000 dropped", now=10.5)  # within the new interval
        log.log("flood", "packet 1001 dropped", now=20.5)
    assert [r.getMessage() for r in caplog.records] == [
        "packet 0 dropped",
        "something else",
        "packet 999 dropped (and 998 more like it in the last 10 s)",
        "packet 1001 dropped (and 1 more like it in the last 10 s)",
    ]


def feed(core: RtpIngest, packets: list[bytes], addr: tuple[str, int], t0: float) -> list[Any]:
    out: list[IngestOutput] = []
    for i, data in enumerate(packets):
        out += core.receive_datagram(data, addr, t0 + i * 0.02)
    return out


def test_probation_holds_a_leg_until_its_packets_advance_in_step() -> None:
    """Each spoofed SSRC sends one packet (all read at one tick): no leg is announced,
    and past the probation table's size they are dropped. A real stream arriving while
    the table is still full takes the place of a quiet one and is announced after
    0.5 s of audio in step, with all of its audio from t = 0."""
    core = RtpIngest(probation_s=0.5, max_probation_legs=64)
    flood = [
        RtpPacket(payload_type=0, sequence=1, timestamp=0, ssrc=s, payload=bytes(160)).serialize()
        for s in range(1000)
    ]
    out = [o for data in flood for o in core.receive_datagram(data, SRC, 0.0)]
    assert not any(isinstance(o, LegStarted | AudioChunk) for o in out)
    assert core.n_probation == 64 and core.dropped == {"probation_full": 1000 - 64}
    assert {o.cause for o in out if isinstance(o, ProtocolViolation)} == {"rtp_probation_full"}

    pcm = (np.sin(np.arange(8000) / 8.0) * 8000).astype(np.int16)
    real = feed(core, rtp_packets(pcm=pcm, ssrc=0xBEEF), ("198.51.100.9", 7000), 0.3)
    assert core.legs_unproven == 1  # the flood leg heard from longest ago made room
    assert core.n_legs == 1 and core.n_probation == 63
    core.poll(2.0)  # a second of silence: the rest of the flood is forgotten
    assert core.n_probation == 0 and core.legs_unproven == 64 and core.n_legs == 1
    starts = [o for o in real if isinstance(o, LegStarted)]
    assert len(starts) == 1 and starts[0].t == 0.0
    chunks = [o for o in real if isinstance(o, AudioChunk)]
    assert real.index(starts[0]) < real.index(chunks[0]) and chunks[0].t == 0.0
    # announced on the packet that completed 0.5 s in step: 26 packets of 20 ms
    assert sum(1 for o in real[: real.index(starts[0])] if isinstance(o, AudioChunk)) == 0
    got = np.concatenate([c.pcm for c in chunks])
    np.testing.assert_array_equal(got, core_reference(pcm)[: got.size])


def core_reference(pcm: np.ndarray) -> np.ndarray:
    """The same stream through a core without probation: what must come out."""
    plain = RtpIngest()
    out = feed(plain, rtp_packets(pcm=pcm, ssrc=0xBEEF), ("198.51.100.9", 7000), 0.0)
    return np.concatenate([o.pcm for o in out if isinstance(o, AudioChunk)])


def test_random_headers_never_prove_a_leg() -> None:
    rng = np.random.default_rng(7)
    core = RtpIngest(probation_s=0.5)
    packets = [
        RtpPacket(
            payload_type=0,
            sequence=int(rng.integers(0, 65536)),
            timestamp=int(rng.integers(0, 2**32)),
            ssrc=0x42,
            payload=bytes(160),
        ).serialize()
        for _ in range(400)
    ]
    out = feed(core, packets, SRC, 0.0)
    assert not any(isinstance(o, LegStarted) for o in out)
    # forgotten after probation_max_packets (4 x 0.5 s of 10 ms packets), twice
    assert core.probation_max_packets == 200 and core.legs_unproven == 2


def test_new_legs_per_source_are_rate_limited() -> None:
    core = RtpIngest(new_legs=SourceRateLimit(rate_per_s=1.0, burst=5))
    one = [
        RtpPacket(payload_type=0, sequence=1, timestamp=0, ssrc=s, payload=bytes(160)).serialize()
        for s in range(50)
    ]
    out = [o for d in one for o in core.receive_datagram(d, SRC, 0.0)]
    assert sum(isinstance(o, LegStarted) for o in out) == 5
    assert core.dropped == {"new_leg_rate": 45}
    # another source is not held back by the first one's flood
    assert any(
        isinstance(o, LegStarted) for o in core.receive_datagram(one[0], ("192.0.2.1", 9), 0.0)
    )


def test_allow_list_drops_and_counts_other_sources() -> None:
    core = RtpIngest(allow=SourceAllowList(parse_networks("192.0.2.0/24", setting="media_allow")))
    data = RtpPacket(
        payload_type=0, sequence=1, timestamp=0, ssrc=1, payload=bytes(160)
    ).serialize()
    out = core.receive_datagram(data, SRC, 0.0)
    assert [type(o) for o in out] == [ProtocolViolation] and core.n_legs == 0
    assert core.dropped == {"source_not_allowed": 1}
    assert isinstance(core.receive_datagram(data, ("192.0.2.5", 4000), 0.0)[0], LegStarted)
