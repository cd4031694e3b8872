"""Feature extraction: frames -> low-level descriptors -> window functionals.

Live path (engine): ``frame_signal``/``Framer`` -> :func:`compute_lld` (batched across
streams) -> :func:`compute_functionals` over each 2 s window.
Training path: :func:`extract_clip_features` does the same over a whole clip.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from emotion_engine.audio.framing import frame_signal
from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.errors import AudioError
from emotion_engine.features.functionals import (
    FUNCTIONAL_NAMES,
    compute_functionals,
    voiced_ratio,
)
from emotion_engine.features.lld import LLD_INDEX, LLD_NAMES, compute_lld

__all__ = [
    "FUNCTIONAL_NAMES",
    "LLD_INDEX",
    "LLD_NAMES",
    "compile_kernels",
    "compute_functionals",
    "compute_lld",
    "extract_clip_features",
    "voiced_ratio",
]


def extract_clip_features(
    *,
    samples: NDArray[np.floating],
    params: FeatureParams = DEFAULT_FEATURE_PARAMS,
) -> NDArray[np.float32]:
    """Functionals of a whole clip, the training-time counterpart of the live windows.

    ``samples``: (n_samples,) float in [-1, 1] at ``params.sample_rate_hz`` (8 kHz).
    Frames come from ``frame_signal`` (one every ``hop_length`` samples, no padding);
    a clip shorter than one frame gives zeros. Returns (len(FUNCTIONAL_NAMES),) float32.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"samples must be one channel, shape (n_samples,), got {x.shape}")
    if x.shape[0] < params.frame_length:
        return np.zeros(len(FUNCTIONAL_NAMES), dtype=np.float32)
    frames = frame_signal(samples=x, frame_length=params.frame_length, hop_length=params.hop_length)
    lld = compute_lld(frames=frames, params=params)
    return compute_functionals(lld=lld, params=params)


def compile_kernels() -> None:
    """Compile the numba kernels, or load them from numba's on-disk cache.

    The first call in a fresh checkout takes about 15 s; later processes load the cache in
    a fraction of that. ``make test`` and ``make run`` call this once first, so that the
    test processes and servers started in parallel find the kernels cached rather than
    all compiling (and writing the cache) at the same moment.
    """
    noise = np.random.default_rng(0).normal(0.0, 0.1, 2 * DEFAULT_FEATURE_PARAMS.sample_rate_hz)
    extract_clip_features(samples=noise.astype(np.float32))
