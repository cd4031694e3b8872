"""Evaluate the training recipe speaker-independently and write the model card's numbers.

    python -m emotion_engine.training.evaluate --data ../shared/data --card models/README.md

Protocols (all test audio G.711 mu-law round-tripped, splits always by speaker):

- ``ravdess_kfold``: RAVDESS alone, GroupKFold by speaker (5 folds), 4-class UAR of the
  pooled out-of-fold predictions;
- ``loco``: leave one corpus out: train on three corpora, test on the fourth. 4-class
  UAR on corpora with emotion labels; BAVED has arousal levels only, so it reports
  low/mid/high arousal accuracy and UAR from the ``arousal`` output instead.

Ours (the shipped recipe: engine features, telephony augmentation, both heads) is
compared with an openSMILE eGeMAPSv02 + SVM baseline under the same splits, and every
emotion-head candidate is compared by leave-one-corpus-out UAR.

Normalisation (``--normalisation``, both are reported; the first decides the main
tables): ``none`` feeds raw functionals; ``per_call`` trains on per-speaker normalised
rows and scores each test speaker as a live call would see it: the speaker's clips in a
seeded random order, each clip normalised by the running statistics of the clips
*before* it (shrunk towards the training speakers' population statistics with a prior
weight of ``PRIOR_WEIGHT_CLIPS``), never by the clip itself or later ones. The baseline
gets the same treatment of its eGeMAPS features, so the comparison stays like for like.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import DatasetError
from emotion_engine.training.data import AROUSAL_LEVELS, NO_LABEL, Dataset, load_dataset
from emotion_engine.training.metrics import accuracy, confusion_matrix, roc_auc, uar
from emotion_engine.training.train import (
    CANDIDATES,
    DEFAULT_CANDIDATE,
    DEFAULT_NORMALISATION,
    NORMALISATIONS,
    FittedModel,
    add_data_arguments,
    call_norm_params,
    fit_model,
    reference_rows,
)

log = logging.getLogger(__name__)

CARD_BEGIN = "<!-- BEGIN EVALUATION (written by emotion-engine evaluate; do not edit) -->"
CARD_END = "<!-- END EVALUATION -->"
KFOLD_CORPUS = "ravdess"


@dataclass(frozen=True, slots=True)
class Split:
    protocol: str
    name: str
    train: NDArray[np.int64]
    test: NDArray[np.int64]


@dataclass(slots=True)
class Features:
    """Per-clip feature matrices (rows aligned with the dataset's clips)."""

    test: NDArray[np.float32]  # engine features, mu-law
    train: NDArray[np.float32]  # engine features, random telephony augmentation
    baseline: NDArray[np.float32] | None  # eGeMAPS, mu-law


def make_splits(dataset: Dataset, *, folds: int = 5, seed: int = 0) -> list[Split]:
    """RAVDESS speaker k-fold and leave-one-corpus-out splits over ``dataset``."""
    from sklearn.model_selection import GroupKFold

    corpus = dataset.corpus
    speaker = dataset.speaker
    splits: list[Split] = []
    in_kfold = np.flatnonzero((corpus == KFOLD_CORPUS) & (dataset.y != NO_LABEL))
    if in_kfold.size and len(np.unique(speaker[in_kfold])) >= folds:
        gkf = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (tr, te) in enumerate(gkf.split(in_kfold, groups=speaker[in_kfold])):
            splits.append(Split("ravdess_kfold", f"fold{k + 1}", in_kfold[tr], in_kfold[te]))
    names = dataset.corpora
    if len(names) >= 2:
        for name in names:
            test = np.flatnonzero(corpus == name)
            train = np.flatnonzero(corpus != name)
            splits.append(Split("loco", name, train, test))
    if not splits:
        raise DatasetError(
            f"nothing to evaluate in {dataset.root}: need {KFOLD_CORPUS} with >= {folds} "
            "speakers or at least two corpora"
        )
    return splits


def _running_by_speaker(
    *,
    x: NDArray[np.float32],
    rows: NDArray[np.int64],
    speaker: NDArray[np.str_],
    params: Any,
    seed: int,
) -> NDArray[np.float32]:
    """Normalise ``x[rows]`` as live calls: per speaker, clips in a seeded random order,
    each by the shrunk statistics of that speaker's clips before it. Returns a copy of
    ``x`` with those rows replaced."""
    import zlib

    from emotion_engine.model.normalise import running_zscore

    out = x.copy()
    for name in np.unique(speaker[rows]):
        mine = rows[speaker[rows] == name]
        rng = np.random.default_rng([seed, zlib.crc32(str(name).encode())])
        order = mine[rng.permutation(mine.size)]
        z, *_ = running_zscore(x=x[order], update=np.ones(order.size, dtype=bool), params=params)
        out[order] = z
    return out


def split_features(
    dataset: Dataset, feats: Features, split: Split, *, normalisation: str, seed: int
) -> Features:
    """The feature matrices one split is trained and tested on (see the module doc)."""
    if normalisation == "none":
        return feats
    if normalisation not in NORMALISATIONS:
        raise DatasetError(f"unknown normalisation {normalisation!r} ({NORMALISATIONS})")
    from emotion_engine.model.normalise import shrunk_zscore_per_speaker

    speaker = dataset.speaker
    tr, te = split.train, split.test
    ref = reference_rows(dataset)[tr] if normalisation == "per_call_neutral" else None

    def one(x: NDArray[np.float32], *, train_condition: NDArray[np.float32]) -> NDArray[np.float32]:
        # prior from the training speakers' mu-law rows of this split only
        params = call_norm_params(
            x=train_condition[tr], speaker=speaker[tr], corpus=dataset.corpus[tr]
        )
        out = _running_by_speaker(x=x, rows=te, speaker=speaker, params=params, seed=seed)
        out[tr] = shrunk_zscore_per_speaker(
            x=x[tr], speaker=speaker[tr], params=params, reference=ref
        )
        return out

    test = one(feats.test, train_condition=feats.test)
    train = feats.train.copy()
    params = call_norm_params(x=feats.test[tr], speaker=speaker[tr], corpus=dataset.corpus[tr])
    train[tr] = shrunk_zscore_per_speaker(
        x=feats.train[tr], speaker=speaker[tr], params=params, reference=ref
    )
    baseline = (
        None if feats.baseline is None else one(feats.baseline, train_condition=feats.baseline)
    )
    return Features(test=test, train=train, baseline=baseline)


def training_rows(dataset: Dataset, feats: Features, idx: NDArray[np.int64]) -> dict[str, Any]:
    """The keyword rows :func:`fit_model` takes for clips ``idx``: each clip twice, its
    mu-law copy then its augmented copy (as ``train`` stacks them). ``x``: (2 n, f);
    ``y``, ``arousal``, ``corpus``: (2 n,)."""
    return {
        "x": np.concatenate([feats.test[idx], feats.train[idx]]),
        "y": np.tile(dataset.y[idx], 2),
        "arousal": np.tile(dataset.arousal[idx], 2),
        "corpus": np.tile(dataset.corpus[idx], 2),
    }


def _fit_ours(
    dataset: Dataset, feats: Features, idx: NDArray[np.int64], *, candidate: str, seed: int
) -> FittedModel:
    return fit_model(
        **training_rows(dataset, feats, idx),
        labels=dataset.labels,
        candidate=candidate,
        seed=seed,
    )


def _fit_baseline(x: NDArray[np.float32], y: NDArray[np.int64], *, seed: int) -> Any | None:
    from emotion_engine.training.baseline import make_baseline_classifier

    keep = y != NO_LABEL
    if len(np.unique(y[keep])) < 2:
        return None
    return make_baseline_classifier(seed=seed).fit(x[keep], y[keep])


@dataclass(slots=True)
class _Pooled:
    """Out-of-split predictions of one system, pooled per (protocol, test set)."""

    y: list[int]
    pred: list[int]
    angry_score: list[float]
    a_true: list[int]
    a_pred: list[int]

    @classmethod
    def empty(cls) -> _Pooled:
        return cls([], [], [], [], [])


def _emotion_block(pooled: _Pooled, *, labels: Sequence[str]) -> dict[str, Any] | None:
    if not pooled.y:
        return None
    y = np.array(pooled.y)
    pred = np.array(pooled.pred)
    n = len(labels)
    cm = confusion_matrix(y_true=y, y_pred=pred, n_classes=n)
    out: dict[str, Any] = {
        "n": int(y.size),
        "uar": uar(y_true=y, y_pred=pred, n_classes=n),
        "accuracy": accuracy(y_true=y, y_pred=pred),
        "confusion": cm.tolist(),
    }
    if "angry" in labels:
        out["angry_auc"] = roc_auc(
            y_true=y == labels.index("angry"), scores=np.array(pooled.angry_score)
        )
    return out


def _arousal_block(pooled: _Pooled) -> dict[str, Any] | None:
    if not pooled.a_true:
        return None
    y = np.array(pooled.a_true)
    pred = np.array(pooled.a_pred)
    return {
        "n": int(y.size),
        "uar": uar(y_true=y, y_pred=pred, n_classes=3),
        "accuracy": accuracy(y_true=y, y_pred=pred),
        "confusion": confusion_matrix(y_true=y, y_pred=pred, n_classes=3).tolist(),
    }


def _score_split(
    dataset: Dataset,
    feats: Features,
    split: Split,
    *,
    candidate: str,
    seed: int,
    ours: _Pooled,
    base: _Pooled | None,
) -> None:
    labels = dataset.labels
    te = split.test
    emo = te[dataset.y[te] != NO_LABEL]
    aro = te[dataset.arousal[te] != NO_LABEL]
    model = _fit_ours(dataset, feats, split.train, candidate=candidate, seed=seed)
    if emo.size:
        proba = model.predict_proba(feats.test[emo])
        ours.y += dataset.y[emo].tolist()
        ours.pred += proba.argmax(axis=1).tolist()
        if "angry" in labels:
            ours.angry_score += proba[:, labels.index("angry")].tolist()
    # Arousal is scored on held-out corpora only: in the RAVDESS k-fold it merely restates the emotion.
    if aro.size and split.protocol == "loco":
        ours.a_true += dataset.arousal[aro].tolist()
        ours.a_pred += model.predict_arousal_level(feats.test[aro]).tolist()
    if base is None or feats.baseline is None:
        return
    xb = feats.baseline
    tr = split.train
    if emo.size:
        svm = _fit_baseline(xb[tr], dataset.y[tr], seed=seed)
        if svm is not None:
            base.y += dataset.y[emo].tolist()
            base.pred += svm.predict(xb[emo]).tolist()
            if "angry" in labels:
                column = list(svm.classes_).index(labels.index("angry"))
                base.angry_score += svm.decision_function(xb[emo])[:, column].tolist()
    if aro.size and split.protocol == "loco":
        svm_a = _fit_baseline(xb[tr], dataset.arousal[tr], seed=seed)
        if svm_a is not None:
            base.a_true += dataset.arousal[aro].tolist()
            base.a_pred += svm_a.predict(xb[aro]).tolist()


def evaluate_features(
    dataset: Dataset,
    feats: Features,
    *,
    folds: int = 5,
    seed: int = 0,
    candidate: str = DEFAULT_CANDIDATE,
    compare_candidates: bool = True,
    progress: bool = True,
    normalisation: str = "none",
) -> dict[str, Any]:
    """All protocols on precomputed features; returns the results dict (see module doc)."""
    from tqdm import tqdm

    splits = make_splits(dataset, folds=folds, seed=seed)
    systems: dict[str, dict[tuple[str, str], _Pooled]] = {"ours": {}, "baseline": {}}
    for split in tqdm(splits, desc="evaluate", unit="split", disable=not progress):
        # Pool the k-fold folds into one test set; each left-out corpus is its own.
        key = (split.protocol, "ravdess" if split.protocol == "ravdess_kfold" else split.name)
        ours = systems["ours"].setdefault(key, _Pooled.empty())
        base = (
            systems["baseline"].setdefault(key, _Pooled.empty())
            if feats.baseline is not None
            else None
        )
        sf = split_features(dataset, feats, split, normalisation=normalisation, seed=seed)
        _score_split(dataset, sf, split, candidate=candidate, seed=seed, ours=ours, base=base)

    results: dict[str, Any] = {
        "labels": list(dataset.labels),
        "arousal_levels": list(AROUSAL_LEVELS),
        "candidate": candidate,
        "folds": folds,
        "seed": seed,
        "test_condition": "G.711 mu-law round trip at 8 kHz",
        "normalisation": normalisation,
        "protocols": {},
    }
    for system, pooled_by_key in systems.items():
        for (protocol, test_set), pooled in pooled_by_key.items():
            entry = results["protocols"].setdefault(protocol, {}).setdefault(test_set, {})
            entry[system] = {
                "emotion": _emotion_block(pooled, labels=dataset.labels),
                "arousal": _arousal_block(pooled),
            }
    results["summary"] = _summarise(results)
    if compare_candidates:
        results["candidates"] = compare_models(
            dataset,
            feats,
            splits=[s for s in splits if s.protocol == "loco"],
            seed=seed,
            progress=progress,
            normalisation=normalisation,
        )
    return results


def _mean_uar(protocol: dict[str, Any], system: str, head: str) -> float | None:
    values = [
        entry[system][head]["uar"]
        for entry in protocol.values()
        if system in entry and entry[system][head] is not None
    ]
    return float(np.mean(values)) if values else None


def _summarise(results: dict[str, Any]) -> dict[str, Any]:
    protocols = results["protocols"]
    summary: dict[str, Any] = {}
    loco = protocols.get("loco", {})
    for system in ("ours", "baseline"):
        summary[system] = {
            "loco_emotion_uar_mean": _mean_uar(loco, system, "emotion"),
            "loco_arousal_uar_mean": _mean_uar(loco, system, "arousal"),
            "ravdess_kfold_uar": _mean_uar(protocols.get("ravdess_kfold", {}), system, "emotion"),
        }
    for key in ("loco_emotion_uar_mean", "loco_arousal_uar_mean", "ravdess_kfold_uar"):
        a, b = summary["ours"][key], summary["baseline"][key]
        summary.setdefault("difference", {})[key] = None if a is None or b is None else a - b
    return summary


def compare_models(
    dataset: Dataset,
    feats: Features,
    *,
    splits: Sequence[Split],
    seed: int = 0,
    progress: bool = True,
    normalisation: str = "none",
) -> dict[str, Any]:
    """Leave-one-corpus-out emotion UAR of every candidate in ``CANDIDATES``."""
    from tqdm import tqdm

    out: dict[str, Any] = {}
    for name in tqdm(CANDIDATES, desc="candidates", unit="model", disable=not progress):
        started = time.monotonic()
        per_corpus: dict[str, float] = {}
        for split in splits:
            emo = split.test[dataset.y[split.test] != NO_LABEL]
            if not emo.size:
                continue
            sf = split_features(dataset, feats, split, normalisation=normalisation, seed=seed)
            model = _fit_ours(dataset, sf, split.train, candidate=name, seed=seed)
            pred = model.predict_proba(sf.test[emo]).argmax(axis=1)
            per_corpus[split.name] = uar(
                y_true=dataset.y[emo], y_pred=pred, n_classes=len(dataset.labels)
            )
        out[name] = {
            "loco_uar": per_corpus,
            "loco_uar_mean": float(np.mean(list(per_corpus.values()))) if per_corpus else None,
            "fit_s": round(time.monotonic() - started, 1),
        }
    return out


def load_features(
    dataset: Dataset, *, seed: int, include_baseline: bool, progress: bool
) -> Features:
    """Engine features (mu-law and augmented) and, when available, eGeMAPS features."""
    from emotion_engine.training.baseline import (
        BASELINE_ID,
        baseline_unavailable_reason,
        egemaps_extractor,
    )
    from emotion_engine.training.featurize import engine_extractor, featurize

    extractor, _ = engine_extractor()
    test = featurize(clips=dataset.clips, condition="test", extractor=extractor, progress=progress)
    train = featurize(
        clips=dataset.clips, condition="train", seed=seed, extractor=extractor, progress=progress
    )
    baseline = None
    if include_baseline:
        reason = baseline_unavailable_reason()
        if reason:
            print(reason, file=sys.stderr)
        else:
            baseline = featurize(
                clips=dataset.clips,
                condition="test",
                extractor=egemaps_extractor(),
                extractor_id=BASELINE_ID,
                progress=progress,
            )
    return Features(test=test, train=train, baseline=baseline)


def normalisation_digest(results: dict[str, Any]) -> dict[str, Any]:
    """Summary plus leave-one-corpus-out emotion UAR / angry AUC per test set."""
    per_set: dict[str, Any] = {}
    for test_set, entry in results["protocols"].get("loco", {}).items():
        row: dict[str, Any] = {}
        for system in ("ours", "baseline"):
            emotion = (entry.get(system) or {}).get("emotion")
            if emotion:
                row[system] = {"uar": emotion["uar"], "angry_auc": emotion.get("angry_auc")}
        if row:
            per_set[test_set] = row
    return {"summary": results["summary"], "loco": per_set}


def _normalisation_table(results: dict[str, Any]) -> list[str]:
    digests: dict[str, Any] = results.get("normalisations", {})
    sets = sorted({t for d in digests.values() for t in d["loco"]})
    if not digests or not sets:
        return []
    lines = [
        "",
        "### Normalisation (leave-one-corpus-out 4-class UAR % and angry-vs-rest AUC %)",
        "",
        "`per_call`: test speakers scored as live calls (clips in random order, each "
        "normalised by the clips before it); `none`: raw features.",
        "",
        "| normalisation | system | LOCO UAR mean | "
        + " | ".join(f"UAR {t}" for t in sets)
        + " | "
        + " | ".join(f"AUC {t}" for t in sets)
        + " | RAVDESS k-fold UAR |",
        "|---|---|---|" + "---|" * (2 * len(sets) + 1),
    ]
    for mode, d in digests.items():
        shipped = " (main)" if mode == results.get("normalisation") else ""
        for system in ("ours", "baseline"):
            summary = d["summary"].get(system, {})
            if summary.get("loco_emotion_uar_mean") is None:
                continue

            def cell(t: str, key: str, system: str = system, d: Any = d) -> str:
                return _pct((d["loco"].get(t, {}).get(system) or {}).get(key))

            lines.append(
                f"| {mode}{shipped} | {system} | {_pct(summary['loco_emotion_uar_mean'])} | "
                + " | ".join(cell(t, "uar") for t in sets)
                + " | "
                + " | ".join(cell(t, "angry_auc") for t in sets)
                + f" | {_pct(summary.get('ravdess_kfold_uar'))} |"
            )
    return lines


def _pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _diff(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f}"


def format_tables(results: dict[str, Any]) -> str:
    """Markdown tables of ``results`` (printed by the CLI and written into the card)."""
    labels = results["labels"]
    lines: list[str] = []
    s = results["summary"]
    lines += [
        "### Summary (UAR %, test audio G.711 mu-law, speaker-independent, "
        f"normalisation: {results.get('normalisation', 'none')})",
        "",
        "| protocol | ours | eGeMAPS + SVM | difference |",
        "|---|---|---|---|",
    ]
    for key, title in (
        ("loco_emotion_uar_mean", "leave-one-corpus-out, 4-class emotion (mean over corpora)"),
        ("loco_arousal_uar_mean", "leave-one-corpus-out, 3-level arousal (mean over corpora)"),
        ("ravdess_kfold_uar", f"RAVDESS {results['folds']}-fold by speaker, 4-class emotion"),
    ):
        lines.append(
            f"| {title} | {_pct(s['ours'][key])} | {_pct(s['baseline'][key])} | "
            f"{_diff(s['difference'][key])} |"
        )
    lines += _normalisation_table(results)
    if "harness" in results:
        from emotion_engine.training.harness import format_harness

        lines += ["", format_harness(results["harness"], labels).rstrip()]
    lines += ["", "### Per test set", ""]
    lines += [
        "| protocol | test set | n | ours UAR | base UAR | ours acc | base acc | ours angry AUC | base angry AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, sets in results["protocols"].items():
        for test_set, entry in sets.items():
            for head in ("emotion", "arousal"):
                o = entry.get("ours", {}).get(head)
                b = entry.get("baseline", {}).get(head) or {}
                if o is None:
                    continue
                lines.append(
                    f"| {protocol} | {test_set} ({head}) | {o['n']} | {_pct(o['uar'])} | "
                    f"{_pct(b.get('uar'))} | {_pct(o['accuracy'])} | {_pct(b.get('accuracy'))} | "
                    f"{_pct(o.get('angry_auc'))} | {_pct(b.get('angry_auc'))} |"
                )
    if "candidates" in results:
        corpora = sorted({c for v in results["candidates"].values() for c in v["loco_uar"]})
        lines += [
            "",
            "### Emotion-head candidates (leave-one-corpus-out 4-class UAR %, ours features)",
            "",
            "| model | " + " | ".join(corpora) + " | mean | fit time (s) |",
            "|---|" + "---|" * (len(corpora) + 2),
        ]
        for name, v in results["candidates"].items():
            mark = " (shipped)" if name == results["candidate"] else ""
            lines.append(
                f"| {name}{mark} | "
                + " | ".join(_pct(v["loco_uar"].get(c)) for c in corpora)
                + f" | {_pct(v['loco_uar_mean'])} | {v['fit_s']} |"
            )
    lines += ["", "### Confusion matrices (ours; rows = truth, columns = prediction)", ""]
    for protocol, sets in results["protocols"].items():
        for test_set, entry in sets.items():
            for head, names in (("emotion", labels), ("arousal", results["arousal_levels"])):
                block = entry.get("ours", {}).get(head)
                if block is None:
                    continue
                lines += [
                    f"{protocol} / {test_set} / {head}:",
                    "",
                    "| truth \\ pred | " + " | ".join(names) + " |",
                    "|---|" + "---|" * len(names),
                ]
                for name, row in zip(names, block["confusion"], strict=True):
                    if sum(row):
                        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_card(card_path: Path, results: dict[str, Any]) -> None:
    """Replace the evaluation section of the model card (created if missing)."""
    block = f"{CARD_BEGIN}\n\n{format_tables(results)}\n{CARD_END}"
    if card_path.is_file():
        text = card_path.read_text()
        if CARD_BEGIN in text and CARD_END in text:
            head, rest = text.split(CARD_BEGIN, 1)
            tail = rest.split(CARD_END, 1)[1]
            card_path.write_text(head + block + tail)
            return
        card_path.write_text(text.rstrip() + "\n\n## Evaluation\n\n" + block + "\n")
        return
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text("# Emotion model card\n\n## Evaluation\n\n" + block + "\n")


def plot_confusions(results: dict[str, Any], path: Path) -> None:
    """PNG of ours' pooled leave-one-corpus-out and RAVDESS k-fold confusion matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = results["labels"]
    panels: list[tuple[str, NDArray[np.int64]]] = []
    loco = [
        np.array(e["ours"]["emotion"]["confusion"])
        for e in results["protocols"].get("loco", {}).values()
        if e.get("ours", {}).get("emotion")
    ]
    if loco:
        panels.append(("leave-one-corpus-out (pooled)", np.sum(loco, axis=0)))
    kfold = results["protocols"].get("ravdess_kfold", {}).get("ravdess", {}).get("ours", {})
    if kfold.get("emotion"):
        panels.append(("RAVDESS speaker 5-fold", np.array(kfold["emotion"]["confusion"])))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, cm) in zip(axes[0], panels, strict=True):
        rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(rates):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_evaluate(
    *,
    data_dir: Path,
    card_path: Path | None,
    out_json: Path | None,
    seed: int = 0,
    folds: int = 5,
    include_baseline: bool = True,
    progress: bool = True,
    candidate: str = DEFAULT_CANDIDATE,
    compare_candidates: bool = True,
    corpora: Sequence[str] | None = None,
    limit_per_corpus: int | None = None,
    normalisation: str = DEFAULT_NORMALISATION,
    compare_normalisations: bool = True,
    harness: bool = False,
    detection_json: Path | None = None,
) -> dict[str, Any]:
    """Run every protocol on ``data_dir``, print the tables, write ``out_json`` and the
    evaluation section of ``card_path`` (plus ``confusion.png`` beside it)."""
    started = time.monotonic()
    dataset = load_dataset(
        Path(data_dir), corpora=corpora, limit_per_corpus=limit_per_corpus, seed=seed
    )
    feats = load_features(dataset, seed=seed, include_baseline=include_baseline, progress=progress)
    results = evaluate_features(
        dataset,
        feats,
        folds=folds,
        seed=seed,
        candidate=candidate,
        compare_candidates=compare_candidates,
        progress=progress,
        normalisation=normalisation,
    )
    results["normalisations"] = {normalisation: normalisation_digest(results)}
    if compare_normalisations:
        for other in NORMALISATIONS:
            if other == normalisation:
                continue
            alt = evaluate_features(
                dataset,
                feats,
                folds=folds,
                seed=seed,
                candidate=candidate,
                compare_candidates=False,
                progress=progress,
                normalisation=other,
            )
            results["normalisations"][other] = normalisation_digest(alt)
    if harness:
        from emotion_engine.training.harness import run_harness

        results["harness"] = run_harness(
            dataset,
            feats,
            seed=seed,
            normalisation=normalisation,
            progress=progress,
            detection_json=detection_json,
        )
    results["data"] = {"root": str(data_dir), "corpora": dataset.summary()}
    results["baseline"] = (
        None
        if feats.baseline is None
        else "openSMILE eGeMAPSv02 + StandardScaler + SVC(RBF, balanced)"
    )
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print(format_tables(results))
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    if card_path is not None:
        write_card(card_path, results)
        plot_confusions(results, card_path.parent / "confusion.png")
    return results


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emotion-engine evaluate`` (also ``python -m emotion_engine.training.evaluate``)."""
    add_data_arguments(
        parser,
        model_types=CANDIDATES,
        model_type_help=f"emotion head evaluated as 'ours' (default: {DEFAULT_CANDIDATE})",
        normalisation_help=f"normalisation of the main tables (default: "
        f"{DEFAULT_NORMALISATION}, the shipped one); the other is reported beside it",
    )
    parser.add_argument(
        "--card",
        type=Path,
        default=None,
        metavar="README",
        help="model card whose evaluation section is rewritten (e.g. models/README.md); "
        "confusion.png is written beside it",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write all numbers as JSON (default: evaluation.json beside --card)",
    )
    parser.add_argument("--folds", type=int, default=5, help="RAVDESS speaker folds (default: 5)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the openSMILE eGeMAPS + SVM baseline"
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the comparison of emotion-head models"
    )
    parser.add_argument(
        "--harness",
        action="store_true",
        help="also run the evaluation harness: leave-one-corpus-out under mu-law, A-law, "
        "packet loss, noise, level and band-limit; per-class recall, ECE before/after "
        "temperature scaling, groups by sex and language (training/harness.py)",
    )
    parser.add_argument(
        "--detection",
        type=Path,
        default=Path("models/detection.json"),
        metavar="FILE",
        help="stitched-call detection figures copied into the harness output "
        "(written by python -m emotion_engine.training.stitched)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``evaluate`` from parsed arguments; returns the exit status."""
    out_json = args.json
    if out_json is None and args.card is not None:
        out_json = args.card.parent / "evaluation.json"
    run_evaluate(
        data_dir=args.data,
        card_path=args.card,
        out_json=out_json,
        seed=args.seed,
        folds=args.folds,
        include_baseline=not args.no_baseline,
        progress=not args.no_progress,
        candidate=args.model_type or DEFAULT_CANDIDATE,
        compare_candidates=not args.no_compare,
        corpora=args.corpora,
        limit_per_corpus=args.limit_per_corpus,
        normalisation=args.normalisation,
        harness=args.harness,
        detection_json=args.detection,
    )
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import run_module

    run_module(
        prog="python -m emotion_engine.training.evaluate",
        doc=__doc__,
        add_arguments=add_arguments,
        main=main,
    )
