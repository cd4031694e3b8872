"""RTP load generator: N concurrent G.711 legs, real-time paced, 20 ms packets.

    python -m benchmarks.loadgen --port PORT --legs N --seconds S --codes codes.npy \\
        --start-at MONOTONIC --out sent.npz

Started by :mod:`benchmarks.end_to_end` as its own process (on the cores the server
is not pinned to). One UDP socket sends every leg, leg ``i`` as SSRC
``SSRC_BASE + i``, so the server names the leg ``rtp-127.0.0.1-<port>-<ssrc hex>``.
Packet ``k`` of leg ``i`` is due at ``start_at + i * spread_s / N + k * 0.02`` (legs
are spread over one 0.5 s window hop, as unsynchronised calls are); the moment each
packet actually left (``time.monotonic()``, the same clock in every process on
Linux) is saved, so the subscriber can tell each window's delay from the packet
that completed it.

Only numpy and the standard library are imported: the generator must start fast and
stay light next to the server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SSRC_BASE = 0x10000000
PACKET_S = 0.02
SAMPLES = 160
_HEADER = struct.Struct("!BBHII")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--legs", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="audio per leg")
    parser.add_argument("--codes", type=Path, required=True, help=".npy (n_chunks, 160) uint8")
    parser.add_argument("--start-at", type=float, required=True, help="time.monotonic() to start")
    parser.add_argument("--spread-s", type=float, default=0.5, help="leg start offsets span")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help=".npz: send times and a summary")
    args = parser.parse_args(argv)

    codes = np.load(args.codes)
    payloads = [row.tobytes() for row in codes]
    n_src = len(payloads)
    n_legs, n_packets = args.legs, round(args.seconds / PACKET_S)
    source = np.random.default_rng(args.seed).integers(0, n_src, size=n_legs)
    leg_offset = np.arange(n_legs) * (args.spread_s / n_legs)
    due = args.start_at + leg_offset[:, None] + np.arange(n_packets)[None, :] * PACKET_S
    order = np.argsort(due, axis=None, kind="stable")
    due_flat = due.reshape(-1)
    sent = np.full(due.size, np.nan)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sock.bind((args.host, 0))
    dest = (args.host, args.port)
    errors = 0
    now = time.monotonic()
    if now > args.start_at:
        print(f"loadgen: started {now - args.start_at:.3f} s late", file=sys.stderr)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    clock = time.monotonic
    for flat in order.tolist():
        when = due_flat[flat]
        wait = when - clock()
        if wait > 0.0005:  # sleep only when worth it; sleeps overshoot by ~0.1 ms
            time.sleep(wait - 0.0002)
        leg, k = divmod(flat, n_packets)
        header = _HEADER.pack(
            0x80,
            0x80 if k == 0 else 0,  # marker on the first packet, payload type 0 (PCMU)
            k & 0xFFFF,
            (k * SAMPLES) & 0xFFFFFFFF,
            SSRC_BASE + leg,
        )
        try:
            sock.sendto(header + payloads[(int(source[leg]) + k) % n_src], dest)
        except OSError:  # ENOBUFS and friends: count, never stall the schedule
            errors += 1
            continue
        sent[flat] = clock()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    sock.close()
    lateness = sent - due_flat
    ok = np.isfinite(lateness)
    summary = {
        "legs": n_legs,
        "packets_per_leg": n_packets,
        "packets_sent": int(ok.sum()),
        "send_errors": errors,
        "lateness_p50_ms": float(np.percentile(lateness[ok], 50) * 1e3) if ok.any() else None,
        "lateness_p99_ms": float(np.percentile(lateness[ok], 99) * 1e3) if ok.any() else None,
        "lateness_max_ms": float(lateness[ok].max() * 1e3) if ok.any() else None,
        "cpu_s": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        "wall_s": float(np.nanmax(sent) - args.start_at) if ok.any() else 0.0,
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    np.savez(args.out, sent=sent.reshape(due.shape), summary=json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
