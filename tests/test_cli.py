"""The ``emotion-engine`` command as a user runs it: a real subprocess per case.

What each bad input gets (exit 0 = all files analysed, 1 = none, 2 = some):

| input | handling |
|---|---|
| empty, corrupt, text, missing, 1-sample, 0.2 s, 3 channels, 12345 Hz | one-line ``error:`` naming the file; the batch goes on |
| silent | analysed: no speech, no spike, summary says 0 s of speech |
| clipped, DC offset | analysed as is |
| NaN/inf samples | analysed; they become 0 and the summary notes how many |
| wrong extension (FLAC named .wav) | read by content |
| truncated WAV | the samples that are there are analysed |
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "emotion_engine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def events_of(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def speech(call_pcm: NDArray[np.int16]) -> NDArray[np.float32]:
    """6 s of real speech at 8 kHz as float32."""
    return call_pcm[: 6 * 8000].astype(np.float32) / 32768


def test_help_explains_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("serve", "analyze", "demo", "mic", "train", "evaluate"):
        assert command in result.stdout
    analyze = cli("analyze", "--help")
    text = " ".join(analyze.stdout.split())  # argparse wraps lines
    assert "--channels" in text and "Exit status: 0 all files analysed, 1 none, 2 some" in text


def test_analyze_stereo_44k_file_gives_both_parties_and_a_plot(
    tmp_path: Path, speech: NDArray[np.float32]
) -> None:
    import librosa

    up = librosa.resample(speech, orig_sr=8000, target_sr=44100)
    stereo = np.stack([up, up[::-1]], axis=1)
    path = tmp_path / "call.flac"
    sf.write(path, stereo, 44100)
    out = tmp_path / "events.jsonl"
    plot = tmp_path / "timeline.png"
    result = cli("analyze", path, "--channels", "agent,customer", "--out", out, "--plot", plot)
    assert result.returncode == 0, result.stderr
    events = events_of(out.read_text())
    ends = {e["party"] for e in events if e["type"] == "call.end"}
    assert ends == {"agent", "customer"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "=== summary ===" in result.stderr and "1 of 1 file(s) analysed" in result.stderr


def _write(path: Path, data: NDArray[np.float32], rate: int = 8000, **kw: str) -> Path:
    sf.write(path, data, rate, **kw)
    return path


def test_bad_files_in_a_batch_each_get_one_line_and_the_rest_are_analysed(
    tmp_path: Path, speech: NDArray[np.float32]
) -> None:
    good = _write(tmp_path / "good.wav", speech)
    bad: dict[str, Path] = {}
    bad["empty"] = tmp_path / "empty.wav"
    bad["empty"].write_bytes(b"")
    bad["corrupt"] = tmp_path / "corrupt.wav"
    bad["corrupt"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(500))
    bad["text"] = tmp_path / "notes.flac"
    bad["text"].write_text("this is not audio\n")
    bad["one-sample"] = _write(tmp_path / "one.wav", speech[:1])
    bad["too-short"] = _write(tmp_path / "short.wav", speech[:1600])
    bad["three-channels"] = _write(tmp_path / "three.wav", np.stack([speech] * 3, axis=1))
    bad["odd-rate"] = _write(tmp_path / "rate.wav", speech, rate=12345)
    bad["missing"] = tmp_path / "missing.wav"

    result = cli("analyze", "--no-progress", bad["empty"], good, *list(bad.values())[1:])
    assert result.returncode == 2, result.stderr  # some analysed, some not
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad), result.stderr
    for path in bad.values():
        assert sum(str(path) in line for line in errors) == 1, (path, errors)
    assert "1 of 9 file(s) analysed" in result.stderr
    events = events_of(result.stdout)
    assert {e["call_id"] for e in events} == {"good"}
    assert [e["type"] for e in events][-1] == "call.end"


def test_nothing_analysable_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = cli("analyze", "--no-progress", empty)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: {empty}" in result.stderr


def test_degenerate_audio_is_analysed_with_documented_handling(
    tmp_path: Path, speech: NDArray[np.float32]
) -> None:
    silent = _write(tmp_path / "silent.wav", np.zeros(5 * 8000, dtype=np.float32))
    clipped = _write(tmp_path / "clipped.wav", np.clip(speech * 20, -1, 1))
    dc = _write(tmp_path / "dc.wav", np.clip(speech + 0.3, -1, 1))
    with_nan = speech.copy()
    with_nan[1000:1100] = np.nan
    with_nan[5000] = np.inf
    nan = _write(tmp_path / "nan.wav", with_nan, subtype="FLOAT")
    flac_named_wav = _write(tmp_path / "really_flac.wav", speech, format="FLAC")
    result = cli("analyze", "--no-progress", silent, clipped, dc, nan, flac_named_wav)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    ends = {e["call_id"]: e for e in events if e["type"] == "call.end"}
    assert set(ends) == {"silent", "clipped", "dc", "nan", "really_flac"}
    silent_summary = ends["silent"]["summary"]
    assert isinstance(silent_summary, dict) and silent_summary["speech_s"] == 0
    assert not [e for e in events if e["call_id"] == "silent" and e["type"] == "emotion.spike"]
    assert "101 NaN/inf samples replaced with 0" in result.stderr
    assert all(
        isinstance(s := e["summary"], dict) and s["speech_s"] > 0
        for cid, e in ends.items()
        if cid != "silent"
    )


def test_truncated_wav_analyses_what_is_there(tmp_path: Path, speech: NDArray[np.float32]) -> None:
    path = _write(tmp_path / "cut.wav", speech, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still claims 6 s
    result = cli("analyze", "--no-progress", path)
    assert result.returncode == 0, result.stderr
    end = next(e for e in events_of(result.stdout) if e["type"] == "call.end")
    assert isinstance(s := end["summary"], dict)
    assert 2.5 < float(s["duration_s"]) < 3.5


def test_bad_channel_names_are_a_usage_error(tmp_path: Path) -> None:
    result = cli("analyze", "x.wav", "--channels", "customer,customer")
    assert result.returncode == 2 and "--channels names must differ" in result.stderr


def test_demo_runs_fast_and_shows_a_customer_anger_cue() -> None:
    result = cli("demo", "--speed", "0")
    assert result.returncode == 0, result.stderr
    assert "angry" in result.stderr.lower()
    assert "=== summary ===" in result.stderr


def test_detector_settings_change_what_is_reported() -> None:
    """``--detector`` reaches the spike detector: a deaf setting (start at P(angry) 0.99
    over 3 windows) reports no anger spike where the defaults report one; a bad setting
    is one clear line and exit 1."""
    default = cli("demo", "--speed", "0", "--out", "/dev/stdout")
    deaf = cli(
        "demo", "--speed", "0", "--out", "/dev/stdout",
        "--detector", "on_threshold=0.99,early_on_threshold=0.99,smoothing_windows=3",
    )  # fmt: skip
    assert default.returncode == 0 and deaf.returncode == 0, deaf.stderr

    def spikes(stdout: str) -> int:
        return sum(
            1 for e in events_of(stdout) if e["type"] == "emotion.spike" and e["phase"] == "start"
        )

    assert spikes(default.stdout) >= 1
    assert spikes(deaf.stdout) == 0
    bad = cli("demo", "--speed", "0", "--detector", "on_threshold=1.5")
    assert bad.returncode == 1
    assert "on_threshold=1.5 must lie in [0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli("demo", "--speed", "0", "--detector", "on_treshold=0.7")
    assert unknown.returncode == 1 and "unknown key 'on_treshold'" in unknown.stderr
