"""Framing: strided views against a slicing loop and librosa.util.frame; the streaming
Framer against frame_signal of the whole signal, for any chunking."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_engine.audio.framing import Framer, frame_signal, n_frames
from emotion_engine.errors import AudioError, ConfigError


def _slow_frames(x: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    starts = range(0, x.shape[-1] - frame_length + 1, hop)
    rows = [x[..., s : s + frame_length] for s in starts]
    if not rows:
        return np.zeros((*x.shape[:-1], 0, frame_length), dtype=x.dtype)
    return np.stack(rows, axis=-2)


def _signal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 199, 200, 201, 279, 280, 281, 1000, 8000])
def test_frame_signal_matches_a_slicing_loop(n: int) -> None:
    x = _signal(n)
    frames = frame_signal(samples=x)
    expected = _slow_frames(x, 200, 80)
    assert frames.shape == expected.shape == (n_frames(n_samples=n), 200)
    np.testing.assert_array_equal(frames, expected)


def test_frame_signal_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    x = _signal(4321)
    ref = librosa.util.frame(x, frame_length=200, hop_length=80, axis=-1)  # (200, n_frames)
    np.testing.assert_array_equal(frame_signal(samples=x), ref.T)


def test_frame_signal_is_a_read_only_view_and_keeps_leading_axes() -> None:
    x = np.stack([_signal(1000, seed=s) for s in range(3)]).reshape(3, 1, 1000)
    frames = frame_signal(samples=x, frame_length=50, hop_length=20)
    assert frames.shape == (3, 1, 48, 50)
    assert np.shares_memory(frames, x)
    assert not frames.flags.writeable
    np.testing.assert_array_equal(frames, _slow_frames(x, 50, 20))
    # A non-contiguous input (every other sample) is framed by its strides.
    strided = x[..., ::2]
    np.testing.assert_array_equal(frame_signal(samples=strided), _slow_frames(strided, 200, 80))


@pytest.mark.parametrize(("frame_length", "hop"), [(200, 80), (200, 200), (50, 80), (1, 1)])
def test_framer_any_chunking_equals_frame_signal(frame_length: int, hop: int) -> None:
    x = _signal(5000, seed=1)
    rng = np.random.default_rng(frame_length * 1000 + hop)
    framer = Framer(frame_length=frame_length, hop_length=hop)
    pieces, i = [], 0
    while i < x.size:
        n = int(rng.choice([0, 1, 2, 7, 80, 160, int(rng.integers(0, 900))]))
        pieces.append(framer.push(x[i : i + n]))
        i += n
    got = np.concatenate(pieces)
    expected = frame_signal(samples=x, frame_length=frame_length, hop_length=hop)
    np.testing.assert_array_equal(got, expected)
    assert framer.frames_emitted == expected.shape[0]
    assert all(p.dtype == np.float32 and p.shape[1] == frame_length for p in pieces)


def test_frames_from_earlier_pushes_stay_valid() -> None:
    x = _signal(2000, seed=2)
    framer = Framer()
    first = framer.push(x[:1000])
    snapshot = first.copy()
    chunk = x[1000:].copy()
    framer.push(chunk)
    chunk[:] = 0  # the caller reusing its buffer must not change frames already returned
    framer.push(np.zeros(500, dtype=np.float32))
    np.testing.assert_array_equal(first, snapshot)


def test_framer_reset_starts_a_new_stream() -> None:
    framer = Framer()
    framer.push(_signal(150))
    framer.reset()
    x = _signal(600, seed=3)
    np.testing.assert_array_equal(framer.push(x), frame_signal(samples=x))
    assert framer.frames_emitted == 6


@pytest.mark.parametrize(("frame_length", "hop"), [(0, 80), (200, 0), (-5, 80)])
def test_bad_geometry_is_rejected(frame_length: int, hop: int) -> None:
    with pytest.raises(ConfigError, match=str(min(frame_length, hop))):
        Framer(frame_length=frame_length, hop_length=hop)
    with pytest.raises(ConfigError):
        frame_signal(
            samples=np.zeros(500, dtype=np.float32), frame_length=frame_length, hop_length=hop
        )


def test_framer_rejects_non_mono_input() -> None:
    with pytest.raises(AudioError, match=r"\(2, 100\)"):
        Framer().push(np.zeros((2, 100), dtype=np.float32))
