"""File reading: good files against an independent writer (stdlib ``wave``), and each
kind of bad file built in tmp_path, with the one-line error or documented handling."""

from __future__ import annotations

import itertools
import json
import os
import struct
import tracemalloc
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from emotion_engine.audio.io import open_audio, read_audio
from emotion_engine.errors import AudioFileError


def _pcm16(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(n, channels) int16 noise."""
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, size=(n, channels), dtype=np.int16)


def _write_wave(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """WAV through the stdlib writer, not libsndfile: a second path for the reader."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm).tobytes())
    return path


def _wav_header(*, n_samples: int, rate: int, channels: int = 1) -> bytes:
    """Canonical 44-byte PCM16 WAV header announcing ``n_samples`` per channel."""
    data_bytes = n_samples * channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def test_stereo_wav_reads_as_channels_first_float32(tmp_path: Path) -> None:
    pcm = _pcm16(12345, channels=2)
    path = _write_wave(tmp_path / "call.wav", pcm, 16000)
    source = open_audio(path)
    assert (source.sample_rate, source.n_channels, source.n_samples) == (16000, 2, 12345)
    assert source.duration_s == pytest.approx(12345 / 16000)
    samples, rate = read_audio(path)
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == (2, 12345)
    np.testing.assert_array_equal(samples, pcm.T.astype(np.float64) / 32768.0)


def test_blocks_are_bounded_and_concatenate_to_the_file(tmp_path: Path) -> None:
    pcm = _pcm16(8000 * 180, seed=1)  # 3 minutes at 8 kHz
    path = _write_wave(tmp_path / "long.wav", pcm, 8000)
    source = open_audio(path)
    tracemalloc.start()
    try:
        sizes, checksum, first = [], 0.0, None
        for block in source.blocks(block_samples=8000):
            sizes.append(block.shape[1])
            checksum += float(block.astype(np.float64).sum())
            first = block if first is None else first
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(sizes) == 8000 and sum(sizes) == pcm.shape[0] and len(sizes) == 180
    assert checksum == pytest.approx(pcm.astype(np.float64).sum() / 32768.0, rel=1e-9)
    assert first is not None
    np.testing.assert_array_equal(first[0], pcm[:8000, 0] / 32768.0)
    # The whole file as float32 would be 5.8 MB; streaming holds a few blocks.
    assert peak < 1_000_000


def test_ten_hour_file_opens_from_its_header_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "ten_hours.wav"
    n = 8000 * 3600 * 10
    with path.open("wb") as f:
        f.write(_wav_header(n_samples=n, rate=8000))
        f.write(struct.pack("<8h", 1, -1, 2, -2, 3, -3, 4, -4))
        f.truncate(44 + 2 * n)  # sparse: 576 MB announced, nothing written
    source = open_audio(path)
    assert source.n_samples == n and source.duration_s == pytest.approx(36000.0)
    blocks = source.blocks(block_samples=4000)
    first = next(blocks)
    assert first.shape == (1, 4000)
    np.testing.assert_array_equal(first[0, :8] * 32768, [1, -1, 2, -2, 3, -3, 4, -4])
    assert all(next(blocks).shape == (1, 4000) for _ in range(20))
    blocks.close()


def test_format_comes_from_content_not_extension(tmp_path: Path) -> None:
    pcm = _pcm16(800)
    wav = _write_wave(tmp_path / "a.wav", pcm, 8000)
    for name in ("call.mp3", "call.txt", "call"):
        renamed = tmp_path / name
        renamed.write_bytes(wav.read_bytes())
        source = open_audio(renamed)
        assert source.format == "WAV" and source.n_samples == 800
    flac = tmp_path / "real.flac"
    sf.write(flac, pcm[:, 0], 8000, format="FLAC")
    disguised = tmp_path / "disguised.wav"
    disguised.write_bytes(flac.read_bytes())
    samples, _ = read_audio(disguised)
    assert open_audio(disguised).format == "FLAC"
    np.testing.assert_array_equal(samples[0], pcm[:, 0] / 32768.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
        (lambda p: p.write_bytes(os.urandom(4096)), "not a readable audio file"),
        (lambda p: p.write_text("customer,agent\n1,2\n"), "not a readable audio file"),
        (lambda p: p.write_bytes(_pcm16(4000).tobytes()), "not a readable audio file"),  # raw
        (lambda p: p.write_bytes(_wav_header(n_samples=0, rate=8000)), "no audio samples"),
        (lambda p: p.write_bytes(_wav_header(n_samples=10, rate=8000)[:20]), "not a readable"),
    ],
    ids=[
        "missing",
        "directory",
        "empty",
        "random-bytes",
        "text",
        "raw-pcm",
        "zero-samples",
        "cut-header",
    ],
)
def test_unusable_files_raise_one_line_errors_naming_the_file(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioFileError, match=message) as info:
        open_audio(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    with pytest.raises(AudioFileError, match=message):
        read_audio(path)


def test_one_sample_file_is_readable(tmp_path: Path) -> None:
    path = _write_wave(tmp_path / "one.wav", np.array([[1234]], dtype=np.int16), 8000)
    samples, rate = read_audio(path)
    assert rate == 8000 and samples.shape == (1, 1)
    assert samples[0, 0] == pytest.approx(1234 / 32768)


def test_more_than_two_channels_names_the_count(tmp_path: Path) -> None:
    path = tmp_path / "three.wav"
    sf.write(path, _pcm16(800, channels=3), 8000)
    with pytest.raises(AudioFileError, match="3 channels"):
        open_audio(path)


def test_unsupported_rate_lists_the_supported_ones(tmp_path: Path) -> None:
    path = _write_wave(tmp_path / "odd.wav", _pcm16(800), 22000)
    with pytest.raises(AudioFileError, match=r"22000 Hz; supported: 8000, 11025, .*, 96000"):
        open_audio(path)


def test_truncated_wav_reads_the_samples_that_are_there(tmp_path: Path) -> None:
    pcm = _pcm16(8000)
    whole = _write_wave(tmp_path / "whole.wav", pcm, 8000).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: 44 + 2 * 3000 + 1])  # header still announces 8000 samples
    samples, _ = read_audio(cut)
    assert samples.shape == (1, 3000)
    np.testing.assert_array_equal(samples[0], pcm[:3000, 0] / 32768.0)


def test_truncated_flac_yields_what_decodes_then_says_how_much(tmp_path: Path) -> None:
    pcm = _pcm16(80000, seed=2) // 4
    full = tmp_path / "full.flac"
    sf.write(full, pcm[:, 0], 8000, format="FLAC")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    source = open_audio(cut)
    assert source.n_samples == 80000  # the header's promise
    got: list[np.ndarray] = []
    with pytest.raises(
        AudioFileError, match=r"truncated or corrupt: decoding failed after \d+ of 80000"
    ) as info:
        got.extend(source.blocks(block_samples=1000))
    assert str(info.value).startswith(str(cut))
    assert 0 < sum(b.shape[1] for b in got) < 80000
    np.testing.assert_array_equal(
        np.concatenate(got, axis=1)[0], pcm[: sum(b.shape[1] for b in got), 0] / 32768.0
    )


def test_non_finite_samples_become_zero_and_are_counted(tmp_path: Path) -> None:
    x = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    x[[3, 500, 999]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "float.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    source = open_audio(path)
    blocks = list(source.blocks(block_samples=256))
    assert source.non_finite_samples == 3
    got = np.concatenate(blocks, axis=1)[0]
    expected = np.where(np.isfinite(x), x, 0.0)
    np.testing.assert_array_equal(got, expected)


def test_clipped_and_dc_offset_audio_is_read_unchanged(tmp_path: Path) -> None:
    x = (0.3 + 1.4 * np.sin(np.arange(2000) / 7.0)).astype(np.float32)  # beyond +/-1, DC 0.3
    path = tmp_path / "hot.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    samples, _ = read_audio(path)
    np.testing.assert_array_equal(samples[0], x)


def test_bad_block_size_is_rejected(tmp_path: Path) -> None:
    source = open_audio(_write_wave(tmp_path / "a.wav", _pcm16(100), 8000))
    with pytest.raises(AudioFileError, match="block_samples must be >= 1, got 0"):
        next(source.blocks(block_samples=0))


# The bundled demo call (emotion_engine/data): its audio agrees with its timeline.

DEMO_FLAC = Path(__file__).resolve().parent.parent / "emotion_engine" / "data" / "demo_call.flac"


def _demo_timeline() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEMO_FLAC.with_suffix(".json").read_text())
    return doc


def test_demo_call_is_a_small_stereo_8khz_call() -> None:
    source = open_audio(DEMO_FLAC)
    assert (source.format, source.sample_rate, source.n_channels) == ("FLAC", 8000, 2)
    assert 60 <= source.duration_s <= 90
    assert DEMO_FLAC.stat().st_size < 1_000_000
    assert _demo_timeline()["duration_s"] == pytest.approx(source.duration_s, abs=1e-3)


def test_demo_call_audio_matches_its_timeline() -> None:
    """Each channel holds sound exactly inside its party's segments (digital silence
    elsewhere), the parties never talk at once, and the customer's phases have the
    lengths the demo relies on."""
    doc = _demo_timeline()
    samples, rate = read_audio(DEMO_FLAC)
    for ch, party in enumerate(doc["channels"]):
        mask = np.zeros(samples.shape[1], dtype=bool)
        for seg in doc["segments"]:
            if seg["party"] == party:
                a, b = round(seg["start_s"] * rate), round(seg["end_s"] * rate)
                mask[a:b] = True
                inner = samples[ch, a:b]
                assert np.sqrt(np.mean(inner**2)) > 10 ** (-60 / 20), seg  # not silent
        assert not np.any(samples[ch, ~mask]), party
    segs = sorted(doc["segments"], key=lambda s: s["start_s"])
    assert all(b["start_s"] >= a["end_s"] for a, b in itertools.pairwise(segs))
    phases = {p["state"]: p for p in doc["phases"]}
    assert phases["neutral"]["end_s"] >= 20
    angry = [s for s in segs if s["party"] == "customer" and s["emotion"] == "angry"]
    assert sum(s["end_s"] - s["start_s"] for s in angry) >= 8
    assert [s["intensity"] for s in angry[:2]] == ["normal", "normal"]
    assert {s["speaker"] for s in segs if s["party"] == "customer"} != {
        s["speaker"] for s in segs if s["party"] == "agent"
    }


def test_demo_call_is_what_the_command_builds(data_dir: Path) -> None:
    """Reproducible: rebuilding from RAVDESS with the recorded seed gives the same samples."""
    from emotion_engine.training.demo_call import build_demo_call

    doc = _demo_timeline()
    src = doc["source"]
    pcm, segments = build_demo_call(
        data_dir=data_dir,
        seed=doc["seed"],
        customer=src["customer_speaker"],
        agent=src["agent_speaker"],
    )
    stored, _ = sf.read(DEMO_FLAC, dtype="int16", always_2d=True)
    np.testing.assert_array_equal(pcm, stored.T)
    assert [s.clip for s in segments] == [s["clip"] for s in doc["segments"]]
