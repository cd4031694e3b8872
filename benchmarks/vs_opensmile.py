"""Our features versus openSMILE eGeMAPS LLDs and a librosa implementation, same audio.

    python -m benchmarks.vs_opensmile [--quick] [--seconds 30]

One run, one core, the same 8 kHz speech (the bundled demo call) for everyone; each
timing is the least CPU time of a few repeats:

- ``opensmile_egemaps_lld``: ``opensmile.Smile(eGeMAPSv02, LowLevelDescriptors)
  .process_signal`` (25 LLDs every 10 ms; a benchmark-only dependency).
- ``librosa``: the same descriptors as ours written with librosa, "what a user would
  write": ``librosa.pyin`` for F0 and voicing, ``librosa.feature`` rms, centroid,
  flatness, zero crossings, mel spectrogram (loudness), MFCC; spectral slope, alpha
  ratio and Hammarberg index from the STFT; HNR from the autocorrelation at the pyin
  period.
- ``ours_lld``: ``frame_signal`` + ``compute_lld`` over the whole signal (one batch).
- ``ours_features``: the same plus window functionals every 0.5 s (2 s windows).
- ``ours_engine_batched``: features + model + detector, the live engine with
  ``--legs`` legs each streaming this audio in 20 ms chunks, ``process`` every
  100 ms; per leg-second of audio.

Speed ratios are ``their CPU time / ours`` per second of audio. Target (issue 5):
features + model + detection batched >= 20x openSMILE eGeMAPS LLD extraction.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks._common import (
    TICK_CHUNKS,
    add_common_arguments,
    best_cpu_s,
    demo_pcm,
    emit,
    format_table,
    open_legs,
    pin_to_one_core,
    progress,
    stream_ticks,
    target,
)

NAME = "vs_opensmile"
SR = 8000
HOP = 80
FRAME = 200
N_FFT = 256


def opensmile_lld(*, samples: NDArray[np.float32]) -> object:
    """eGeMAPS v02 LLDs of ``samples`` (n,) at 8 kHz: a (n_frames, 25) DataFrame."""
    return _smile().process_signal(samples, SR)


_SMILE: list[Any] = []


def _smile() -> Any:
    import opensmile

    if not _SMILE:
        _SMILE.append(
            opensmile.Smile(
                feature_set=opensmile.FeatureSet.eGeMAPSv02,
                feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
            )
        )
    return _SMILE[0]


def librosa_lld(*, samples: NDArray[np.float32]) -> NDArray[np.float64]:
    """Our descriptors written with librosa: (n,) at 8 kHz -> (n_frames, 26)."""
    import librosa

    y = np.asarray(samples, dtype=np.float32)
    f0, voiced, voiced_prob = librosa.pyin(
        y, fmin=70.0, fmax=400.0, sr=SR, frame_length=2 * FRAME, hop_length=HOP, center=False
    )
    stft = librosa.stft(y, n_fft=N_FFT, hop_length=HOP, win_length=FRAME, center=False)
    power = np.abs(stft) ** 2
    n = min(power.shape[1], f0.shape[0])
    power, f0, voiced, voiced_prob = power[:, :n], f0[:n], voiced[:n], voiced_prob[:n]
    magnitude = np.sqrt(power)
    rms = librosa.feature.rms(y=y, frame_length=FRAME, hop_length=HOP, center=False)[0, :n]
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=SR, n_fft=N_FFT)[0]
    flatness = librosa.feature.spectral_flatness(S=magnitude)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=FRAME, hop_length=HOP, center=False)[
        0, :n
    ]
    mel = librosa.feature.melspectrogram(S=power, sr=SR, n_fft=N_FFT, n_mels=26, fmax=SR / 2)
    loudness = (mel**0.3).sum(axis=0)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=13)
    freqs = librosa.fft_frequencies(sr=SR, n_fft=N_FFT)
    log_power = 10.0 * np.log10(np.maximum(power, 1e-10))
    slope = np.polyfit(freqs[1:] / 1000.0, log_power[1:], 1)[0]
    low = power[(freqs >= 50) & (freqs < 1000)].sum(axis=0) + 1e-10
    high = power[freqs >= 1000].sum(axis=0) + 1e-10
    alpha = 10.0 * np.log10(high / low)
    hammarberg = 10.0 * np.log10(
        (power[freqs <= 2000].max(axis=0) + 1e-10) / (power[freqs > 2000].max(axis=0) + 1e-10)
    )
    frames = librosa.util.frame(y, frame_length=FRAME, hop_length=HOP, axis=0)[:n]
    acf = librosa.autocorrelate(frames - frames.mean(axis=1, keepdims=True), axis=1)
    lag = np.clip(np.round(SR / np.nan_to_num(f0, nan=100.0)).astype(int), 1, FRAME - 1)
    r = np.take_along_axis(acf, lag[:, None], axis=1)[:, 0] / np.maximum(acf[:, 0], 1e-12)
    r = np.clip(r, 1e-3, 1 - 1e-3)
    hnr = 10.0 * np.log10(r / (1.0 - r))
    peak = np.abs(frames).max(axis=1)
    rms_db = 20.0 * np.log10(np.maximum(rms, 1e-5))
    return np.column_stack(
        [
            np.nan_to_num(f0),
            voiced_prob,
            voiced,
            rms_db,
            loudness,
            hnr,
            centroid,
            slope,
            flatness,
            alpha,
            hammarberg,
            zcr,
            peak,
            mfcc.T,
        ]
    )


def ours_lld(*, samples: NDArray[np.float32]) -> NDArray[np.float32]:
    from emotion_engine.audio.framing import frame_signal
    from emotion_engine.features.lld import compute_lld

    return compute_lld(frames=frame_signal(samples=samples))


def ours_features(*, samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """LLDs, then functionals of every 2 s window, one every 0.5 s: (n_windows, n_features)."""
    from emotion_engine.features.functionals import compute_functionals

    lld = ours_lld(samples=samples)
    starts = np.arange(0, lld.shape[0] - 200 + 1, 50)
    windows = lld[starts[:, None] + np.arange(200)]  # (n_windows, 200, n_lld)
    return compute_functionals(lld=windows)


def engine_cost_per_audio_s(*, pcm: NDArray[np.int16], n_legs: int) -> float:
    """CPU seconds per leg-second for the live engine, ``n_legs`` legs streaming ``pcm``."""
    from emotion_engine.audio.g711 import ulaw_encode
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import EmotionModel

    n_chunks = pcm.size // 160
    codes = ulaw_encode(pcm[: n_chunks * 160]).reshape(n_chunks, 160)
    engine = Engine(model=EmotionModel.load())
    call_ids = open_legs(engine, n_legs=n_legs)
    offsets = np.zeros(n_legs, dtype=np.int64)  # every leg the same audio
    n_ticks = n_chunks // TICK_CHUNKS
    start = time.process_time()
    stream_ticks(
        engine, call_ids=call_ids, offsets=offsets, codes=codes, first_tick=0, n_ticks=n_ticks
    )
    engine.close_all()
    cpu = time.process_time() - start
    return cpu / (n_legs * n_ticks * TICK_CHUNKS * 0.02)


def run(*, seconds: float, repeats: int, legs: int) -> dict[str, Any]:
    cpu = pin_to_one_core()
    pcm = demo_pcm()[: int(seconds * SR)]
    samples = (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    audio_s = samples.size / SR
    warnings.filterwarnings("ignore", category=UserWarning)
    for fn in (ours_lld, opensmile_lld):  # tables, shared libraries, first-call costs
        fn(samples=samples[: 2 * SR])
    cost: dict[str, float] = {}
    progress(NAME, f"cpu {cpu}: {audio_s:g} s of audio, best of {repeats}")
    cost["ours_lld"] = best_cpu_s(lambda: ours_lld(samples=samples), repeats=repeats) / audio_s
    cost["ours_features"] = (
        best_cpu_s(lambda: ours_features(samples=samples), repeats=repeats) / audio_s
    )
    progress(NAME, "openSMILE eGeMAPS LLD")
    cost["opensmile_egemaps_lld"] = (
        best_cpu_s(lambda: opensmile_lld(samples=samples), repeats=repeats) / audio_s
    )
    progress(NAME, f"engine, {legs} legs batched")
    cost["ours_engine_batched"] = min(
        engine_cost_per_audio_s(pcm=pcm, n_legs=legs) for _ in range(max(1, repeats - 1))
    )
    progress(NAME, "librosa (pyin is slow: one repeat)")
    cost["librosa"] = best_cpu_s(lambda: librosa_lld(samples=samples), repeats=1) / audio_s
    opensmile = cost["opensmile_egemaps_lld"]
    ratios = {
        "opensmile_lld / ours_lld": opensmile / cost["ours_lld"],
        "opensmile_lld / ours_features": opensmile / cost["ours_features"],
        "opensmile_lld / ours_engine_batched": opensmile / cost["ours_engine_batched"],
        "librosa / ours_lld": cost["librosa"] / cost["ours_lld"],
        "librosa / opensmile_lld": cost["librosa"] / opensmile,
    }
    engine_ratio = ratios["opensmile_lld / ours_engine_batched"]
    return {
        "cpu": cpu,
        "audio_s": audio_s,
        "repeats": repeats,
        "engine_legs": legs,
        "cpu_ms_per_audio_s": {k: round(v * 1e3, 3) for k, v in cost.items()},
        "audio_s_per_cpu_s": {k: round(1.0 / v, 1) for k, v in cost.items()},
        "speed_ratios": {k: round(v, 2) for k, v in ratios.items()},
        "targets": [
            target(
                "features + model + detection (batched) vs openSMILE eGeMAPS LLD",
                goal=">= 20x",
                value=round(engine_ratio, 2),
                met=engine_ratio >= 20,
            ),
            target(
                "LLD extraction vs openSMILE eGeMAPS LLD",
                goal="(no target; like for like)",
                value=round(ratios["opensmile_lld / ours_lld"], 2),
                met=None,
            ),
        ],
    }


def table(result: dict[str, Any]) -> str:
    ours = result["cpu_ms_per_audio_s"]["ours_lld"]
    rows = [
        [name, ms, result["audio_s_per_cpu_s"][name], round(ms / ours, 2)]
        for name, ms in sorted(result["cpu_ms_per_audio_s"].items(), key=lambda kv: kv[1])
    ]
    return (
        format_table(["extractor", "CPU ms / audio s", "audio s / CPU s", "x ours_lld time"], rows)
        + "\n\n"
        + "\n".join(f"{k}: {v}x" for k, v in result["speed_ratios"].items())
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default 30)")
    parser.add_argument("--legs", type=int, default=20, help="legs for the engine run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    result = run(seconds=seconds, repeats=2 if args.quick else 3, legs=args.legs)
    emit(NAME, result, args=args, table=table(result), started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
