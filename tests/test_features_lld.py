"""Per-frame descriptors against textbook values and librosa on the same frames."""

from __future__ import annotations

import itertools

import librosa
import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_FEATURE_PARAMS, FeatureParams
from emotion_engine.errors import AudioError, ConfigError
from emotion_engine.features.lld import LLD_INDEX, LLD_NAMES, N_MFCC, compute_lld

SR = 8000
N = 200
HOP = 80
N_FFT = DEFAULT_FEATURE_PARAMS.n_fft
T = np.arange(SR) / SR


def _frames(y: NDArray[np.floating]) -> NDArray[np.float32]:
    return np.lib.stride_tricks.sliding_window_view(np.asarray(y, dtype=np.float32), N)[::HOP]


def _col(lld: NDArray[np.float32], name: str) -> NDArray[np.float32]:
    return lld[..., LLD_INDEX[name]]


def _harmonic(f0_hz: float, *, seed: int = 0, amplitude: float = 0.2) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    y = np.zeros_like(T)
    for k in range(1, int(3800 / f0_hz) + 1):
        y += np.sin(2 * np.pi * f0_hz * k * T + rng.uniform(0, 2 * np.pi)) / k
    return np.asarray(amplitude * y / np.abs(y).max(), dtype=np.float64)


def _librosa_power(frames: NDArray[np.float32]) -> NDArray[np.float32]:
    """|STFT|^2 from librosa's own framing: DC-free frames laid end to end, Hann(200) in 256."""
    centred = frames - frames.mean(axis=1, keepdims=True)
    y = np.pad(centred, ((0, 0), (0, N_FFT - N))).reshape(-1)
    window = np.zeros(N_FFT)
    window[:N] = librosa.filters.get_window("hann", N, fftbins=True)
    spec = librosa.stft(y, n_fft=N_FFT, hop_length=N_FFT, window=window, center=False)
    return np.asarray(np.abs(spec) ** 2, dtype=np.float32)  # (n_bins, n_frames)


def test_names_match_columns() -> None:
    lld = compute_lld(frames=np.zeros((3, N), dtype=np.float32))
    assert lld.shape == (3, len(LLD_NAMES))
    assert lld.dtype == np.float32
    assert len(set(LLD_NAMES)) == len(LLD_NAMES)
    assert LLD_NAMES[LLD_INDEX["mfcc0"] + N_MFCC - 1] == "mfcc12"


@pytest.mark.parametrize("f0_hz", [100.0, 150.0, 220.0, 300.0])
def test_f0_of_harmonic_tone(f0_hz: float) -> None:
    # measured worst frame: 0.14 % (220 Hz); parabolic interpolation of the CMND trough
    lld = compute_lld(frames=_frames(_harmonic(f0_hz)))
    assert np.all(_col(lld, "voiced") == 1)
    np.testing.assert_allclose(_col(lld, "f0_hz"), f0_hz, rtol=0.005)
    assert _col(lld, "voicing").min() > 0.95


def test_f0_of_pure_tones_at_range_edges() -> None:
    for f0_hz in (75.0, 390.0):
        lld = compute_lld(frames=_frames(0.3 * np.sin(2 * np.pi * f0_hz * T)))
        np.testing.assert_allclose(_col(lld, "f0_hz"), f0_hz, rtol=0.01)


def test_silence_and_noise_are_not_voiced() -> None:
    rng = np.random.default_rng(3)
    silence = compute_lld(frames=np.zeros((20, N), dtype=np.float32))
    noise = compute_lld(frames=_frames(0.1 * rng.standard_normal(SR)))
    quiet_tone = compute_lld(frames=_frames(_harmonic(150.0, amplitude=10 ** (-75 / 20))))
    for lld in (silence, noise, quiet_tone):
        assert np.all(np.isfinite(lld))
        assert not _col(lld, "voiced").any()
        assert not _col(lld, "f0_hz").any()
    assert np.all(_col(silence, "rms_db") == -100.0)
    assert np.mean(_col(noise, "voicing") < DEFAULT_FEATURE_PARAMS.voicing_threshold) == 1.0


def test_rms_db_of_sine() -> None:
    # 1 kHz fits 25 whole cycles in a frame: mean(sin^2) is exactly 1/2
    lld = compute_lld(frames=_frames(0.5 * np.sin(2 * np.pi * 1000 * T)))
    np.testing.assert_allclose(_col(lld, "rms_db"), 20 * np.log10(0.5 / np.sqrt(2)), atol=0.01)


def test_dc_offset_is_harmless() -> None:
    y = _frames(_harmonic(180.0))
    np.testing.assert_allclose(
        compute_lld(frames=y + np.float32(0.3)), compute_lld(frames=y), rtol=1e-3, atol=2e-3
    )


def test_peak_amplitude_and_zcr_against_loop() -> None:
    rng = np.random.default_rng(5)
    frames = _frames(0.2 * rng.standard_normal(SR) + 0.05)
    lld = compute_lld(frames=frames)
    for i, frame in enumerate(frames):
        x = frame.astype(np.float64) - frame.astype(np.float64).mean()
        crossings = sum(1 for a, b in itertools.pairwise(x) if (a < 0) != (b < 0))
        assert _col(lld, "zcr")[i] == pytest.approx(crossings / (N - 1), abs=1e-6)
        assert _col(lld, "peak_amplitude")[i] == pytest.approx(np.abs(x).max(), rel=1e-5)


@pytest.mark.parametrize("freq_hz", [1000.0, 2000.0])
def test_centroid_of_pure_tone(freq_hz: float) -> None:
    lld = compute_lld(frames=_frames(0.5 * np.sin(2 * np.pi * freq_hz * T)))
    np.testing.assert_allclose(_col(lld, "spectral_centroid_hz"), freq_hz, rtol=1e-3)


def test_centroid_and_flatness_match_librosa() -> None:
    rng = np.random.default_rng(7)
    frames = _frames(_harmonic(130.0) + 0.02 * rng.standard_normal(SR))
    lld = compute_lld(frames=frames)
    power = _librosa_power(frames)
    centroid = librosa.feature.spectral_centroid(S=np.sqrt(power), sr=SR, n_fft=N_FFT)[0]
    flatness = librosa.feature.spectral_flatness(S=np.sqrt(power), power=2.0)[0]
    np.testing.assert_allclose(_col(lld, "spectral_centroid_hz"), centroid, rtol=1e-3)
    np.testing.assert_allclose(_col(lld, "spectral_flatness"), flatness, rtol=2e-3, atol=1e-6)


def test_flatness_of_noise_and_tone() -> None:
    rng = np.random.default_rng(9)
    noise = compute_lld(frames=_frames(0.1 * rng.standard_normal(SR)))
    tone = compute_lld(frames=_frames(0.5 * np.sin(2 * np.pi * 1000 * T)))
    # a single periodogram of white noise has flatness exp(-gamma) ~ 0.56, not 1
    assert 0.4 < np.mean(_col(noise, "spectral_flatness")) < 0.8
    assert np.max(_col(tone, "spectral_flatness")) < 1e-3


def test_spectral_slope_matches_polyfit_and_sign() -> None:
    rng = np.random.default_rng(11)
    white = _frames(0.1 * rng.standard_normal(SR))
    spec = np.fft.rfft(rng.standard_normal(2 * SR))
    freqs = np.fft.rfftfreq(2 * SR, d=1 / SR)
    spec[1:] /= np.sqrt(freqs[1:])
    spec[0] = 0
    pink_y = np.fft.irfft(spec)
    pink = _frames(0.1 * pink_y / pink_y.std())

    slope_white = _col(compute_lld(frames=white), "spectral_slope_db_per_khz")
    slope_pink = _col(compute_lld(frames=pink), "spectral_slope_db_per_khz")
    assert abs(np.mean(slope_white)) < 0.5
    assert np.mean(slope_pink) < -2.0

    power = _librosa_power(pink)
    f_khz = librosa.fft_frequencies(sr=SR, n_fft=N_FFT)[1:] / 1000
    reference = [np.polyfit(f_khz, 10 * np.log10(p[1:]), 1)[0] for p in power.T]
    np.testing.assert_allclose(slope_pink, reference, rtol=1e-3, atol=1e-3)


def test_alpha_ratio_and_hammarberg_of_two_tones() -> None:
    # both tones sit on FFT bins (multiples of 31.25 Hz), so each band holds one peak
    low, high = 0.5, 0.05
    for high_hz in (2000.0, 2500.0):
        y = low * np.sin(2 * np.pi * 500 * T) + high * np.sin(2 * np.pi * high_hz * T)
        lld = compute_lld(frames=_frames(y))
        np.testing.assert_allclose(_col(lld, "alpha_ratio_db"), 20 * np.log10(high / low), atol=0.1)
    np.testing.assert_allclose(_col(lld, "hammarberg_db"), 20 * np.log10(low / high), atol=0.1)


def test_hnr_matches_snr_of_tone_plus_noise() -> None:
    rng = np.random.default_rng(13)
    tone = np.sin(2 * np.pi * 200 * T + 0.3)  # mean power 1/2
    for snr_db in (0.0, 10.0, 20.0):
        noise = rng.standard_normal(SR) * np.sqrt(0.5 / 10 ** (snr_db / 10))
        lld = compute_lld(frames=_frames(0.3 * (tone + noise)))
        # Boersma: r = S / (S + N) at the period lag, so HNR = SNR; measured within 1.2 dB
        assert np.median(_col(lld, "hnr_db")) == pytest.approx(snr_db, abs=1.5)
    clean = compute_lld(frames=_frames(_harmonic(150.0)))
    noise_only = compute_lld(frames=_frames(0.1 * rng.standard_normal(SR)))
    assert np.median(_col(clean, "hnr_db")) > 20.0
    assert np.median(_col(noise_only, "hnr_db")) < 0.0


def test_loudness_grows_as_power_to_the_0_3() -> None:
    y = _frames(_harmonic(170.0, amplitude=0.05))
    quiet = _col(compute_lld(frames=y), "loudness")
    loud = _col(compute_lld(frames=y * np.float32(10.0)), "loudness")  # +20 dB
    np.testing.assert_allclose(loud / quiet, 10**0.6, rtol=1e-3)


def test_mfcc_matches_librosa() -> None:
    rng = np.random.default_rng(17)
    frames = _frames(_harmonic(140.0) + 0.01 * rng.standard_normal(SR))
    lld = compute_lld(frames=frames)
    mel = librosa.feature.melspectrogram(
        S=_librosa_power(frames), sr=SR, n_mels=DEFAULT_FEATURE_PARAMS.n_mels, fmin=0.0, fmax=SR / 2
    )
    reference = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=N_MFCC)
    first = LLD_INDEX["mfcc0"]
    np.testing.assert_allclose(lld[:, first : first + N_MFCC], reference.T, rtol=1e-3, atol=2e-2)


def test_batched_equals_per_stream_and_any_chunking() -> None:
    rng = np.random.default_rng(19)
    streams = np.stack(
        [
            _frames(_harmonic(110.0, seed=1)),
            _frames(0.05 * rng.standard_normal(SR)),
            _frames(_harmonic(260.0, seed=2) + 0.01 * rng.standard_normal(SR)),
        ]
    )
    batched = compute_lld(frames=streams)
    assert batched.shape == (3, streams.shape[1], len(LLD_NAMES))
    # bit-identical: every product is per row (einsum, FFT), never blocked by batch size
    for k in range(3):
        np.testing.assert_array_equal(batched[k], compute_lld(frames=streams[k]))
    # frames are independent: any split of a stream (as a live stream arrives) gives
    # the same rows
    cuts = [0, 1, 37, 38, 90, streams.shape[1]]
    pieces = [compute_lld(frames=streams[0, a:b]) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(pieces), batched[0])
    long_batch = np.concatenate([streams[0]] * 5)  # crosses the internal chunk size
    np.testing.assert_array_equal(compute_lld(frames=long_batch), np.concatenate([batched[0]] * 5))


def test_non_finite_input_gives_finite_output() -> None:
    frames = _frames(_harmonic(120.0))[:5].copy()
    frames[1, 10] = np.nan
    frames[2, :] = np.inf
    assert np.all(np.isfinite(compute_lld(frames=frames)))


def test_empty_batch_keeps_shape() -> None:
    assert compute_lld(frames=np.zeros((2, 0, N), dtype=np.float32)).shape == (2, 0, len(LLD_NAMES))


def test_bad_input_and_params_raise() -> None:
    with pytest.raises(AudioError, match="160"):
        compute_lld(frames=np.zeros((4, 160), dtype=np.float32))
    with pytest.raises(AudioError):
        compute_lld(frames=np.zeros(N, dtype=np.float32))
    with pytest.raises(ConfigError, match="30"):
        compute_lld(frames=np.zeros((1, N), dtype=np.float32), params=FeatureParams(f0_min_hz=30.0))
    with pytest.raises(ConfigError, match=r"1\.5"):
        compute_lld(
            frames=np.zeros((1, N), dtype=np.float32), params=FeatureParams(voicing_threshold=1.5)
        )
    with pytest.raises(ConfigError, match="n_mfcc"):
        compute_lld(frames=np.zeros((1, N), dtype=np.float32), params=FeatureParams(n_mfcc=20))
