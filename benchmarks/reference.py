"""A plain per-frame numpy implementation of the engine's low-level descriptors.

The yardstick for the batched extractor (:func:`emotion_engine.features.lld.compute_lld`):
the same descriptors, written the way one would write them for a single frame, one
frame at a time, in float64, with textbook tools (``np.correlate`` for the lag
products, ``np.polyfit`` for the slope, ``scipy.fft.dct`` for the MFCCs). Its speed is
measured in the same process as the extractor's, so "batched / reference" is a ratio
that a noisy machine cannot fake, and its numbers are compared with the extractor's,
so the two really do the same work.

Only the descriptor definitions are shared with the engine (see the module docstring
of ``emotion_engine.features.lld``); no code is.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.features.lld import LLD_INDEX, LLD_NAMES, N_MFCC

_HNR_MIN_DB = -20.0
_HNR_MAX_DB = 40.0


@cache
def _mel_filterbank(params: FeatureParams) -> NDArray[np.float64]:
    import librosa

    fb: NDArray[np.float64] = librosa.filters.mel(
        sr=params.sample_rate_hz,
        n_fft=params.n_fft,
        n_mels=params.n_mels,
        fmin=0.0,
        fmax=params.sample_rate_hz / 2.0,
        dtype=np.float64,
    )
    return fb  # (n_mels, n_bins)


def _parabola(left: float, mid: float, right: float) -> tuple[float, float]:
    """Vertex (offset, value) of the parabola through three equally spaced points."""
    curvature = left - 2.0 * mid + right
    if abs(curvature) <= 1e-12:
        return 0.0, mid
    shift = min(1.0, max(-1.0, 0.5 * (left - right) / curvature))
    return shift, mid - 0.25 * (left - right) * shift


def reference_lld_frame(
    *, frame: NDArray[np.floating], params: FeatureParams = DEFAULT_FEATURE_PARAMS
) -> NDArray[np.float64]:
    """LLDs of one frame: (frame_length,) samples in [-1, 1] -> (len(LLD_NAMES),) float64."""
    sr = params.sample_rate_hz
    x = np.asarray(frame, dtype=np.float64)
    x = x - x.mean()
    n = x.size
    out = np.zeros(len(LLD_NAMES))

    energy = float(x @ x)
    rms_db = 10.0 * np.log10(max(energy / n, 1e-10))
    out[LLD_INDEX["rms_db"]] = rms_db
    out[LLD_INDEX["peak_amplitude"]] = np.abs(x).max()
    signs = np.signbit(x)
    out[LLD_INDEX["zcr"]] = np.count_nonzero(signs[1:] != signs[:-1]) / (n - 1)

    # YIN: mean squared difference of the frame and its copy shifted by tau
    tau_min = max(2, int(np.floor(sr / params.f0_max_hz)))
    tau_max = int(np.ceil(sr / params.f0_min_hz))
    lags = np.arange(tau_max + 2)
    acf = np.correlate(x, x, mode="full")[n - 1 : n - 1 + lags.size]  # sum x_j x_{j+tau}
    sq = np.concatenate(([0.0], np.cumsum(x * x)))
    head = sq[n - lags]  # sum_{j < n - tau} x_j^2
    tail = energy - sq[lags]  # sum_{j >= tau} x_j^2
    diff = np.maximum(head + tail - 2.0 * acf, 0.0) / (n - lags)
    eps = energy * 1e-10 + 1e-30
    cmnd = np.ones_like(diff)
    cmnd[1:] = (diff[1:] * lags[1:] + eps) / (np.cumsum(diff[1:]) + eps)
    best = -1
    for tau in range(tau_min, tau_max + 1):
        if (
            cmnd[tau] < params.yin_threshold
            and cmnd[tau] < cmnd[tau - 1]
            and cmnd[tau] <= cmnd[tau + 1]
        ):
            best = tau
            break
    if best < 0:
        best = tau_min + int(np.argmin(cmnd[tau_min : tau_max + 1]))
    shift, trough = _parabola(cmnd[best - 1], cmnd[best], cmnd[best + 1])
    voicing = min(1.0, max(0.0, 1.0 - trough))
    around = np.arange(best - 1, best + 2)
    ncc = acf[around] / np.sqrt(np.maximum(head[around] * tail[around], 1e-30))
    _, r = _parabola(*ncc)
    lo, hi = 10.0 ** (_HNR_MIN_DB / 10.0), 10.0 ** (_HNR_MAX_DB / 10.0)
    r = min(max(r, lo / (1.0 + lo)), hi / (1.0 + hi))
    voiced = voicing >= params.voicing_threshold and rms_db >= params.energy_floor_db
    out[LLD_INDEX["f0_hz"]] = sr / (best + shift) if voiced else 0.0
    out[LLD_INDEX["voicing"]] = voicing
    out[LLD_INDEX["voiced"]] = float(voiced)
    out[LLD_INDEX["hnr_db"]] = 10.0 * np.log10(r / (1.0 - r))

    # spectral shape from one Hann-windowed power spectrum
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    power = np.abs(np.fft.rfft(x * window, n=params.n_fft)) ** 2
    freqs = np.fft.rfftfreq(params.n_fft, d=1.0 / sr)
    magnitude = np.sqrt(power)
    out[LLD_INDEX["spectral_centroid_hz"]] = (
        (magnitude @ freqs) / magnitude.sum() if magnitude.sum() > 0 else 0.0
    )
    floored = np.maximum(power, 1e-10)
    out[LLD_INDEX["spectral_flatness"]] = np.exp(np.log(floored).mean()) / floored.mean()
    fit = freqs > 0
    out[LLD_INDEX["spectral_slope_db_per_khz"]] = np.polyfit(
        freqs[fit] / 1000.0, 10.0 * np.log10(floored[fit]), 1
    )[0]
    nyq = sr / 2.0
    low_band = (freqs >= 50.0) & (freqs < 1000.0)
    high_band = (freqs >= 1000.0) & (freqs <= min(5000.0, nyq))
    out[LLD_INDEX["alpha_ratio_db"]] = 10.0 * np.log10(
        floored[high_band].sum() / floored[low_band].sum()
    )
    out[LLD_INDEX["hammarberg_db"]] = 10.0 * np.log10(
        floored[freqs <= 2000.0].max()
        / floored[(freqs > 2000.0) & (freqs <= min(5000.0, nyq))].max()
    )
    mel = _mel_filterbank(params) @ power
    out[LLD_INDEX["loudness"]] = (mel**0.3).sum()
    log_mel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    first = LLD_INDEX["mfcc0"]
    out[first : first + N_MFCC] = scipy.fft.dct(log_mel, type=2, norm="ortho")[:N_MFCC]
    return out


def reference_lld(
    *, frames: NDArray[np.floating], params: FeatureParams = DEFAULT_FEATURE_PARAMS
) -> NDArray[np.float64]:
    """(n_frames, frame_length) -> (n_frames, len(LLD_NAMES)), one frame at a time."""
    return np.stack([reference_lld_frame(frame=f, params=params) for f in frames])
