"""Window functionals: a fixed-length feature vector from a window of LLD frames.

Statistics of prosody and voice quality are taken over the window's voiced frames
only (silence and consonants would otherwise dominate them); a few descriptors of
the speech rhythm and level use every frame. Cross-frame descriptors come from
consecutive voiced frame pairs (both voiced, periods within :data:`MAX_PERIOD_FACTOR`):

- ``jitter_local``: ``mean |T_i - T_{i-1}| / mean((T_i + T_{i-1}) / 2)`` over pairs,
  ``T = 1 / F0``. With 10 ms frames this is frame-to-frame period variation, a coarse
  stand-in for Praat's cycle-to-cycle jitter.
- ``shimmer_db``: ``mean |20 log10(A_i / A_{i-1})|`` over pairs, ``A`` the frame peak.
- ``f0_delta_semitone_abs_mean``: mean ``|st_i - st_{i-1}|`` over pairs.
- ``loudness_delta_std``: std of the frame-to-frame loudness change over all frames.

F0 is taken in semitones re 27.5 Hz (``12 log2(F0 / 27.5)``). Standard deviations are
population (``ddof=0``); percentiles interpolate linearly between order statistics,
as ``numpy.percentile``. A window without voiced frames gives 0 for every voiced
statistic and ``voiced_ratio`` 0: the output is always finite.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.errors import AudioError
from emotion_engine.features import _kernels
from emotion_engine.features.lld import LLD_INDEX, LLD_NAMES, N_MFCC

F0_REFERENCE_HZ = 27.5
PERCENTILES: tuple[int, ...] = (20, 50, 80)
MAX_PERIOD_FACTOR = 1.3
"""Consecutive voiced frames whose periods differ by more (an octave jump, a new
voice) do not form a pair: Praat's "maximum period factor" for jitter."""

_MEAN_STD_VOICED: tuple[str, ...] = (
    "hnr_db",
    "spectral_slope_db_per_khz",
    "spectral_centroid_hz",
    "spectral_flatness",
    "alpha_ratio_db",
    "hammarberg_db",
    "zcr",
    "rms_db",
    *(f"mfcc{i}" for i in range(1, N_MFCC)),
)


_OTHER_NAMES: tuple[str, ...] = (
    "jitter_local",
    "shimmer_db",
    "f0_delta_semitone_abs_mean",
    "voiced_ratio",
    "loudness_all_mean",
    "rms_db_all_mean",
    "loudness_delta_std",
    "voiced_segments_per_s",
    "voiced_segment_mean_s",
)
"""Window-level voice-quality and rhythm functionals, after the per-LLD statistics."""


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for base in ("f0_semitone", "loudness"):
        names += [f"{base}_mean", f"{base}_std"]
        names += [f"{base}_p{p}" for p in PERCENTILES]
        names.append(f"{base}_p{PERCENTILES[0]}_{PERCENTILES[-1]}_range")
    for lld in _MEAN_STD_VOICED:
        names += [f"{lld}_mean", f"{lld}_std"]
    names += list(_OTHER_NAMES)
    return tuple(names)


FUNCTIONAL_NAMES: tuple[str, ...] = _names()
"""Order of :func:`compute_functionals`' last axis (the model's input order)."""

_OUT_INDEX = {name: i for i, name in enumerate(FUNCTIONAL_NAMES)}
# Output columns written with one fancy index each: a single live window costs per
# numpy call, not per value (a column-by-column loop was half of its ~1 ms).
_PROSODY = ("f0_semitone", "loudness")
_PROSODY_COLS = np.array(
    [
        [_OUT_INDEX[f"{base}_{stat}"] for stat in ("mean", "std", *(f"p{p}" for p in PERCENTILES))]
        + [_OUT_INDEX[f"{base}_p{PERCENTILES[0]}_{PERCENTILES[-1]}_range"]]
        for base in _PROSODY
    ]
)  # (2, 3 + n_percentiles): mean, std, percentiles, range
_MEAN_COLS = np.array([_OUT_INDEX[f"{name}_mean"] for name in _MEAN_STD_VOICED])
_STD_COLS = np.array([_OUT_INDEX[f"{name}_std"] for name in _MEAN_STD_VOICED])
_MEAN_STD_LLD_COLS = np.array([LLD_INDEX[name] for name in _MEAN_STD_VOICED])
_LLD_COLS = np.array(
    [LLD_INDEX[name] for name in ("voiced", "f0_hz", "loudness", "peak_amplitude", "rms_db")]
)
_OTHER_COLS = np.array([_OUT_INDEX[name] for name in _OTHER_NAMES])
_PERCENTILES = np.asarray(PERCENTILES, dtype=np.float64)


def voiced_ratio(*, lld: NDArray[np.floating]) -> NDArray[np.float32]:
    """Share of voiced frames: (..., n_frames, n_lld) -> (...,) float32 in 0..1 (0 if no frames)."""
    x = _check(lld)
    voiced = x[..., LLD_INDEX["voiced"]] > 0.5
    voiced &= x[..., LLD_INDEX["f0_hz"]] > 0
    n = voiced.shape[-1]
    return np.asarray(voiced.sum(axis=-1) / max(n, 1), dtype=np.float32)


def compute_functionals(
    *,
    lld: NDArray[np.floating],
    params: FeatureParams = DEFAULT_FEATURE_PARAMS,
) -> NDArray[np.float32]:
    """Functionals of a window of LLD frames.

    ``lld``: (..., n_frames, len(LLD_NAMES)) from :func:`compute_lld`, frames
    ``params.hop_length`` samples apart. Returns (..., len(FUNCTIONAL_NAMES)) float32,
    always finite. Next: the model (``EmotionModel.predict``).
    """
    x = _check(lld)
    lead = x.shape[:-2]
    n_frames = x.shape[-2]
    n_windows = int(np.prod(lead, dtype=np.int64))
    out = np.zeros((n_windows, len(FUNCTIONAL_NAMES)), dtype=np.float32)
    if n_frames == 0 or n_windows == 0:
        return out.reshape(*lead, len(FUNCTIONAL_NAMES))
    x = x.reshape(n_windows, n_frames, len(LLD_NAMES)).astype(np.float32, copy=False)
    if not np.isfinite(x).all():  # one check; nan_to_num alone is six numpy calls
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    _kernels.window_functionals(
        np.ascontiguousarray(x),
        _LLD_COLS,
        _MEAN_STD_LLD_COLS,
        _PERCENTILES,
        _PROSODY_COLS,
        _MEAN_COLS,
        _STD_COLS,
        _OTHER_COLS,
        F0_REFERENCE_HZ,
        MAX_PERIOD_FACTOR,
        params.hop_length / params.sample_rate_hz,
        n_frames * params.hop_length / params.sample_rate_hz,
        out,
    )
    return out.reshape(*lead, len(FUNCTIONAL_NAMES))


def _check(lld: NDArray[np.floating]) -> NDArray[np.floating]:
    x = np.asarray(lld)
    if x.ndim < 2 or x.shape[-1] != len(LLD_NAMES):
        raise AudioError(f"lld must have shape (..., n_frames, {len(LLD_NAMES)}), got {x.shape}")
    return x
