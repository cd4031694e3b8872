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
