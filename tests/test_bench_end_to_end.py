"""benchmarks.end_to_end: its helpers, and one tiny level for real (serve + loadgen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmarks/ lives in the checkout, not the package

from benchmarks.end_to_end import _engine_steps, _expected_windows, _thread_ticks  # noqa: E402

HIST = "emotion_engine_processing_seconds"


def test_engine_steps_counts_only_the_run() -> None:
    before = {f"{HIST}_count": 10.0, f"{HIST}_sum": 5.0, f'{HIST}_bucket{{le="0.1"}}': 4.0}
    after = {f"{HIST}_count": 110.0, f"{HIST}_sum": 11.0, f'{HIST}_bucket{{le="0.1"}}': 94.0}
    assert _engine_steps(before, after) == {"count": 100, "mean_ms": 60.0, "over_100ms_share": 0.1}
    assert _engine_steps({}, {}) == {"count": 0, "mean_ms": 0.0, "over_100ms_share": 0.0}


def test_thread_ticks_of_this_process() -> None:
    ticks = _thread_ticks(os.getpid())
    assert set(ticks) == {"event_loop", "engine_and_other_threads"}
    assert ticks["event_loop"] > 0  # pytest itself, on the main thread


def test_expected_windows() -> None:
    # 10 s = 500 packets; windows end at frame 100, 150, ... and must end before the tail
    assert _expected_windows(500) == 18
    assert _expected_windows(50) == 0


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_one_small_level_end_to_end() -> None:
    """5 legs x 3 s through a real serve: the warm-up leg, the per-thread CPU and the
    step figures come back, every expected window arrives, nothing is lost."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.end_to_end", "--legs", "5", "--seconds", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result = json.loads(proc.stdout)
    (level,) = result["levels"]
    assert result["warm_up"] is True and level["warm_up_s"] > 0
    assert level["packets_sent"] == 5 * 150
    assert level["packets_dropped_kernel"] == 0 and level["packets_lost_engine"] == 0
    assert level["windows_received"] == level["windows_expected"] > 0
    assert level["engine_steps"]["count"] > 0
    by_thread = level["server_cpu_us_per_packet_by_thread"]
    assert set(by_thread) == {"event_loop", "engine_and_other_threads"}
    assert level["server_cpu_us_per_packet"] > 0
