"""Test conditions of the evaluation harness: the telephone channel's realistic faults.

Kept apart from ``augment.py`` (the training augmentation) so that adding a harness
condition does not change the feature cache key of the training and test features.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError
from emotion_engine.training.augment import add_noise, band_limit, g711_roundtrip


def packet_loss(
    *,
    samples: NDArray[np.float32],
    loss_rate: float,
    rng: np.random.Generator,
    packet_samples: int = 160,
) -> NDArray[np.float32]:
    """Drop 20 ms packets at random and conceal the gaps as the engine's RTP path does.

    ``samples``: (n,) float32 at 8 kHz (already through the codec). Each packet after
    the first is lost with probability ``loss_rate``; the survivors go through the
    engine's own :class:`~emotion_engine.ingest.jitter.JitterBuffer`, whose concealment
    (last packet repeated at half level, then silence) fills the gaps. Returns (n,).
    """
    from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32
    from emotion_engine.ingest.jitter import JitterBuffer

    if not 0.0 <= loss_rate < 1.0:
        raise ConfigError(f"loss_rate must be in [0, 1), got {loss_rate}")
    pcm = float32_to_int16(samples)
    buffer = JitterBuffer()
    out: list[NDArray[np.int16]] = []
    n_packets = -(-pcm.size // packet_samples)
    lost = rng.random(n_packets) < loss_rate
    lost[0] = False  # the buffer's timeline starts at the first packet it receives
    for k in np.flatnonzero(~lost):
        start = int(k) * packet_samples
        released = buffer.push(int(k) & 0xFFFF, start, pcm[start : start + packet_samples])
        out += [p for _, p in released]
    out += [p for _, p in buffer.flush()]
    played = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    # trailing lost packets are never filled (nothing follows them): silence, as on a call
    result = np.zeros(pcm.size, dtype=np.int16)
    result[: min(played.size, pcm.size)] = played[: pcm.size]
    return int16_to_float32(result)


HARNESS_CONDITIONS: dict[str, str] = {
    "mulaw": "G.711 mu-law round trip",
    "alaw": "G.711 A-law round trip",
    "loss": "mu-law, 1-5 % of 20 ms packets lost, concealed by the engine's jitter buffer",
    "noise": "white Gaussian noise at 10-20 dB SNR (active speech level), then mu-law",
    "level": "level change of -20..+6 dB (clipped at full scale), then mu-law",
    "band": "300-3400 Hz 4th-order Butterworth band-pass, then mu-law",
}
"""Test conditions of the evaluation harness (``evaluate --harness``); each clip draws
its own values from its seeded generator."""


def harness_condition(
    *, samples: NDArray[np.float32], condition: str, rng: np.random.Generator
) -> NDArray[np.float32]:
    """One harness test condition (``HARNESS_CONDITIONS``) of (n,) float32 8 kHz audio."""
    if condition == "mulaw":
        return g711_roundtrip(samples=samples, law="ulaw")
    if condition == "alaw":
        return g711_roundtrip(samples=samples, law="alaw")
    if condition == "loss":
        coded = g711_roundtrip(samples=samples, law="ulaw")
        return packet_loss(samples=coded, loss_rate=float(rng.uniform(0.01, 0.05)), rng=rng)
    if condition == "noise":
        noisy = add_noise(samples=samples, snr_db=float(rng.uniform(10.0, 20.0)), rng=rng)
        return g711_roundtrip(samples=noisy, law="ulaw")
    if condition == "level":
        gain = 10.0 ** (float(rng.uniform(-20.0, 6.0)) / 20.0)
        return g711_roundtrip(samples=(samples * gain).astype(np.float32), law="ulaw")
    if condition == "band":
        return g711_roundtrip(samples=band_limit(samples=samples), law="ulaw")
    raise ConfigError(
        f"unknown harness condition {condition!r} (one of {list(HARNESS_CONDITIONS)})"
    )
