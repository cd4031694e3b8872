"""A jitter buffer for one RTP stream: reorder, de-duplicate, conceal loss, keep time.

Plain state, no clock and no I/O: :meth:`JitterBuffer.push` takes one decoded packet
and returns the audio that is now safe to play out, in order, as
``(timestamp, pcm)`` pairs; :meth:`JitterBuffer.flush` releases the rest when the
stream ends. The released audio is gap-free: every sample of the timestamp span is
present, so ``sum(len(pcm))`` always equals the span of the released timestamps and a
downstream framer can trust that sample *n* is ``n / clock_rate`` seconds in.

How it keeps that promise:

- Packets wait until the buffer holds more than ``depth_packets``; then the oldest
  (by sequence number) is released. Packets reordered by fewer than ``depth_packets``
  places therefore come out in order.
- Sequence numbers (16 bit) and timestamps (32 bit) wrap; both are *extended* to
  unbounded integers with serial-number arithmetic (RFC 1982) against the newest
  value seen, so 65535 -> 0 and 2**32 - 160 -> 0 are just the next step.
- A gap in the timestamps is filled when the audio after it is released. If sequence
  numbers are missing too, the packets were lost: the gap starts with the last packet
  repeated at ``plc_gain`` (a simple packet-loss concealment that avoids a hard
  click), then silence. If no sequence number is missing the sender paused on
  purpose (DTX, silence suppression): the gap is silence.
- A packet whose slot was already released is *late* (counted, dropped); one that was
  already seen is a *duplicate* (counted, dropped).
- A timestamp jump larger than ``max_gap_s`` in either direction (a sender restart,
  a broken peer) is not filled: the buffer *resyncs*, so the packet plays right after
  the previous one and one bogus timestamp never allocates hours of silence. The
  released timestamps stay continuous (they are the RTP timestamps plus an offset
  that changes only on a resync).

Released timestamps are extended integers (they keep counting past 2**32);
``(timestamp - first_timestamp) / clock_rate`` is the position in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError

__all__ = ["JitterBuffer", "JitterStats", "serial_delta"]

SEQ_MODULUS: Final = 1 << 16
TS_MODULUS: Final = 1 << 32
# RFC 3550 appendix A.1: a jump of more than MAX_DROPOUT sequence numbers is a restart,
# not a burst of loss, so it is not counted as lost.
MAX_DROPOUT: Final = 3000
# How far back released sequence numbers are remembered to tell a duplicate from a
# late packet; older stragglers are simply called late.
_HISTORY: Final = 1024
_SEQ_HALF: Final = SEQ_MODULUS >> 1
_TS_HALF: Final = TS_MODULUS >> 1
_INT16: Final = np.dtype(np.int16)  # native int16 (a singleton, so `is` works)


def serial_delta(a: int, b: int, *, modulus: int) -> int:
    """Signed distance ``a - b`` of two wrapping counters (RFC 1982 serial numbers).

    The result lies in ``[-modulus/2, modulus/2)``: ``serial_delta(0, 65535,
    modulus=65536) == 1``.
    """
    half = modulus >> 1
    return ((a - b + half) % modulus) - half


@dataclass(slots=True)
class JitterStats:
    """Counters of one stream. ``lost`` counts packets never received in time and
    concealed; ``late`` those that came after their slot was played out."""

    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    lost: int = 0
    late: int = 0
    concealed_samples: int = 0
    silence_samples: int = 0
    resyncs: int = 0


class JitterBuffer:
    """Reorder and de-jitter one RTP stream of decoded int16 audio.

    ``depth_packets``: packets held back before the oldest is released (latency is
    about ``depth_packets`` x packet duration). ``clock_rate``: RTP timestamp units per
    second (8000 for G.711). ``plc_gain``: level of the repeated packet that starts a
    concealed gap. ``max_gap_s``: longest timestamp gap that is filled; larger jumps
    resync (see module docstring).
    """

    def __init__(
        self,
        *,
        depth_packets: int = 3,
        clock_rate: int = 8000,
        plc_gain: float = 0.5,
        max_gap_s: float = 5.0,
    ) -> None:
        if depth_packets < 0:
            raise ConfigError(f"depth_packets must be >= 0, got {depth_packets}")
        if clock_rate <= 0:
            raise ConfigError(f"clock_rate must be > 0, got {clock_rate}")
        if not 0.0 <= plc_gain <= 1.0:
            raise ConfigError(f"plc_gain must be in [0, 1], got {plc_gain}")
        if max_gap_s <= 0:
            raise ConfigError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.depth_packets = depth_packets
        self.clock_rate = clock_rate
        self.plc_gain = plc_gain
        self.max_gap_samples = round(max_gap_s * clock_rate)
        self.stats = JitterStats()
        # extended seq -> (extended ts, pcm). A plain tuple, not a dataclass: this is
        # built for every packet of every leg (benchmarks/end_to_end).
        self._pending: dict[int, tuple[int, NDArray[np.int16]]] = {}
        self._max_ext_seq: int | None = None
        self._ref_ext_ts: int | None = None  # extended ts of the newest packet, for unwrapping
        self._last_released_seq: int | None = None
        self._released_recent: set[int] = set()
        self._ts_shift = 0  # released ts = extended RTP ts + shift; changes only on resync
        self._next_ts: int | None = None  # released timeline position just after the last sample
        self._first_ts: int | None = None
        self._last_pcm: NDArray[np.int16] = np.zeros(0, dtype=np.int16)

    @property
    def first_timestamp(self) -> int | None:
        """Released timestamp of the first sample ever released (None before that)."""
        return self._first_ts

    @property
    def next_timestamp(self) -> int | None:
        """Released timestamp just after the last released sample (None before that)."""
        return self._next_ts

    @property
    def pending(self) -> int:
        """Packets held in the buffer."""
        return len(self._pending)

    def extend_timestamp(self, timestamp: int) -> int:
        """Map a raw 32-bit RTP timestamp onto the released timeline (unwrap + shift),
        e.g. to place an RFC 4733 DTMF event. Does not change any state."""
        if self._ref_ext_ts is None:
            return timestamp
        ext = self._ref_ext_ts + serial_delta(timestamp, self._ref_ext_ts, modulus=TS_MODULUS)
        return ext + self._ts_shift

    def push(
        self, seq: int, timestamp: int, payload_pcm: NDArray[np.int16]
    ) -> list[tuple[int, NDArray[np.int16]]]:
        """Add one packet; return the audio now released, oldest first.

        ``seq``: 16-bit RTP sequence number. ``timestamp``: 32-bit RTP timestamp of
        the first sample. ``payload_pcm``: (n_samples,) int16. Returns a list of
        ``(timestamp, pcm)`` with contiguous extended timestamps; concealment and
        silence come as their own entries. An empty ``payload_pcm`` is a placeholder
        that only occupies its sequence number (comfort noise, DTMF events).
        """
        self.stats.received += 1
        pcm = payload_pcm
        if type(pcm) is not np.ndarray or pcm.dtype is not _INT16 or pcm.ndim != 1:
            pcm = np.asarray(payload_pcm, dtype=np.int16).reshape(-1)
        max_seq, ref_ts = self._max_ext_seq, self._ref_ext_ts
        if max_seq is None or ref_ts is None:
            ext_seq, ext_ts = seq, timestamp
        else:
            # serial_delta inlined: this runs for every packet of every leg.
            ext_seq = max_seq + ((seq - max_seq + _SEQ_HALF) % SEQ_MODULUS) - _SEQ_HALF
            ext_ts = ref_ts + ((timestamp - ref_ts + _TS_HALF) % TS_MODULUS) - _TS_HALF

        last = self._last_released_seq
        if last is not None and ext_seq <= last:
            if ext_seq in self._released_recent:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
                # A second copy of the same late packet is a duplicate, not late again.
                self._released_recent.add(ext_seq)
            return []
        pending = self._pending
        if ext_seq in pending:
            self.stats.duplicates += 1
            return []
        if max_seq is not None and ext_seq < max_seq:
            self.stats.reordered += 1
        else:
            self._max_ext_seq = ext_seq
            self._ref_ext_ts = ext_ts
        pending[ext_seq] = (ext_ts, pcm)

        out: list[tuple[int, NDArray[np.int16]]] = []
        while len(pending) > self.depth_packets:
            self._release_oldest(out)
        return out

    def push_run(
        self, seq: int, timestamp: int, block: NDArray[np.int16]
    ) -> list[tuple[int, NDArray[np.int16]]]:
        """Add a run of packets at once: row ``j`` of ``block`` (k, n) int16 is the
        packet with sequence number ``seq + j`` and timestamp ``timestamp + j * n``
        (both wrapping), as a sender emits them. The result is :meth:`push` of the rows
        one by one: the same audio released (concatenated; rows released together
        come as one piece), the same counters and the same state afterwards.

        In the steady state (the run continues the newest held packet, and everything
        held is contiguous with what was released) the whole run takes a few dict
        operations instead of the per-packet bookkeeping: the RTP port reads a leg's
        ~5 packets per engine tick in one go (``RtpIngest.receive_batch``). Otherwise
        (a gap, a restart, the stream's first packets) rows go through :meth:`push`
        one at a time until the buffer is steady again.
        """
        if type(block) is not np.ndarray or block.dtype is not _INT16 or block.ndim != 2:
            block = np.asarray(block, dtype=np.int16)
            if block.ndim != 2:
                raise ValueError(f"a run is (k, n) samples, got shape {block.shape}")
        k, n = block.shape
        out: list[tuple[int, NDArray[np.int16]]] = []
        for j in range(k):
            row_seq, row_ts = (seq + j) % SEQ_MODULUS, (timestamp + j * n) % TS_MODULUS
            if self._push_steady(row_seq, row_ts, block[j:] if j else block, out):
                break
            out += self.push(row_seq, row_ts, block[j])
        return out

    def _push_steady(
        self,
        seq: int,
        timestamp: int,
        block: NDArray[np.int16],
        out: list[tuple[int, NDArray[np.int16]]],
    ) -> bool:
        """:meth:`push_run`'s fast case: if the buffer is steady for this run, add it,
        append what is released to ``out`` and return True; else change nothing."""
        k, n = block.shape
        max_seq, ref_ts, last = self._max_ext_seq, self._ref_ext_ts, self._last_released_seq
        next_ts = self._next_ts
        pending = self._pending
        if (
            n == 0
            or max_seq is None
            or ref_ts is None
            or last is None
            or next_ts is None
            or max_seq - last != len(pending)  # what is held is not contiguous
        ):
            return False
        ext_seq = max_seq + ((seq - max_seq + _SEQ_HALF) % SEQ_MODULUS) - _SEQ_HALF
        if ext_seq != max_seq + 1:
            return False
        # The held packets, then the run, must fill the timeline from next_ts on
        # without a gap or an overlap (no fill, no resync, nothing late).
        expected = next_ts - self._ts_shift
        for s in range(last + 1, max_seq + 1):
            held_ts, held_pcm = pending[s]
            if held_ts != expected or held_pcm.size == 0:
                return False
            expected += held_pcm.size
        ext_ts = ref_ts + ((timestamp - ref_ts + _TS_HALF) % TS_MODULUS) - _TS_HALF
        if ext_ts != expected:
            return False

        self.stats.received += k
        n_release = len(pending) + k - self.depth_packets
        n_new_released = 0
        if n_release > 0:
            shift = self._ts_shift
            released_samples = 0
            n_old = min(n_release, len(pending))
            for s in range(last + 1, last + 1 + n_old):
                held_ts, held_pcm = pending.pop(s)
                out.append((held_ts + shift, held_pcm))
                released_samples += held_pcm.size
                self._last_pcm = held_pcm
            n_new_released = n_release - n_old
            if n_new_released:
                # rows of one block: one piece, a view, no copy
                out.append((ext_ts + shift, block[:n_new_released].reshape(-1)))
                released_samples += n_new_released * n
                self._last_pcm = block[n_new_released - 1]
            new_last = last + n_release
            # one sequence number at a time, as _release_oldest does, so the history
            # of released numbers is trimmed exactly as it would have been
            for s in range(last + 1, new_last + 1):
                self._remember_released(s)
            self._last_released_seq = new_last
            self._next_ts = next_ts + released_samples
        for j in range(n_new_released, k):
            pending[ext_seq + j] = (ext_ts + j * n, block[j])
        self._max_ext_seq = ext_seq + k - 1
        self._ref_ext_ts = ext_ts + (k - 1) * n
        return True

    def flush(self) -> list[tuple[int, NDArray[np.int16]]]:
        """Release every held packet in order (end of stream, or a timeout)."""
        out: list[tuple[int, NDArray[np.int16]]] = []
        while self._pending:
            self._release_oldest(out)
        return out

    def _release_oldest(self, out: list[tuple[int, NDArray[np.int16]]]) -> None:
        pending = self._pending
        last = self._last_released_seq
        # Every pending seq is above the last released one, so the next seq, when
        # present (the usual in-order case), is the oldest: no scan needed.
        ext_seq = last + 1 if last is not None and last + 1 in pending else min(pending)
        ext_ts, pcm = pending.pop(ext_seq)
        missing = 0
        if last is not None:
            missing = ext_seq - last - 1
            if missing > MAX_DROPOUT:
                missing = 0  # a restart of the sequence, not loss
            self.stats.lost += missing
        self._last_released_seq = ext_seq
        self._remember_released(ext_seq)
        if pcm.size == 0:
            # A placeholder (comfort noise, DTMF event, unsupported codec) holds its
            # sequence number so it is not counted lost; its time is filled as silence
            # when the next audio comes.
            return

        ts = ext_ts + self._ts_shift
        if self._next_ts is None:
            self._first_ts = self._next_ts = ts
        gap = ts - self._next_ts
        if gap > self.max_gap_samples or gap < -self.max_gap_samples:
            self._ts_shift -= gap
            self.stats.resyncs += 1
            ts, gap = self._next_ts, 0
        if gap > 0:
            out.append((self._next_ts, self._fill(gap, concealing=missing > 0)))
        elif gap < 0:
            # Overlaps audio already played: keep only the part that is new.
            pcm = pcm[-gap:]
            ts = self._next_ts
            if pcm.size == 0:
                self.stats.late += 1
                return
        out.append((ts, pcm))
        self._next_ts = ts + pcm.size
        if pcm.size:
            self._last_pcm = pcm

    def _remember_released(self, ext_seq: int) -> None:
        """Note ``ext_seq`` as released (a later copy is then a duplicate, not late),
        keeping the last ``_HISTORY`` or so."""
        recent = self._released_recent
        recent.add(ext_seq)
        if len(recent) > 2 * _HISTORY:
            floor = ext_seq - _HISTORY
            self._released_recent = {s for s in recent if s > floor}

    def _fill(self, n_samples: int, *, concealing: bool) -> NDArray[np.int16]:
        fill = np.zeros(n_samples, dtype=np.int16)
        if concealing and self._last_pcm.size:
            n_repeat = min(n_samples, self._last_pcm.size)
            repeated = np.round(self._last_pcm[:n_repeat].astype(np.float32) * self.plc_gain)
            fill[:n_repeat] = repeated.astype(np.int16)
            self.stats.concealed_samples += n_repeat
            self.stats.silence_samples += n_samples - n_repeat
        else:
            self.stats.silence_samples += n_samples
        return fill
