"""Honest confidence: is a speech window natural speech like the speech the model learnt from?

The classifier gives a probability for every window it is fed, also for synthetic
speech, music, tones or noise that passed the voice gate; it is never "unsure" on
its own. This module flags such windows *low confidence*, so the detector ignores
them and ``emotion.update`` says so. Two checks, vectorised over a tick's windows:

- **distance** (``"out_of_domain"``): squared Mahalanobis distance of the window's
  functionals from the distribution of real-speech training windows,
  ``d2 = || (x - mean) @ whiten ||^2`` with ``whiten`` a Cholesky factor of the
  inverse of a shrunk (Ledoit-Wolf) covariance, over the gain-free features only
  (every ``loudness_*`` functional and the absolute ``rms_db`` means are left out, so
  a quiet or loud line is not "out of domain"). A window is flagged when ``d2``
  exceeds ``threshold_d2``, a high percentile of real-speech windows of corpora the
  statistics were *not* fitted on (leave-one-corpus-out), so the false rate on speech
  from unseen voices and languages is what the fit measured, not an in-sample figure.
- **tone** (``"tone"``): the window is voiced almost throughout and its pitch barely
  moves (``f0_semitone_std`` and the mean absolute frame-to-frame pitch change both
  tiny): a held note, a dial or hold tone, a synthetic monotone. Natural speech
  moves its pitch every syllable.

The statistics live beside the model in ``models/confidence.json`` (written by
``python -m emotion_engine.training.confidence_fit``), independent of the classifier,
so retraining the classifier on the same features keeps them valid; they name the
features they were fitted on and are not used (a warning, tone check only) when the
running feature code differs.

Use::

    conf = DomainCheck.load()                          # or DomainCheck.load(path)
    verdict = conf.check(features, is_speech=speech)   # (n, n_features), (n,)
    verdict.low                                        # (n,) bool, False where not speech
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_CONFIDENCE_PARAMS, ConfidenceParams
from emotion_engine.errors import ModelError

log = logging.getLogger(__name__)

CONFIDENCE_FILE = "confidence.json"
FORMAT_VERSION = 1

REASON_OUT_OF_DOMAIN = "out_of_domain"
REASON_TONE = "tone"
REASON_SYNTHETIC = "synthetic"
REASONS: tuple[str, ...] = (REASON_OUT_OF_DOMAIN, REASON_SYNTHETIC, REASON_TONE)


def gain_free(feature_names: Sequence[str]) -> list[int]:
    """Columns of ``feature_names`` whose value does not move with the line's gain:
    all but the ``loudness_*`` functionals and the absolute ``rms_db`` means."""
    level = {"rms_db_mean", "rms_db_all_mean"}
    return [
        i
        for i, name in enumerate(feature_names)
        if not name.startswith("loudness") and name not in level
    ]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Per window: ``low`` (n,) bool, ``distance`` (n,) float32 squared Mahalanobis
    distance (NaN where not checked), ``tone`` and ``synthetic`` (n,) bool."""

    low: NDArray[np.bool_]
    distance: NDArray[np.float32]
    tone: NDArray[np.bool_]
    synthetic: NDArray[np.bool_]

    def reason(self, i: int) -> str | None:
        """Why window ``i`` is low confidence (tone, synthetic, out of domain), or None."""
        if not self.low[i]:
            return None
        if self.tone[i]:
            return REASON_TONE
        return REASON_SYNTHETIC if self.synthetic[i] else REASON_OUT_OF_DOMAIN


@dataclass(frozen=True, slots=True)
class Discriminant:
    """A linear real-vs-artificial score over the same columns: ``((x - mean) / scale)
    @ coef + intercept``; windows above ``threshold`` are artificial."""

    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    coef: NDArray[np.float64]
    intercept: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "coef": [float(v) for v in self.coef],
            "intercept": float(self.intercept),
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Discriminant:
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            coef=np.asarray(data["coef"], dtype=np.float64),
            intercept=float(data["intercept"]),
            threshold=float(data["threshold"]),
        )


@dataclass(frozen=True, slots=True)
class DomainStats:
    """Fitted real-speech statistics over the ``columns`` (k,) of ``feature_names``:
    ``mean`` (k,) and ``whiten`` (k, k) for the distance, ``threshold_d2`` its bar;
    ``synthetic`` the real-vs-artificial discriminant (None: not fitted)."""

    feature_names: tuple[str, ...]
    columns: tuple[int, ...]
    mean: NDArray[np.float64]
    whiten: NDArray[np.float64]
    threshold_d2: float
    synthetic: Discriminant | None
    info: Mapping[str, Any]

    def __post_init__(self) -> None:
        k = len(self.columns)
        if self.mean.shape != (k,) or self.whiten.shape != (k, k):
            raise ModelError(
                f"confidence statistics: mean {self.mean.shape} / whiten {self.whiten.shape} "
                f"do not fit {k} columns"
            )
        arrays = [self.mean, self.whiten]
        if self.synthetic is not None:
            s = self.synthetic
            if not s.mean.shape == s.scale.shape == s.coef.shape == (k,):
                raise ModelError(f"confidence synthetic discriminant does not fit {k} columns")
            if np.any(s.scale <= 0):
                raise ModelError("confidence synthetic discriminant: scale must be > 0")
            arrays += [s.mean, s.scale, s.coef, np.array([s.intercept, s.threshold])]
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ModelError("confidence statistics are not finite")
        if not (np.isfinite(self.threshold_d2) and self.threshold_d2 > 0):
            raise ModelError(f"confidence threshold_d2={self.threshold_d2!r} must be > 0")

    def distance(self, features: NDArray[np.floating]) -> NDArray[np.float32]:
        """(n, n_features) -> (n,) squared Mahalanobis distance."""
        d = np.asarray(features, dtype=np.float64)[:, self.columns] - self.mean
        w = d @ self.whiten
        out: NDArray[np.float32] = np.einsum("ij,ij->i", w, w).astype(np.float32)
        return out

    def artificial(self, features: NDArray[np.floating]) -> NDArray[np.float64]:
        """(n, n_features) -> (n,) the discriminant's score (higher: more artificial);
        -inf everywhere when none was fitted."""
        s = self.synthetic
        if s is None:
            return np.full(len(features), -np.inf)
        x = np.asarray(features, dtype=np.float64)[:, self.columns]
        return np.asarray(((x - s.mean) / s.scale) @ s.coef + s.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "feature_names": list(self.feature_names),
            "columns": [self.feature_names[i] for i in self.columns],
            "mean": [float(v) for v in self.mean],
            "whiten": [[float(v) for v in row] for row in self.whiten],
            "threshold_d2": float(self.threshold_d2),
            "synthetic": None if self.synthetic is None else self.synthetic.to_dict(),
            **{k: v for k, v in self.info.items()},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> DomainStats:
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{source}: format_version {data.get('format_version')!r} is not supported "
                f"(this engine reads {FORMAT_VERSION})"
            )
        try:
            names = tuple(str(n) for n in data["feature_names"])
            index = {n: i for i, n in enumerate(names)}
            columns = tuple(index[str(n)] for n in data["columns"])
            mean = np.asarray(data["mean"], dtype=np.float64)
            whiten = np.asarray(data["whiten"], dtype=np.float64)
            threshold = float(data["threshold_d2"])
            block = data.get("synthetic")
            synthetic = None if block is None else Discriminant.from_dict(block)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: malformed confidence statistics: {exc!r}") from exc
        known = {
            "format_version",
            "feature_names",
            "columns",
            "mean",
            "whiten",
            "threshold_d2",
            "synthetic",
        }
        info = {k: v for k, v in data.items() if k not in known}
        return cls(names, columns, mean, whiten, threshold, synthetic, info)


def load_stats(path: str | Path) -> DomainStats:
    """Read ``confidence.json``; raises ModelError for a missing or malformed file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    return DomainStats.from_dict(data, source=str(path))


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """One warning per process for each message (an engine is built per call in
    harnesses and per file in ``analyze``)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


_STATS_CACHE: dict[tuple[str, float], DomainStats] = {}


def _cached_stats(file: Path) -> DomainStats:
    """:func:`load_stats`, once per file and modification time (the file is ~50 kB of
    JSON, read again by every engine otherwise)."""
    key = (str(file.resolve()), file.stat().st_mtime)
    if key not in _STATS_CACHE:
        _STATS_CACHE[key] = load_stats(file)
    return _STATS_CACHE[key]


class DomainCheck:
    """The per-window confidence check (see the module docstring).

    ``feature_names``: the order of the features :meth:`check` gets (the model's).
    ``stats``: fitted statistics, or None for the tone check alone.
    """

    def __init__(
        self,
        *,
        feature_names: Sequence[str],
        stats: DomainStats | None,
        params: ConfidenceParams = DEFAULT_CONFIDENCE_PARAMS,
    ) -> None:
        self.feature_names = tuple(feature_names)
        self.params = params
        if stats is not None and stats.feature_names != self.feature_names:
            _warn_once(
                "confidence statistics were fitted on other features than the model's; "
                "the distance and synthetic checks are off (refit: python -m "
                "emotion_engine.training.confidence_fit)"
            )
            stats = None
        self.stats = stats
        index = {n: i for i, n in enumerate(self.feature_names)}
        try:
            self._f0_std = index["f0_semitone_std"]
            self._f0_delta = index["f0_delta_semitone_abs_mean"]
            self._voiced = index["voiced_ratio"]
        except KeyError as exc:
            raise ModelError(f"the tone check needs the feature {exc.args[0]!r}") from None
        self.threshold_d2 = (
            (stats.threshold_d2 * params.distance_scale) if stats is not None else float("inf")
        )
        synth = None if stats is None else stats.synthetic
        self.synthetic_threshold = (
            synth.threshold + params.synthetic_offset if synth is not None else float("inf")
        )
        # both tests as one product over every feature (zero rows for the columns left
        # out): y = (x - centre) @ proj, d2 = sum(y[:, :k]^2), artificial = y[:, k] + c
        n = len(self.feature_names)
        self._k = 0
        self._centre = np.zeros(n)
        self._proj = np.zeros((n, 1))
        self._art_const = -np.inf
        if stats is not None:
            cols = list(stats.columns)
            k = self._k = len(cols)
            self._centre[cols] = stats.mean
            self._proj = np.zeros((n, k + 1))
            self._proj[cols, :k] = stats.whiten
            if synth is not None:
                w = synth.coef / synth.scale
                self._proj[cols, k] = w
                # (x - s.mean) / s.scale @ coef == (x - mean) @ w + (mean - s.mean) @ w
                self._art_const = float(synth.intercept + (stats.mean - synth.mean) @ w)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        feature_names: Sequence[str],
        params: ConfidenceParams = DEFAULT_CONFIDENCE_PARAMS,
    ) -> DomainCheck:
        """Statistics from ``path`` (a file, or a model directory holding
        ``confidence.json``). A model directory without the file (a retrained model)
        gets the shipped statistics: they describe the features, not the classifier,
        and are used only when they were fitted on the same features. ``path`` None:
        the shipped statistics. Without any, the tone check alone (logged once)."""
        from emotion_engine.model.runtime import DEFAULT_MODEL_DIR

        p = DEFAULT_MODEL_DIR if path is None else Path(path)
        file = p / CONFIDENCE_FILE if p.is_dir() else p
        if not file.is_file() and p.is_dir():
            file = DEFAULT_MODEL_DIR / CONFIDENCE_FILE
        if not file.is_file():
            if not p.is_dir():
                raise ModelError(f"confidence statistics not found: {p}")
            _warn_once(f"no {CONFIDENCE_FILE} in {p} nor in {DEFAULT_MODEL_DIR}: tone check only")
            return cls(feature_names=feature_names, stats=None, params=params)
        return cls(feature_names=feature_names, stats=_cached_stats(file), params=params)

    def check(self, features: NDArray[np.floating], *, is_speech: NDArray[np.bool_]) -> Verdict:
        """``features``: (n, n_features) window functionals, ``is_speech``: (n,).
        Returns the :class:`Verdict`; windows that are not speech are never low."""
        x = np.asarray(features)
        speech = np.asarray(is_speech, dtype=bool)
        n = x.shape[0]
        p = self.params
        if not p.enabled:
            no = np.zeros(n, dtype=bool)
            return Verdict(no, np.full(n, np.nan, dtype=np.float32), no, no)
        tone = (
            speech
            & (x[:, self._voiced] >= p.tone_min_voiced_ratio)
            & (x[:, self._f0_std] <= p.tone_max_f0_std_semitones)
            & (x[:, self._f0_delta] <= p.tone_max_f0_delta_semitones)
        )
        if self.stats is None:
            distance = np.full(n, np.nan, dtype=np.float32)
            far = synthetic = np.zeros(n, dtype=bool)
        else:
            y = (x - self._centre) @ self._proj
            w = y[:, : self._k]
            distance = np.einsum("ij,ij->i", w, w).astype(np.float32)
            far = speech & (distance > self.threshold_d2)
            synthetic = speech & (y[:, self._k] + self._art_const > self.synthetic_threshold)
        return Verdict(
            low=tone | far | synthetic, distance=distance, tone=tone, synthetic=synthetic
        )
