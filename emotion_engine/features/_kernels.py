"""Compiled per-frame loops behind :mod:`emotion_engine.features.lld` (numba).

The LLDs used to be ~40 numpy calls per block of frames, each a full pass over
(n_frames, 100..320) temporaries; past the FFTs, most of the time went to the passes
themselves (cumulative sums along short rows, masks, fancy indexing). These kernels
do one pass per frame for everything between the FFTs, which stay in scipy.

Numerics follow the numpy code they replace, operation for operation in float32:
sums that numpy takes pairwise use :func:`_pairwise_sum` (numpy's own order), running
sums stay sequential, and every constant is cast to float32 first (numba would
otherwise promote a float32 expression to float64 where numpy does not). Dot
products with fixed tables (mel bands, centroid, slope) and ``log``/``log10``/``pow``
may differ from numpy's SIMD code in the last bit (float32 rounding).

Compiled on first use and cached on disk (``cache=True``), so a process pays
~0.1 s to load them, not a compile. Callers pass preallocated outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    # error_model="numpy": division by zero gives inf/nan as in numpy instead of a
    # checked branch per division; no fastmath, so float order is kept as written
    return cast(_F, numba.njit(cache=True, nogil=True, error_model="numpy")(fn))


@_jit
def _block_sum(a: NDArray[np.float32], start: int, n: int) -> np.float32:
    """Sum of ``a[start:start + n]`` in numpy's float32 pairwise order for n <= 128
    (loops_utils.h): below 8 a plain loop, else eight running sums combined as a tree.
    (Longer runs get the same eight-sum loop: the right total, another rounding.)"""
    if n < 8:
        res = np.float32(0.0)
        for i in range(start, start + n):
            res += a[i]
        return res
    r0 = a[start]
    r1 = a[start + 1]
    r2 = a[start + 2]
    r3 = a[start + 3]
    r4 = a[start + 4]
    r5 = a[start + 5]
    r6 = a[start + 6]
    r7 = a[start + 7]
    i = 8
    stop = n - n % 8
    while i < stop:
        j = start + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[start + i]
        i += 1
    return np.float32(res)


# numpy splits a run longer than 128 in two halves (the first a multiple of 8) and
# adds their sums. Spelled out as three levels, not recursion: numba's on-disk cache
# crashes (segfault) on recursive functions. Exact up to ~900 values; the callers sum
# 200 (frame), 129 (bins) and 26 (mel bands).


@_jit
def _split_sum_1(a: NDArray[np.float32], start: int, n: int) -> np.float32:
    if n <= 128:
        return _block_sum(a, start, n)
    n2 = n // 2
    n2 -= n2 % 8
    return _block_sum(a, start, n2) + _block_sum(a, start + n2, n - n2)


@_jit
def _split_sum_2(a: NDArray[np.float32], start: int, n: int) -> np.float32:
    if n <= 128:
        return _block_sum(a, start, n)
    n2 = n // 2
    n2 -= n2 % 8
    return _split_sum_1(a, start, n2) + _split_sum_1(a, start + n2, n - n2)


@_jit
def _pairwise_sum(a: NDArray[np.float32], start: int, n: int) -> np.float32:
    """Sum of ``a[start:start + n]`` in numpy's float32 pairwise order, so that
    ``x.sum()`` / ``x.mean()`` are reproduced bit for bit."""
    if n <= 128:
        return _block_sum(a, start, n)
    n2 = n // 2
    n2 -= n2 % 8
    return _split_sum_2(a, start, n2) + _split_sum_2(a, start + n2, n - n2)


@_jit
def time_domain(
    signal: NDArray[np.float32],
    starts: NDArray[np.int64],
    window: NDArray[np.float32],
    padded: NDArray[np.float32],
    windowed: NDArray[np.float32],
    csum: NDArray[np.float32],
    peak: NDArray[np.float32],
    zcr: NDArray[np.float32],
) -> None:
    """Per frame: remove the DC offset, write the frame into YIN's zero-padded FFT
    input and the Hann-windowed one, the running energy and the peak and sign changes.

    Frame ``f`` is ``signal[starts[f] : starts[f] + frame_length]`` (``signal``
    (n_samples,), ``starts`` (n,); IndexError for a start out of range), non-finite
    samples read as 0; ``frame_length`` is ``window.size``. Outputs (zero-filled where padded): ``padded`` (n, >=
    frame_length), ``windowed`` (n, >= frame_length), ``csum`` (n, frame_length + 1)
    with ``csum[:, k] = sum(x[:, :k] ** 2)``, ``peak`` (n,) ``max |x|``, ``zcr`` (n,)
    the share of adjacent pairs whose sign bit differs.
    """
    n_frames, n = starts.size, window.size
    row = np.empty(n, dtype=np.float32)
    for f in range(n_frames):
        s = starts[f]
        if s < 0 or s + n > signal.size:
            raise IndexError("frame start out of range")
        for i in range(n):
            v = signal[s + i]
            # NaN and +-inf read as 0, as np.nan_to_num(..., 0.0, 0.0, 0.0) did
            row[i] = v if np.isfinite(v) else np.float32(0.0)
        mean = _pairwise_sum(row, 0, n) / np.float32(n)
        acc = np.float32(0.0)
        top = np.float32(0.0)
        changes = 0
        csum[f, 0] = acc
        prev = False
        for i in range(n):
            v = row[i] - mean
            padded[f, i] = v
            windowed[f, i] = v * window[i]
            acc += v * v
            csum[f, i + 1] = acc
            top = max(top, abs(v))
            neg = np.signbit(v)
            if i > 0 and neg != prev:
                changes += 1
            prev = neg
        peak[f] = top
        zcr[f] = changes / (n - 1)


@_jit
def power_spectrum(spec: NDArray[np.complex64], out: NDArray[np.complex64]) -> None:
    """``out = |spec| ** 2`` (re ** 2 + im ** 2 in float32) as complex with zero imaginary
    parts, both (n, n_bins): the input irfft would build from a real power array
    anyway, without the three temporaries and the conversion copy."""
    n_frames, n_bins = spec.shape
    for f in range(n_frames):
        for k in range(n_bins):
            re = spec[f, k].real
            im = spec[f, k].imag
            out[f, k] = complex(re * re + im * im, np.float32(0.0))


@_jit
def _parabola(
    left: np.float32, mid: np.float32, right: np.float32
) -> tuple[np.float32, np.float32]:
    """Vertex (offset in -1..1, value) of the parabola through three equally spaced
    points, in float32 (as the numpy YIN did before these kernels); flat points keep the
    middle."""
    curvature = left - np.float32(2.0) * mid + right
    shift = np.float32(0.0)
    if abs(curvature) > np.float32(1e-12):
        shift = np.float32(0.5) * (left - right) / curvature
        shift = min(max(shift, np.float32(-1.0)), np.float32(1.0))
    vertex = mid - np.float32(0.25) * (left - right) * shift
    return shift, vertex


@_jit
def yin_pick(
    acf: NDArray[np.float32],
    csum: NDArray[np.float32],
    lags: NDArray[np.float32],
    inv_overlap: NDArray[np.float32],
    tau_min: int,
    tau_max: int,
    threshold: float,
    sample_rate: float,
    hnr_clip: tuple[float, float],
    energy: NDArray[np.float32],
    rms_floor: float,
    voicing_threshold: float,
    energy_floor_db: float,
    out: NDArray[np.float32],
    columns: NDArray[np.int64],
) -> None:
    """YIN from the autocorrelation: difference function, CMND, first trough under
    ``threshold`` (else the global minimum), parabolic interpolation; then Boersma's
    HNR from the normalised correlation at the chosen lag, the frame level and the
    voiced decision.

    ``acf``: (n, >= tau_max + 2) autocorrelation of the DC-free frames; ``csum``:
    (n, frame_length + 1) running energies from :func:`time_domain`; ``lags``
    (tau_max + 2,) 0, 1, ...; ``inv_overlap`` (tau_max + 2,) ``1 / (frame_length - lag)``;
    ``energy`` (n,) ``sum(x ** 2)`` (einsum's, see ``lld._lld_block``). Writes into
    ``out`` (n, n_lld) at ``columns``: f0_hz (0 unless voiced), voicing (0..1), voiced
    (0/1), hnr_db, rms_db (``10 log10(max(energy / frame_length, rms_floor))``).
    """
    n_frames = acf.shape[0]
    n = csum.shape[1] - 1
    n_lags = tau_max + 2
    thr = np.float32(threshold)
    r_lo = np.float32(hnr_clip[0])
    r_hi = np.float32(hnr_clip[1])
    floor = np.float32(rms_floor)
    v_thr = np.float32(voicing_threshold)
    e_thr = np.float32(energy_floor_db)
    c_f0, c_voicing, c_voiced, c_hnr, c_rms = (
        columns[0],
        columns[1],
        columns[2],
        columns[3],
        columns[4],
    )
    cmnd = np.empty(n_lags, dtype=np.float32)  # cmnd[k]: lag k (k >= 1)
    e_head = np.empty(n_lags, dtype=np.float32)
    e_tail = np.empty(n_lags, dtype=np.float32)
    for f in range(n_frames):
        total = csum[f, n]
        eps = total * np.float32(1e-10) + np.float32(1e-30)
        running = np.float32(0.0)
        for k in range(n_lags):
            # head(k) = sum_{j < n - k} x_j^2, tail(k) = sum_{j >= k} x_j^2
            e_head[k] = csum[f, n - k]
            e_tail[k] = total - csum[f, k]
            d = e_head[k] + e_tail[k]
            d -= np.float32(2.0) * acf[f, k]
            d = max(d, np.float32(0.0)) * inv_overlap[k]
            if k >= 1:
                running += d
                cmnd[k] = (d * lags[k] + eps) / (running + eps)
        # first lag in tau_min..tau_max that is a trough (< left, <= right) under thr
        best = -1
        for k in range(tau_min, tau_max + 1):
            c = cmnd[k]
            if c < cmnd[k - 1] and c <= cmnd[k + 1] and c < thr:
                best = k
                break
        if best < 0:  # no trough under the threshold: the global minimum (first one)
            best = tau_min
            for k in range(tau_min + 1, tau_max + 1):
                if cmnd[k] < cmnd[best]:
                    best = k
        shift, trough = _parabola(cmnd[best - 1], cmnd[best], cmnd[best + 1])
        voicing = min(max(np.float32(1.0) - trough, np.float32(0.0)), np.float32(1.0))
        # best + shift is float64 in numpy too (int64 + float32)
        f0_hz = np.float32(sample_rate / (np.float64(best) + np.float64(shift)))
        # numba's float32 log10 is libm's log10f, as numpy's: the same bits
        rms_db = np.float32(10.0) * np.log10(max(energy[f] / np.float32(n), floor))
        voiced = voicing >= v_thr and rms_db >= e_thr
        out[f, c_f0] = f0_hz if voiced else np.float32(0.0)
        out[f, c_voicing] = voicing
        out[f, c_voiced] = np.float32(1.0) if voiced else np.float32(0.0)
        out[f, c_rms] = rms_db
        ncc = np.empty(3, dtype=np.float32)
        for j in range(3):
            k = best - 1 + j
            ncc[j] = acf[f, k] / np.sqrt(max(e_head[k] * e_tail[k], np.float32(1e-30)))
        _, r = _parabola(ncc[0], ncc[1], ncc[2])
        r = min(max(r, r_lo), r_hi)
        out[f, c_hnr] = np.float32(10.0) * np.log10(r / (np.float32(1.0) - r))


@_jit
def spectral(
    spec: NDArray[np.complex64],
    freqs_hz: NDArray[np.float32],
    slope_weights: NDArray[np.float32],
    alpha_low: tuple[int, int],
    alpha_high: tuple[int, int],
    hamm_low: tuple[int, int],
    hamm_high: tuple[int, int],
    mel_start: NDArray[np.int64],
    mel_weights: NDArray[np.float32],
    dct_t: NDArray[np.float32],
    power_floor: float,
    slope_scale: float,
    out: NDArray[np.float32],
    columns: NDArray[np.int64],
) -> None:
    """Spectral descriptors of each frame's one-sided spectrum ``spec`` (n, n_bins).

    Band edges are ``(first, stop)`` bin ranges. ``mel_start`` (n_mels,) is each mel
    band's first bin and ``mel_weights`` (width, n_mels) the weights of bins
    ``mel_start + 0 .. width - 1`` (the filterbank is sparse: at most 20 of 129 bins
    a band). ``dct_t`` (n_mels, n_mfcc): the DCT-II table, transposed. Writes into ``out`` (n, n_lld) at ``columns``: centroid, slope,
    flatness, alpha ratio, Hammarberg index, loudness, then the n_mfcc MFCCs.
    """
    n_frames, n_bins = spec.shape
    width, n_mels = mel_weights.shape  # mel_start + width <= n_bins (see lld._tables)
    n_mfcc = dct_t.shape[1]
    floor = np.float32(power_floor)
    power = np.empty(n_bins, dtype=np.float32)
    magnitude = np.empty(n_bins, dtype=np.float32)
    floored = np.empty(n_bins, dtype=np.float32)
    log_power = np.empty(n_bins, dtype=np.float32)
    log_mel = np.empty(n_mels, dtype=np.float32)
    loud = np.empty(n_mels, dtype=np.float32)
    mel = np.empty(n_mels, dtype=np.float32)
    mfcc = np.empty(n_mfcc, dtype=np.float32)
    c_centroid, c_slope, c_flat, c_alpha, c_hamm, c_loud, c_mfcc = (
        columns[0],
        columns[1],
        columns[2],
        columns[3],
        columns[4],
        columns[5],
        columns[6],
    )
    for f in range(n_frames):
        centroid_dot = np.float32(0.0)
        slope_dot = np.float32(0.0)
        for k in range(n_bins):
            re = spec[f, k].real
            im = spec[f, k].imag
            p = re * re + im * im
            power[k] = p
            m = np.sqrt(p)
            magnitude[k] = m
            centroid_dot += m * freqs_hz[k]
            q = max(p, floor)
            floored[k] = q
            lp = np.log(q)
            log_power[k] = lp
            slope_dot += lp * slope_weights[k]
        mag_sum = _pairwise_sum(magnitude, 0, n_bins)
        out[f, c_centroid] = centroid_dot / max(mag_sum, np.float32(1e-30)) if mag_sum > 0 else 0.0
        mean_log = _pairwise_sum(log_power, 0, n_bins) / np.float32(n_bins)
        mean_floored = _pairwise_sum(floored, 0, n_bins) / np.float32(n_bins)
        out[f, c_flat] = np.exp(mean_log) / mean_floored
        out[f, c_slope] = np.float32(np.float64(slope_dot) * slope_scale)
        low = np.float32(0.0)
        for k in range(alpha_low[0], alpha_low[1]):
            low += floored[k]
        high = np.float32(0.0)
        for k in range(alpha_high[0], alpha_high[1]):
            high += floored[k]
        out[f, c_alpha] = np.float32(10.0) * np.log10(high / low)
        top_low = floored[hamm_low[0]]
        for k in range(hamm_low[0] + 1, hamm_low[1]):
            top_low = max(top_low, floored[k])
        top_high = floored[hamm_high[0]]
        for k in range(hamm_high[0] + 1, hamm_high[1]):
            top_high = max(top_high, floored[k])
        out[f, c_hamm] = np.float32(10.0) * np.log10(top_low / top_high)
        # bands in the inner loop: 26 independent sums instead of one dependent chain
        # per band (each band's own sum still runs over its bins in order)
        for b in range(n_mels):
            mel[b] = np.float32(0.0)
        for j in range(width):
            for b in range(n_mels):
                mel[b] += power[mel_start[b] + j] * mel_weights[j, b]
        for b in range(n_mels):
            e = mel[b]
            loud[b] = e ** np.float32(0.3)
            log_mel[b] = np.float32(10.0) * np.log10(max(e, floor))
        out[f, c_loud] = _pairwise_sum(loud, 0, n_mels)
        # the same for the DCT: coefficients inner, against the transposed table
        for c in range(n_mfcc):
            mfcc[c] = np.float32(0.0)
        for b in range(n_mels):
            v = log_mel[b]
            for c in range(n_mfcc):
                mfcc[c] += v * dct_t[b, c]
        for c in range(n_mfcc):
            out[f, c_mfcc + c] = mfcc[c]


@_jit
def _masked_stats(
    values: NDArray[np.float32],
    voiced: NDArray[np.bool_],
    count: int,
    scratch: NDArray[np.float32],
    sorted_out: NDArray[np.float32],
) -> tuple[np.float32, np.float32]:
    """Mean and population std of ``values`` (t,) over ``voiced`` frames, as the numpy
    version of ``compute_functionals`` took them: pairwise sums of ``v * w`` and
    ``(dev * w) ** 2`` over all t (w: 1 voiced, else 0). Also writes the voiced values, sorted, to ``sorted_out[:count]``."""
    t = values.size
    denom = np.float32(max(count, 1))
    for i in range(t):
        scratch[i] = values[i] * (np.float32(1.0) if voiced[i] else np.float32(0.0))
    mean = _pairwise_sum(scratch, 0, t) / denom
    k = 0
    for i in range(t):
        w = np.float32(1.0) if voiced[i] else np.float32(0.0)
        dev = (values[i] - mean) * w
        scratch[i] = dev * dev
        if voiced[i]:
            sorted_out[k] = values[i]
            k += 1
    std = np.sqrt(_pairwise_sum(scratch, 0, t) / denom)
    sorted_out[:count].sort()
    return mean, std


@_jit
def window_functionals(
    x: NDArray[np.float32],
    lld_cols: NDArray[np.int64],
    mean_std_cols: NDArray[np.int64],
    percentiles: NDArray[np.float64],
    prosody_out: NDArray[np.int64],
    mean_out: NDArray[np.int64],
    std_out: NDArray[np.int64],
    other_out: NDArray[np.int64],
    f0_reference_hz: float,
    max_period_factor: float,
    hop_s: float,
    seconds: float,
    out: NDArray[np.float32],
) -> None:
    """The functionals of each window, as ``functionals.compute_functionals`` computed
    them with numpy (see there for the definitions), in one pass per window.

    ``x``: (b, t, n_lld) finite LLDs, t >= 1. ``lld_cols``: columns voiced, f0_hz,
    loudness, peak_amplitude, rms_db; ``mean_std_cols`` (k,): the LLDs summarised by
    voiced mean and std. Output columns: ``prosody_out`` (2, 3 + n_pct) for semitone
    and loudness (mean, std, percentiles, range), ``mean_out``/``std_out`` (k,),
    ``other_out``: jitter, shimmer, f0 delta, voiced ratio, loudness mean, rms mean,
    loudness delta std, segments per s, segment mean s. ``out``: (b, n_functionals),
    zero-filled.
    """
    n_windows, t, _ = x.shape
    c_voiced, c_f0, c_loud, c_peak, c_rms = (
        lld_cols[0],
        lld_cols[1],
        lld_cols[2],
        lld_cols[3],
        lld_cols[4],
    )
    n_pct = percentiles.size
    voiced = np.empty(t, dtype=np.bool_)
    semitone = np.empty(t, dtype=np.float32)
    period = np.empty(t, dtype=np.float32)
    column = np.empty(t, dtype=np.float32)
    scratch = np.empty(t, dtype=np.float32)
    ordered = np.empty(t, dtype=np.float32)
    n_mean_std = mean_std_cols.size
    acc = np.empty(n_mean_std, dtype=np.float32)  # per column: running sum
    means = np.empty(n_mean_std, dtype=np.float32)
    ref = np.float32(f0_reference_hz)
    factor_hi = np.float32(max_period_factor)
    factor_lo = np.float32(1.0 / max_period_factor)
    for b in range(n_windows):
        count = 0
        for i in range(t):
            f0 = x[b, i, c_f0]
            v = x[b, i, c_voiced] > np.float32(0.5) and f0 > np.float32(0.0)
            voiced[i] = v
            count += v
            f0c = max(f0, np.float32(1e-3))
            semitone[i] = np.float32(12.0) * np.log2(f0c / ref) if v else np.float32(0.0)
            period[i] = np.float32(1.0) / f0c if v else np.float32(0.0)
        # prosody: semitones then loudness, each mean, std, percentiles, range
        for p in range(2):
            if p == 0:
                for i in range(t):
                    column[i] = semitone[i]
            else:
                for i in range(t):
                    column[i] = x[b, i, c_loud]
            mean, std = _masked_stats(column, voiced, count, scratch, ordered)
            out[b, prosody_out[p, 0]] = mean
            out[b, prosody_out[p, 1]] = std
            last = max(count - 1, 0)
            first_pct = np.float32(0.0)
            pct = np.float32(0.0)
            for q in range(n_pct):
                pos = np.float64(last) * (percentiles[q] / 100.0)
                lo = int(np.floor(pos))
                hi = min(lo + 1, last)
                pct = np.float32(0.0)
                if count > 0:
                    v_lo = ordered[lo]
                    pct = np.float32(v_lo + np.float64(ordered[hi] - v_lo) * (pos - lo))
                out[b, prosody_out[p, 2 + q]] = pct
                if q == 0:
                    first_pct = pct
            out[b, prosody_out[p, 2 + n_pct]] = pct - first_pct
        # voiced mean and std of the other LLDs: running sums over frames in order, one
        # per column, the columns side by side. Column after column, each sum was one
        # chain of dependent adds, latency-bound (~1/4 of the kernel, 20 windows of 200
        # frames); the same adds in the same order per column now overlap: the numbers
        # are unchanged (tests/test_engine_fastpath.py).
        denom = np.float32(max(count, 1))
        for j in range(n_mean_std):
            acc[j] = np.float32(0.0)
        for i in range(t):
            if voiced[i]:
                for j in range(n_mean_std):
                    acc[j] += x[b, i, mean_std_cols[j]]
        for j in range(n_mean_std):
            means[j] = acc[j] / denom
            acc[j] = np.float32(0.0)
        for i in range(t):
            w = np.float32(1.0) if voiced[i] else np.float32(0.0)
            for j in range(n_mean_std):
                dev = (x[b, i, mean_std_cols[j]] - means[j]) * w
                acc[j] += dev * dev
        for j in range(n_mean_std):
            out[b, mean_out[j]] = means[j]
            out[b, std_out[j]] = np.sqrt(acc[j] / denom)
        # consecutive voiced pairs whose periods are within the factor
        n_pairs = 0
        for i in range(t - 1):
            ratio = max(period[i + 1], np.float32(1e-12)) / max(period[i], np.float32(1e-12))
            pair = voiced[i] and voiced[i + 1] and factor_lo <= ratio <= factor_hi
            if pair:
                n_pairs += 1
            column[i] = abs(period[i + 1] - period[i]) if pair else np.float32(0.0)
            scratch[i] = np.float32(0.5) * (period[i + 1] + period[i]) if pair else np.float32(0.0)
        period_diff = _pairwise_sum(column, 0, t - 1)
        period_mean = _pairwise_sum(scratch, 0, t - 1)
        pair_denom = np.float32(max(n_pairs, 1))
        if n_pairs > 0:
            out[b, other_out[0]] = period_diff / max(period_mean, np.float32(1e-12))
        for i in range(t - 1):
            ratio = max(period[i + 1], np.float32(1e-12)) / max(period[i], np.float32(1e-12))
            pair = voiced[i] and voiced[i + 1] and factor_lo <= ratio <= factor_hi
            peak_0 = max(x[b, i, c_peak], np.float32(1e-6))
            peak_1 = max(x[b, i + 1, c_peak], np.float32(1e-6))
            step = abs(np.float32(20.0) * np.log10(peak_1 / peak_0))
            column[i] = step if pair else np.float32(0.0)
            scratch[i] = abs(semitone[i + 1] - semitone[i]) if pair else np.float32(0.0)
        out[b, other_out[1]] = _pairwise_sum(column, 0, t - 1) / pair_denom
        out[b, other_out[2]] = _pairwise_sum(scratch, 0, t - 1) / pair_denom
        # over all frames
        out[b, other_out[3]] = count / t
        for i in range(t):
            column[i] = x[b, i, c_loud]
            scratch[i] = x[b, i, c_rms]
        out[b, other_out[4]] = _pairwise_sum(column, 0, t) / np.float32(t)
        out[b, other_out[5]] = _pairwise_sum(scratch, 0, t) / np.float32(t)
        if t > 1:  # std of the loudness steps, as numpy's std: mean first, then squares
            for i in range(t - 1):
                scratch[i] = column[i + 1] - column[i]
            step_mean = _pairwise_sum(scratch, 0, t - 1) / np.float32(t - 1)
            for i in range(t - 1):
                d = scratch[i] - step_mean
                scratch[i] = d * d
            # numpy's std divides the float32 sum by an integer count in float64
            squares = np.float64(_pairwise_sum(scratch, 0, t - 1))
            out[b, other_out[6]] = np.sqrt(squares / (t - 1))
        onsets = 1 if voiced[0] else 0
        for i in range(1, t):
            if voiced[i] and not voiced[i - 1]:
                onsets += 1
        out[b, other_out[7]] = onsets / seconds
        if onsets > 0:
            out[b, other_out[8]] = count * hop_s / max(onsets, 1)
