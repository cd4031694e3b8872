"""int16 PCM <-> float32 samples in [-1, 1).

Everything after the codec works in float32 with full scale 1.0, the convention of
soundfile and librosa: ``int16_to_float32`` divides by 32768 (exact in float32), and
``float32_to_int16`` is its inverse for every int16 value. Next step for a live
stream: :class:`emotion_engine.audio.resample.StreamingResampler`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from emotion_engine.errors import AudioError

__all__ = ["float32_to_int16", "int16_to_float32"]

_FULL_SCALE: Final = 32768.0


def int16_to_float32(pcm: NDArray[np.int16]) -> NDArray[np.float32]:
    """int16 samples of any shape -> float32 of the same shape, ``x / 32768``."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise AudioError(f"int16_to_float32 needs int16 samples, got dtype {arr.dtype}")
    out: NDArray[np.float32] = arr.astype(np.float32)
    out *= np.float32(1.0 / _FULL_SCALE)  # a power of two: exact, so the round trip is lossless
    return out


def float32_to_int16(samples: ArrayLike) -> NDArray[np.int16]:
    """Float samples of any shape (full scale 1.0) -> int16 of the same shape.

    Rounds half to even (``np.rint``) and clips to [-32768, 32767], so +1.0 becomes
    32767; NaN becomes 0 and +/-inf the clip limits.
    """
    scaled = np.asarray(samples, dtype=np.float64) * _FULL_SCALE
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=32767.0, neginf=-32768.0)
    return np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
