"""What every benchmark script shares: machine description, pinning, audio, output.

Results are plain JSON-able dicts. Times are reported in the unit named in the key
(``_ms``, ``_us``, ``_s``); rates as ``audio_s_per_cpu_s`` (seconds of 8 kHz call
audio handled per second of CPU time of the measuring process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from emotion_engine.engine.pipeline import Engine

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEMO_CALL = REPO_ROOT / "emotion_engine" / "data" / "demo_call.flac"

CHUNK_SAMPLES = 160
"""20 ms at 8 kHz: one RTP packet of G.711."""
CHUNK_S = 0.02
TICK_CHUNKS = 5
"""Chunks per leg between two ``Engine.process`` calls: ``serve`` ticks every 100 ms."""


def progress(name: str, message: str) -> None:
    """One progress line on stderr (stdout carries the JSON result)."""
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine a result was measured on, with its load at the time (shared hosts
    are noisy: the load average says how noisy)."""
    import numpy
    import onnxruntime
    import scipy

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_total_gib(),
        "load_average_1_5_15": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


@cache
def git_state() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout (dirty: uncommitted changes,
    so the numbers belong to the commit plus those changes)."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def pin_to_one_core(cpu: int | None = None) -> int:
    """Pin this process (and threads it starts later) to one CPU; returns which.

    Default: the highest CPU this process may use. "Legs per core" is only honest
    when the work cannot spread to a second core.
    """
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    if chosen not in allowed:
        raise SystemExit(f"cpu {chosen} is not available to this process (allowed: {allowed})")
    os.sched_setaffinity(0, {chosen})
    return chosen


def best_cpu_s(fn: Callable[[], object], *, repeats: int) -> float:
    """Least CPU time of ``repeats`` calls of ``fn`` (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def summarize_ms(*, seconds: Sequence[float] | NDArray[np.floating]) -> dict[str, float | int]:
    """p50 / p90 / p99 / max / mean of durations given in seconds, reported in ms."""
    x = np.asarray(seconds, dtype=np.float64) * 1e3
    if x.size == 0:
        return {"n": 0}
    return {
        "n": int(x.size),
        "p50_ms": round(float(np.percentile(x, 50)), 4),
        "p90_ms": round(float(np.percentile(x, 90)), 4),
        "p99_ms": round(float(np.percentile(x, 99)), 4),
        "max_ms": round(float(x.max()), 4),
        "mean_ms": round(float(x.mean()), 4),
    }


@cache
def demo_pcm() -> NDArray[np.int16]:
    """(n_samples,) int16 at 8 kHz: the bundled demo call, customer channel then agent
    channel (about 152 s of telephone-band speech and pauses)."""
    from emotion_engine.audio.io import read_audio
    from emotion_engine.audio.pcm import float32_to_int16

    samples, rate = read_audio(DEMO_CALL)
    if rate != 8000:
        raise SystemExit(f"{DEMO_CALL} is at {rate} Hz, expected 8000")
    pcm = float32_to_int16(samples).reshape(-1)
    pcm.flags.writeable = False
    return pcm


@cache
def ulaw_chunks() -> NDArray[np.uint8]:
    """(n_chunks, 160) uint8: :func:`demo_pcm` as 20 ms G.711 mu-law payloads."""
    from emotion_engine.audio.g711 import ulaw_encode

    pcm = demo_pcm()
    n = pcm.size // CHUNK_SAMPLES
    codes = ulaw_encode(pcm[: n * CHUNK_SAMPLES]).reshape(n, CHUNK_SAMPLES)
    codes.flags.writeable = False
    return codes


def leg_offsets(*, n_legs: int, n_chunks: int, seed: int = 0) -> NDArray[np.int64]:
    """(n_legs,) start chunk of each leg in the looped source audio, so legs carry
    different speech and reach their window boundaries at different ticks."""
    return np.random.default_rng(seed).integers(0, n_chunks, size=n_legs)


def target(name: str, *, goal: str, value: float | None, met: bool | None) -> dict[str, Any]:
    """One line of the issue's targets, as measured here."""
    return {"target": name, "goal": goal, "value": value, "met": met}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small GitHub-markdown table (the README pastes these)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (seconds)")
    parser.add_argument(
        "--json-out", type=Path, default=None, metavar="FILE", help="also write the JSON here"
    )


def emit(
    name: str,
    result: dict[str, Any],
    *,
    args: argparse.Namespace,
    table: str,
    started: float,
) -> None:
    """Stamp ``result`` with machine, commit and command; print the table on stderr
    and the JSON on stdout (and to ``--json-out``)."""
    doc = {
        "benchmark": name,
        "quick": bool(getattr(args, "quick", False)),
        "command": shlex.join(
            [Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]
        ),
        "git": git_state(),
        "machine": machine(),
        "wall_s": round(time.monotonic() - started, 1),
        **result,
    }
    print(table, file=sys.stderr, flush=True)
    text = json.dumps(doc, indent=2)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text, flush=True)


def open_legs(engine: Engine, *, n_legs: int, prefix: str = "leg") -> list[str]:
    """Open ``n_legs`` customer legs at 8 kHz; returns their call ids."""
    call_ids = [f"{prefix}-{i}" for i in range(n_legs)]
    for call_id in call_ids:
        engine.open_leg(call_id=call_id, party="customer", sample_rate=8000)
    return call_ids


def stream_ticks(
    engine: Engine,
    *,
    call_ids: Sequence[str],
    offsets: NDArray[np.int64],
    codes: NDArray[np.uint8],
    first_tick: int,
    n_ticks: int,
) -> int:
    """Feed every leg ``n_ticks`` ticks of audio as ``serve`` does: per tick, all legs'
    five 20 ms G.711 payloads are decoded with one table lookup (as
    ``RtpIngest.receive_batch`` decodes a tick's datagrams), each leg's 100 ms is pushed
    as one chunk (as the ingest hands each leg's audio to the engine once per tick),
    then one ``process`` runs for all legs. ``codes``: (n_chunks, 160) payloads, looped;
    leg ``i`` starts at chunk ``offsets[i]``. Returns the number of events produced."""
    from emotion_engine.audio.g711 import ulaw_decode
    from emotion_engine.frames import AudioChunk

    n_chunks = codes.shape[0]
    n_events = 0
    per_tick = np.arange(TICK_CHUNKS)
    for tick in range(first_tick, first_tick + n_ticks):
        k0 = tick * TICK_CHUNKS
        chunk_index = (offsets[:, None] + k0 + per_tick) % n_chunks  # (n_legs, 5)
        pcm = ulaw_decode(codes[chunk_index]).reshape(len(call_ids), -1)  # (n_legs, 800)
        for leg, call_id in enumerate(call_ids):
            engine.push(AudioChunk(call_id, "customer", k0 * CHUNK_S, pcm[leg], 8000))
        n_events += len(engine.process())
    return n_events
