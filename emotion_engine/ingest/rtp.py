"""RTP over UDP (RFC 3550): packet codec and the sans-I/O core for one UDP port.

:class:`RtpPacket` parses and serialises one datagram. :class:`RtpIngest` turns the
datagrams arriving on one port into call legs: one leg per (source address, SSRC),
each with its own :class:`~emotion_engine.ingest.jitter.JitterBuffer`, G.711 decoded
to int16 at 8 kHz. Feed it with :meth:`RtpIngest.receive_datagram` and call
:meth:`RtpIngest.poll` now and then (e.g. every 0.5 s) so silent legs time out; it
never reads a clock itself, the caller passes ``now``.

What comes out (see :mod:`emotion_engine.ingest.base`): ``LegStarted`` on a leg's
first packet, ``AudioChunk`` as the jitter buffer releases audio (``t`` is the leg's
position from RTP timestamps, first released sample = 0, so loss and pauses keep the
timeline true), ``Dtmf`` for RFC 4733 telephone events, ``LegEnded(reason="timeout")``
after ``leg_timeout_s`` of network silence, and ``ProtocolViolation`` for every
datagram that cannot be used (it is dropped; nothing here raises on peer input).
RTCP multiplexed on the RTP port (RFC 5761: second byte 192-223) is ignored.
:class:`RtpDatagramProtocol` is the thin asyncio adapter around the core.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.g711 import ALAW_DECODE_TABLE, ULAW_DECODE_TABLE
from emotion_engine.errors import ConfigError, ProtocolError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
)
from emotion_engine.ingest.guard import SourceAllowList, SourceRateLimit
from emotion_engine.ingest.jitter import SEQ_MODULUS, TS_MODULUS, JitterBuffer, JitterStats

__all__ = [
    "PAYLOAD_CODECS",
    "RtpDatagramProtocol",
    "RtpExtension",
    "RtpIngest",
    "RtpPacket",
    "decode_payload",
    "is_rtcp",
]

RTP_VERSION: Final = 2
HEADER_SIZE: Final = 12
CLOCK_RATE: Final = 8000
PT_PCMU: Final = 0
PT_PCMA: Final = 8
PT_CN: Final = 13  # RFC 3389 comfort noise: a pause, not audio we can analyse
PAYLOAD_CODECS: Final[dict[int, str]] = {PT_PCMU: "PCMU", PT_PCMA: "PCMA"}
# Payload type -> G.711 decode table (code -> int16).
_DECODE_TABLES: Final[dict[int, NDArray[np.int16]]] = {
    PT_PCMU: ULAW_DECODE_TABLE,
    PT_PCMA: ALAW_DECODE_TABLE,
}
_UINT8: Final = np.dtype(np.uint8)
# First byte of the common packet: version 2, no padding, no extension, no CSRC.
_PLAIN_B0: Final = RTP_VERSION << 6
# RFC 4733 event codes 0-15 are the DTMF keys.
_DTMF_DIGITS: Final = "0123456789*#ABCD"
_HEADER: Final = struct.Struct("!BBHII")
_EXT_HEADER: Final = struct.Struct("!HH")
# A leg on probation this quiet may be forgotten to make room for a new one (the RTP
# port is read every 0.1 s engine tick, so a leg sending every 20 ms is never this quiet).
PROBATION_EVICT_SILENCE_S: Final = 0.25

Address = tuple[Any, ...]  # (host, port) or asyncio's IPv6 (host, port, flow, scope)


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """RFC 3550 header extension: 16-bit profile id and data (a multiple of 4 bytes)."""

    profile: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class RtpPacket:
    """One RTP packet. ``padding`` is the number of padding bytes (0 = none, else
    1-255, the last one holding the count); ``payload`` excludes the padding."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0
    version: int = RTP_VERSION

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raise :class:`ProtocolError` naming what is wrong."""
        size = len(data)
        if size < HEADER_SIZE:
            raise ProtocolError(f"RTP packet too short: {size} bytes, header needs {HEADER_SIZE}")
        b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise ProtocolError(f"RTP version {version} is not 2 (first byte 0x{b0:02x})")
        cc = b0 & 0x0F
        pos = HEADER_SIZE + 4 * cc
        if pos > size:
            raise ProtocolError(f"RTP CSRC count {cc} needs {pos} bytes but the packet has {size}")
        csrc = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE)
        extension = None
        if b0 & 0x10:
            if pos + _EXT_HEADER.size > size:
                raise ProtocolError(
                    f"RTP extension header at byte {pos} runs past the packet end ({size} bytes)"
                )
            profile, n_words = _EXT_HEADER.unpack_from(data, pos)
            ext_end = pos + _EXT_HEADER.size + 4 * n_words
            if ext_end > size:
                raise ProtocolError(
                    f"RTP extension length {n_words} words needs {ext_end} bytes "
                    f"but the packet has {size}"
                )
            extension = RtpExtension(profile, bytes(data[pos + _EXT_HEADER.size : ext_end]))
            pos = ext_end
        end = size
        padding = 0
        if b0 & 0x20:
            padding = data[-1] if size > pos else 0
            if padding == 0 or padding > size - pos:
                raise ProtocolError(
                    f"RTP padding length {padding} invalid: {size - pos} bytes follow the header"
                )
            end -= padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            padding=padding,
            version=version,
        )

    def serialize(self) -> bytes:
        """Wire bytes of this packet (padding bytes are zero but the last)."""
        _check_range("version", self.version, 3)
        _check_range("payload_type", self.payload_type, 0x7F)
        _check_range("sequence", self.sequence, 0xFFFF)
        _check_range("timestamp", self.timestamp, 0xFFFFFFFF)
        _check_range("ssrc", self.ssrc, 0xFFFFFFFF)
        _check_range("padding", self.padding, 0xFF)
        if len(self.csrc) > 15:
            raise ProtocolError(f"RTP allows at most 15 CSRCs, got {len(self.csrc)}")
        for value in self.csrc:
            _check_range("csrc", value, 0xFFFFFFFF)
        b0 = (self.version << 6) | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            _HEADER.pack(b0, b1, self.sequence, self.timestamp, self.ssrc),
            struct.pack(f"!{len(self.csrc)}I", *self.csrc),
        ]
        if self.extension is not None:
            ext = self.extension
            _check_range("extension profile", ext.profile, 0xFFFF)
            if len(ext.data) % 4:
                raise ProtocolError(
                    f"RTP extension data must be a multiple of 4 bytes, got {len(ext.data)}"
                )
            parts.append(_EXT_HEADER.pack(ext.profile, len(ext.data) // 4) + ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)

    def __repr__(self) -> str:
        codec = PAYLOAD_CODECS.get(self.payload_type, "?")
        extras = ""
        if self.marker:
            extras += ", marker"
        if self.csrc:
            extras += ", csrc=[" + ", ".join(f"0x{c:08x}" for c in self.csrc) + "]"
        if self.extension is not None:
            extras += (
                f", ext=(profile=0x{self.extension.profile:04x}, {len(self.extension.data)} bytes)"
            )
        if self.padding:
            extras += f", padding={self.padding}"
        return (
            f"RtpPacket(pt={self.payload_type} {codec}, seq={self.sequence}, "
            f"ts={self.timestamp}, ssrc=0x{self.ssrc:08x}, payload={len(self.payload)} bytes"
            f"{extras})"
        )


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ProtocolError(f"RTP {name} {value} out of range 0..{maximum}")


def is_rtcp(data: bytes) -> bool:
    """True for an RTCP packet multiplexed on the RTP port (RFC 5761 section 4: the
    second byte, RTCP packet type, is in 192-223; RTP payload types 64-95 are unused
    for that reason)."""
    return len(data) >= 2 and (data[0] >> 6) == RTP_VERSION and 192 <= data[1] <= 223


def decode_payload(packet: RtpPacket) -> NDArray[np.int16]:
    """G.711 payload -> (n_samples,) int16 at 8 kHz; :class:`ProtocolError` for other
    payload types."""
    table = _DECODE_TABLES.get(packet.payload_type)
    if table is None:
        raise ProtocolError(f"unsupported payload type {packet.payload_type}")
    return table[np.frombuffer(packet.payload, dtype=np.uint8)]


@dataclass(slots=True)
class _Leg:
    call_id: str
    party: str
    ssrc: int
    remote: str
    codec: str
    jitter: JitterBuffer
    last_seen: float
    dtmf_timestamps: set[int] = field(default_factory=set)
    # coalesce_audio: released audio not yet handed out, and its first timestamp
    held: list[NDArray[np.int16]] = field(default_factory=list)
    held_ts: int = 0
    # probation (RtpIngest.probation_s): a leg is announced only once its packets have
    # advanced in step (sequence and timestamp) over this many samples; until then its
    # outputs wait in ``pending`` (with coalesce_audio, its audio waits in ``held``)
    proven_samples: int = 0
    probation_packets: int = 0
    prev: tuple[int, int, int] | None = None  # last audio packet: seq, timestamp, samples
    pending: list[IngestOutput] = field(default_factory=list)


LegKey = tuple[tuple[str, int], int | None]


class RtpIngest:
    """Sans-I/O core for one UDP port receiving G.711 RTP from any number of peers.

    ``leg_timeout_s``: network silence after which a leg ends (``LegEnded`` with
    reason ``"timeout"``, emitted by :meth:`poll`). ``jitter_depth_packets``: packets
    each leg's jitter buffer holds back. ``party``: default party of unnamed legs.
    ``dtmf_payload_type``: dynamic payload type of RFC 4733 telephone events (usually
    101 in SDP; None to treat them as unsupported). ``max_legs``: legs alive at once;
    packets for more are dropped with a violation (a spoofed-SSRC flood must not eat
    memory).

    ``coalesce_audio``: hold each leg's released audio instead of returning one
    ``AudioChunk`` per packet; :meth:`take_audio` then returns one chunk per leg with
    everything held (the server calls it once per engine tick). A leg's held audio
    always comes out before its ``LegEnded`` (timeout, hang-up, rename, close), so
    nothing is lost or reordered. At 500 legs that is 25,000 chunks a second fewer to
    build, queue and push one by one.

    For a port anyone can reach (the server's plain RTP port; SIP calls are vouched
    for by their signalling and do not need this):

    - ``allow``: source networks allowed to start legs (empty: any); datagrams from
      other sources are dropped and counted (``dropped["source_not_allowed"]``);
    - ``new_legs``: a token bucket per source host for new legs (SSRCs); a datagram
      that would start one more is dropped and counted (``"new_leg_rate"``), so one
      source spraying SSRCs cannot fill the table;
    - ``probation_s``: a new leg is announced (``LegStarted``) only after its packets
      have advanced in step over this much audio (consecutive sequence numbers, or a
      few lost, with the timestamp moving by the samples each packet carried); until
      then nothing of it comes out, and at most ``max_probation_legs`` such legs exist
      apart from the ``max_legs`` announced ones (when they are all taken, the one
      heard from longest ago makes room if it has been quiet for
      ``PROBATION_EVICT_SILENCE_S``). Its audio is kept and comes out after
      ``LegStarted``, from the first packet (``t`` = 0 there), so nothing is lost. A
      leg on probation silent for ``probation_silence_s``, or not proven after
      ``probation_max_packets`` packets, is forgotten without a trace
      (``legs_unproven``). A flood of spoofed SSRCs thus announces no calls.

    Every datagram dropped by a guard (or by ``max_legs``) is counted in
    :attr:`dropped` (reason -> datagrams) and reported as a ``ProtocolViolation``
    whose ``cause`` is ``rtp_<reason>`` (the server logs one line per cause and
    interval).
    """

    def __init__(
        self,
        *,
        leg_timeout_s: float = 5.0,
        jitter_depth_packets: int = 3,
        party: str = "customer",
        dtmf_payload_type: int | None = 101,
        max_legs: int = 1000,
        coalesce_audio: bool = False,
        allow: SourceAllowList | None = None,
        new_legs: SourceRateLimit | None = None,
        probation_s: float = 0.0,
        max_probation_legs: int = 1000,
        probation_silence_s: float = 1.0,
    ) -> None:
        if leg_timeout_s <= 0:
            raise ConfigError(f"leg_timeout_s must be > 0, got {leg_timeout_s}")
        if max_legs < 1:
            raise ConfigError(f"max_legs must be >= 1, got {max_legs}")
        self.leg_timeout_s = leg_timeout_s
        self.jitter_depth_packets = jitter_depth_packets
        self.party = party
        self.dtmf_payload_type = dtmf_payload_type
        self.max_legs = max_legs
        self.coalesce_audio = coalesce_audio
        if probation_s < 0:
            raise ConfigError(f"probation_s must be >= 0, got {probation_s}")
        self.allow = allow or SourceAllowList()
        self.new_legs = new_legs
        self.probation_samples = round(probation_s * CLOCK_RATE)
        self.max_probation_legs = max_probation_legs
        self.probation_silence_s = min(probation_silence_s, leg_timeout_s)
        # 10 ms packets would prove it in probation_s; four times that is plenty
        self.probation_max_packets = max(50, 4 * self.probation_samples // 80)
        self.dropped: dict[str, int] = {}
        self.legs_unproven = 0
        # legs on probation, the one heard from longest ago first
        self._probation: OrderedDict[tuple[tuple[str, int], int], _Leg] = OrderedDict()
        self.rtcp_ignored = 0
        self._lost_in_ended_legs = 0
        self._legs: dict[tuple[tuple[str, int], int], _Leg] = {}
        self._names: dict[LegKey, tuple[str, str]] = {}
        self._ended_stats: OrderedDict[str, JitterStats] = OrderedDict()
        JitterBuffer(depth_packets=jitter_depth_packets)  # validate the depth now

    # -- inputs -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> list[IngestOutput]:
        """Handle one UDP datagram from ``addr`` received at ``now`` (seconds, any
        monotonic clock)."""
        out: list[IngestOutput] = []
        self._receive(data, addr, now, out)
        return out

    def receive_batch(
        self,
        datagrams: NDArray[np.uint8],
        sizes: Sequence[int],
        addrs: Sequence[Address],
        now: float,
    ) -> list[IngestOutput]:
        """Handle ``len(addrs)`` datagrams received at ``now``, in arrival order: row
        ``i`` of ``datagrams`` (>= n, stride) holds datagram ``i``'s first ``sizes[i]``
        bytes, from ``addrs[i]``. The result is :meth:`receive_datagram` of each in
        turn: the same legs, audio, events and counters (each leg's outputs in the same
        order; different legs may interleave differently, and without
        ``coalesce_audio`` a leg's audio comes as one chunk per batch, not per packet).

        Why: the server reads the RTP socket once per engine tick, ~5 packets per leg.
        Headers are parsed with numpy for the whole batch, and a leg's packets that
        form a plain run (consecutive sequence numbers and timestamps, one codec and
        size) are decoded with one table lookup and given to the jitter buffer at once
        (:meth:`JitterBuffer.push_run`). Everything else (a leg's first packets, RTCP,
        junk, and every datagram of a leg that got DTMF, comfort noise or an extended
        header in this batch) goes through :meth:`receive_datagram`'s path, in order.
        """
        n = len(addrs)
        out: list[IngestOutput] = []
        if datagrams.ndim != 2 or datagrams.shape[0] < n or datagrams.shape[1] < HEADER_SIZE:
            raise ValueError(f"need (>= {n}, >= {HEADER_SIZE}) bytes, got {datagrams.shape}")
        if n == 0:
            return out
        rows = datagrams[:n]
        size_l = [int(s) for s in sizes[:n]]
        size = np.array(size_l, dtype=np.int64)
        pt = rows[:, 1] & 0x7F
        fast = (
            (size > HEADER_SIZE) & (rows[:, 0] == _PLAIN_B0) & ((pt == PT_PCMU) | (pt == PT_PCMA))
        )
        fields = np.ascontiguousarray(rows[:, 2:12])  # sequence, timestamp, SSRC
        seq = fields[:, :2].view(">u2")[:, 0].astype(np.int64)
        ts_ssrc = fields[:, 2:].view(">u4")
        ts = ts_ssrc[:, 0].astype(np.int64)
        ssrc_l = ts_ssrc[:, 1].tolist()
        # Datagrams are grouped by leg, (peer, SSRC), numbered in order of first
        # arrival (the order legs are opened in), then sorted by group so that each
        # group's rows are one slice. A leg that got anything unusual in this batch
        # (DTMF, comfort noise, an extended header) has all its datagrams handled one
        # by one, in order: a DTMF packet occupies a sequence number between two audio
        # packets. Junk and RTCP get a group each, handled one by one too: their "SSRC"
        # bytes are whatever they hold (a short datagram's are left over from an earlier
        # read), and sharing a leg's group would open that leg at the junk's place in
        # the batch instead of at its own first packet (which leg wins at max_legs).
        not_rtp = (size < HEADER_SIZE) | ((rows[:, 0] >> 6) != RTP_VERSION)
        not_rtp |= (rows[:, 1] >= 192) & (rows[:, 1] <= 223)  # RTCP, as is_rtcp says
        for i in np.flatnonzero(not_rtp).tolist():
            ssrc_l[i] = -1 - i
        keys = [
            (addr if len(addr) == 2 else _peer(addr), ssrc)
            for addr, ssrc in zip(addrs, ssrc_l, strict=False)
        ]
        group_of: dict[tuple[Address, int], int] = {}
        new_group = group_of.setdefault
        group = np.array([new_group(key, len(group_of)) for key in keys], dtype=np.int64)
        odd_keys = {keys[i] for i in np.flatnonzero(~fast).tolist()}
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group)
        ends = np.cumsum(counts)
        starts = ends - counts
        g_size, g_pt, g_seq, g_ts = size[order], pt[order], seq[order], ts[order]
        # a group goes the run way if all its datagrams are plain G.711 of one size and codec
        plain = (
            fast[order]
            & (g_size == np.repeat(g_size[starts], counts))
            & (g_pt == np.repeat(g_pt[starts], counts))
        )
        plain_group = np.logical_and.reduceat(plain, starts).tolist()
        # a datagram continues the run before it: next sequence number and timestamp
        continues = np.zeros(n, dtype=bool)
        continues[1:] = ((g_seq[1:] - g_seq[:-1]) % SEQ_MODULUS == 1) & (
            (g_ts[1:] - g_ts[:-1]) % TS_MODULUS == g_size[:-1] - HEADER_SIZE
        )
        continues[starts] = False
        runs_in_group = np.add.reduceat(~continues, starts).tolist()
        # Decode every datagram of the most common size at once (the rest per group).
        width = int(np.bincount(g_size[plain]).argmax()) if plain.any() else 0
        pcm = np.zeros((n, 0), dtype=np.int16)
        if width > HEADER_SIZE:
            payload = rows[order, HEADER_SIZE:width]
            pcm = ULAW_DECODE_TABLE.take(payload)
            alaw = g_pt == PT_PCMA
            if alaw.any():
                pcm[alaw] = ALAW_DECODE_TABLE.take(payload[alaw])
        order_l, starts_l, ends_l = order.tolist(), starts.tolist(), ends.tolist()
        g_size_l, g_pt_l = g_size.tolist(), g_pt.tolist()
        g_seq_l, g_ts_l = g_seq.tolist(), g_ts.tolist()
        # Datagrams not taken in runs go one by one, in arrival order across legs (not
        # group by group): which new leg gets a free place (max_legs, probation, the
        # per-source limit) must be the one whose packet came first.
        one_by_one: list[int] = []
        for g, key in enumerate(group_of):
            a, b = starts_l[g], ends_l[g]
            leg = self._legs.get(key)
            if leg is None or not plain_group[g] or (odd_keys and key in odd_keys):
                one_by_one += order_l[a:b]
                continue
            leg.last_seen = now
            if g_size_l[a] == width:
                block = pcm[a:b]
            else:
                block = _DECODE_TABLES[g_pt_l[a]].take(rows[order[a:b], HEADER_SIZE : g_size_l[a]])
            if runs_in_group[g] == 1:  # the usual case: one run of consecutive packets
                released = leg.jitter.push_run(g_seq_l[a], g_ts_l[a], block)
                if released:
                    self._chunks(leg, released, out)
                continue
            # A swap or a loss starts a new run: hand each run over at once.
            run_starts = [j for j in range(a, b) if not continues[j]] + [b]
            for r0, r1 in itertools.pairwise(run_starts):
                released = leg.jitter.push_run(g_seq_l[r0], g_ts_l[r0], block[r0 - a : r1 - a])
                if released:
                    self._chunks(leg, released, out)
        for i in sorted(one_by_one):
            self._receive(bytes(rows[i, : size_l[i]]), addrs[i], now, out)
        return out

    def poll(self, now: float) -> list[IngestOutput]:
        """End legs silent for ``leg_timeout_s``: their buffered audio, then ``LegEnded``;
        forget legs on probation silent for ``probation_silence_s``.

        ``now`` must be no later than the last time everything the socket held was
        read: silence is then the peer's, not time this process lost (an engine stall,
        a stopped process) while its packets waited unread in the kernel."""
        out: list[IngestOutput] = []
        for key, leg in list(self._legs.items()):
            if now - leg.last_seen >= self.leg_timeout_s:
                out.extend(self._end(key, "timeout"))
        for key, leg in list(self._probation.items()):
            if now - leg.last_seen >= self.probation_silence_s:
                self._forget(key)
        return out

    def name_leg(
        self, addr: Address, ssrc: int | None, call_id: str, party: str
    ) -> list[IngestOutput]:
        """Name the leg from ``addr`` with ``ssrc`` (None: any SSRC from that address),
        e.g. from SIP/SDP or an ARI ExternalMedia response.

        Before the leg's first packet this only records the name and returns []. If
        the leg is already running, it is handed over: ``LegEnded(reason="renamed")``
        for the old name, then ``LegStarted`` for the new one with ``t`` at the
        leg's current position; audio still in the jitter buffer (a few packets) and
        everything after comes out under the new name, on the same timeline.
        """
        peer = _peer(addr)
        self._names[(peer, ssrc)] = (call_id, party)
        out: list[IngestOutput] = []
        for (leg_peer, leg_ssrc), leg in self._probation.items():
            if leg_peer == peer and (ssrc is None or leg_ssrc == ssrc):
                leg.call_id, leg.party = call_id, party  # not announced yet: nothing to end
        for (leg_peer, leg_ssrc), leg in self._legs.items():
            if leg_peer != peer or (ssrc is not None and leg_ssrc != ssrc):
                continue
            if (leg.call_id, leg.party) == (call_id, party):
                continue
            self._release_held(leg, out)
            out.append(LegEnded(leg.call_id, leg.party, reason="renamed"))
            leg.call_id, leg.party = call_id, party
            out.append(self._leg_started(leg, t=self._position(leg)))
        return out

    def end_leg(self, addr: Address, ssrc: int, reason: str = "hangup") -> list[IngestOutput]:
        """End one leg now (e.g. on SIP BYE): buffered audio, then ``LegEnded``."""
        key = (_peer(addr), ssrc)
        if key in self._probation:
            self._forget(key)
        return self._end(key, reason) if key in self._legs else []

    def close(self, reason: str = "shutdown") -> list[IngestOutput]:
        """End every leg (the port is closing)."""
        out: list[IngestOutput] = []
        for key in list(self._legs):
            out.extend(self._end(key, reason))
        self._probation.clear()
        return out

    def take_audio(self) -> list[IngestOutput]:
        """With ``coalesce_audio``: one ``AudioChunk`` per leg holding audio, with all
        of it (contiguous by construction), and nothing held afterwards. Without it:
        always [] (the chunks came out of :meth:`receive_datagram`)."""
        out: list[IngestOutput] = []
        for leg in self._legs.values():
            if leg.held:
                self._release_held(leg, out)
        return out

    # -- introspection ------------------------------------------------------------

    @property
    def n_legs(self) -> int:
        """Legs currently open (announced)."""
        return len(self._legs)

    @property
    def n_probation(self) -> int:
        """Legs on probation: packets seen, not announced yet."""
        return len(self._probation)

    def leg_stats(self, call_id: str) -> JitterStats | None:
        """Jitter-buffer counters of an open or recently ended leg (None if unknown)."""
        for leg in self._legs.values():
            if leg.call_id == call_id:
                return leg.jitter.stats
        return self._ended_stats.get(call_id)

    def packets_lost_total(self) -> int:
        """Packets never received in time, over every leg this ingest has seen."""
        return self._lost_in_ended_legs + sum(leg.jitter.stats.lost for leg in self._legs.values())

    # -- internals ----------------------------------------------------------------

    def _receive(self, data: bytes, addr: Address, now: float, out: list[IngestOutput]) -> None:
        # Fast path for nearly every packet under load: plain header, G.711, running
        # leg. Same result as the general path below, without the RtpPacket object,
        # the payload copy and the checks that cannot fail here: 18-19 us per packet
        # went down to 6.5 (500 legs are 25,000 packets/s on one core).
        if len(data) > HEADER_SIZE and data[0] == _PLAIN_B0:
            table = _DECODE_TABLES.get(data[1] & 0x7F)  # never RTCP: 192-223 are not here
            if table is not None:
                _, _, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
                # An IPv4 (host, port) from recvfrom is already the key's form; building
                # it again was ~5 % of the event loop at 500 legs (IPv6 has 4 fields).
                peer = addr if len(addr) == 2 else _peer(addr)
                leg = self._legs.get((peer, ssrc))
                if leg is not None:
                    leg.last_seen = now
                    # take() with positional frombuffer arguments: 1.3 us, where
                    # table[np.frombuffer(..., dtype=, offset=)] took 2.2 us.
                    pcm = table.take(np.frombuffer(data, _UINT8, -1, HEADER_SIZE))
                    released = leg.jitter.push(sequence, timestamp, pcm)
                    if released:
                        self._chunks(leg, released, out)
                    return
        self._receive_general(data, addr, now, out)

    def _receive_general(
        self, data: bytes, addr: Address, now: float, out: list[IngestOutput]
    ) -> None:
        if is_rtcp(data):
            self.rtcp_ignored += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except ProtocolError as exc:
            out.append(ProtocolViolation(f"from {_remote(addr)}: {exc}", cause="rtp_parse"))
            return
        peer = _peer(addr)
        key = (peer, packet.ssrc)
        leg = self._legs.get(key)
        is_audio = packet.payload_type in PAYLOAD_CODECS
        announced = out
        if leg is None:
            leg = self._probation.get(key)
            if leg is None:
                if not is_audio:
                    out.append(self._unsupported(packet, addr))
                    return
                leg = self._new_leg(peer, packet, now, out)
                if leg is None:
                    return
            if key in self._probation:
                out = leg.pending  # nothing of it comes out before it is proven
                self._probation.move_to_end(key)  # heard from most recently: last
                self._prove(leg, packet, is_audio)
        leg.last_seen = now

        if is_audio:
            pcm = decode_payload(packet)
        else:
            # Keep the sequence number occupied so the jitter buffer does not call it lost.
            pcm = np.zeros(0, dtype=np.int16)
            if packet.payload_type == self.dtmf_payload_type:
                out.extend(self._telephone_event(leg, packet))
            elif packet.payload_type != PT_CN:
                out.append(self._unsupported(packet, addr))
        self._chunks(leg, leg.jitter.push(packet.sequence, packet.timestamp, pcm), out)
        if out is not announced and leg.proven_samples >= self.probation_samples:
            self._announce(key, leg, announced)
        elif out is not announced and leg.probation_packets >= self.probation_max_packets:
            self._forget(key)

    def _drop(
        self, reason: str, addr: Address, ssrc: int, why: str, out: list[IngestOutput]
    ) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        out.append(
            ProtocolViolation(
                f"from {_remote(addr)}: ssrc 0x{ssrc:08x} dropped, {why}", cause=f"rtp_{reason}"
            )
        )

    def _new_leg(
        self, peer: tuple[str, int], packet: RtpPacket, now: float, out: list[IngestOutput]
    ) -> _Leg | None:
        """A leg for a new (source, SSRC), announced at once or on probation; None
        (and the datagram counted as dropped) when a guard refuses it."""
        ssrc = packet.ssrc
        if not self.allow.allowed(peer[0]):
            self._drop("source_not_allowed", peer, ssrc, "source not in the allow-list", out)
            return None
        if self.probation_samples and len(self._probation) >= self.max_probation_legs:
            # Make room by forgetting the leg on probation heard from longest ago, if
            # it has been quiet for a while: a spoofed SSRC sends a packet or two, a
            # real stream one every 20 ms, so the flood's legs go and real ones stay.
            oldest_key, oldest = next(iter(self._probation.items()))
            if now - oldest.last_seen < PROBATION_EVICT_SILENCE_S:
                why = f"{self.max_probation_legs} new legs already on probation"
                self._drop("probation_full", peer, ssrc, why, out)
                return None
            self._forget(oldest_key)
        if len(self._legs) >= self.max_legs:
            self._drop("max_legs", peer, ssrc, f"{self.max_legs} legs already open", out)
            return None
        if self.new_legs is not None and not self.new_legs.take(peer[0], now):
            why = f"more new legs than {self.new_legs.rate_per_s:g}/s from {peer[0]}"
            self._drop("new_leg_rate", peer, ssrc, why, out)
            return None
        leg = self._start_leg(peer, packet, now)
        if self.probation_samples:
            del self._legs[(peer, packet.ssrc)]
            self._probation[(peer, packet.ssrc)] = leg
        else:
            out.append(self._leg_started(leg))
        return leg

    def _prove(self, leg: _Leg, packet: RtpPacket, is_audio: bool) -> None:
        """Credit a leg on probation with the audio of a packet that follows the last
        one in step: 1-4 sequence numbers on (a few lost), the timestamp moved by the
        samples those packets carried."""
        leg.probation_packets += 1
        if not is_audio:
            return
        samples = len(packet.payload)  # G.711: one byte a sample
        prev = leg.prev
        if prev is not None:
            dseq = (packet.sequence - prev[0]) % SEQ_MODULUS
            if not 1 <= dseq <= 0x7FFF:
                return  # older than the last one (reordered or repeated): no credit
            if dseq <= 4 and (packet.timestamp - prev[1]) % TS_MODULUS == dseq * prev[2] > 0:
                leg.proven_samples += dseq * prev[2]
        leg.prev = (packet.sequence, packet.timestamp, samples)

    def _announce(
        self, key: tuple[tuple[str, int], int], leg: _Leg, out: list[IngestOutput]
    ) -> None:
        """A leg on probation proved itself: ``LegStarted``, then what it held back."""
        del self._probation[key]
        if len(self._legs) >= self.max_legs:
            self._drop("max_legs", key[0], key[1], f"{self.max_legs} legs already open", out)
            return
        self._legs[key] = leg
        out.append(self._leg_started(leg))
        for item in leg.pending:  # it may have been named meanwhile
            if isinstance(item, AudioChunk | Dtmf):
                item = replace(item, call_id=leg.call_id, party=leg.party)
            out.append(item)
        leg.pending = []

    def _forget(self, key: tuple[tuple[str, int], int]) -> None:
        """Drop a leg on probation without a trace (it never was announced)."""
        leg = self._probation.pop(key)
        self._lost_in_ended_legs += leg.jitter.stats.lost
        self.legs_unproven += 1

    def _start_leg(self, peer: tuple[str, int], packet: RtpPacket, now: float) -> _Leg:
        host, port = peer
        name = self._names.get((peer, packet.ssrc)) or self._names.get((peer, None))
        call_id, party = name or (f"rtp-{host}-{port}-{packet.ssrc:08x}", self.party)
        leg = _Leg(
            call_id=call_id,
            party=party,
            ssrc=packet.ssrc,
            remote=_remote(peer),
            codec=PAYLOAD_CODECS[packet.payload_type],
            jitter=JitterBuffer(depth_packets=self.jitter_depth_packets, clock_rate=CLOCK_RATE),
            last_seen=now,
        )
        self._legs[(peer, packet.ssrc)] = leg
        return leg

    def _leg_started(self, leg: _Leg, t: float = 0.0) -> LegStarted:
        info = {"ssrc": leg.ssrc, "remote": leg.remote, "codec": leg.codec}
        return LegStarted(leg.call_id, leg.party, sample_rate=CLOCK_RATE, t=t, info=info)

    def _position(self, leg: _Leg) -> float:
        first, nxt = leg.jitter.first_timestamp, leg.jitter.next_timestamp
        return 0.0 if first is None or nxt is None else (nxt - first) / CLOCK_RATE

    def _chunks(
        self, leg: _Leg, released: list[tuple[int, NDArray[np.int16]]], out: list[IngestOutput]
    ) -> None:
        if not released:
            return
        if self.coalesce_audio:
            held = leg.held
            if not held:
                leg.held_ts = released[0][0]
            for _, piece in released:
                held.append(piece)
            return
        # Released pieces are contiguous by construction: one chunk per call is enough.
        pcm = released[0][1] if len(released) == 1 else np.concatenate([p for _, p in released])
        self._chunk(leg, released[0][0], pcm, out)

    def _release_held(self, leg: _Leg, out: list[IngestOutput]) -> None:
        held = leg.held
        if held:
            pcm = held[0] if len(held) == 1 else np.concatenate(held)
            held.clear()
            self._chunk(leg, leg.held_ts, pcm, out)

    def _chunk(
        self, leg: _Leg, timestamp: int, pcm: NDArray[np.int16], out: list[IngestOutput]
    ) -> None:
        if pcm.size == 0:
            return
        first = leg.jitter.first_timestamp
        assert first is not None  # something was released, so the timeline has an origin
        out.append(
            AudioChunk(leg.call_id, leg.party, (timestamp - first) / CLOCK_RATE, pcm, CLOCK_RATE)
        )

    def _telephone_event(self, leg: _Leg, packet: RtpPacket) -> list[IngestOutput]:
        payload = packet.payload
        if len(payload) < 4:
            return [
                ProtocolViolation(
                    f"telephone-event payload {len(payload)} bytes < 4", cause="rtp_dtmf"
                )
            ]
        event = payload[0]
        if event >= len(_DTMF_DIGITS):
            return []  # other RFC 4733 events (tones, flash) carry no digit
        # Every packet of one event repeats its start timestamp (and the end packet is
        # sent three times): report each event once, when it first shows up.
        if packet.timestamp in leg.dtmf_timestamps:
            return []
        if len(leg.dtmf_timestamps) > 64:
            leg.dtmf_timestamps.clear()
        leg.dtmf_timestamps.add(packet.timestamp)
        first = leg.jitter.first_timestamp
        ts = leg.jitter.extend_timestamp(packet.timestamp)
        t = 0.0 if first is None else max(0.0, (ts - first) / CLOCK_RATE)
        return [Dtmf(leg.call_id, leg.party, _DTMF_DIGITS[event], t)]

    def _unsupported(self, packet: RtpPacket, addr: Address) -> ProtocolViolation:
        return ProtocolViolation(
            f"unsupported payload type {packet.payload_type} from {_remote(addr)} "
            f"ssrc 0x{packet.ssrc:08x}",
            cause=f"rtp_payload_type_{packet.payload_type}",
        )

    def _end(self, key: tuple[tuple[str, int], int], reason: str) -> list[IngestOutput]:
        leg = self._legs.pop(key)
        out: list[IngestOutput] = []
        self._chunks(leg, leg.jitter.flush(), out)
        self._release_held(leg, out)
        out.append(LegEnded(leg.call_id, leg.party, reason=reason))
        self._ended_stats[leg.call_id] = leg.jitter.stats
        self._lost_in_ended_legs += leg.jitter.stats.lost
        while len(self._ended_stats) > 256:
            self._ended_stats.popitem(last=False)
        return out


class RtpDatagramProtocol(asyncio.DatagramProtocol):
    """Thin asyncio adapter: feeds an :class:`RtpIngest` from a UDP endpoint, polls it
    every ``poll_interval_s`` for timeouts, and hands every non-empty output list to
    ``on_output``. Closing the transport ends all legs (reason ``"shutdown"``).

    ``loop.create_datagram_endpoint(lambda: RtpDatagramProtocol(ingest, cb),
    local_addr=("0.0.0.0", 4000))``
    """

    def __init__(
        self,
        ingest: RtpIngest,
        on_output: Callable[[list[IngestOutput]], None],
        *,
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingest = ingest
        self.on_output = on_output
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._schedule_poll()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._emit(self.ingest.receive_datagram(data, addr, self.clock()))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable) say nothing about the inbound media.
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._emit(self.ingest.close())

    def _schedule_poll(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.poll_interval_s, self._poll)

    def _poll(self) -> None:
        self._emit(self.ingest.poll(self.clock()))
        self._schedule_poll()

    def _emit(self, out: list[IngestOutput]) -> None:
        if out:
            self.on_output(out)


def _peer(addr: Address) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1]))


def _remote(addr: Address) -> str:
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
