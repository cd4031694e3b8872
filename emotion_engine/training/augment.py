"""Telephony degradation for training and evaluation audio (cheap, seeded).

Training clips go through :func:`telephony_augment`: a random level change (+-10 dB),
optional additive noise at 10-30 dB SNR, optional 300-3400 Hz band-limiting, and always
a G.711 round trip (mu-law or A-law), because every live call is G.711 too. Evaluation
clips go through :func:`telephone_channel` only (mu-law round trip), the condition the
model card reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import MODEL_SAMPLE_RATE_HZ
from emotion_engine.errors import ConfigError

G711_LAWS: tuple[str, ...] = ("ulaw", "alaw")


@dataclass(frozen=True, slots=True)
class AugmentParams:
    """Ranges of the random telephony degradation (uniform draws per clip)."""

    laws: tuple[str, ...] = G711_LAWS
    gain_db: tuple[float, float] = (-10.0, 10.0)
    noise_probability: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)
    band_probability: float = 0.5
    band_hz: tuple[float, float] = (300.0, 3400.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_AUGMENT_PARAMS = AugmentParams()


def g711_roundtrip(*, samples: NDArray[np.float32], law: str = "ulaw") -> NDArray[np.float32]:
    """Encode and decode with G.711. ``samples``: (..., n) float32 in -1..1 (clipped).

    Returns the same shape, float32, with the codec's quantisation noise.
    """
    from emotion_engine.audio import g711
    from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32

    pcm = float32_to_int16(samples)
    if law == "ulaw":
        return int16_to_float32(g711.ulaw_decode(g711.ulaw_encode(pcm)))
    if law == "alaw":
        return int16_to_float32(g711.alaw_decode(g711.alaw_encode(pcm)))
    raise ConfigError(f"unknown G.711 law {law!r} (expected one of {G711_LAWS})")


@lru_cache(maxsize=8)
def _band_sos(low_hz: float, high_hz: float, sample_rate_hz: int) -> NDArray[np.float64]:
    from scipy.signal import butter

    nyquist = sample_rate_hz / 2
    if not 0 < low_hz < high_hz < nyquist:
        raise ConfigError(f"band {low_hz}-{high_hz} Hz must satisfy 0 < low < high < {nyquist} Hz")
    sos: NDArray[np.float64] = butter(
        4, [low_hz, high_hz], btype="bandpass", fs=sample_rate_hz, output="sos"
    )
    return sos


def band_limit(
    *,
    samples: NDArray[np.float32],
    low_hz: float = 300.0,
    high_hz: float = 3400.0,
    sample_rate_hz: int = MODEL_SAMPLE_RATE_HZ,
) -> NDArray[np.float32]:
    """4th-order Butterworth band-pass (the telephone channel). ``samples``: (..., n)."""
    from scipy.signal import sosfilt

    sos = _band_sos(float(low_hz), float(high_hz), int(sample_rate_hz))
    return np.asarray(sosfilt(sos, samples, axis=-1), dtype=np.float32)


def active_power(*, samples: NDArray[np.float32], frame_length: int = 200) -> float:
    """Mean power of the louder half of ``frame_length`` frames: a cheap speech level.

    A whole-clip mean would count the leading/trailing silence of acted clips and put
    the noise too low for the SNR asked for.
    """
    n = samples.size // frame_length
    if n == 0:
        return float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    power = np.mean(
        np.square(samples[: n * frame_length].reshape(n, frame_length), dtype=np.float64), axis=1
    )
    loud = np.sort(power)[n // 2 :]
    return float(loud.mean())


def add_noise(
    *, samples: NDArray[np.float32], snr_db: float, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Add white Gaussian noise at ``snr_db`` below :func:`active_power`. ``samples``: (n,)."""
    power = active_power(samples=samples)
    if power <= 0.0:
        return samples.astype(np.float32, copy=True)
    sigma = float(np.sqrt(power / 10.0 ** (snr_db / 10.0)))
    noise = rng.standard_normal(samples.shape, dtype=np.float32) * np.float32(sigma)
    out: NDArray[np.float32] = (samples + noise).astype(np.float32)
    return out


def telephony_augment(
    *,
    samples: NDArray[np.float32],
    rng: np.random.Generator,
    params: AugmentParams = DEFAULT_AUGMENT_PARAMS,
) -> NDArray[np.float32]:
    """One random telephony degradation of a clip. ``samples``: (n,) float32 at 8 kHz.

    Order follows a real call: talker level, room/line noise, channel filter, codec.
    Returns (n,) float32.
    """
    gain = 10.0 ** (rng.uniform(*params.gain_db) / 20.0)
    out = (samples * gain).astype(np.float32)
    if rng.random() < params.noise_probability:
        out = add_noise(samples=out, snr_db=float(rng.uniform(*params.snr_db)), rng=rng)
    if rng.random() < params.band_probability:
        out = band_limit(samples=out, low_hz=params.band_hz[0], high_hz=params.band_hz[1])
    law = params.laws[int(rng.integers(len(params.laws)))]
    return g711_roundtrip(samples=out, law=law)


def telephone_channel(*, samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """The evaluation condition: a plain G.711 mu-law round trip. ``samples``: (n,)."""
    return g711_roundtrip(samples=samples, law="ulaw")


SPEAKER_PERTURBATIONS: tuple[str, ...] = ("speed", "pitch", "vtlp")
"""Speaker/language perturbations applied before :func:`telephony_augment`:

- ``speed``: resampling by a factor in 0.9..1.1 (Kaldi-style speed perturbation: tempo,
  F0 and formants move together, as between a smaller and a larger speaker);
- ``pitch``: F0 and spectrum shifted by 1-3 semitones up or down, tempo kept
  (``librosa.effects.pitch_shift``, phase vocoder + resampling);
- ``vtlp``: vocal-tract-length perturbation: each STFT frame's spectral envelope
  (cepstrally smoothed log magnitude) warped in frequency by a factor in 0.9..1.1,
  the harmonic fine structure (F0) and the tempo kept.
"""


def speed_perturb(*, samples: NDArray[np.float32], factor: float) -> NDArray[np.float32]:
    """Play (n,) float32 audio ``factor`` times faster (and higher): resampling by
    1/``factor`` read at the original rate. Returns (~n / factor,) float32."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    if not 0.5 <= factor <= 2.0:
        raise ConfigError(f"speed factor must be in 0.5..2, got {factor}")
    ratio = Fraction(factor).limit_denominator(100)
    out = np.asarray(resample_poly(samples.astype(np.float64), ratio.denominator, ratio.numerator))
    result: NDArray[np.float32] = np.clip(out, -1.0, 1.0).astype(np.float32)
    return result


def pitch_shift(
    *, samples: NDArray[np.float32], semitones: float, sample_rate_hz: int = MODEL_SAMPLE_RATE_HZ
) -> NDArray[np.float32]:
    """Shift (n,) float32 audio by ``semitones`` keeping its duration. Returns (n,)."""
    import librosa

    out = np.asarray(
        librosa.effects.pitch_shift(
            samples.astype(np.float32),
            sr=sample_rate_hz,
            n_steps=semitones,
            n_fft=256,
            hop_length=64,
        )
    )
    result: NDArray[np.float32] = np.clip(out[: samples.size], -1.0, 1.0).astype(np.float32)
    return result


def vtlp(
    *,
    samples: NDArray[np.float32],
    alpha: float,
    n_fft: int = 256,
    hop: int = 64,
    lifter: int = 24,
    boundary: float = 0.8,
) -> NDArray[np.float32]:
    """Warp the spectral envelope of (n,) float32 audio by ``alpha`` (formants move by
    ``alpha``, F0 and tempo stay). Piecewise-linear warp (Jaitly & Hinton 2013): ``f ->
    alpha f`` up to ``boundary`` of Nyquist, then linear to Nyquist. The envelope is the
    log magnitude liftered to ``lifter`` cepstral coefficients; each frame's spectrum is
    multiplied by warped / original envelope, phases kept. Returns (n,) float32."""
    from scipy.signal import istft, stft

    if not 0.7 <= alpha <= 1.3:
        raise ConfigError(f"vtlp alpha must be in 0.7..1.3, got {alpha}")
    x = samples.astype(np.float64)
    if x.size < n_fft:
        return samples.astype(np.float32, copy=True)
    _, _, spec = stft(x, nperseg=n_fft, noverlap=n_fft - hop, boundary="even")
    n_bins = spec.shape[0]
    log_mag = np.log(np.abs(spec) + 1e-8)  # (n_bins, n_frames)
    cep = np.fft.irfft(log_mag, n=n_fft, axis=0)
    cep[lifter : n_fft - lifter + 1] = 0.0
    env = np.fft.rfft(cep, axis=0).real  # smoothed log magnitude
    f = np.arange(n_bins, dtype=np.float64)
    nyq = float(n_bins - 1)
    edge = boundary * nyq * min(alpha, 1.0) / alpha
    # new bin f takes the envelope from source bin g(f) (inverse of the warp)
    warped_at = np.where(
        f <= alpha * edge,
        f / alpha,
        edge + (f - alpha * edge) * (nyq - edge) / max(nyq - alpha * edge, 1e-9),
    )
    lo = np.clip(np.floor(warped_at).astype(np.int64), 0, n_bins - 1)
    hi = np.clip(lo + 1, 0, n_bins - 1)
    frac = (warped_at - lo)[:, None]
    env_w = env[lo] * (1.0 - frac) + env[hi] * frac
    _, out = istft(spec * np.exp(env_w - env), nperseg=n_fft, noverlap=n_fft - hop)
    result = np.zeros(samples.size, dtype=np.float64)
    m = min(out.size, samples.size)
    result[:m] = out[:m]
    return np.clip(result, -1.0, 1.0).astype(np.float32)


def speaker_perturb(
    *, samples: NDArray[np.float32], kind: str, rng: np.random.Generator
) -> NDArray[np.float32]:
    """One random perturbation of kind ``kind`` (``SPEAKER_PERTURBATIONS``) of (n,) audio."""
    if kind == "speed":
        return speed_perturb(samples=samples, factor=float(rng.choice([0.9, 0.95, 1.05, 1.1])))
    if kind == "pitch":
        steps = float(rng.uniform(1.0, 3.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        return pitch_shift(samples=samples, semitones=steps)
    if kind == "vtlp":
        return vtlp(samples=samples, alpha=float(rng.uniform(0.9, 1.1)))
    raise ConfigError(f"unknown perturbation {kind!r} (one of {SPEAKER_PERTURBATIONS})")
