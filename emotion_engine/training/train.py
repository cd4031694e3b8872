"""Train the emotion model on labelled clips and export it as one ONNX graph + manifest.

    python -m emotion_engine.training.train --data ../shared/data --out models --seed 0

Data: a folder with one labels.csv (columns file,speaker,emotion; your own calls) or
a folder of corpora each with a labels.csv (the shared layout). Every clip is used
twice: once through a G.711 mu-law round trip and once through a random telephony
degradation (level, noise, band-limit, mu-law/A-law). Two heads share the standardised
features: a classifier over the labels (neutral, happy, sad, angry; calm counts as
neutral) and an arousal head (low/mid/high classifier whose expected level, 0..1, is
the ``arousal`` output). The graph takes ``features`` (batch, n_features) float32 and
gives ``probabilities`` (batch, n_labels) and ``arousal`` (batch,).

``--normalisation per_call`` (see ``DEFAULT_NORMALISATION``) trains on per-speaker
normalised functionals (``model/normalise.py``): each speaker's rows by the shrunk mean
and std of that speaker's rows, and the manifest carries the population statistics the
engine's per-leg running estimate starts from.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import (
    DEFAULT_FEATURE_PARAMS,
    DEFAULT_WINDOW_PARAMS,
    MODEL_SAMPLE_RATE_HZ,
)
from emotion_engine.errors import ConfigError, DatasetError, ModelError
from emotion_engine.model.manifest import ModelManifest, load_manifest
from emotion_engine.model.normalise import (
    PER_CALL_KIND,
    CallNormParams,
    population_stats,
    shrunk_zscore_per_speaker,
)
from emotion_engine.model.runtime import MANIFEST_FILE, MODEL_FILE, EmotionModel, sha256_bytes
from emotion_engine.training.augment import DEFAULT_AUGMENT_PARAMS
from emotion_engine.training.data import (
    AROUSAL_LEVELS,
    AROUSAL_OF_EMOTION,
    AROUSAL_VALUES,
    DEFAULT_LABELS,
    LABEL_MAP,
    NO_LABEL,
    Clip,
    Dataset,
    load_dataset,
)
from emotion_engine.training.training_card import speaker_cv, write_card

log = logging.getLogger(__name__)

TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "features"
PROBABILITIES_NAME = "probabilities"
AROUSAL_NAME = "arousal"


def _logreg(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.1, max_iter=3000, random_state=seed)


def _logreg_c1(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=3000, random_state=seed)


def _mlp(seed: int) -> Any:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=(64,),
        alpha=1.0,
        learning_rate_init=1e-3,
        max_iter=400,
        early_stopping=False,
        random_state=seed,
    )


def _svm(seed: int) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Platt scaling on held-out folds: SVC(probability=True) is deprecated in sklearn 1.9.
    return CalibratedClassifierCV(
        SVC(kernel="rbf", C=1.0, gamma="scale"), method="sigmoid", cv=3, ensemble=False
    )


def _hgb(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.05,
        max_leaf_nodes=15,
        l2_regularization=1.0,
        random_state=seed,
    )


CANDIDATES: dict[str, Callable[[int], Any]] = {
    "logreg": _logreg,
    "logreg_c1": _logreg_c1,
    "mlp": _mlp,
    "svm": _svm,
    "hgb": _hgb,
}
"""Emotion-head candidates compared by ``evaluate`` (leave-one-corpus-out UAR)."""

EXPORTABLE: frozenset[str] = frozenset({"logreg", "logreg_c1", "mlp", "svm"})
"""skl2onnx 1.20 cannot convert HistGradientBoosting with onnx 1.23 (attribute types)."""

DEFAULT_CANDIDATE = "logreg"
"""Chosen by leave-one-corpus-out UAR (see models/README.md): logreg and mlp tie on the
mean; logistic regression fits in seconds and is the smaller, calmer graph."""


ROW_KINDS: tuple[str, ...] = ("windows", "clips")


@dataclass(frozen=True, slots=True)
class Recipe:
    """How the stage-1 model is trained (compared by ``python -m
    emotion_engine.training.loco``; models/README.md has the figures).

    ``rows``: ``"windows"`` (the speech windows the live engine scores, 2 s at a 0.5 s
    hop, of every clip and copy) or ``"clips"`` (one whole-clip row per clip and copy);
    ``copies``: featurize conditions (``featurize.CONDITIONS``), one copy of every
    training clip each; ``weights``: ``WEIGHTINGS``; ``fearful``: ``"skip"`` or
    ``"class"`` (a 5th label); ``baved_neutral``: BAVED's mid-arousal clips also train
    the emotion head as neutral.
    """

    name: str
    rows: str = "windows"
    copies: tuple[str, ...] = ("test", "train")
    candidate: str = "logreg"
    weights: str = "corpus_class"
    fearful: str = "skip"
    baved_neutral: bool = False
    note: str = ""

    def labels(self) -> tuple[str, ...]:
        return DEFAULT_LABELS + (("fearful",) if self.fearful == "class" else ())


_W = Recipe(name="windows")
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="clips",
            rows="clips",
            note="the recipe shipped before: whole-clip rows, mu-law + telephony copies",
        ),
        replace(_W, note="the engine's speech windows as training rows"),
        replace(_W, name="windows+speed", copies=("test", "train", "aug-speed")),
        replace(_W, name="windows+vtlp", copies=("test", "train", "aug-vtlp")),
        replace(_W, name="windows+pitch", copies=("test", "train", "aug-pitch")),
        replace(
            _W,
            name="windows+speed+vtlp+pitch",
            copies=("test", "train", "aug-speed", "aug-vtlp", "aug-pitch"),
        ),
        replace(_W, name="windows+fearful", fearful="class"),
        replace(_W, name="windows+baved_neutral", baved_neutral=True),
        replace(_W, name="windows+class-weights", weights="class"),
        replace(_W, name="windows+no-weights", weights="none"),
        replace(_W, name="windows+mlp", candidate="mlp"),
        replace(_W, name="windows+logreg-C1", candidate="logreg_c1"),
        replace(
            _W,
            name="windows+hgb",
            candidate="hgb",
            note="gradient boosting: clip figures only (skl2onnx cannot export it)",
        ),
        replace(
            _W,
            name="windows+speed+vtlp+pitch+class-weights",
            copies=("test", "train", "aug-speed", "aug-vtlp", "aug-pitch"),
            weights="class",
        ),
        replace(
            _W,
            name="windows+speed+speaker-weights",
            copies=("test", "train", "aug-speed"),
            weights="speaker_class",
        ),
        replace(
            _W,
            name="windows+speed+class-weights",
            copies=("test", "train", "aug-speed"),
            weights="class",
        ),
    )
}
"""Every recipe the leave-one-corpus-out harness compares."""

DEFAULT_RECIPE = "windows+speed+class-weights"
"""What ``train`` ships (chosen by the leave-one-corpus-out mean, models/README.md)."""


def recipe_dataset(base: Dataset, recipe: Recipe) -> Dataset:
    """``base`` (loaded with the labels neutral, happy, sad, angry, fearful) relabelled
    for ``recipe``: fearful dropped from the emotion head unless it is a class, BAVED's
    mid level as neutral if ``recipe.baved_neutral``."""
    labels = recipe.labels()
    index = {name: i for i, name in enumerate(labels)}
    clips: list[Clip] = []
    for c in base.clips:
        label = NO_LABEL if c.label == NO_LABEL else index.get(base.labels[c.label], NO_LABEL)
        if recipe.baved_neutral and c.corpus == "baved" and c.arousal == 1:
            label = index["neutral"]
        clips.append(Clip(c.path, c.corpus, c.speaker, c.orig_emotion, label, c.arousal))
    excluded = tuple(
        x for x in base.emotion_excluded_corpora if not (recipe.baved_neutral and x == "baved")
    )
    return Dataset(
        clips=tuple(clips),
        labels=labels,
        root=base.root,
        skipped=base.skipped,
        emotion_excluded_corpora=excluded,
    )


def load_recipe_dataset(
    data_dir: Path,
    recipe: Recipe,
    *,
    corpora: Sequence[str] | None = None,
    limit_per_corpus: int | None = None,
    seed: int = 0,
) -> Dataset:
    """:func:`load_dataset` with ``recipe``'s label policy."""
    base = load_dataset(
        data_dir,
        labels=(*DEFAULT_LABELS, "fearful"),
        corpora=corpora,
        limit_per_corpus=limit_per_corpus,
        seed=seed,
    )
    return recipe_dataset(base, recipe)


NORMALISATIONS: tuple[str, ...] = ("none", "per_call", "per_call_neutral")
"""``per_call``: training speakers centred on all their rows; ``per_call_neutral``:
centred on their neutral/calm (BAVED: mid-arousal) rows. The engine's running estimate
is the same for both; they differ in what "0" means to the classifier."""
DEFAULT_NORMALISATION = "none"
"""What ``train`` ships (models/README.md has the measured comparison)."""

PRIOR_WEIGHT_WINDOWS = 20.0
"""Live prior weight ``k``: the population statistics count as 20 speech windows (10 s of
new speech at the 0.5 s hop), the same span the spike detector uses to set a caller's
baseline (``DetectorParams.baseline_s``): enough that the first seconds of a call are
not judged against two windows of itself, short enough that the caller's own voice
dominates within half a minute."""

PRIOR_WEIGHT_CLIPS = 5.0
"""The same prior in clips for training and evaluation (a clip is 1-4 s, ~2 s of speech,
so 5 clips ~ 10 s of speech, as ``PRIOR_WEIGHT_WINDOWS``)."""


def call_norm_params(
    *, x: NDArray[np.float32], speaker: NDArray[np.str_], corpus: NDArray[np.str_]
) -> CallNormParams:
    """Population statistics of (mu-law) training rows, prior weight in clips."""
    m0, s0 = population_stats(x=x, speaker=speaker, group=corpus)
    return CallNormParams(mean=m0, std=s0, prior_weight=PRIOR_WEIGHT_CLIPS)


def reference_rows(dataset: Dataset) -> NDArray[np.bool_]:
    """(n_clips,) neutral/calm clips, or mid arousal where a corpus labels only arousal."""
    orig = np.array([c.orig_emotion for c in dataset.clips])
    out: NDArray[np.bool_] = np.isin(orig, ["neutral", "calm"]) | (dataset.arousal == 1)
    return out


COPY_DESCRIPTIONS: dict[str, str] = {
    "test": "G.711 mu-law round trip",
    "train": "random telephony augmentation",
    "aug-speed": "speed perturbation 0.9-1.1, then random telephony augmentation",
    "aug-pitch": "pitch shift 1-3 semitones up or down, then random telephony augmentation",
    "aug-vtlp": "vocal-tract-length perturbation 0.9-1.1, then random telephony augmentation",
}
WEIGHTING_DESCRIPTIONS: dict[str, str] = {
    "corpus_class": "each corpus equal, each class equal within a corpus",
    "class": "each class equal",
    "speaker_class": "each speaker equal, each class equal within a speaker",
    "none": "every row equal",
}
WEIGHTINGS: tuple[str, ...] = ("corpus_class", "class", "speaker_class", "none")
"""Sample weights of the training rows: each corpus and each class within it equal
(:func:`balanced_weights`), each class equal, or every row the same."""


def sample_weights(
    *,
    y: NDArray[np.int64],
    groups: NDArray[np.str_],
    weighting: str = "corpus_class",
    speakers: NDArray[np.str_] | None = None,
) -> NDArray[np.float64]:
    """(n,) weights of ``weighting`` (``WEIGHTINGS``), mean 1. ``groups``: (n,) corpus of
    each row; ``speakers``: (n,) speaker of each row (needed by ``speaker_class``)."""
    if weighting == "speaker_class":
        if speakers is None:
            raise ConfigError("weighting 'speaker_class' needs the rows' speakers")
        return balanced_weights(y=y, groups=speakers)
    if weighting == "corpus_class":
        return balanced_weights(y=y, groups=groups)
    if weighting == "class":
        return balanced_weights(y=y, groups=np.zeros(y.shape, dtype=np.str_))
    if weighting == "none":
        return np.ones(y.shape, dtype=np.float64)
    raise ConfigError(f"unknown weighting {weighting!r} (one of {WEIGHTINGS})")


def balanced_weights(*, y: NDArray[np.int64], groups: NDArray[np.str_]) -> NDArray[np.float64]:
    """(n,) sample weights: every group (corpus) weighs the same, and within a group
    every class weighs the same; mean weight 1.

    Without this TESS (2 speakers, 1,600 clips) would outweigh RAVDESS (24 speakers).
    """
    w = np.zeros(y.shape, dtype=np.float64)
    group_names = np.unique(groups)
    for g in group_names:
        in_group = groups == g
        classes = np.unique(y[in_group])
        for k in classes:
            cell = in_group & (y == k)
            w[cell] = 1.0 / (cell.sum() * len(classes) * len(group_names))
    out: NDArray[np.float64] = w * (y.size / w.sum())
    return out


@dataclass(slots=True)
class FittedModel:
    """Fitted scaler + emotion head + arousal head (sklearn), before export."""

    scaler: Any
    emotion: Any
    arousal: Any
    labels: tuple[str, ...]
    candidate: str
    arousal_values: NDArray[np.float32]

    def predict_proba(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """(n, n_labels) class probabilities."""
        proba: NDArray[np.float64] = self.emotion.predict_proba(self.scaler.transform(x))
        return proba

    def predict_arousal(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """(n,) expected arousal in 0..1."""
        proba: NDArray[np.float64] = self.arousal.predict_proba(self.scaler.transform(x))
        return proba @ self.arousal_values.astype(np.float64)

    def predict_arousal_level(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        """(n,) arousal level 0/1/2 from the ``arousal`` output (thirds of 0..1)."""
        return np.digitize(self.predict_arousal(x), [1 / 3, 2 / 3]).astype(np.int64)


def fit_model(
    *,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    arousal: NDArray[np.int64],
    corpus: NDArray[np.str_],
    labels: Sequence[str],
    candidate: str = DEFAULT_CANDIDATE,
    seed: int = 0,
    weighting: str = "corpus_class",
    speaker: NDArray[np.str_] | None = None,
) -> FittedModel:
    """Fit both heads. ``x``: (n, n_features); ``y``/``arousal``: (n,) with ``NO_LABEL``
    where a head must not learn; ``corpus`` (and ``speaker``, for ``speaker_class``):
    (n,) for the balancing weights (``weighting``, see ``WEIGHTINGS``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if candidate not in CANDIDATES:
        raise ConfigError(f"unknown model {candidate!r} (choose from {sorted(CANDIDATES)})")
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x).astype(np.float32)

    has_y = y != NO_LABEL
    if len(np.unique(y[has_y])) < 2:
        raise DatasetError(f"need at least two emotion classes to train, got {np.unique(y[has_y])}")
    emotion = CANDIDATES[candidate](seed)
    emotion.fit(
        z[has_y],
        y[has_y],
        sample_weight=sample_weights(
            y=y[has_y],
            groups=corpus[has_y],
            weighting=weighting,
            speakers=None if speaker is None else speaker[has_y],
        ),
    )
    if list(emotion.classes_) != list(range(len(labels))):
        missing = sorted(set(range(len(labels))) - set(emotion.classes_))
        raise DatasetError(f"no training clip for label(s) {[labels[i] for i in missing]}")

    has_a = arousal != NO_LABEL
    if len(np.unique(arousal[has_a])) < 2:
        raise DatasetError("need at least two arousal levels to train the arousal head")
    arousal_head = LogisticRegression(C=0.1, max_iter=3000, random_state=seed)
    arousal_head.fit(
        z[has_a],
        arousal[has_a],
        sample_weight=sample_weights(
            y=arousal[has_a],
            groups=corpus[has_a],
            weighting=weighting,
            speakers=None if speaker is None else speaker[has_a],
        ),
    )
    values = np.asarray(AROUSAL_VALUES, dtype=np.float32)[arousal_head.classes_]
    return FittedModel(
        scaler=scaler,
        emotion=emotion,
        arousal=arousal_head,
        labels=tuple(labels),
        candidate=candidate,
        arousal_values=values,
    )


def export_onnx(fitted: FittedModel, *, n_features: int) -> Any:
    """One ONNX graph: ``features`` -> ``probabilities`` (batch, n_labels) and ``arousal`` (batch,).

    Both heads are converted by skl2onnx (scaler inside each), the arousal graph's names
    are prefixed, the two are joined on the shared input, and the arousal head's level
    probabilities are reduced to their expected value with a MatMul.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.compose import add_prefix
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.pipeline import Pipeline

    def convert(head: Any) -> Any:
        pipe = Pipeline([("scaler", fitted.scaler), ("head", head)])
        return to_onnx(
            pipe,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options={id(head): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )

    emotion = convert(fitted.emotion)
    arousal = add_prefix(convert(fitted.arousal), "arousal_")
    prefixed_input = "arousal_" + INPUT_NAME
    for node in arousal.graph.node:
        for i, name in enumerate(node.input):
            if name == prefixed_input:
                node.input[i] = INPUT_NAME

    values = numpy_helper.from_array(
        fitted.arousal_values.reshape(-1, 1).astype(np.float32), name="arousal_level_values"
    )
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), name="arousal_flat_shape")
    tail = [
        helper.make_node(
            "MatMul", ["arousal_probabilities", "arousal_level_values"], ["arousal_expected"]
        ),
        helper.make_node("Reshape", ["arousal_expected", "arousal_flat_shape"], [AROUSAL_NAME]),
    ]
    graph = helper.make_graph(
        nodes=[*emotion.graph.node, *arousal.graph.node, *tail],
        name="emotion_engine",
        inputs=[emotion.graph.input[0]],
        outputs=[
            helper.make_tensor_value_info(
                PROBABILITIES_NAME, TensorProto.FLOAT, [None, len(fitted.labels)]
            ),
            helper.make_tensor_value_info(AROUSAL_NAME, TensorProto.FLOAT, [None]),
        ],
        initializer=[*emotion.graph.initializer, *arousal.graph.initializer, values, flat],
    )
    opsets = {op.domain: op.version for op in [*emotion.opset_import, *arousal.opset_import]}
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="emotion-engine",
        doc_string=f"emotion head: {fitted.candidate}; labels: {','.join(fitted.labels)}",
    )
    model.ir_version = emotion.ir_version
    onnx.checker.check_model(model)
    return model


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "emotion-engine",
        "numpy",
        "scipy",
        "scikit-learn",
        "skl2onnx",
        "onnx",
        "onnxruntime",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass(frozen=True, slots=True)
class TrainRows:
    """Training rows of a recipe: ``x`` (n_rows, n_features) and per row its emotion
    label, arousal level, corpus, speaker, clip index and whether it belongs to the
    G.711 mu-law copy (the one a speaker-grouped estimate scores)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    arousal: NDArray[np.int64]
    corpus: NDArray[np.str_]
    speaker: NDArray[np.str_]
    clip: NDArray[np.int64]
    scored: NDArray[np.bool_]

    def take(self, rows: NDArray[np.bool_] | NDArray[np.int64]) -> TrainRows:
        return TrainRows(
            x=self.x[rows],
            y=self.y[rows],
            arousal=self.arousal[rows],
            corpus=self.corpus[rows],
            speaker=self.speaker[rows],
            clip=self.clip[rows],
            scored=self.scored[rows],
        )


def recipe_rows(
    dataset: Dataset,
    recipe: Recipe,
    *,
    seed: int,
    progress: bool,
    clips: NDArray[np.int64] | None = None,
) -> TrainRows:
    """Rows of ``clips`` (default all) under every copy of ``recipe``: whole-clip rows,
    or the speech windows the live engine would score (features cached on disk)."""
    from emotion_engine.training.featurize import featurize, featurize_windows

    if recipe.rows not in ROW_KINDS:
        raise ConfigError(f"unknown row kind {recipe.rows!r} (one of {ROW_KINDS})")
    keep = np.zeros(len(dataset), dtype=np.bool_)
    keep[np.arange(len(dataset)) if clips is None else clips] = True
    xs: list[NDArray[np.float32]] = []
    idx: list[NDArray[np.int64]] = []
    scored: list[NDArray[np.bool_]] = []
    for cond in recipe.copies:
        if recipe.rows == "clips":
            x = featurize(clips=dataset.clips, condition=cond, seed=seed, progress=progress)
            chosen = np.flatnonzero(keep)
            xs.append(x[chosen])
            idx.append(chosen)
        else:
            w = featurize_windows(clips=dataset.clips, condition=cond, seed=seed, progress=progress)
            m = keep[w.clip] & w.speech
            xs.append(w.x[m])
            idx.append(w.clip[m])
        scored.append(np.full(idx[-1].size, cond == "test", dtype=np.bool_))
    clip = np.concatenate(idx)
    return TrainRows(
        x=np.concatenate(xs),
        y=dataset.y[clip],
        arousal=dataset.arousal[clip],
        corpus=dataset.corpus[clip],
        speaker=dataset.speaker[clip],
        clip=clip,
        scored=np.concatenate(scored),
    )


def train_features(
    dataset: Dataset,
    *,
    seed: int,
    progress: bool,
    normalisation: str = "none",
    recipe: Recipe | None = None,
) -> tuple[TrainRows, tuple[str, ...], CallNormParams | None]:
    """The rows of ``recipe`` (default the shipped one) and for ``normalisation=
    "per_call"`` the population statistics (rows normalised per speaker; each copy
    against its own rows, as a call's channel is one condition)."""
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES

    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {normalisation!r} (one of {NORMALISATIONS})")
    recipe = RECIPES[DEFAULT_RECIPE] if recipe is None else recipe
    rows = recipe_rows(dataset, recipe, seed=seed, progress=progress)
    norm = None
    if normalisation != "none":
        clean = rows.take(rows.scored)
        norm = call_norm_params(x=clean.x, speaker=clean.speaker, corpus=clean.corpus)
        ref_clip = reference_rows(dataset) if normalisation == "per_call_neutral" else None
        x = rows.x.copy()
        copy_id = np.zeros(rows.x.shape[0], dtype=np.int64)
        bounds = np.flatnonzero(np.diff(rows.clip) < 0) + 1  # copies are laid end to end
        for k, (a, b) in enumerate(zip([0, *bounds], [*bounds, rows.x.shape[0]], strict=True)):
            copy_id[a:b] = k
            x[a:b] = shrunk_zscore_per_speaker(
                x=rows.x[a:b],
                speaker=rows.speaker[a:b],
                params=norm,
                reference=None if ref_clip is None else ref_clip[rows.clip[a:b]],
            )
        rows = replace(rows, x=x)
    return rows, tuple(FUNCTIONAL_NAMES), norm


def run_train(
    *,
    data_dir: Path,
    out_dir: Path,
    seed: int = 0,
    corpora: Sequence[str] | None = None,
    limit_per_corpus: int | None = None,
    progress: bool = True,
    candidate: str | None = None,
    normalisation: str = DEFAULT_NORMALISATION,
    command: str | None = None,
    recipe: str = DEFAULT_RECIPE,
) -> Path:
    """Train on ``data_dir`` and write ``emotion.onnx`` + ``emotion.manifest.json`` to
    ``out_dir``; returns the .onnx path. ``recipe``: a name in ``RECIPES``;
    ``candidate`` overrides its emotion head. The exported graph is reloaded with
    ``EmotionModel`` and checked against sklearn before returning."""
    started = time.monotonic()
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r} (one of {list(RECIPES)})")
    chosen = RECIPES[recipe]
    if candidate is not None:
        chosen = replace(chosen, candidate=candidate)
    candidate = chosen.candidate
    if candidate not in EXPORTABLE:
        raise ConfigError(
            f"recipe {recipe!r} uses {candidate!r}, which cannot be exported to ONNX "
            f"(exportable: {sorted(EXPORTABLE)}); it is for the comparison only"
        )
    dataset = load_recipe_dataset(
        Path(data_dir), chosen, corpora=corpora, limit_per_corpus=limit_per_corpus, seed=seed
    )
    rows, names, norm = train_features(
        dataset, seed=seed, progress=progress, normalisation=normalisation, recipe=chosen
    )
    x = rows.x
    fitted = fit_model(
        x=x,
        y=rows.y,
        arousal=rows.arousal,
        corpus=rows.corpus,
        labels=dataset.labels,
        candidate=candidate,
        seed=seed,
        weighting=chosen.weights,
        speaker=rows.speaker,
    )
    if command is None:
        command = (
            f"python -m emotion_engine.training.train --data {shlex.quote(str(data_dir))} "
            f"--out {shlex.quote(str(out_dir))} --seed {seed}"
            + (f" --corpora {','.join(corpora)}" if corpora else "")
            + (f" --limit-per-corpus {limit_per_corpus}" if limit_per_corpus else "")
            + (f" --recipe {recipe}" if recipe != DEFAULT_RECIPE else "")
            + (f" --model-type {candidate}" if candidate != RECIPES[recipe].candidate else "")
            + (
                f" --normalisation {normalisation}"
                if normalisation != DEFAULT_NORMALISATION
                else ""
            )
        )
    onnx_path = save_model(
        fitted,
        x=x,
        names=names,
        norm=norm,
        normalisation=normalisation,
        dataset=dataset,
        data_dir=Path(data_dir),
        out_dir=Path(out_dir),
        seed=seed,
        command=command,
        started=started,
        recipe=chosen,
    )
    cv = speaker_cv(
        dataset=dataset, rows=rows, candidate=candidate, seed=seed, weighting=chosen.weights
    )
    card = write_card(Path(out_dir), manifest=load_manifest(Path(out_dir) / MANIFEST_FILE), cv=cv)
    log.info(
        "speaker-grouped cross-validation: %s -> %s",
        "not enough speakers" if cv is None else f"UAR {100 * cv['uar']:.1f} %",
        card,
    )
    return onnx_path


def save_model(
    fitted: FittedModel,
    *,
    x: NDArray[np.float32],
    names: tuple[str, ...],
    norm: CallNormParams | None,
    normalisation: str,
    dataset: Dataset,
    data_dir: Path,
    out_dir: Path,
    seed: int,
    command: str,
    started: float,
    recipe: Recipe | None = None,
) -> Path:
    """Export ``fitted`` and write ``emotion.onnx`` + ``emotion.manifest.json`` to
    ``out_dir``; returns the .onnx path. ``x``: (n_rows, n_features) the training rows
    (counted in the manifest; a sample of them checks the exported graph against
    sklearn). ``started``: ``time.monotonic()`` when training began."""
    candidate = fitted.candidate
    model = export_onnx(fitted, n_features=x.shape[1])
    blob = model.SerializeToString()

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_FILE
    onnx_path.write_bytes(blob)
    in_graph = {
        "mean": [float(v) for v in fitted.scaler.mean_],
        "scale": [float(v) for v in fitted.scaler.scale_],
    }
    if norm is None:
        normalisation_block: dict[str, Any] = {
            "kind": "StandardScaler inside the graph (features are fed raw)",
            **in_graph,
        }
    else:
        live = CallNormParams(mean=norm.mean, std=norm.std, prior_weight=PRIOR_WEIGHT_WINDOWS)
        normalisation_block = {
            "kind": PER_CALL_KIND,
            "description": "features are z-scored per call leg by the engine (running "
            "statistics of the leg's speech windows, shrunk towards the population "
            "statistics below), then standardised by the StandardScaler inside the graph "
            "('mean'/'scale')",
            "training": "each training speaker's rows by the shrunk mean/std of all of "
            f"that speaker's rows (prior weight {PRIOR_WEIGHT_CLIPS:g} clips"
            + (
                "; centred on the speaker's neutral/calm rows"
                if normalisation == "per_call_neutral"
                else ""
            )
            + "); the "
            "population statistics are the corpus-balanced mean of speaker means and "
            "root mean within-speaker variance of the mu-law copies",
            "per_call": live.to_dict(),
            **in_graph,
        }
    manifest = ModelManifest(
        labels=fitted.labels,
        feature_names=names,
        onnx_file=MODEL_FILE,
        onnx_sha256=sha256_bytes(blob),
        sample_rate_hz=MODEL_SAMPLE_RATE_HZ,
        input_name=INPUT_NAME,
        probabilities_name=PROBABILITIES_NAME,
        arousal_name=AROUSAL_NAME,
        arousal={
            "output": "expected level of a low/mid/high logistic-regression head, 0..1",
            "level_values": dict(zip(AROUSAL_LEVELS, AROUSAL_VALUES, strict=True)),
            "levels_from_emotion": AROUSAL_OF_EMOTION,
            "levels_from_columns": "labels.csv 'arousal' (low/mid/high or 0/1/2) or "
            "'intensity' low/neutral/high (BAVED levels 0/1/2), before the emotion",
        },
        model_type=(
            f"StandardScaler + {type(fitted.emotion).__name__} ({candidate}) emotion head; "
            "StandardScaler + LogisticRegression arousal head; sklearn -> skl2onnx"
        ),
        feature_params=_asdict(DEFAULT_FEATURE_PARAMS),
        window_params=_asdict(DEFAULT_WINDOW_PARAMS),
        normalisation=normalisation_block,
        training_data={
            "root": str(data_dir),
            "corpora": dataset.summary(),
            "label_map": LABEL_MAP,
            "skipped_labels": dataset.skipped,
            "emotion_excluded_corpora": list(dataset.emotion_excluded_corpora),
            "n_rows": int(x.shape[0]),
            "recipe": None if recipe is None else _asdict(recipe),
            "rows": "the speech windows the live engine scores (2 s, 0.5 s hop) of every "
            "clip and copy"
            if recipe is not None and recipe.rows == "windows"
            else "one whole-clip row per clip and copy",
            "copies_per_clip": [
                COPY_DESCRIPTIONS.get(c, c) for c in (recipe or RECIPES["clips"]).copies
            ],
            "augmentation": DEFAULT_AUGMENT_PARAMS.to_dict(),
            "sample_weights": WEIGHTING_DESCRIPTIONS[(recipe or RECIPES["clips"]).weights],
            "split": "all speakers (evaluation splits by speaker, see models/README.md)",
        },
        licences={name: str(info["licence"]) for name, info in dataset.summary().items()},
        seed=seed,
        command=command,
        package_versions=_versions(),
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    manifest.save(out_dir / MANIFEST_FILE)

    loaded = EmotionModel.load(out_dir, expected_feature_names=names)
    probe = x[:: max(1, x.shape[0] // 200)]
    out = loaded.predict(probe, normalised=norm is not None)
    err = float(np.abs(out.probabilities - fitted.predict_proba(probe)).max())
    err_a = float(np.abs(out.arousal - fitted.predict_arousal(probe)).max())
    if err > 1e-4 or err_a > 1e-4:
        raise ModelError(f"exported graph disagrees with sklearn: {err:.2e} / {err_a:.2e}")
    log.info(
        "trained %s on %d rows (%d clips, %d features) in %.0f s -> %s",
        candidate,
        x.shape[0],
        len(dataset),
        x.shape[1],
        time.monotonic() - started,
        onnx_path,
    )
    return onnx_path


def _asdict(params: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(params)


def add_data_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_types: Iterable[str],
    model_type_help: str,
    normalisation_help: str,
) -> None:
    """The options ``train`` and ``evaluate`` share: the data, the seed, the recipe."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="labelled audio: DIR/labels.csv (columns file,speaker,emotion[,arousal]) with "
        "the audio files, or DIR/<corpus>/labels.csv for several corpora (../shared/data)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--corpora",
        type=lambda s: [c for c in s.split(",") if c],
        default=None,
        metavar="A,B",
        help="only these corpus subfolders (default: every subfolder with labels.csv)",
    )
    parser.add_argument(
        "--limit-per-corpus",
        type=int,
        default=None,
        metavar="N",
        help="at most N random clips per corpus (quick trial runs)",
    )
    parser.add_argument(
        "--model-type",
        choices=sorted(model_types),
        default=None,
        help=model_type_help,
    )
    parser.add_argument(
        "--normalisation",
        choices=NORMALISATIONS,
        default=DEFAULT_NORMALISATION,
        help=normalisation_help,
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emotion-engine train`` (also ``python -m emotion_engine.training.train``)."""
    add_data_arguments(
        parser,
        model_types=EXPORTABLE,
        model_type_help="emotion head (default: the recipe's)",
        normalisation_help="per_call: train on per-speaker normalised features; the engine "
        "then normalises each call leg by its own running statistics (default: "
        f"{DEFAULT_NORMALISATION})",
    )
    parser.add_argument(
        "--recipe",
        choices=[name for name, r in RECIPES.items() if r.candidate in EXPORTABLE],
        default=DEFAULT_RECIPE,
        help=f"training recipe (default: {DEFAULT_RECIPE}, chosen by the leave-one-corpus-out "
        "mean; python -m emotion_engine.training.loco compares them)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="where to write emotion.onnx, emotion.manifest.json and emotion.card.md "
        "(default: models)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit status."""
    path = run_train(
        data_dir=args.data,
        out_dir=args.out,
        seed=args.seed,
        corpora=args.corpora,
        limit_per_corpus=args.limit_per_corpus,
        progress=not args.no_progress,
        candidate=args.model_type,
        normalisation=args.normalisation,
        recipe=args.recipe,
        command=shlex.join(["python", "-m", "emotion_engine.training.train", *sys.argv[1:]])
        if __name__ == "__main__"
        else None,
    )
    print(path)
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import run_module

    run_module(
        prog="python -m emotion_engine.training.train",
        doc=__doc__,
        add_arguments=add_arguments,
        main=main,
    )
