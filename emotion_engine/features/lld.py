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

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.errors import AudioError, ConfigError
from emotion_engine.features import _kernels

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
    dct_t: NDArray[np.float32]  # (n_mels, n_mfcc) DCT-II, transposed
    slope_weights: NDArray[np.float32]  # (n_bins,) least-squares slope per kHz
    # bands as (first, stop) bin ranges (the bins are in frequency order)
    alpha_low: tuple[int, int]  # 50 Hz .. 1 kHz
    alpha_high: tuple[int, int]  # 1 kHz .. 5 kHz or Nyquist
    hamm_low: tuple[int, int]  # 0 .. 2 kHz
    hamm_high: tuple[int, int]  # above 2 kHz up to 5 kHz or Nyquist
    # the mel filterbank stored sparsely: band b weighs bins mel_start[b] + (0 .. width)
    mel_start: NDArray[np.int64]  # (n_mels,)
    mel_weights: NDArray[np.float32]  # (width, n_mels), zeros outside the band


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
    top = min(5000.0, nyq)
    mel_start, mel_weights = _sparse_bands(np.asarray(mel_fb, dtype=np.float32))
    return _Tables(
        tau_min=tau_min,
        tau_max=tau_max,
        n_fft_acf=n_fft_acf,
        lags=lags,
        lags_f32=lags.astype(np.float32),
        inv_overlap=(1.0 / (n - lags)).astype(np.float32),
        window=window.astype(np.float32),
        freqs_hz=freqs.astype(np.float32),
        dct_t=np.ascontiguousarray(dct.T, dtype=np.float32),
        slope_weights=slope_weights.astype(np.float32),
        alpha_low=_bin_range(freqs, (freqs >= 50.0) & (freqs < 1000.0)),
        alpha_high=_bin_range(freqs, (freqs >= 1000.0) & (freqs <= top)),
        hamm_low=_bin_range(freqs, freqs <= 2000.0),
        hamm_high=_bin_range(freqs, (freqs > 2000.0) & (freqs <= top)),
        mel_start=mel_start,
        mel_weights=mel_weights,
    )


def _bin_range(freqs: NDArray[np.floating], mask: NDArray[np.bool_]) -> tuple[int, int]:
    """(first, stop) of the bins where ``mask`` (n_bins,) holds; they must be contiguous."""
    (bins,) = np.nonzero(mask)
    if bins.size == 0 or bins[-1] - bins[0] + 1 != bins.size:
        raise ConfigError(f"empty or split frequency band at n_bins={freqs.size}")
    return int(bins[0]), int(bins[-1]) + 1


def _sparse_bands(
    fb: NDArray[np.float32],
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """(n_bands, n_bins) filterbank -> each band's first bin (n_bands,) and its weights
    from there (width, n_bands), width the widest band's support. A band near the top
    starts early instead, so every ``start + width`` stays in range; the extra
    weights are zeros (exact: adding 0 * power changes no sum)."""
    n_bands, n_bins = fb.shape
    nonzero = fb != 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    last = np.where(nonzero.any(axis=1), n_bins - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
    width = int(max(1, (last - first + 1).max()))
    start = np.minimum(first, n_bins - width).astype(np.int64)
    weights = np.stack([fb[b, start[b] : start[b] + width] for b in range(n_bands)], axis=1)
    return start, np.ascontiguousarray(weights, dtype=np.float32)


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
    n = params.frame_length
    lead = x.shape[:-1]
    flat = x.reshape(-1, n)
    out = np.empty((flat.shape[0], len(LLD_NAMES)), dtype=np.float32)
    scratch = _scratch_for(tables, params)
    for start in range(0, flat.shape[0], _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, flat.shape[0])
        chunk = np.ascontiguousarray(flat[start:stop], dtype=np.float32).reshape(-1)
        starts = np.arange(0, chunk.size, n, dtype=np.int64)
        _lld_block(chunk, starts, tables, params, scratch, out[start:stop])
    return out.reshape(*lead, len(LLD_NAMES))


def compute_lld_at(
    *,
    signal: NDArray[np.float32],
    starts: NDArray[np.int64],
    params: FeatureParams = DEFAULT_FEATURE_PARAMS,
) -> NDArray[np.float32]:
    """:func:`compute_lld` of the frames ``signal[s : s + frame_length]`` for ``s`` in
    ``starts``, read in place: the engine lays every leg's new audio end to end in
    one buffer and gets all their frames' LLDs from one call, without a copy of the
    (overlapping) frames.

    ``signal``: (n_samples,) float32 in [-1, 1] (NaN and +-inf read as 0); ``starts``:
    (n_frames,) int, each with ``0 <= s <= n_samples - frame_length``, else AudioError.
    Returns (n_frames, len(LLD_NAMES))
    float32, row ``i`` equal to ``compute_lld`` of frame ``i``.
    """
    sig = np.ascontiguousarray(signal, dtype=np.float32)
    at = np.ascontiguousarray(starts, dtype=np.int64)
    if sig.ndim != 1 or at.ndim != 1:
        raise AudioError(
            f"need (n_samples,) signal and (n_frames,) starts, got {sig.shape}, {at.shape}"
        )
    tables = _tables(params)
    out = np.empty((at.size, len(LLD_NAMES)), dtype=np.float32)
    scratch = _scratch_for(tables, params)
    try:
        for start in range(0, at.size, _CHUNK_FRAMES):
            stop = min(start + _CHUNK_FRAMES, at.size)
            _lld_block(sig, at[start:stop], tables, params, scratch, out[start:stop])
    except IndexError:  # checked in the kernel: a pass over `starts` saved per call
        raise AudioError(
            f"frame starts must lie in 0..{sig.size - params.frame_length}, "
            f"got {at.min()}..{at.max()}"
        ) from None
    return out


@dataclass(frozen=True)
class _Scratch:
    """FFT inputs reused by every block of every call in one thread (a block uses the
    first rows); see :func:`_scratch_for`.

    ``time_domain`` writes the first ``frame_length`` columns of every row it uses and
    never the rest (nor do the FFTs, which only read them), so the zero padding is
    written once per thread, not per call or block: the zeroed allocations (~0.8 MB)
    were ~2 % of the engine's time at 20 legs, one call a tick (py-spy).
    """

    padded: NDArray[np.float32]  # (rows, n_fft_acf) DC-free frames, zero-padded
    windowed: NDArray[np.float32]  # (rows, n_fft) Hann-windowed frames, zero-padded
    csum: NDArray[np.float32]  # (rows, frame_length + 1) running energy

    @staticmethod
    def new(tables: _Tables, params: FeatureParams, *, rows: int) -> _Scratch:
        return _Scratch(
            padded=np.zeros((rows, tables.n_fft_acf), dtype=np.float32),
            windowed=np.zeros((rows, params.n_fft), dtype=np.float32),
            csum=np.empty((rows, params.frame_length + 1), dtype=np.float32),
        )


class _ThreadScratch(threading.local):
    """This thread's scratch and the tables it was sized for (one set of tables in
    practice: the engine's). Per thread, because blocks write into it."""

    tables: _Tables | None = None
    scratch: _Scratch | None = None


_THREAD_SCRATCH = _ThreadScratch()


def _scratch_for(tables: _Tables, params: FeatureParams) -> _Scratch:
    """This thread's :class:`_Scratch` of ``_CHUNK_FRAMES`` rows for ``tables``, made on
    first use and again only when other tables (other parameters) come."""
    held = _THREAD_SCRATCH
    scratch = held.scratch
    if scratch is None or held.tables is not tables:
        scratch = held.scratch = _Scratch.new(tables, params, rows=_CHUNK_FRAMES)
        held.tables = tables
    return scratch


def _lld_block(
    signal: NDArray[np.float32],
    starts: NDArray[np.int64],
    tables: _Tables,
    params: FeatureParams,
    scratch: _Scratch,
    out: NDArray[np.float32],
) -> None:
    """LLDs of the frames at ``starts`` (n,) in the float32 ``signal``, written into
    ``out`` (n, n_lld), a C-contiguous row block; ``scratch`` has at least n rows.

    The FFTs run batched in scipy; everything between them is one compiled pass per
    frame (:mod:`emotion_engine.features._kernels`), which replaced ~40 numpy calls
    over (n, 100..320) temporaries: those passes, not the FFTs, were most of the time.
    """
    n_frames, n = starts.size, params.frame_length
    # DC-free frames written straight into YIN's zero-padded FFT input: scipy pads
    # with a copy of its own, and a padded input made its rfft ~1.8x faster
    padded = scratch.padded[:n_frames]
    windowed = scratch.windowed[:n_frames]
    csum = scratch.csum[:n_frames]
    _kernels.time_domain(
        signal,
        starts,
        tables.window,
        padded,
        windowed,
        csum,
        out[:, LLD_INDEX["peak_amplitude"]],
        out[:, LLD_INDEX["zcr"]],
    )
    x = padded[:, :n]
    # energy by einsum, as before: its SIMD summation order decides rms_db's last bit,
    # and rms_db gates `voiced` (einsum, not BLAS: OpenBLAS's spinning worker threads
    # made the whole call 2-3x slower on a busy 2-core host)
    energy = np.einsum("ij,ij->i", x, x)
    spec = _FFT.rfft_rows(padded)
    _kernels.power_spectrum(spec, spec)  # in place: spec is ours
    acf = _FFT.irfft_rows(spec, tables.n_fft_acf)
    _kernels.yin_pick(
        acf,
        csum,
        tables.lags_f32,
        tables.inv_overlap,
        tables.tau_min,
        tables.tau_max,
        params.yin_threshold,
        float(params.sample_rate_hz),
        _HNR_R_CLIP,
        energy,
        10.0 ** (_RMS_FLOOR_DB / 10.0),
        params.voicing_threshold,
        params.energy_floor_db,
        out,
        _YIN_COLUMNS,
    )
    _kernels.spectral(
        _FFT.rfft_rows(windowed),
        tables.freqs_hz,
        tables.slope_weights,
        tables.alpha_low,
        tables.alpha_high,
        tables.hamm_low,
        tables.hamm_high,
        tables.mel_start,
        tables.mel_weights,
        tables.dct_t,
        _POWER_FLOOR,
        10.0 / np.log(10.0),  # 10 log10(P) = (10 / ln 10) ln(P): the slope reuses ln(P)
        out,
        _SPECTRAL_COLUMNS,
    )


@dataclass(frozen=True)
class _RowFft:
    """Real FFTs along the rows of a 2-D float32 array (scipy's pocketfft)."""

    rfft_rows: Callable[[NDArray[np.float32]], NDArray[np.complex64]]
    irfft_rows: Callable[[NDArray[np.complex64], int], NDArray[np.float32]]
    direct: bool  # scipy's pocketfft called without the scipy.fft layer


def _public_fft() -> _RowFft:
    return _RowFft(
        rfft_rows=lambda x: scipy.fft.rfft(x, axis=1),
        irfft_rows=lambda spec, n: scipy.fft.irfft(spec, n=n, axis=1, overwrite_x=True),
        direct=False,
    )


def _row_fft(pocketfft: Any) -> _RowFft:
    """The FFTs the LLDs use: ``pocketfft`` (scipy's compiled module,
    ``scipy.fft._pocketfft.pypocketfft``) called directly when it gives exactly what
    ``scipy.fft`` gives on a probe, else ``scipy.fft`` itself.

    Why: ``scipy.fft``'s dispatch layer (uarray, argument checks) costs ~5-15 us a call,
    three calls per block of frames: ~4 % of the engine at 20 legs a tick (py-spy),
    more for one leg. The module is private, so anything unexpected (missing, another
    signature, other numbers) only costs that speed-up. Arguments as ``scipy.fft``
    passes them: axes, forward, norm (0 none; 2 scales the inverse by 1/n, scipy's
    default "backward"), no output array, one thread."""
    public = _public_fft()
    try:
        direct = _RowFft(
            rfft_rows=lambda x: pocketfft.r2c(x, (1,), True, 0, None, 1),
            irfft_rows=lambda spec, n: pocketfft.c2r(spec, (1,), n, False, 2, None, 1),
            direct=True,
        )
        probe = np.random.default_rng(0).standard_normal((5, 320)).astype(np.float32)
        spec = direct.rfft_rows(probe)
        want = public.rfft_rows(probe)
        back = direct.irfft_rows(spec, 320)
        want_back = public.irfft_rows(want.copy(), 320)
        same = (
            spec.dtype == want.dtype
            and np.array_equal(spec, want)
            and back.dtype == want_back.dtype
            and np.array_equal(back, want_back)
        )
    except Exception:
        same = False
    return direct if same else public


def _load_pocketfft() -> Any:
    try:
        from scipy.fft._pocketfft import pypocketfft

        return pypocketfft
    except ImportError:
        return None


_FFT = _row_fft(_load_pocketfft())


_SPECTRAL_COLUMNS = np.array(
    [
        LLD_INDEX[name]
        for name in (
            "spectral_centroid_hz",
            "spectral_slope_db_per_khz",
            "spectral_flatness",
            "alpha_ratio_db",
            "hammarberg_db",
            "loudness",
            "mfcc0",
        )
    ]
)
"""Where :func:`_kernels.spectral` writes its descriptors (MFCCs: from ``mfcc0`` on)."""

_YIN_COLUMNS = np.array(
    [LLD_INDEX[name] for name in ("f0_hz", "voicing", "voiced", "hnr_db", "rms_db")]
)
"""Where :func:`_kernels.yin_pick` writes its descriptors."""

_HNR_R_CLIP = (
    10.0 ** (_HNR_MIN_DB / 10.0) / (1.0 + 10.0 ** (_HNR_MIN_DB / 10.0)),
    10.0 ** (_HNR_MAX_DB / 10.0) / (1.0 + 10.0 ** (_HNR_MAX_DB / 10.0)),
)
"""Boersma's r clipped so that HNR stays in _HNR_MIN_DB.._HNR_MAX_DB."""
