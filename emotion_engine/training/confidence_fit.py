"""Fit the low-confidence check's real-speech statistics (``models/confidence.json``).

    python -m emotion_engine.training.confidence_fit --data ../shared/data --out models/confidence.json

Every speaker of every corpus becomes one stream: their clips (all emotions, at most
``--clips-per-speaker``) in random order with 0.3-0.8 s pauses of quiet noise, as in
the stitched calls, through G.711 mu-law, clean (L16), and with white or brown noise at
5-30 dB SNR then mu-law (a noisy line is still natural speech). The stream's
windows are the engine's (2 s, every 0.5 s, the first after 1 s; the same LLD and
functional code); speech windows (the voice gate) are kept.

Fit: each corpus the same number of windows, features standardised, a Ledoit-Wolf
shrunk covariance, ``whiten`` the Cholesky factor of its inverse (see
``model/confidence.py``). The threshold is the ``--percentile`` of the squared distances
of every corpus's windows under statistics fitted *without* that corpus
(leave-one-corpus-out, each corpus weighted equally), so the false low-confidence
rate it gives is the one on speech from unseen corpora. The synthetic discriminant (a
logistic regression, real vs artificial: espeak-ng speech in the languages of
:data:`ESPEAK_LANGUAGES` and numpy-made melodies and chords, each clean and noisy) gets
its bar the same way. The file records, per corpus, those held-out rates and the
in-sample rate of the final fit. Needs ``espeak-ng`` (``make system-deps``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_ENGINE_PARAMS, MODEL_SAMPLE_RATE_HZ
from emotion_engine.errors import DatasetError
from emotion_engine.features.functionals import FUNCTIONAL_NAMES, compute_functionals
from emotion_engine.features.lld import compute_lld
from emotion_engine.model.confidence import DomainStats, gain_free

log = logging.getLogger(__name__)

CONDITIONS = ("ulaw", "clean", "noisy")
NOISY_SNR_DB = (5.0, 30.0)
"""The ``noisy`` condition: white or brown noise at an SNR drawn from this range, then
mu-law: a noisy phone line is still natural speech, not out of domain."""


def add_noise(
    *, samples: NDArray[np.float32], rng: np.random.Generator, snr_db: float
) -> NDArray[np.float32]:
    """``samples`` (n,) plus white or brown (integrated, high-passed) noise at
    ``snr_db`` below the signal's RMS over its non-silent part."""
    level = np.sqrt(np.mean(np.square(samples[np.abs(samples) > 1e-3]))) if samples.size else 0.0
    noise = rng.normal(0, 1, samples.size)
    if rng.random() < 0.5:
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(80) / 80, mode="same")
    noise *= float(level) / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (-snr_db / 20)
    return (samples + noise).astype(np.float32)


FIRST_WINDOW_FRAMES = 100  # the engine's first window ends after 1 s


def stream_windows(*, samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """The engine's speech windows of one stream: (n,) 8 kHz -> (n_speech, n_features).

    Same geometry and gate as ``engine.pipeline``: ends every ``hop_frames`` from the
    first at 1 s, each ``window_frames`` long (shorter at the start)."""
    from emotion_engine.audio.framing import frame_signal

    fp = DEFAULT_ENGINE_PARAMS.features
    wp = DEFAULT_ENGINE_PARAMS.window
    frames = frame_signal(samples=samples, frame_length=fp.frame_length, hop_length=fp.hop_length)
    lld = compute_lld(frames=frames, params=fp)
    n = lld.shape[0]
    ends = list(range(max(FIRST_WINDOW_FRAMES, wp.hop_frames), n + 1, wp.hop_frames))
    out: list[NDArray[np.float32]] = []
    full = [e for e in ends if e >= wp.window_frames]
    short = [e for e in ends if e < wp.window_frames]
    for e in short:
        out.append(compute_functionals(lld=lld[None, :e])[0][None])
    if full:
        idx = np.asarray(full)[:, None] - wp.window_frames + np.arange(wp.window_frames)
        out.append(compute_functionals(lld=lld[idx]))
    if not out:
        return np.zeros((0, len(FUNCTIONAL_NAMES)), dtype=np.float32)
    feats = np.concatenate(out)
    lengths = np.array([min(e, wp.window_frames) for e in short + full], dtype=np.float64)
    voiced = feats[:, FUNCTIONAL_NAMES.index("voiced_ratio")] * lengths
    return feats[voiced >= wp.min_voiced_frames]


# espeak-ng voices for the synthetic-speech class. The tests speak with voices left out
# here (en-us, de, cmn, fr-fr), so they check voices and languages the fit never saw.
ESPEAK_LANGUAGES: tuple[str, ...] = tuple(
    [
        "af",
        "am",
        "ar",
        "bg",
        "bn",
        "ca",
        "cs",
        "cy",
        "da",
        "el",
        "en",
        "en-gb-x-rp",
        "en-029",
        "eo",
        "es",
        "es-419",
        "et",
        "eu",
        "fa",
        "fi",
        "fr-be",
        "ga",
        "hi",
        "hr",
        "hu",
        "hy",
        "id",
        "is",
        "it",
        "ja",
        "ka",
        "kk",
        "ko",
        "lt",
        "lv",
        "mk",
        "ml",
        "ms",
        "mt",
        "nb",
        "ne",
        "nl",
        "pl",
        "pt",
        "pt-br",
        "ro",
        "ru",
        "sk",
        "sl",
        "sq",
        "sr",
        "sv",
        "sw",
        "ta",
        "te",
        "th",
        "tr",
        "uk",
        "ur",
        "vi",
        "yue",
    ]
)
ESPEAK_VARIANTS: tuple[str, ...] = tuple(
    [
        "m1",
        "m2",
        "m3",
        "m4",
        "m5",
        "m6",
        "m7",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "Alex",
        "Alicia",
        "Andrea",
        "Andy",
        "Annie",
        "Denis",
        "Diogo",
        "Gene",
        "Hugo",
        "Jacky",
        "Lee",
        "Marco",
        "Mario",
        "Michael",
        "Mike",
        "Nguyen",
        "Storm",
        "adam",
        "anika",
        "announcer",
        "antonio",
        "aunty",
        "belinda",
        "benjamin",
        "boris",
        "caleb",
        "david",
        "ed",
    ]
)
ESPEAK_SENTENCES: tuple[str, ...] = (
    "Hello, I am calling about my bill.",
    "I think there was a mistake on last month's invoice.",
    "Could you please check my account for me?",
    "I have been waiting for twenty minutes.",
    "My internet connection keeps dropping every evening.",
    "This is the third time I am calling about this.",
    "Thank you, that is very helpful.",
    "I would like to cancel my subscription.",
    "Can you tell me when the technician will arrive?",
    "The package never arrived and nobody answers my emails.",
    "Yes, my date of birth is the fourth of July.",
    "I am not happy with how this has been handled.",
    "Please transfer me to someone who can actually help.",
    "Okay, I understand, let me write that down.",
    "Why was I charged twice for the same order?",
    "The number is zero seven nine one two three four.",
)


def espeak_utterances(*, seed: int, per_language: int = 2) -> list[NDArray[np.float32]]:
    """Synthetic speech: ``per_language`` utterances (four sentences) per language of
    :data:`ESPEAK_LANGUAGES`, random voice variant, rate, pitch and word gap; 8 kHz.
    Raises DatasetError when ``espeak-ng`` is missing (``make system-deps``)."""
    import random
    import shutil
    import subprocess
    import tempfile

    from emotion_engine.training.data import read_clip

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetError("espeak-ng is not installed (make system-deps)")
    rnd = random.Random(seed)
    out: list[NDArray[np.float32]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang in ESPEAK_LANGUAGES:
            for k in range(per_language):
                variant = rnd.choice((*ESPEAK_VARIANTS, ""))
                voice = lang + (f"+{variant}" if variant else "")
                wav = Path(tmp) / f"{lang}_{k}.wav"
                args = [
                    exe,
                    "-v",
                    voice,
                    "-s",
                    str(rnd.randint(120, 220)),
                    "-p",
                    str(rnd.randint(20, 90)),
                    "-g",
                    str(rnd.randint(0, 8)),
                    "-w",
                    str(wav),
                    " ".join(rnd.sample(ESPEAK_SENTENCES, 4)),
                ]
                if subprocess.run(args, capture_output=True, check=False).returncode == 0:
                    out.append(read_clip(wav))
    return out


def synthetic_music(*, seed: int, n: int = 40, seconds: float = 8.0) -> list[NDArray[np.float32]]:
    """Melodies and chord sequences of harmonic tones (random timbre, note lengths,
    vibrato), ``n`` pieces of ``seconds`` at 8 kHz: music-on-hold stand-ins."""
    rng = np.random.default_rng(seed)
    sr = MODEL_SAMPLE_RATE_HZ
    out: list[NDArray[np.float32]] = []
    for _ in range(n):
        notes: list[NDArray[np.float64]] = []
        total = 0
        decay = rng.uniform(0.5, 2.0)
        n_harm = int(rng.integers(3, 12))
        while total < seconds * sr:
            dur = rng.uniform(0.1, 0.8)
            t = np.arange(int(dur * sr)) / sr
            voices = int(rng.integers(1, 5))
            root = 110.0 * 2.0 ** (rng.integers(0, 24) / 12)
            vib = rng.uniform(0, 0.01) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
            note = np.zeros(t.size)
            for v in range(voices):
                f0 = root * 2.0 ** (int(rng.choice([0, 3, 4, 7, 10, 12])) * (v > 0) / 12)
                phase = 2 * np.pi * f0 * np.cumsum(1 + vib) / sr
                note += sum(np.sin(h * phase) / h**decay for h in range(1, n_harm + 1))
            env = np.minimum(1.0, t / 0.02) * np.exp(-t * rng.uniform(0, 4))
            notes.append(note * env)
            total += t.size
        x = np.concatenate(notes)
        out.append((0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32))
    return out


def artificial_windows(*, seed: int, cache: Path | None = None) -> NDArray[np.float32]:
    """Speech windows of synthetic speech and music, each at random gain, once clean,
    once with noise at 5-30 dB SNR, through G.711 mu-law or A-law: (n, n_features)."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if tuple(z["names"]) == FUNCTIONAL_NAMES:
                cached: NDArray[np.float32] = z["x"]
                return cached
    from emotion_engine.training.augment import g711_roundtrip

    rng = np.random.default_rng(seed)
    pieces = espeak_utterances(seed=seed) + synthetic_music(seed=seed)
    out: list[NDArray[np.float32]] = []
    for samples in pieces:
        for noisy in (False, True):
            y = samples * np.float32(rng.uniform(0.05, 1.0))
            if noisy:
                y = add_noise(samples=y, rng=rng, snr_db=float(rng.uniform(*NOISY_SNR_DB)))
            law = "alaw" if rng.random() < 0.3 else "ulaw"
            out.append(stream_windows(samples=g711_roundtrip(samples=np.clip(y, -1, 1), law=law)))
    x = np.concatenate(out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, names=np.asarray(FUNCTIONAL_NAMES))
    return x


def _speaker_streams(
    data_dir: Path, *, clips_per_speaker: int, seed: int
) -> list[tuple[str, str, NDArray[np.float32]]]:
    """(corpus, speaker, stream) for every speaker under ``data_dir``."""
    from emotion_engine.training.data import read_clip

    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, NDArray[np.float32]]] = []
    for labels in sorted(data_dir.glob("*/labels.csv")):
        corpus = labels.parent.name
        by_speaker: dict[str, list[str]] = {}
        with labels.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                by_speaker.setdefault(row["speaker"], []).append(row["file"])
        for speaker, files in sorted(by_speaker.items()):
            order = rng.permutation(len(files))[:clips_per_speaker]
            parts: list[NDArray[np.float32]] = []
            for i in order:
                parts.append(read_clip(labels.parent / files[i]))
                pause = int(rng.uniform(0.3, 0.8) * MODEL_SAMPLE_RATE_HZ)
                parts.append(rng.normal(0, 1e-4, pause).astype(np.float32))
            out.append((corpus, speaker, np.concatenate(parts)))
        log.info("%s: %d speakers", corpus, len(by_speaker))
    if not out:
        raise DatasetError(f"no */labels.csv under {data_dir}")
    return out


def corpus_windows(
    data_dir: Path, *, clips_per_speaker: int = 150, seed: int = 0, cache: Path | None = None
) -> tuple[NDArray[np.float32], NDArray[np.str_], NDArray[np.str_], NDArray[np.int64]]:
    """Speech-window features of every corpus and condition, in stream order: (n,
    n_features) features, (n,) corpus names, (n,) condition names, (n,) stream ids.
    Cached in ``cache`` (an .npz) when given."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if tuple(z["names"]) == FUNCTIONAL_NAMES and "stream" in z:
                return z["x"], z["corpus"], z["condition"], z["stream"]
    from emotion_engine.training.augment import g711_roundtrip

    xs: list[NDArray[np.float32]] = []
    corpora: list[str] = []
    conditions: list[str] = []
    stream_ids: list[NDArray[np.int64]] = []
    rng = np.random.default_rng(seed + 1)
    streams = _speaker_streams(data_dir, clips_per_speaker=clips_per_speaker, seed=seed)
    for k, (corpus, _speaker, samples) in enumerate(streams):
        for condition in CONDITIONS:
            s = samples
            if condition == "noisy":
                s = add_noise(samples=samples, rng=rng, snr_db=float(rng.uniform(*NOISY_SNR_DB)))
            if condition != "clean":
                s = g711_roundtrip(samples=np.clip(s, -1, 1), law="ulaw")
            w = stream_windows(samples=s)
            xs.append(w)
            corpora += [corpus] * len(w)
            conditions += [condition] * len(w)
            stream_ids.append(np.full(len(w), len(stream_ids), dtype=np.int64))
        if k % 20 == 0:
            log.info("stream %d/%d", k + 1, len(streams))
    x = np.concatenate(xs)
    corpus_arr = np.asarray(corpora)
    condition_arr = np.asarray(conditions)
    stream = np.concatenate(stream_ids)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            x=x,
            corpus=corpus_arr,
            condition=condition_arr,
            stream=stream,
            names=np.asarray(FUNCTIONAL_NAMES),
        )
    return x, corpus_arr, condition_arr, stream


def _balanced(
    corpus: NDArray[np.str_], *, per_corpus: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    idx = []
    for c in np.unique(corpus):
        rows = np.flatnonzero(corpus == c)
        idx.append(rng.choice(rows, size=min(per_corpus, rows.size), replace=False))
    return np.sort(np.concatenate(idx))


def fit_whitening(x: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(n, k) rows -> ``mean`` (k,), ``whiten`` (k, k): ``||(x - mean) @ whiten||^2`` is the
    squared Mahalanobis distance under a Ledoit-Wolf shrunk covariance of the
    standardised features."""
    from sklearn.covariance import LedoitWolf

    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0)
    scale = x64.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    cov = LedoitWolf().fit((x64 - mean) / scale).covariance_
    chol = np.linalg.cholesky(np.linalg.inv(cov))  # inv = chol @ chol.T
    return mean, chol / scale[:, None]


def _distance(
    x: NDArray[np.floating], mean: NDArray[np.float64], whiten: NDArray[np.float64]
) -> NDArray[np.float64]:
    w = (np.asarray(x, dtype=np.float64) - mean) @ whiten
    out: NDArray[np.float64] = np.einsum("ij,ij->i", w, w)
    return out


def fit_discriminant(
    real: NDArray[np.floating], artificial: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float]:
    """Logistic regression, real (0) vs artificial (1), classes weighted equally, on
    standardised (n, k) rows: returns ``mean``, ``scale``, ``coef`` (k,), ``intercept``."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([real, artificial]).astype(np.float64)
    y = np.r_[np.zeros(len(real)), np.ones(len(artificial))]
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")
    lr.fit((x - mean) / scale, y)
    return mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def _score(x: NDArray[np.float64], d: tuple[Any, ...]) -> NDArray[np.float64]:
    mean, scale, coef, intercept = d
    return np.asarray(((x - mean) / scale) @ coef + intercept)


def _equal_weight_percentile(values: dict[str, NDArray[np.float64]], q: float) -> float:
    """The ``q`` percentile of the pooled values, each group weighing the same."""
    names = sorted(values)
    pooled = np.concatenate([values[c] for c in names])
    weights = np.concatenate([np.full(values[c].size, 1.0 / values[c].size) for c in names])
    order = np.argsort(pooled)
    cdf = np.cumsum(weights[order]) / weights.sum()
    at = min(int(np.searchsorted(cdf, q / 100.0)), pooled.size - 1)
    return float(pooled[order][at])


def fit(
    *,
    x: NDArray[np.floating],
    corpus: NDArray[np.str_],
    condition: NDArray[np.str_],
    artificial: NDArray[np.floating] | None = None,
    percentile: float = 99.5,
    per_corpus: int = 8000,
    seed: int = 0,
) -> DomainStats:
    """The statistics, the synthetic discriminant (when ``artificial`` rows are given)
    and their thresholds (see the module docstring), with per-corpus rates."""
    from emotion_engine.model.confidence import Discriminant

    rng = np.random.default_rng(seed)
    columns = gain_free(FUNCTIONAL_NAMES)
    xc = np.asarray(x, dtype=np.float64)[:, columns]
    xa = None if artificial is None else np.asarray(artificial, dtype=np.float64)[:, columns]
    names = [str(c) for c in np.unique(corpus)]
    held_d2: dict[str, NDArray[np.float64]] = {}
    held_art: dict[str, NDArray[np.float64]] = {}
    for c in names:
        train = np.flatnonzero(corpus != c)
        pick = train[_balanced(corpus[train], per_corpus=per_corpus, rng=rng)]
        mean, whiten = fit_whitening(xc[pick])
        held_d2[c] = _distance(xc[corpus == c], mean, whiten)
        if xa is not None:
            held_art[c] = _score(xc[corpus == c], fit_discriminant(xc[pick], xa))
    threshold = _equal_weight_percentile(held_d2, percentile)
    pick = _balanced(corpus, per_corpus=per_corpus, rng=rng)
    mean, whiten = fit_whitening(xc[pick])
    in_d2 = _distance(xc, mean, whiten)
    synthetic = None
    in_art = np.full(len(xc), -np.inf)
    art_threshold = np.inf
    if xa is not None:
        art_threshold = _equal_weight_percentile(held_art, percentile)
        disc = fit_discriminant(xc[pick], xa)
        synthetic = Discriminant(*disc, threshold=art_threshold)
        in_art = _score(xc, disc)
        flagged_artificial = float(np.mean(_score(xa, disc) > art_threshold))
    rates: dict[str, Any] = {}
    for c in names:
        mine = corpus == c
        held_low = held_d2[c] > threshold
        if xa is not None:
            held_low = held_low | (held_art[c] > art_threshold)
        rates[c] = {
            "windows": int(mine.sum()),
            "held_out_low_rate": float(np.mean(held_low)),
            "held_out_distance_rate": float(np.mean(held_d2[c] > threshold)),
            "held_out_synthetic_rate": (
                float(np.mean(held_art[c] > art_threshold)) if xa is not None else None
            ),
            "in_sample_low_rate": float(
                np.mean((in_d2[mine] > threshold) | (in_art[mine] > art_threshold))
            ),
            "by_condition_held_out": {
                str(k): float(np.mean(held_low[condition[mine] == k]))
                for k in np.unique(condition[mine])
            },
        }
    info: dict[str, Any] = {
        "percentile": percentile,
        "per_corpus_windows_fitted": per_corpus,
        "conditions": list(CONDITIONS),
        "false_low_confidence": rates,
        "note": "real-speech windows flagged low confidence (distance or synthetic): "
        "held_out = statistics fitted without that corpus (what an unseen voice and "
        "language gets), in_sample = the shipped statistics",
    }
    if xa is not None:
        info["artificial_windows"] = len(xa)
        info["artificial_flagged_in_sample"] = flagged_artificial
    return DomainStats(
        feature_names=tuple(FUNCTIONAL_NAMES),
        columns=tuple(columns),
        mean=mean,
        whiten=whiten,
        threshold_d2=threshold,
        synthetic=synthetic,
        info=info,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("models/confidence.json"))
    ap.add_argument("--percentile", type=float, default=99.5)
    ap.add_argument("--clips-per-speaker", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(".cache/confidence_windows.npz"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, corpus, condition, _ = corpus_windows(
        args.data, clips_per_speaker=args.clips_per_speaker, seed=args.seed, cache=args.cache
    )
    artificial = artificial_windows(
        seed=args.seed, cache=args.cache.with_name(args.cache.stem + "_artificial.npz")
    )
    stats = fit(
        x=x,
        corpus=corpus,
        condition=condition,
        artificial=artificial,
        percentile=args.percentile,
        seed=args.seed,
    )
    stats = DomainStats(
        stats.feature_names,
        stats.columns,
        stats.mean,
        stats.whiten,
        stats.threshold_d2,
        stats.synthetic,
        {
            **stats.info,
            "command": "python -m emotion_engine.training.confidence_fit "
            f"--data {args.data} --percentile {args.percentile} "
            f"--clips-per-speaker {args.clips_per_speaker} --seed {args.seed}",
        },
    )
    stats.save(args.out)
    for c, r in stats.info["false_low_confidence"].items():
        print(
            f"{c:8s} windows {r['windows']:6d}  held-out low {100 * r['held_out_low_rate']:.2f} %"
            f"  in-sample low {100 * r['in_sample_low_rate']:.2f} %"
            f"  (held-out distance {100 * r['held_out_distance_rate']:.2f} %,"
            f" synthetic {100 * (r['held_out_synthetic_rate'] or 0):.2f} %)"
        )
    print(
        f"threshold_d2 {stats.threshold_d2:.1f}; artificial windows flagged (in sample) "
        f"{stats.info.get('artificial_flagged_in_sample')} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
