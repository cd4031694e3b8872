"""Overlapping analysis frames (25 ms / 10 ms at 8 kHz) as zero-copy strided views.

:func:`frame_signal` frames a whole signal (the training path); :class:`Framer` does
the same for a live stream pushed in chunks of any size, and the frames it returns
over a stream are exactly ``frame_signal`` of the concatenated stream. Neither pads:
frame ``i`` covers samples ``i*hop .. i*hop + frame_length - 1``, and a trailing
partial frame is never emitted. Frames go next to
:func:`emotion_engine.features.lld.compute_lld`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from emotion_engine.config import FRAME_LENGTH, HOP_LENGTH
from emotion_engine.errors import AudioError, ConfigError

__all__ = ["Framer", "frame_signal", "n_frames"]


def _check_geometry(*, frame_length: int, hop_length: int) -> None:
    if frame_length < 1:
        raise ConfigError(f"frame_length must be >= 1 sample, got {frame_length!r}")
    if hop_length < 1:
        raise ConfigError(f"hop_length must be >= 1 sample, got {hop_length!r}")


def n_frames(
    *, n_samples: int, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH
) -> int:
    """Number of whole frames in ``n_samples`` samples (0 when shorter than a frame)."""
    if n_samples < frame_length:
        return 0
    return 1 + (n_samples - frame_length) // hop_length


def frame_signal(
    *,
    samples: NDArray[np.float32],
    frame_length: int = FRAME_LENGTH,
    hop_length: int = HOP_LENGTH,
) -> NDArray[np.float32]:
    """Frame the last axis: (..., n_samples) -> (..., n_frames, frame_length).

    A read-only strided view of ``samples`` (no copy, no padding); ``n_frames`` is
    ``1 + (n_samples - frame_length) // hop_length``, or 0 for a shorter signal.
    """
    _check_geometry(frame_length=frame_length, hop_length=hop_length)
    arr = np.asarray(samples)
    if arr.ndim < 1:
        raise AudioError(f"frame_signal needs at least one axis of samples, got shape {arr.shape}")
    count = n_frames(n_samples=arr.shape[-1], frame_length=frame_length, hop_length=hop_length)
    step = arr.strides[-1]
    if arr.ndim == 1 and arr.flags.c_contiguous:
        # the live path (one fresh buffer per push): the ndarray constructor builds the
        # same view in ~2 us, as_strided's Python wrapper takes ~9 us per leg and tick
        view: NDArray[np.float32] = np.ndarray(
            (count, frame_length), dtype=arr.dtype, buffer=arr, strides=(step * hop_length, step)
        )
        view.flags.writeable = False
        return view
    return np.lib.stride_tricks.as_strided(
        arr,
        shape=(*arr.shape[:-1], count, frame_length),
        strides=(*arr.strides[:-1], step * hop_length, step),
        writeable=False,
    )


class Framer:
    """Frames one live stream: ``push`` chunks, get the frames they complete.

    Only the samples a future frame still needs are carried between pushes (fewer
    than ``frame_length``). Each push joins them with the new chunk in a fresh array
    and returns a strided view of it, so frames are never copied and never
    overwritten by a later push.
    """

    def __init__(self, *, frame_length: int = FRAME_LENGTH, hop_length: int = HOP_LENGTH) -> None:
        _check_geometry(frame_length=frame_length, hop_length=hop_length)
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.reset()

    def reset(self) -> None:
        """Drop buffered samples and restart the frame count (a new stream)."""
        self._tail = np.zeros(0, dtype=np.float32)
        self._skip = 0  # samples to drop before the next frame (only when hop > frame_length)
        self.frames_emitted = 0
        """Frames returned since the last reset; frame ``k`` starts at sample ``k * hop``."""

    def push(self, samples: ArrayLike) -> NDArray[np.float32]:
        """Add (n,) float32 samples; returns the (n_new_frames, frame_length) frames they
        complete (possibly none), a read-only view."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"Framer.push needs mono (n,) samples, got shape {x.shape}")
        if self._skip:
            dropped = min(self._skip, x.size)
            x, self._skip = x[dropped:], self._skip - dropped
        buf = np.concatenate((self._tail, x)) if self._tail.size else x.copy()
        frames = frame_signal(
            samples=buf, frame_length=self.frame_length, hop_length=self.hop_length
        )
        count = frames.shape[0]
        self.frames_emitted += count
        next_start = count * self.hop_length
        if count:  # else a skip still pending from an earlier push stands
            self._skip = max(0, next_start - buf.size)
        # A copy, so the carried samples do not pin the whole chunk in memory.
        self._tail = buf[next_start:].copy()
        return frames
