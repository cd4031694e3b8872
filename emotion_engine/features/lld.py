"""Low-level descriptors (LLDs): one row of numbers per 25 ms frame.

Every descriptor depends on its own frame only, so a stream cut into chunks gives
exactly the LLDs of the whole signal, and frames of many calls can be stacked into
one batch. Cross-frame descriptors (jitter, shimmer, deltas) live in
:mod:`emotion_engine.features.functionals`.

Per frame, after removing the frame's DC offset:

- ``f0_hz``: YIN (de Cheveigné & Kawahara 2002). The squared-difference function
  comes from one FFT autocorrelation plus running energies; it is divided by the
  number of overlapping samples ``N - tau``: a 200-sample frame holds under two
  periods at the 70 Hz floor, and the raw sum, shrinking with the lag, would favour
  long lags (octave-down errors).
  Then the cumulative mean normalised difference (CMND), the first local minimum
  under ``yin_threshold`` (else the global minimum), parabolic interpolation.
  0 when the frame is not voiced.
- ``voicing``: ``1 - CMND`` at the chosen lag, clipped to 0..1 (periodicity).
- ``voiced``: 1 when ``voicing >= voicing_threshold`` and ``rms_db >= energy_floor_db``
  (so digital silence and hiss are never voiced), else 0.
- ``rms_db``: ``10 log10(mean(x**2))`` in dB re full scale (a full-scale sine is -3 dB),
  floored at -100 dB.
- ``loudness``: ``sum_b E_b ** 0.3`` over the mel bands ``E_b`` of the power spectrum,
  a Stevens/Zwicker-like compression (power ** 0.3 = pressure ** 0.6); +20 dB of
  level multiplies it by ``10 ** 0.6 ~ 4``.
- ``hnr_db``: Boersma (1993) ``10 log10(r / (1 - r))`` with ``r`` the normalised
  cross-correlation of the frame with itself shifted by the F0 lag (parabolic peak),
  clipped to -20..40 dB.
- ``spectral_centroid_hz``: magnitude-weighted mean frequency (as librosa).
- ``spectral_slope_db_per_khz``: least-squares slope of ``10 log10(power)`` against
  frequency over 31 Hz..4 kHz.
- ``spectral_flatness``: geometric / arithmetic mean of the power spectrum (as librosa).
- ``alpha_ratio_db``: energy 1-4 kHz over energy 50 Hz-1 kHz (eGeMAPS style, negative
  for most speech; the upper band stops at Nyquist).
- ``hammarberg_db``: strongest bin 0-2 kHz over strongest bin 2-4 kHz.
- ``zcr``: share of adjacent sample pairs whose sign differs.
- ``peak_amplitude``: ``max |x|`` of the frame (feeds shimmer).
- ``mfcc0`` .. ``mfcc12``: DCT-II (orthonormal) of ``10 log10`` mel power, the same
  numbers ``librosa.feature.mfcc`` gives for these frames (``top_db=None``).

All spectral descriptors share one Hann-windowed ``rfft`` of ``n_fft`` points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.errors import AudioError, ConfigError

N_MFCC = 13

LLD_NAMES: tuple[str, ...] = (
    "f0_hz",
    "voicing",
    "voiced",
    "rms_db",
    "loudness",
    "hnr_db",
    "spectral_centroid_hz",
    "spectral_slope_db_per_khz",
    "spectral_flatness",
    "alpha_ratio_db",
    "hammarberg_db",
    "zcr",
    "peak_amplitude",
    *(f"mfcc{i}" for i in range(N_MFCC)),
)
"""Column order of :func:`compute_lld`'s last axis."""

LLD_INDEX: dict[str, int] = {name: i for i, name in enumerate(LLD_NAMES)}
"""Name -> column, for readers of the LLD matrix."""

_RMS_FLOOR_DB = -100.0
_POWER_FLOOR = 1e-10  # same amin as librosa.power_to_db, so MFCCs match it
_HNR_MIN_DB = -20.0
_HNR_MAX_DB = 40.0
_CHUNK_FRAMES = 256  # temporaries (~1 MB) stay in cache: 256 measured ~2x faster than 2048


@dataclass(frozen=True)
class _Tables:
    """Everything that depends only on the parameters, computed once."""

    tau_min: int
    tau_max: int
    n_fft_acf: int
    lags: NDArray[np.int64]  # (tau_max + 2,) lags 0 .. tau_max + 1
    lags_f32: NDArray[np.float32]
    inv_overlap: NDArray[np.float32]  # (tau_max + 2,) 1 / (frame_length - lag)
    window: NDArray[np.float32]  # (frame_length,)
    freqs_hz: NDArray[np.float32]  # (n_bins,)
    mel_fb: NDArray[np.float32]  # (n_mels, n_bins)
    dct: NDArray[np.float32]  # (n_mfcc, n_mels)
    slope_weights: NDArray[np.float32]  # (n_bins,) least-squares slope per kHz
    alpha_low: NDArray[np.float32]  # (n_bins,) 0/1 band mask
    alpha_high: NDArray[np.float32]
    hamm_low: slice  # bins 0..2 kHz: a slice, so no copy (the bins are in order)
    hamm_high: slice  # bins above 2 kHz up to 5 kHz or Nyquist


@lru_cache(maxsize=8)
def _tables(params: FeatureParams) -> _Tables:
    import librosa  # heavy import, only needed once for the filterbank

    sr = params.sample_rate_hz
    n = params.frame_length
    if params.n_mfcc != N_MFCC:
        raise ConfigError(f"n_mfcc must be {N_MFCC} (LLD_NAMES is fixed), got {params.n_mfcc}")
    if params.n_fft < n:
        raise ConfigError(f"n_fft {params.n_fft} is shorter than frame_length {n}")
    if not 0 < params.f0_min_hz < params.f0_max_hz < sr / 4:
        raise ConfigError(
            f"need 0 < f0_min_hz < f0_max_hz < sample_rate/4, got "
            f"{params.f0_min_hz}, {params.f0_max_hz} at {sr} Hz"
        )
    if not (0 < params.yin_threshold <= 1 and 0 <= params.voicing_threshold <= 1):
        raise ConfigError(
            f"yin_threshold {params.yin_threshold} and voicing_threshold "
            f"{params.voicing_threshold} must lie in 0..1"
        )
    tau_min = max(2, int(np.floor(sr / params.f0_max_hz)))
    tau_max = int(np.ceil(sr / params.f0_min_hz))
    if tau_max + 2 > n // 2 + n // 4:
        # fewer than ~1.3 periods in the frame: the difference function is noise
        raise ConfigError(
            f"f0_min_hz {params.f0_min_hz} needs lag {tau_max}, too long for "
            f"frame_length {n} (raise f0_min_hz)"
        )
    lags = np.arange(tau_max + 2)
    # circular autocorrelation equals the linear one for lags < n_fft - n
    n_fft_acf = int(scipy.fft.next_fast_len(n + lags.size, real=True))

    window = _hann(n)
    freqs = np.fft.rfftfreq(params.n_fft, d=1.0 / sr)
    mel_fb = librosa.filters.mel(
        sr=sr, n_fft=params.n_fft, n_mels=params.n_mels, fmin=0.0, fmax=sr / 2.0
    )
    # orthonormal DCT-II, as scipy.fft.dct(norm="ortho") and librosa.feature.mfcc
    m = params.n_mels
    k = np.arange(N_MFCC)[:, None]
    j = np.arange(m)[None, :]
    dct = np.cos(np.pi * k * (2 * j + 1) / (2 * m)) * np.sqrt(2.0 / m)
    dct[0] /= np.sqrt(2.0)

    fit = freqs > 0
    f_khz = freqs / 1000.0
    centred = np.where(fit, f_khz - f_khz[fit].mean(), 0.0)
    slope_weights = centred / np.sum(centred[fit] ** 2)

    nyq = sr / 2.0
    return _Tables(
        tau_min=tau_min,
        tau_max=tau_max,
        n_fft_acf=n_fft_acf,
        lags=lags,
        lags_f32=lags.astype(np.float32),
        inv_overlap=(1.0 / (n - lags)).astype(np.float32),
        window=window.astype(np.float32),
        freqs_hz=freqs.astype(np.float32),
        mel_fb=np.ascontiguousarray(mel_fb, dtype=np.float32),
        dct=np.ascontiguousarray(dct, dtype=np.float32),
        slope_weights=slope_weights.astype(np.float32),
        alpha_low=((freqs >= 50.0) & (freqs < 1000.0)).astype(np.float32),
        alpha_high=((freqs >= 1000.0) & (freqs <= min(5000.0, nyq))).astype(np.float32),
        hamm_low=slice(0, int(np.searchsorted(freqs, 2000.0, side="right"))),
        hamm_high=slice(
            int(np.searchsorted(freqs, 2000.0, side="right")),
            int(np.searchsorted(freqs, min(5000.0, nyq), side="right")),
        ),
    )


def _hann(n: int) -> NDArray[np.float64]:
    """Periodic Hann window (scipy.signal.get_window('hann', n), librosa's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def compute_lld(
    *,
    frames: NDArray[np.floating],
    params: FeatureParams = DEFAULT_FEATURE_PARAMS,
) -> NDArray[np.float32]:
    """Low-level descriptors of every frame.

    ``frames``: (..., n_frames, frame_length) samples in [-1, 1] at
    ``params.sample_rate_hz`` (8 kHz: 200-sample frames), e.g. from
    :func:`emotion_engine.audio.framing.frame_signal`; any leading axes (one per
    stream) are kept. Returns (..., n_frames, len(LLD_NAMES)) float32, columns in
    :data:`LLD_NAMES` order, always finite. Next: :func:`compute_functionals` over
    a window of frames.
    """
    x = np.asarray(frames)
    if x.ndim < 2 or x.shape[-1] != params.frame_length:
        raise AudioError(
            f"frames must have shape (..., n_frames, {params.frame_length}), got {x.shape}"
        )
    tables = _tables(params)
    lead = x.shape[:-1]
    flat = x.reshape(-1, params.frame_length)
    out = np.empty((flat.shape[0], len(LLD_NAMES)), dtype=np.float32)
    for start in range(0, flat.shape[0], _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, flat.shape[0])
        chunk = np.asarray(flat[start:stop], dtype=np.float32)
        if not np.isfinite(chunk).all():
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0)
        out[start:stop] = _lld_block(chunk, tables, params)
    return out.reshape(*lead, len(LLD_NAMES))


def _lld_block(
    raw: NDArray[np.float32], tables: _Tables, params: FeatureParams
) -> NDArray[np.float32]:
    """LLDs of (n, frame_length) float32 frames -> (n, n_lld)."""
    n_frames, n = raw.shape
    out = np.empty((n_frames, len(LLD_NAMES)), dtype=np.float32)
    # DC-free frames written straight into YIN's zero-padded FFT input: scipy pads
    # with a copy of its own, and a padded input made its rfft ~1.8x faster
    padded = np.zeros((n_frames, tables.n_fft_acf), dtype=np.float32)
    x = padded[:, :n]
    np.subtract(raw, raw.mean(axis=1, keepdims=True), out=x)
    # products below use einsum, not BLAS: the matrices are small, and OpenBLAS's
    # spinning worker threads made the whole call 2-3x slower on a busy 2-core host

    energy = np.einsum("ij,ij->i", x, x)
    rms_db = 10.0 * np.log10(np.maximum(energy / n, 10.0 ** (_RMS_FLOOR_DB / 10.0)))
    out[:, LLD_INDEX["rms_db"]] = rms_db
    out[:, LLD_INDEX["peak_amplitude"]] = np.abs(x).max(axis=1)
    signs = np.signbit(x)
    out[:, LLD_INDEX["zcr"]] = np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / (n - 1)

    f0_hz, voicing, hnr_db = _yin(padded, tables, params)
    voiced = (voicing >= params.voicing_threshold) & (rms_db >= params.energy_floor_db)
    out[:, LLD_INDEX["f0_hz"]] = np.where(voiced, f0_hz, 0.0)
    out[:, LLD_INDEX["voicing"]] = voicing
    out[:, LLD_INDEX["voiced"]] = voiced
    out[:, LLD_INDEX["hnr_db"]] = hnr_db

    windowed = np.zeros((n_frames, params.n_fft), dtype=np.float32)
    np.multiply(x, tables.window, out=windowed[:, :n])
    spec = scipy.fft.rfft(windowed, axis=1)
    power = spec.real**2 + spec.imag**2  # (n, n_bins) float32
    magnitude = np.sqrt(power)
    mag_sum = magnitude.sum(axis=1)
    out[:, LLD_INDEX["spectral_centroid_hz"]] = np.where(
        mag_sum > 0,
        np.einsum("ij,j->i", magnitude, tables.freqs_hz) / np.maximum(mag_sum, 1e-30),
        0.0,
    )
    floored = np.maximum(power, _POWER_FLOOR)
    log_power = np.log(floored)
    out[:, LLD_INDEX["spectral_flatness"]] = np.exp(log_power.mean(axis=1)) / floored.mean(axis=1)
    # 10 log10(P) = (10 / ln 10) ln(P): reuse the natural log already taken
    out[:, LLD_INDEX["spectral_slope_db_per_khz"]] = np.einsum(
        "ij,j->i", log_power, tables.slope_weights
    ) * (10.0 / np.log(10.0))
    low = np.einsum("ij,j->i", floored, tables.alpha_low)
    high = np.einsum("ij,j->i", floored, tables.alpha_high)
    out[:, LLD_INDEX["alpha_ratio_db"]] = 10.0 * np.log10(high / low)
    out[:, LLD_INDEX["hammarberg_db"]] = 10.0 * np.log10(
        floored[:, tables.hamm_low].max(axis=1) / floored[:, tables.hamm_high].max(axis=1)
    )

    # "ij,kj": every output is a dot of two contiguous rows, which einsum vectorises
    # (~1.5x faster than "ij,jk" with the transposed table; float32 rounding differs)
    mel = np.einsum("ij,kj->ik", power, tables.mel_fb)  # (n, n_mels)
    out[:, LLD_INDEX["loudness"]] = (mel**0.3).sum(axis=1)
    log_mel = 10.0 * np.log10(np.maximum(mel, _POWER_FLOOR))
    first = LLD_INDEX["mfcc0"]
    out[:, first : first + N_MFCC] = np.einsum("ij,kj->ik", log_mel, tables.dct)
    return out


def _yin(
    padded: NDArray[np.float32], tables: _Tables, params: FeatureParams
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """YIN F0 (Hz), voicing (0..1) and HNR (dB) of DC-free frames.

    ``padded``: (n, n_fft_acf) frames in the first ``frame_length`` columns, zeros after.
    """
    n = params.frame_length
    x = padded[:, :n]
    tau_min, tau_max = tables.tau_min, tables.tau_max
    lags = tables.lags  # 0 .. tau_max + 1, so every candidate has a right neighbour
    spec = scipy.fft.rfft(padded, axis=1)
    acf = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=tables.n_fft_acf, axis=1)
    acf = acf[:, : lags.size]

    # energies of the two overlapping parts at each lag:
    # head(tau) = sum_{j < n - tau} x_j^2, tail(tau) = sum_{j >= tau} x_j^2
    csum = np.zeros((x.shape[0], n + 1), dtype=np.float32)
    np.cumsum(x * x, axis=1, out=csum[:, 1:])
    total = csum[:, n : n + 1]
    e_head = csum[:, n - lags.size + 1 : n + 1][:, ::-1]  # csum[:, n - lags], a view
    e_tail = total - csum[:, : lags.size]
    # in place: the same operations as max(e_head + e_tail - 2 acf, 0) / (n - tau)
    diff = e_head + e_tail
    diff -= 2.0 * acf
    np.maximum(diff, 0.0, out=diff)
    diff *= tables.inv_overlap

    # CMND(tau) = diff(tau) tau / sum_{k=1..tau} diff(k); the epsilon turns an all-zero
    # (silent) frame into CMND = 1, i.e. aperiodic, without a branch
    eps = total * 1e-10 + 1e-30
    # column k holds lag k + 1 (lag 0 is never searched), so no ones-filled copy is needed
    cmnd = (diff[:, 1:] * tables.lags_f32[1:] + eps) / (np.cumsum(diff[:, 1:], axis=1) + eps)

    search = cmnd[:, tau_min - 2 : tau_max + 1]  # lags tau_min-1 .. tau_max+1
    centre = search[:, 1:-1]
    below = (centre < search[:, :-2]) & (centre <= search[:, 2:])  # troughs ...
    below &= centre < params.yin_threshold  # ... under the threshold
    best = np.where(below.any(axis=1), below.argmax(axis=1), centre.argmin(axis=1)) + tau_min
    around = best[:, None] + np.arange(-1, 2)  # (n_frames, 3): best - 1, best, best + 1
    # plain fancy indexing: take_along_axis rebuilds this index in Python (~8 us a call)
    rows = np.arange(x.shape[0])[:, None]

    left, mid, right = cmnd[rows, around - 1].T
    shift, trough = _parabola(left, mid, right)
    voicing = np.clip(1.0 - trough, 0.0, 1.0)
    f0_hz = params.sample_rate_hz / (best + shift)

    # Boersma's r: correlation of the two overlapping parts, peak-interpolated
    ncc = acf[rows, around] / np.sqrt(
        np.maximum(
            e_head[rows, around] * e_tail[rows, around],
            1e-30,
        )
    )
    _, r = _parabola(*ncc.T)
    lo = 10.0 ** (_HNR_MIN_DB / 10.0)
    hi = 10.0 ** (_HNR_MAX_DB / 10.0)
    r = np.clip(r, lo / (1.0 + lo), hi / (1.0 + hi))
    hnr_db = 10.0 * np.log10(r / (1.0 - r))
    return (
        f0_hz.astype(np.float32),
        voicing.astype(np.float32),
        hnr_db.astype(np.float32),
    )


def _parabola(
    left: NDArray[np.float32], mid: NDArray[np.float32], right: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Vertex (offset in -1..1, value) of the parabola through three equally spaced points.

    Where the points do not bend (zero curvature) the middle point is kept.
    """
    curvature = left - 2.0 * mid + right
    bent = np.abs(curvature) > 1e-12
    shift = np.clip(0.5 * (left - right) / np.where(bent, curvature, 1.0), -1.0, 1.0)
    shift = np.where(bent, shift, 0.0)
    vertex = mid - 0.25 * (left - right) * shift
    return shift.astype(np.float32), vertex.astype(np.float32)
