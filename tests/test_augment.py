"""Telephony augmentation: codec against stdlib audioop, filter against its analytic
response, noise against the requested SNR."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.signal import sosfreqz

from emotion_engine.errors import ConfigError
from emotion_engine.training.augment import (
    AugmentParams,
    _band_sos,
    active_power,
    add_noise,
    band_limit,
    g711_roundtrip,
    telephone_channel,
    telephony_augment,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SR = 8000


def _sine(freq_hz: float, *, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("law", "enc", "dec"),
    [("ulaw", audioop.lin2ulaw, audioop.ulaw2lin), ("alaw", audioop.lin2alaw, audioop.alaw2lin)],
)
def test_g711_roundtrip_matches_audioop(law: str, enc: object, dec: object) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4000) * 0.2).clip(-1, 0.999).astype(np.float32)
    pcm = np.round(x * 32768).astype(np.int16)
    ref = np.frombuffer(dec(enc(pcm.tobytes(), 2), 2), dtype=np.int16) / 32768.0  # type: ignore[operator]
    np.testing.assert_array_equal(g711_roundtrip(samples=x, law=law), ref.astype(np.float32))


def test_telephone_channel_is_mulaw_with_codec_snr() -> None:
    x = _sine(440.0)
    y = telephone_channel(samples=x)
    snr_db = 10 * np.log10(
        np.sum(x.astype(np.float64) ** 2) / np.sum((y - x).astype(np.float64) ** 2)
    )
    # 8-bit companded PCM keeps ~38 dB SNR for a mid-level tone (ITU-T G.711 design figure).
    assert 33.0 < snr_db < 45.0


def test_unknown_law_raises() -> None:
    with pytest.raises(ConfigError, match="'g722'"):
        g711_roundtrip(samples=np.zeros(10, dtype=np.float32), law="g722")


@pytest.mark.parametrize("freq_hz", [100.0, 300.0, 1000.0, 3400.0, 3800.0])
def test_band_limit_matches_filter_response(freq_hz: float) -> None:
    x = _sine(freq_hz, seconds=2.0)
    y = band_limit(samples=x)
    steady = slice(SR, None)  # skip the filter's transient
    gain = np.sqrt(
        np.mean(y[steady].astype(np.float64) ** 2) / np.mean(x[steady].astype(np.float64) ** 2)
    )
    _, h = sosfreqz(_band_sos(300.0, 3400.0, SR), worN=[freq_hz], fs=SR)
    assert gain == pytest.approx(abs(h[0]), rel=0.02, abs=1e-3)
    if freq_hz == 1000.0:
        assert gain == pytest.approx(1.0, abs=0.02)
    if freq_hz == 100.0:
        assert gain < 0.05


def test_add_noise_hits_requested_snr() -> None:
    rng = np.random.default_rng(3)
    # Speech-like: half tone, half silence, so the whole-clip power would be 3 dB off.
    x = np.concatenate([_sine(200.0, seconds=2.0), np.zeros(2 * SR, dtype=np.float32)])
    y = add_noise(samples=x, snr_db=20.0, rng=rng)
    noise_power = np.mean((y - x).astype(np.float64) ** 2)
    tone_power = 0.3**2 / 2
    assert active_power(samples=x) == pytest.approx(tone_power, rel=0.01)
    assert 10 * np.log10(tone_power / noise_power) == pytest.approx(20.0, abs=0.2)


def test_augment_is_seeded_and_within_ranges() -> None:
    x = _sine(300.0)
    a = telephony_augment(samples=x, rng=np.random.default_rng(7))
    b = telephony_augment(samples=x, rng=np.random.default_rng(7))
    c = telephony_augment(samples=x, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()

    level_only = AugmentParams(noise_probability=0.0, band_probability=0.0)
    for seed in range(20):
        y = telephony_augment(samples=x, rng=np.random.default_rng(seed), params=level_only)
        gain_db = 20 * np.log10(
            np.sqrt(np.mean(y.astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2))
        )
        assert -10.2 < gain_db < 10.2
