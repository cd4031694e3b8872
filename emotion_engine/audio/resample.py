"""Rational-ratio polyphase resampling to the model rate (8 kHz), streaming or one-shot.

A rate pair ``rate_in -> rate_out`` is the ratio ``up / down`` (divided by their gcd).
One linear-phase Kaiser-window low-pass FIR, designed at ``rate_in * up``, limits the
band to below the lower Nyquist frequency (pass band to 0.4375 of the lower rate --
3.5 kHz at 8 kHz, above the 3.4 kHz telephone band -- and at least 80 dB down from
its Nyquist frequency, so nothing aliases). Its group delay is removed, with the same
alignment as ``scipy.signal.resample_poly(x, up, down, window=h)``: output sample
``k`` is at input time ``k / rate_out``, and a signal of ``n`` samples gives
``ceil(n * up / down)`` samples.

The filter is rearranged once per rate pair into a (W, R) matrix: output ``q*R + r``
is the dot product of column ``r`` with ``W`` consecutive inputs starting at
``q*D - (T-1)`` (``R`` outputs per ``D`` inputs, ``R`` a multiple of ``up``; the
phase and input offset of each output are folded into its column). A chunk is then
one gather of overlapping input windows and one matrix product.
:class:`StreamingResampler` keeps the last ``W`` inputs across chunks, so any chunking
(including empty and 1-sample chunks) followed by :meth:`~StreamingResampler.flush`
gives what :func:`resample` gives for the whole signal. Next step:
:class:`emotion_engine.audio.framing.Framer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal

from emotion_engine.config import MODEL_SAMPLE_RATE_HZ, SUPPORTED_INPUT_RATES_HZ
from emotion_engine.errors import AudioError, UnsupportedRateError

__all__ = ["PolyphaseFilter", "StreamingResampler", "polyphase_filter", "resample"]

PASSBAND_EDGE: Final = 0.4375
"""Pass-band edge as a fraction of the lower rate (3.5 kHz at 8 kHz)."""
STOPBAND_EDGE: Final = 0.5
"""Stop band starts at the lower rate's Nyquist frequency: no aliasing into the output."""
STOPBAND_ATTENUATION_DB: Final = 80.0
"""Below 16-bit quantisation noise of speech at normal level."""

_MAX_BLOCK_VALUES: Final = 1 << 20  # bounds the gathered input matrix of one product (4 MiB)


@dataclass(frozen=True, slots=True, eq=False)
class PolyphaseFilter:
    """One rate pair's filter, shared (read-only) by every stream at that pair.

    ``taps``: (n_taps,) float64 prototype low-pass at ``rate_in * up`` Hz, gain ``up``
    (what ``resample_poly`` would scale it to), with ``pre_pad`` leading zeros that
    make its delay a whole number (``delay``) of output samples. ``kernel``: (W, R)
    float32; column ``r`` weighs inputs ``q*D - (taps_per_phase - 1) + w``, ``w < W``,
    for output ``q*R + r`` (``R = outputs_per_row``, ``D = inputs_per_row``).
    """

    rate_in_hz: int
    rate_out_hz: int
    up: int
    down: int
    taps: NDArray[np.float64]
    taps_per_phase: int
    delay: int
    outputs_per_row: int
    inputs_per_row: int
    kernel: NDArray[np.float32]

    @property
    def width(self) -> int:
        """Inputs one row of outputs depends on (W)."""
        return int(self.kernel.shape[0])


def _check_rate(rate_hz: int, *, what: str) -> None:
    if rate_hz not in SUPPORTED_INPUT_RATES_HZ:
        raise UnsupportedRateError(
            f"unsupported {what} sample rate {rate_hz!r} Hz; supported: "
            f"{', '.join(str(r) for r in SUPPORTED_INPUT_RATES_HZ)}"
        )


def _design_lowpass(*, rate_in_hz: int, rate_out_hz: int, up: int) -> NDArray[np.float64]:
    """Odd-length Kaiser low-pass at ``rate_in_hz * up``, gain ``up``, (n_taps,)."""
    fs_up = float(rate_in_hz * up)
    low = float(min(rate_in_hz, rate_out_hz))
    pass_hz, stop_hz = PASSBAND_EDGE * low, STOPBAND_EDGE * low
    numtaps, beta = signal.kaiserord(STOPBAND_ATTENUATION_DB, (stop_hz - pass_hz) / (fs_up / 2))
    numtaps |= 1  # odd: symmetric type I filter, delay of a whole number of samples
    taps = signal.firwin(
        numtaps, (pass_hz + stop_hz) / 2, window=("kaiser", beta), fs=fs_up, scale=False
    )
    return np.asarray(taps, dtype=np.float64) * up


@cache
def polyphase_filter(
    *, rate_in_hz: int, rate_out_hz: int = MODEL_SAMPLE_RATE_HZ
) -> PolyphaseFilter:
    """The (cached) polyphase filter for ``rate_in_hz -> rate_out_hz``.

    Raises :class:`UnsupportedRateError` for a rate outside ``SUPPORTED_INPUT_RATES_HZ``.
    """
    _check_rate(rate_in_hz, what="input")
    _check_rate(rate_out_hz, what="output")
    g = math.gcd(rate_in_hz, rate_out_hz)
    up, down = rate_out_hz // g, rate_in_hz // g
    proto = _design_lowpass(rate_in_hz=rate_in_hz, rate_out_hz=rate_out_hz, up=up)
    # resample_poly's alignment: pre-pad so the centre tap lands on an output sample.
    half_len = (proto.size - 1) // 2
    pre_pad = down - half_len % down
    delay = (half_len + pre_pad) // down
    taps_per_phase = -(-(pre_pad + proto.size) // up)
    padded = np.zeros(taps_per_phase * up)
    padded[pre_pad : pre_pad + proto.size] = proto
    phases = padded.reshape(taps_per_phase, up).T  # phases[p, m] = padded[p + m * up]
    # Rows of several periods when one period is short next to the filter (integer
    # decimation): fewer, wider rows make the input gather ~T/D times smaller.
    periods = max(1, round(taps_per_phase / down))
    n_cols, row_inputs = periods * up, periods * down
    r = np.arange(n_cols)
    offset, phase = (r * down) // up, (r * down) % up
    width = taps_per_phase + int(offset[-1])
    # Output q*R + r = sum_m x[q*D + offset[r] - m] * phases[phase[r], m]; with the
    # window starting at q*D - (T-1), input w weighs phases[phase[r], T-1+offset[r]-w].
    kernel = np.zeros((n_cols, width))
    for ri in range(n_cols):
        kernel[ri, offset[ri] : offset[ri] + taps_per_phase] = phases[phase[ri], ::-1]
    kernel32 = np.ascontiguousarray(kernel.T, dtype=np.float32)
    kernel32.flags.writeable = False
    proto.flags.writeable = False
    return PolyphaseFilter(
        rate_in_hz=rate_in_hz,
        rate_out_hz=rate_out_hz,
        up=up,
        down=down,
        taps=proto,
        taps_per_phase=taps_per_phase,
        delay=delay,
        outputs_per_row=n_cols,
        inputs_per_row=row_inputs,
        kernel=kernel32,
    )


def _as_mono_float32(samples: ArrayLike) -> NDArray[np.float32]:
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim != 1:
        raise AudioError(f"resampler needs mono (n,) samples, got shape {arr.shape}")
    return arr


class StreamingResampler:
    """Stateful resampler for one stream: ``process`` chunks, ``flush`` at the end.

    Outputs are emitted as soon as every input they depend on has arrived, so the
    added latency is the filter's half length (about 5 ms at 48 kHz in). The input
    rate equal to the output rate is a pass-through copy.
    """

    def __init__(self, *, rate_in_hz: int, rate_out_hz: int = MODEL_SAMPLE_RATE_HZ) -> None:
        self.rate_in_hz = rate_in_hz
        self.rate_out_hz = rate_out_hz
        self._filter: PolyphaseFilter | None = None
        if rate_in_hz == rate_out_hz:
            _check_rate(rate_in_hz, what="input")
        else:
            self._filter = polyphase_filter(rate_in_hz=rate_in_hz, rate_out_hz=rate_out_hz)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next chunk is the start of a new signal."""
        t_minus_1 = 0 if self._filter is None else self._filter.taps_per_phase - 1
        # Inputs before the start are zeros, as for a one-shot filter.
        self._hist = np.zeros(t_minus_1, dtype=np.float32)
        self._hist_start = -t_minus_1  # global input index of _hist[0]
        self._n_in = 0  # inputs received
        self._j = 0  # next output to compute, counting the `delay` outputs that are dropped

    def process(self, samples: ArrayLike) -> NDArray[np.float32]:
        """Resample the next chunk: (n,) float32 in, (m,) float32 out (m may be 0)."""
        x = _as_mono_float32(samples)
        if self._filter is None:
            return x.copy()
        if x.size:
            self._hist = np.concatenate((self._hist, x))
            self._n_in += x.size
        flt = self._filter
        ready = (self._n_in * flt.up - 1) // flt.down + 1 if self._n_in else 0
        return self._emit(ready)

    def flush(self) -> NDArray[np.float32]:
        """Outputs still owed at the end of the stream (the filter's tail), then reset."""
        flt = self._filter
        if flt is None:
            return np.zeros(0, dtype=np.float32)
        n_out = -(-self._n_in * flt.up // flt.down)
        # Inputs after the end are zeros: _rows pads them, as a one-shot filter would.
        out = self._emit(flt.delay + n_out)
        self.reset()
        return out

    def _emit(self, stop: int) -> NDArray[np.float32]:
        """Outputs ``self._j .. stop-1`` (raw indices), minus the delay ones."""
        flt = self._filter
        assert flt is not None
        start = self._j
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        per_row, row_inputs = flt.outputs_per_row, flt.inputs_per_row
        q_first, q_last = start // per_row, (stop - 1) // per_row
        rows_per_block = max(1, _MAX_BLOCK_VALUES // flt.width)
        blocks = []
        for qa in range(q_first, q_last + 1, rows_per_block):
            qb = min(qa + rows_per_block, q_last + 1)
            blocks.append(self._rows(qa, qb).reshape(-1))
        raw = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        first_kept = max(start, flt.delay)
        out = raw[first_kept - q_first * per_row : stop - q_first * per_row]
        self._j = stop
        keep_from = (stop // per_row) * row_inputs - (flt.taps_per_phase - 1)
        self._hist = self._hist[keep_from - self._hist_start :]
        self._hist_start = keep_from
        return np.ascontiguousarray(out)

    def _rows(self, qa: int, qb: int) -> NDArray[np.float32]:
        """Every output of rows ``qa .. qb-1``: (qb - qa, R) float32."""
        flt = self._filter
        assert flt is not None
        step = flt.inputs_per_row
        first = qa * step - (flt.taps_per_phase - 1) - self._hist_start
        need = (qb - 1 - qa) * step + flt.width
        seg = self._hist[first : first + need]
        if seg.size < need:
            # Inputs not yet received only meet outputs that are not emitted yet.
            seg = np.concatenate((seg, np.zeros(need - seg.size, dtype=np.float32)))
        item = seg.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            seg, shape=(qb - qa, flt.width), strides=(step * item, item), writeable=False
        )
        out: NDArray[np.float32] = np.ascontiguousarray(windows) @ flt.kernel
        return out


def resample(
    *, samples: ArrayLike, rate_in_hz: int, rate_out_hz: int = MODEL_SAMPLE_RATE_HZ
) -> NDArray[np.float32]:
    """One-shot resampling with the streaming filter: (n,) -> (ceil(n * up / down),) float32."""
    rs = StreamingResampler(rate_in_hz=rate_in_hz, rate_out_hz=rate_out_hz)
    head = rs.process(samples)
    return np.concatenate((head, rs.flush()))
