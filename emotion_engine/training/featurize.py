"""Clip features with an on-disk cache, so re-running train/evaluate costs seconds.

Each clip is read, degraded (``condition``: ``"test"`` = G.711 mu-law round trip,
``"train"`` = random telephony augmentation seeded per clip) and turned into one feature
vector by an extractor (the engine's ``extract_clip_features`` or the eGeMAPS baseline).

The cache file is ``<cache_dir>/<extractor>-<condition>-<key>.npz`` where ``key`` hashes
the source code of the feature, audio-codec and augmentation modules, the augmentation
parameters, the seed and the file list (paths, sizes, mtimes): any change recomputes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import (
    DEFAULT_FEATURE_PARAMS,
    DEFAULT_WINDOW_PARAMS,
    FeatureParams,
    WindowParams,
)
from emotion_engine.errors import ConfigError, DatasetError
from emotion_engine.training.augment import (
    DEFAULT_AUGMENT_PARAMS,
    SPEAKER_PERTURBATIONS,
    AugmentParams,
    speaker_perturb,
    telephone_channel,
    telephony_augment,
)
from emotion_engine.training.data import Clip, read_clip
from emotion_engine.training.harness_audio import HARNESS_CONDITIONS, harness_condition

log = logging.getLogger(__name__)

CONDITIONS: tuple[str, ...] = (
    "test",
    "train",
    *(f"aug-{k}" for k in SPEAKER_PERTURBATIONS),
    *(f"harness-{c}" for c in HARNESS_CONDITIONS),
)
"""``test``: mu-law (the card's condition); ``train``: random telephony augmentation;
``aug-<kind>``: a speaker perturbation (``augment.SPEAKER_PERTURBATIONS``) then the
random telephony augmentation; ``harness-<name>``: one of the evaluation harness's
degradations (seeded per clip)."""
Extractor = Callable[[NDArray[np.float32]], NDArray[np.float32]]

_PACKAGE = Path(__file__).resolve().parents[1]
_AUDIO_CODE: tuple[str, ...] = (
    "audio/g711.py",
    "audio/pcm.py",
    "audio/resample.py",
    "training/augment.py",
)
_HARNESS_CODE: tuple[str, ...] = ("training/harness_audio.py", "ingest/jitter.py")
"""Hashed only into harness conditions' keys, so the main caches survive harness work."""
_FEATURE_CODE: tuple[str, ...] = ("features", "config.py")


def default_cache_dir() -> Path:
    """``$EMOTION_ENGINE_CACHE/features`` or ``./.cache/features``."""
    return Path(os.environ.get("EMOTION_ENGINE_CACHE", ".cache")) / "features"


def code_version(*, engine_features: bool = True) -> str:
    """Hash of the source files whose change alters features (12 hex digits).

    ``engine_features=False`` leaves out the engine's feature code (for an external
    extractor such as the eGeMAPS baseline, whose cache must survive feature work).
    """
    h = hashlib.sha256()
    for rel in _AUDIO_CODE + (_FEATURE_CODE if engine_features else ()):
        path = _PACKAGE / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(_PACKAGE)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def engine_extractor() -> tuple[Extractor, tuple[str, ...]]:
    """The engine's own clip features and their names (the shipped model's input)."""
    from emotion_engine.features import extract_clip_features
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES

    def extract(samples: NDArray[np.float32]) -> NDArray[np.float32]:
        return extract_clip_features(samples=samples)

    return extract, tuple(FUNCTIONAL_NAMES)


def clip_rng_tag(clip: Clip) -> int:
    return zlib.crc32(f"{clip.corpus}/{clip.path.name}".encode())


def clip_rng(*, seed: int, clip: Clip) -> np.random.Generator:
    """Per-clip generator: a clip's augmentation does not depend on which others are loaded."""
    return np.random.default_rng([seed, clip_rng_tag(clip)])


def condition_rng(*, condition: str, seed: int, clip: Clip) -> np.random.Generator | None:
    """The generator a clip's ``condition`` draws from (``None`` for ``test``)."""
    if condition == "test":
        return None
    if condition == "train":
        return clip_rng(seed=seed, clip=clip)
    # every other condition: its own stream per clip
    return np.random.default_rng([seed, zlib.crc32(condition.encode()), clip_rng_tag(clip)])


def degrade(
    *,
    samples: NDArray[np.float32],
    condition: str,
    rng: np.random.Generator | None = None,
    params: AugmentParams = DEFAULT_AUGMENT_PARAMS,
) -> NDArray[np.float32]:
    """Apply ``condition`` (``"test"`` or ``"train"``) to (n,) float32 8 kHz samples."""
    if condition == "test":
        return telephone_channel(samples=samples)
    if condition == "train":
        if rng is None:
            raise ConfigError("condition 'train' needs an rng")
        return telephony_augment(samples=samples, rng=rng, params=params)
    if condition.startswith("aug-"):
        if rng is None:
            raise ConfigError(f"condition {condition!r} needs an rng")
        perturbed = speaker_perturb(samples=samples, kind=condition[4:], rng=rng)
        return telephony_augment(samples=perturbed, rng=rng, params=params)
    if condition.startswith("harness-"):
        if rng is None:
            raise ConfigError(f"condition {condition!r} needs an rng")
        return harness_condition(samples=samples, condition=condition[8:], rng=rng)
    raise ConfigError(f"unknown condition {condition!r} (expected one of {CONDITIONS})")


def cache_key(
    *,
    clips: Sequence[Clip],
    condition: str,
    seed: int,
    extractor_id: str,
    params: AugmentParams = DEFAULT_AUGMENT_PARAMS,
) -> str:
    h = hashlib.sha256()
    version = code_version(engine_features=extractor_id == "engine")
    h.update(f"{extractor_id}|{version}|{condition}|{params!r}".encode())
    if condition != "test":
        h.update(str(seed).encode())
    if condition.startswith("harness-"):
        for rel in _HARNESS_CODE:
            h.update((_PACKAGE / rel).read_bytes())
    for c in clips:
        try:
            st = c.path.stat()
            h.update(f"{c.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError as exc:
            raise DatasetError(f"audio file missing: {c.path}") from exc
    return h.hexdigest()[:16]


def featurize(
    *,
    clips: Sequence[Clip],
    condition: str,
    seed: int = 0,
    extractor: Extractor | None = None,
    extractor_id: str = "engine",
    params: AugmentParams = DEFAULT_AUGMENT_PARAMS,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> NDArray[np.float32]:
    """(n_clips, n_features) float32 features of ``clips`` under ``condition``.

    ``extractor``: (n,) float32 -> (n_features,) float32; default the engine's.
    Results are cached under ``cache_dir`` (default :func:`default_cache_dir`).
    """
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown condition {condition!r} (expected one of {CONDITIONS})")
    if extractor is None:
        extractor, _ = engine_extractor()
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    key = cache_key(
        clips=clips, condition=condition, seed=seed, extractor_id=extractor_id, params=params
    )
    path = cache_dir / f"{extractor_id}-{condition}-{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            features: NDArray[np.float32] = cached["features"]
        log.info("features from cache %s", path)
        return features

    from tqdm import tqdm

    rows: list[NDArray[np.float32]] = []
    for clip in tqdm(
        clips, desc=f"{extractor_id} features ({condition})", unit="clip", disable=not progress
    ):
        samples = read_clip(clip.path)
        rng = condition_rng(condition=condition, seed=seed, clip=clip)
        audio = degrade(samples=samples, condition=condition, rng=rng, params=params)
        rows.append(np.asarray(extractor(audio), dtype=np.float32))
    features = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    if not np.all(np.isfinite(features)):
        bad = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
        raise DatasetError(
            f"{extractor_id} features are not finite for {len(bad)} clip(s), "
            f"first {clips[int(bad[0])].path}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features)
    tmp.replace(path)
    return features


def window_bounds(
    *, n_frames: int, window: WindowParams = DEFAULT_WINDOW_PARAMS
) -> list[tuple[int, int]]:
    """(start, end) LLD frame ranges of the windows the live engine scores for a leg of
    ``n_frames`` frames that then hangs up: the first window ends after
    ``MIN_FIRST_WINDOW_FRAMES`` (1 s), then one every hop, each at most
    ``window.window_frames`` long, and a last one over a tail of at least
    ``MIN_TAIL_WINDOW_FRAMES`` (``engine/pipeline.py``)."""
    from emotion_engine.engine.pipeline import MIN_FIRST_WINDOW_FRAMES, MIN_TAIL_WINDOW_FRAMES

    ends = list(
        range(max(MIN_FIRST_WINDOW_FRAMES, window.hop_frames), n_frames + 1, window.hop_frames)
    )
    last = ends[-1] if ends else 0
    if n_frames - last >= MIN_TAIL_WINDOW_FRAMES:
        ends.append(n_frames)
    return [(max(0, end - window.window_frames), end) for end in ends]


def extract_window_features(
    *,
    samples: NDArray[np.float32],
    params: FeatureParams = DEFAULT_FEATURE_PARAMS,
    window: WindowParams = DEFAULT_WINDOW_PARAMS,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The functionals of every window the live engine scores on (n,) float32 8 kHz
    audio streamed as one leg, and whether each passes the speech gate (at least
    ``window.min_voiced_frames`` voiced frames). Returns (n_windows, n_features) and
    (n_windows,); a clip too short for any window gives (0, n_features)."""
    from emotion_engine.audio.framing import frame_signal
    from emotion_engine.features import FUNCTIONAL_NAMES, compute_functionals, compute_lld

    n_feat = len(FUNCTIONAL_NAMES)
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.size < params.frame_length:
        return np.zeros((0, n_feat), dtype=np.float32), np.zeros(0, dtype=np.bool_)
    frames = frame_signal(samples=x, frame_length=params.frame_length, hop_length=params.hop_length)
    lld = compute_lld(frames=frames, params=params)
    bounds = window_bounds(n_frames=lld.shape[0], window=window)
    out = np.zeros((len(bounds), n_feat), dtype=np.float32)
    lengths = np.array([e - s for s, e in bounds], dtype=np.float64)
    by_length: dict[int, list[int]] = {}
    for i, (s, e) in enumerate(bounds):
        by_length.setdefault(e - s, []).append(i)
    for idx in by_length.values():
        out[idx] = compute_functionals(
            lld=np.stack([lld[bounds[i][0] : bounds[i][1]] for i in idx]), params=params
        )
    ratio = out[:, FUNCTIONAL_NAMES.index("voiced_ratio")].astype(np.float64)
    speech: NDArray[np.bool_] = ratio * lengths >= window.min_voiced_frames
    return out, speech


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """Live-path window rows of many clips: ``x`` (n_rows, n_features), ``speech``
    (n_rows,) and ``clip`` (n_rows,) the row's clip index, rows in clip order."""

    x: NDArray[np.float32]
    speech: NDArray[np.bool_]
    clip: NDArray[np.int64]


def featurize_windows(
    *,
    clips: Sequence[Clip],
    condition: str,
    seed: int = 0,
    params: AugmentParams = DEFAULT_AUGMENT_PARAMS,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> WindowFeatures:
    """:func:`extract_window_features` of every clip under ``condition`` (cached as
    :func:`featurize` caches clip features)."""
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown condition {condition!r} (expected one of {CONDITIONS})")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    key = cache_key(
        clips=clips, condition=condition, seed=seed, extractor_id="engine-windows", params=params
    )
    path = cache_dir / f"engine-windows-{condition}-{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return WindowFeatures(x=cached["x"], speech=cached["speech"], clip=cached["clip"])

    from tqdm import tqdm

    xs: list[NDArray[np.float32]] = []
    sp: list[NDArray[np.bool_]] = []
    idx: list[NDArray[np.int64]] = []
    for i, clip in enumerate(
        tqdm(clips, desc=f"window features ({condition})", unit="clip", disable=not progress)
    ):
        samples = read_clip(clip.path)
        rng = condition_rng(condition=condition, seed=seed, clip=clip)
        audio = degrade(samples=samples, condition=condition, rng=rng, params=params)
        x, speech = extract_window_features(samples=audio)
        xs.append(x)
        sp.append(speech)
        idx.append(np.full(x.shape[0], i, dtype=np.int64))
    out = WindowFeatures(x=np.concatenate(xs), speech=np.concatenate(sp), clip=np.concatenate(idx))
    if not np.all(np.isfinite(out.x)):
        raise DatasetError(f"window features are not finite under {condition}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=out.x, speech=out.speech, clip=out.clip)
    tmp.replace(path)
    return out
