"""JitterBuffer against an in-memory fake network and a slow per-sample reference."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError
from emotion_engine.ingest.jitter import JitterBuffer, serial_delta

Packet = tuple[int, int, NDArray[np.int16]]  # (seq, timestamp, pcm)


def make_packets(
    signal: NDArray[np.int16], sizes: list[int], *, seq0: int, ts0: int
) -> list[Packet]:
    """Cut ``signal`` into packets of ``sizes`` samples (cycled), with wrapping counters."""
    packets: list[Packet] = []
    pos = 0
    k = 0
    while pos < signal.size:
        n = sizes[k % len(sizes)]
        packets.append(((seq0 + k) % 65536, (ts0 + pos) % 2**32, signal[pos : pos + n]))
        pos += n
        k += 1
    return packets


@dataclass
class FakeNetwork:
    """Delivers packets on a set pattern: drop some, send some twice, and deliver some
    after a later packet (``delay[i] = j``: packet i arrives right after packet j)."""

    drop: set[int] = field(default_factory=set)
    duplicate: set[int] = field(default_factory=set)
    delay: dict[int, int] = field(default_factory=dict)

    def deliver(self, packets: list[Packet]) -> list[Packet]:
        held: dict[int, list[int]] = {}
        order: list[int] = []
        for i in range(len(packets)):
            if i in self.drop:
                continue
            if i in self.delay:
                held.setdefault(self.delay[i], []).append(i)
            else:
                order.append(i)
            if i in self.duplicate:
                order.append(i)
            order.extend(held.pop(i, []))
        for rest in held.values():
            order.extend(rest)
        return [packets[i] for i in order]


def run(jb: JitterBuffer, delivered: list[Packet]) -> list[tuple[int, NDArray[np.int16]]]:
    out: list[tuple[int, NDArray[np.int16]]] = []
    for seq, ts, pcm in delivered:
        out.extend(jb.push(seq, ts, pcm))
    out.extend(jb.flush())
    return out


def reference(packets: list[Packet], missing: set[int], *, gain: float = 0.5) -> list[int]:
    """Slow path: the sent audio, each run of missing packets replaced by the last
    packet before it at ``gain`` (at most its length), then zeros."""
    out: list[int] = []
    last: list[int] = []
    k = 0
    while k < len(packets):
        if k not in missing:
            last = [int(v) for v in packets[k][2]]
            out.extend(last)
            k += 1
            continue
        gap = 0
        while k in missing:
            gap += packets[k][2].size
            k += 1
        for j in range(gap):
            out.append(round(last[j] * gain) if j < len(last) else 0)
    return out


def concat(released: list[tuple[int, NDArray[np.int16]]]) -> NDArray[np.int16]:
    return np.concatenate([p for _, p in released]) if released else np.zeros(0, np.int16)


def assert_contiguous(released: list[tuple[int, NDArray[np.int16]]]) -> None:
    for (ts_a, pcm_a), (ts_b, _) in itertools.pairwise(released):
        assert ts_b == ts_a + pcm_a.size


@pytest.fixture
def signal() -> NDArray[np.int16]:
    rng = np.random.default_rng(7)
    return rng.integers(-20000, 20000, size=160 * 120, dtype=np.int16)


def test_serial_delta_matches_rfc1982_definition() -> None:
    # RFC 1982 3.2: i1 < i2 iff (i1 < i2 and i2 - i1 < 2^(n-1)) or (i1 > i2 and i1 - i2 > 2^(n-1))
    rng = random.Random(3)
    half = 1 << 15
    pairs = [(65535, 0), (0, 65535), (10, 20), (40000, 7000)]
    pairs += [(rng.randrange(65536), rng.randrange(65536)) for _ in range(2000)]
    for i1, i2 in pairs:
        if i1 == i2 or abs(i1 - i2) == half:
            continue  # equal, or undefined in RFC 1982
        rfc_less = (i1 < i2 and i2 - i1 < half) or (i1 > i2 and i1 - i2 > half)
        assert (serial_delta(i1, i2, modulus=65536) < 0) == rfc_less, (i1, i2)
        assert (i2 + serial_delta(i1, i2, modulus=65536)) % 65536 == i1
    assert serial_delta(0, 2**32 - 160, modulus=2**32) == 160


def test_in_order_stream_is_delayed_by_depth_and_unchanged(signal: NDArray[np.int16]) -> None:
    packets = make_packets(signal, [160], seq0=100, ts0=5000)
    jb = JitterBuffer(depth_packets=3)
    for k, (seq, ts, pcm) in enumerate(packets):
        released = jb.push(seq, ts, pcm)
        # Nothing comes out until the buffer holds more than 3; then one per packet.
        assert len(released) == (0 if k < 3 else 1)
        if released:
            assert released[0][0] == packets[k - 3][1]
            np.testing.assert_array_equal(released[0][1], packets[k - 3][2])
    rest = jb.flush()
    assert [ts for ts, _ in rest] == [p[1] for p in packets[-3:]]
    assert jb.stats.lost == jb.stats.duplicates == jb.stats.reordered == jb.stats.late == 0


def test_fake_network_with_wrapping_counters(signal: NDArray[np.int16]) -> None:
    # Sequence wraps 65535 -> 0 after 6 packets, timestamp wraps 2^32 -> 0 after 10.
    packets = make_packets(signal, [160], seq0=65530, ts0=2**32 - 1600)
    net = FakeNetwork(drop={4, 5, 6, 40, 90}, duplicate={8, 9, 50}, delay={12: 14, 30: 31, 70: 72})
    jb = JitterBuffer(depth_packets=3)
    released = run(jb, net.deliver(packets))

    assert_contiguous(released)
    assert released[0][0] == 2**32 - 1600  # extended timestamps keep counting past 2^32
    assert released[-1][0] + released[-1][1].size == 2**32 - 1600 + signal.size
    out = concat(released)
    assert out.size == signal.size
    np.testing.assert_array_equal(out, reference(packets, {4, 5, 6, 40, 90}))
    s = jb.stats
    assert (s.lost, s.duplicates, s.reordered, s.late) == (5, 3, 3, 0)
    assert s.received == len(packets) - 5 + 3
    assert s.concealed_samples == 3 * 160  # one packet per run of loss
    assert s.silence_samples == 2 * 160  # the rest of the 3-packet burst


def test_packet_after_its_slot_is_late_and_concealed(signal: NDArray[np.int16]) -> None:
    packets = make_packets(signal, [160], seq0=0, ts0=0)
    net = FakeNetwork(delay={20: 25}, duplicate={25})  # 5 places > depth 3
    jb = JitterBuffer(depth_packets=3)
    out = concat(run(jb, net.deliver(packets)))
    np.testing.assert_array_equal(out, reference(packets, {20}))
    assert (jb.stats.late, jb.stats.lost, jb.stats.duplicates) == (1, 1, 1)
    # The same late packet again is a duplicate, not a second late one.
    assert jb.push(*packets[20]) == []
    assert (jb.stats.late, jb.stats.duplicates) == (1, 2)


@pytest.mark.parametrize("sizes", [[80], [240], [480], [80, 160, 240, 480, 160]])
def test_any_packet_size(signal: NDArray[np.int16], sizes: list[int]) -> None:
    packets = make_packets(signal, sizes, seq0=65000, ts0=2**32 - 3000)
    lost = {3, 11, 12}
    net = FakeNetwork(drop=lost, delay={7: 8}, duplicate={15})
    jb = JitterBuffer(depth_packets=2)
    released = run(jb, net.deliver(packets))
    assert_contiguous(released)
    out = concat(released)
    assert out.size == signal.size
    np.testing.assert_array_equal(out, reference(packets, lost))


def test_timestamp_jump_without_missing_sequence_is_silence() -> None:
    # DTX: the sender skips 0.5 s of timestamps but no sequence number.
    a = np.full(160, 1000, np.int16)
    jb = JitterBuffer(depth_packets=0)
    jb.push(1, 0, a)
    released = jb.push(2, 160 + 4000, a)
    assert [(ts, p.size) for ts, p in released] == [(160, 4000), (4160, 160)]
    assert not released[0][1].any()
    assert jb.stats.lost == 0 and jb.stats.silence_samples == 4000


def test_placeholder_packets_hold_their_sequence_number() -> None:
    a = np.full(160, 500, np.int16)
    jb = JitterBuffer(depth_packets=0)
    jb.push(1, 0, a)
    assert jb.push(2, 160, np.zeros(0, np.int16)) == []  # e.g. a DTMF event packet
    released = jb.push(3, 320, a)
    assert [(ts, p.size, int(np.abs(p).max())) for ts, p in released] == [
        (160, 160, 0),
        (320, 160, 500),
    ]
    assert jb.stats.lost == 0


def test_huge_timestamp_jump_resyncs_instead_of_filling() -> None:
    a = np.arange(160, dtype=np.int16)
    jb = JitterBuffer(depth_packets=0, max_gap_s=5.0)
    jb.push(1, 1000, a)
    released = jb.push(2, 1000 + 2**30, a)  # 37 hours later: a broken or restarted sender
    assert [(ts, p.size) for ts, p in released] == [(1160, 160)]
    released = jb.push(3, 1000 + 2**30 + 160, a)  # and it continues from there
    assert [(ts, p.size) for ts, p in released] == [(1320, 160)]
    assert jb.stats.resyncs == 1
    assert jb.extend_timestamp(1000 + 2**30 + 320) == 1480


def test_flush_then_old_packet_is_late(signal: NDArray[np.int16]) -> None:
    packets = make_packets(signal[:1600], [160], seq0=10, ts0=0)
    jb = JitterBuffer(depth_packets=5)
    for seq, ts, pcm in packets[:3]:
        assert jb.push(seq, ts, pcm) == []
    assert jb.pending == 3
    assert concat(jb.flush()).size == 480
    assert jb.pending == 0
    jb.push(*packets[5])  # leaves 3 and 4 missing
    jb.flush()
    assert jb.push(*packets[3]) == []
    assert jb.stats.late == 1 and jb.stats.lost == 2


@pytest.mark.parametrize(
    "kwargs", [{"depth_packets": -1}, {"clock_rate": 0}, {"plc_gain": 1.5}, {"max_gap_s": 0}]
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=str(next(iter(kwargs.values())))):
        JitterBuffer(**kwargs)  # type: ignore[arg-type]


def jitter_state(jb: JitterBuffer) -> tuple[object, ...]:
    """Everything that decides what a buffer does next (its private fields)."""
    return (
        {s: (ts, pcm.tolist()) for s, (ts, pcm) in jb._pending.items()},
        jb._max_ext_seq,
        jb._ref_ext_ts,
        jb._last_released_seq,
        jb._released_recent,
        jb._ts_shift,
        jb._next_ts,
        jb._first_ts,
        jb._last_pcm.tolist(),
        jb.stats,
    )


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_push_run_is_push_of_each_row(depth: int) -> None:
    """push_run of consecutive packets equals push of each, on a long stream (wrapping
    counters, > 2,048 released numbers so the history is trimmed) where the runs are
    now steady, now broken by loss, reordering, duplicates, a timestamp jump
    (silence), a sender restart (resync) and a placeholder; the state afterwards is
    equal too, so whatever comes next is handled alike."""
    rng = random.Random(depth)
    n = 80
    signal = np.random.default_rng(depth).integers(-30000, 30000, 6000 * n).astype(np.int16)
    packets = make_packets(signal, [n], seq0=65000, ts0=2**32 - 50 * n)
    delivered: list[Packet] = []
    k = 0
    while k < len(packets):
        r = rng.random()
        seq, ts, pcm = packets[k]
        if r < 0.02:
            k += rng.randrange(1, 4)  # loss
            continue
        if r < 0.03 and k + 1 < len(packets):  # reordered pair
            delivered += [packets[k + 1], packets[k]]
            k += 2
            continue
        if r < 0.035:
            delivered += [packets[k], packets[k]]  # duplicate
        elif r < 0.04:
            delivered.append((seq, (ts + 4000) % 2**32, pcm))  # DTX jump
        elif r < 0.042:
            delivered.append((seq, (ts + 2**30) % 2**32, pcm))  # restart: resync
        elif r < 0.045:
            delivered.append((seq, ts, np.zeros(0, np.int16)))  # placeholder
        else:
            delivered.append(packets[k])
        k += 1
    one, runs = JitterBuffer(depth_packets=depth), JitterBuffer(depth_packets=depth)
    by_one: list[tuple[int, NDArray[np.int16]]] = []
    by_runs: list[tuple[int, NDArray[np.int16]]] = []
    steady_runs = 0
    i = 0
    while i < len(delivered):
        # the longest run of consecutive packets from i, up to a random length
        j = i + 1
        limit = i + rng.randrange(1, 9)
        while (
            j < min(limit, len(delivered))
            and delivered[j][0] == (delivered[j - 1][0] + 1) % 65536
            and delivered[j][1] == (delivered[j - 1][1] + n) % 2**32
            and delivered[j][2].size == n == delivered[i][2].size
        ):
            j += 1
        run_packets = delivered[i:j]
        for seq, ts, pcm in run_packets:
            by_one += one.push(seq, ts, pcm)
        if run_packets[0][2].size == n:
            received = runs.stats.received
            pieces = runs.push_run(
                run_packets[0][0], run_packets[0][1], np.stack([p for _, _, p in run_packets])
            )
            steady_runs += len(run_packets) > 1 and runs.stats.received == received + len(
                run_packets
            )
            by_runs += pieces
        else:
            by_runs += runs.push(*run_packets[0])
        assert jitter_state(runs) == jitter_state(one)
        i = j
    by_one += one.flush()
    by_runs += runs.flush()
    assert_contiguous(by_runs)
    assert by_runs[0][0] == by_one[0][0]
    np.testing.assert_array_equal(concat(by_runs), concat(by_one))
    assert jitter_state(runs) == jitter_state(one)
    s = one.stats
    assert s.lost and s.late and s.duplicates and s.resyncs and s.silence_samples
    assert s.reordered or depth == 0  # with no depth, a reordered packet is late
    assert len(by_runs) < 0.9 * len(by_one)  # rows of a run came out joined
    assert steady_runs > 500


def test_push_run_rejects_a_flat_array() -> None:
    with pytest.raises(ValueError, match=r"\(k, n\)"):
        JitterBuffer().push_run(0, 0, np.zeros(160, np.int16))
