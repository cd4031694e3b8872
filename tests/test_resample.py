"""Polyphase resampler: streaming equals one-shot, one-shot equals scipy's polyphase
filter with the same taps, and tones keep amplitude and frequency while anything at
or above 4 kHz is rejected (checked against scipy's own default resampler too)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from emotion_engine.audio.resample import StreamingResampler, polyphase_filter, resample
from emotion_engine.config import SUPPORTED_INPUT_RATES_HZ
from emotion_engine.errors import AudioError, UnsupportedRateError

RESAMPLED_RATES = [r for r in SUPPORTED_INPUT_RATES_HZ if r != 8000]


def _noise(rate_hz: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(rate_hz * seconds))).astype(np.float32)


def _tone(rate_hz: int, freq_hz: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _stream(rs: StreamingResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    outs, i = [], 0
    for n in sizes:
        outs.append(rs.process(x[i : i + n]))
        i += n
    outs.append(rs.process(x[i:]))
    outs.append(rs.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize("rate", RESAMPLED_RATES)
def test_any_chunking_equals_one_shot(rate: int) -> None:
    x = _noise(rate, 0.3)
    rng = np.random.default_rng(rate)
    sizes = [0, 1, 1, 0, 2, *rng.integers(0, 700, size=25).tolist(), 1, 0, 3]
    whole = resample(samples=x, rate_in_hz=rate)
    streamed = _stream(StreamingResampler(rate_in_hz=rate), x, sizes)
    assert streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rate", RESAMPLED_RATES)
def test_one_shot_equals_scipy_resample_poly_with_the_same_taps(rate: int) -> None:
    flt = polyphase_filter(rate_in_hz=rate)
    x = _noise(rate, 0.25, seed=1)
    # resample_poly scales a given window by `up`; ours already carries that gain.
    ref = signal.resample_poly(x.astype(np.float64), flt.up, flt.down, window=flt.taps / flt.up)
    got = resample(samples=x, rate_in_hz=rate)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 441, 1000])
@pytest.mark.parametrize("rate", [11025, 44100, 48000])
def test_output_length_is_ceil_n_up_over_down(rate: int, n: int) -> None:
    out = resample(samples=np.ones(n, dtype=np.float32), rate_in_hz=rate)
    assert out.size == -(-n * 8000 // rate)


@pytest.mark.parametrize("rate", RESAMPLED_RATES)
@pytest.mark.parametrize("freq_hz", [300.0, 1000.0, 3400.0])
def test_pass_band_tone_keeps_amplitude_and_frequency(rate: int, freq_hz: float) -> None:
    x = _tone(rate, freq_hz, 1.0)
    y = resample(samples=x, rate_in_hz=rate)[400:-400].astype(np.float64)  # skip the edges
    # Least-squares fit of a sine at the expected frequency: amplitude and residual.
    t = (np.arange(y.size) + 400) / 8000
    basis = np.column_stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)])
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    amp = float(np.hypot(*coef))
    assert 20 * np.log10(amp / 0.5) == pytest.approx(0.0, abs=0.01)
    # No delay left: the fitted phase is the input's (pure sine, cos part ~0).
    assert abs(coef[1]) < 1e-3
    residual = y - basis @ coef
    assert np.sqrt(np.mean(residual**2)) < 1e-4 * amp


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_pass_band_agrees_with_scipy_default_resampler(rate: int) -> None:
    """Second path with a different filter (scipy's own Kaiser design): on a 2-tone
    signal well inside the band, both agree to 0.1 % of full scale."""
    x = _tone(rate, 440.0, 0.5) + _tone(rate, 1700.0, 0.5, amp=0.25)
    g = np.gcd(rate, 8000)
    ref = signal.resample_poly(x.astype(np.float64), 8000 // g, rate // g)
    got = resample(samples=x, rate_in_hz=rate)
    np.testing.assert_allclose(got[200:-200], ref[200:-200], rtol=0, atol=1e-3)


@pytest.mark.parametrize("rate", RESAMPLED_RATES)
def test_tones_at_or_above_4khz_are_rejected(rate: int) -> None:
    for freq_hz in (4000.0, 4300.0, min(7000.0, 0.45 * rate)):
        y = resample(samples=_tone(rate, freq_hz, 0.5), rate_in_hz=rate)
        level_db = 20 * np.log10(np.sqrt(np.mean(y[400:-400] ** 2)) / (0.5 / np.sqrt(2)))
        assert level_db < -75, (freq_hz, level_db)


@pytest.mark.parametrize("rate", [16000, 44100, 48000, 96000])
def test_impulse_comes_out_at_the_same_time(rate: int) -> None:
    """Group delay is compensated: an impulse at t = 25 ms peaks at output sample 200."""
    x = np.zeros(rate // 10, dtype=np.float32)
    x[rate // 40] = 1.0
    y = resample(samples=x, rate_in_hz=rate)
    assert int(np.argmax(y)) == 200
    # Unit DC gain: the samples of a band-limited impulse sum to rate_out / rate_in.
    assert float(np.sum(y)) == pytest.approx(8000 / rate, rel=1e-4)


def test_8khz_is_a_pass_through_copy() -> None:
    x = _noise(8000, 0.1)
    rs = StreamingResampler(rate_in_hz=8000)
    y = rs.process(x)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(x, y)
    assert rs.flush().size == 0
    np.testing.assert_array_equal(resample(samples=x, rate_in_hz=8000), x)


def test_reset_starts_a_new_stream() -> None:
    x = _noise(48000, 0.1)
    rs = StreamingResampler(rate_in_hz=48000)
    rs.process(_noise(48000, 0.05, seed=9))
    rs.reset()
    again = np.concatenate([rs.process(x), rs.flush()])
    np.testing.assert_array_equal(again, resample(samples=x, rate_in_hz=48000))
    # flush() also resets: the next stream does not see the previous one.
    np.testing.assert_array_equal(np.concatenate([rs.process(x), rs.flush()]), again)


@pytest.mark.parametrize("rate", [0, 7999, 22000, 192000])
def test_unsupported_rate_names_the_rate(rate: int) -> None:
    with pytest.raises(UnsupportedRateError, match=f"{rate}.*supported: 8000, 11025"):
        StreamingResampler(rate_in_hz=rate)


def test_non_mono_input_is_rejected() -> None:
    with pytest.raises(AudioError, match=r"\(2, 10\)"):
        StreamingResampler(rate_in_hz=16000).process(np.zeros((2, 10), dtype=np.float32))
