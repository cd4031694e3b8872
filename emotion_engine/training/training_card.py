"""The card ``train`` writes beside every model it makes (``emotion.card.md``).

A model trained on a user's own calls needs the same honesty as the shipped one: what it
learned from, under which licences, and how well it does on speakers it never heard.
So ``train`` runs a speaker-grouped cross-validation of the same recipe on the same rows
(every clip of a speaker is in one fold; the scored copy is the G.711 mu-law one, the
training copies are mu-law + augmented as in the real fit) and writes the figures here.
Cross-corpus figures need several corpora: ``emotion-engine evaluate`` gives those.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emotion_engine.errors import DatasetError
from emotion_engine.model.manifest import ModelManifest
from emotion_engine.training.data import NO_LABEL, Dataset
from emotion_engine.training.metrics import confusion_matrix, recalls, roc_auc, uar

if TYPE_CHECKING:
    from emotion_engine.training.train import TrainRows

CARD_FILE = "emotion.card.md"
MIN_CV_SPEAKERS = 3
"""Fewer speakers than this leave folds of one or two voices: no figure is better."""
MAX_FOLDS = 5


def speaker_cv(
    *,
    dataset: Dataset,
    rows: TrainRows,
    candidate: str,
    seed: int,
    weighting: str = "corpus_class",
) -> dict[str, Any] | None:
    """Speaker-grouped k-fold (k = min(5, speakers)) of the training recipe.

    ``rows``: the recipe's training rows (``train.recipe_rows``). A held-out clip's
    reading is the mean probability over its rows of the G.711 mu-law copy (its speech
    windows, or its one whole-clip row). Returns UAR, per-class recall, confusion and
    angry-vs-rest AUC over the pooled out-of-fold predictions, or None with fewer than
    ``MIN_CV_SPEAKERS`` labelled speakers.
    """
    from sklearn.model_selection import GroupKFold

    from emotion_engine.training.train import fit_model

    n = len(dataset)
    y = dataset.y
    labelled = np.flatnonzero(y != NO_LABEL)
    speakers = dataset.speaker
    n_speakers = len(np.unique(speakers[labelled]))
    if n_speakers < MIN_CV_SPEAKERS:
        return None
    folds = min(MAX_FOLDS, n_speakers)
    pred = np.full(n, NO_LABEL, dtype=np.int64)
    proba = np.zeros((n, len(dataset.labels)), dtype=np.float64)
    skipped_folds = 0
    gkf = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for _, test_part in gkf.split(labelled, groups=speakers[labelled]):
        test_clips = labelled[test_part]
        held_speakers = np.unique(speakers[test_clips])
        train = rows.take(~np.isin(rows.speaker, held_speakers))
        try:
            fitted = fit_model(
                x=train.x,
                y=train.y,
                arousal=train.arousal,
                corpus=train.corpus,
                labels=dataset.labels,
                candidate=candidate,
                seed=seed,
                weighting=weighting,
                speaker=train.speaker,
            )
        except DatasetError:  # a fold without some class: the estimate skips it, and says so
            skipped_folds += 1
            continue
        is_test = np.zeros(n, dtype=np.bool_)
        is_test[test_clips] = True
        test = rows.take(rows.scored & is_test[rows.clip])
        p = fitted.predict_proba(test.x)
        sums = np.zeros((n, p.shape[1]), dtype=np.float64)
        counts = np.zeros(n, dtype=np.float64)
        np.add.at(sums, test.clip, p)
        np.add.at(counts, test.clip, 1.0)
        got = np.flatnonzero(counts > 0)
        proba[got] = sums[got] / counts[got, None]
        pred[got] = proba[got].argmax(axis=1)
    scored = labelled[pred[labelled] != NO_LABEL]
    if scored.size == 0:
        return None
    k = len(dataset.labels)
    cm = confusion_matrix(y_true=y[scored], y_pred=pred[scored], n_classes=k)
    out: dict[str, Any] = {
        "folds": folds,
        "skipped_folds": skipped_folds,
        "speakers": n_speakers,
        "clips_scored": int(scored.size),
        "uar": uar(y_true=y[scored], y_pred=pred[scored], n_classes=k),
        "recall": {
            label: (None if np.isnan(r) else float(r))
            for label, r in zip(dataset.labels, recalls(confusion=cm), strict=True)
        },
        "confusion": cm.tolist(),
    }
    if "angry" in dataset.labels:
        a = dataset.labels.index("angry")
        truth = y[scored] == a
        if 0 < truth.sum() < truth.size:
            out["angry_auc"] = roc_auc(y_true=truth, scores=proba[scored, a])
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def render_card(*, manifest: ModelManifest, cv: dict[str, Any] | None) -> str:
    """Markdown card from the manifest (data, licences, recipe) and ``cv``."""
    data = manifest.training_data
    corpora: dict[str, Any] = data["corpora"]
    labels: Sequence[str] = manifest.labels
    lines = [
        "# Emotion model card (written by `emotion-engine train`)",
        "",
        f"- Created: {manifest.created_utc}; seed {manifest.seed}.",
        f"- Command: `{manifest.command}`",
        f"- Model: {manifest.model_type}; {len(manifest.feature_names)} window functionals "
        f"at {manifest.sample_rate_hz} Hz; labels {', '.join(labels)}.",
        f"- Normalisation: {manifest.normalisation.get('kind', 'none')}.",
        f"- ONNX sha256: `{manifest.onnx_sha256}`. Load it with "
        "`emotion-engine serve --model DIR` (or `analyze --model DIR`).",
        "",
        "## Training data",
        "",
        "| corpus | clips | speakers | " + " | ".join(labels) + " | used for emotion | licence |",
        "|---|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for name, c in corpora.items():
        counts = [str(c["emotion_clips"].get(label, 0)) for label in labels]
        lines.append(
            f"| {name} | {c['clips']} | {c['speakers']} | "
            + " | ".join(counts)
            + f" | {'yes' if c['used_for_emotion'] else 'no (arousal only)'} | {c['licence']} |"
        )
    lines += [
        "",
        f"Training rows: {data.get('rows', 'one whole-clip row per clip and copy')}; "
        f"copies of every clip: {'; '.join(data['copies_per_clip'])}. "
        f"Sample weights: {data['sample_weights']}.",
        "",
        "## On speakers it never heard",
        "",
    ]
    if cv is None:
        lines.append(
            f"Not estimated: the data has fewer than {MIN_CV_SPEAKERS} speakers with emotion "
            "labels, and a figure from the training speakers would flatter the model."
        )
    else:
        lines += [
            f"Speaker-grouped {cv['folds']}-fold cross-validation of this recipe on this "
            f"data ({cv['speakers']} speakers, {cv['clips_scored']} clips scored on their "
            "G.711 mu-law copy; every clip of a speaker in one fold)"
            + (
                f"; {cv['skipped_folds']} fold(s) lacked a class and were skipped"
                if cv["skipped_folds"]
                else ""
            )
            + ":",
            "",
            "| UAR | " + " | ".join(f"recall {label}" for label in labels) + " | angry AUC |",
            "|---|" + "---|" * len(labels) + "---|",
            f"| {_pct(cv['uar'])} | "
            + " | ".join(_pct(cv["recall"][label]) for label in labels)
            + f" | {_pct(cv.get('angry_auc'))} |",
            "",
            "These speakers share the corpus's language, microphones and recording style, so "
            "calls from elsewhere will usually score lower; with several corpora, "
            "`emotion-engine evaluate --data DIR` measures leave-one-corpus-out figures.",
        ]
    lines += [
        "",
        "## Before deploying",
        "",
        "Measure on your own calls first (for spikes: `python -m "
        "emotion_engine.training.stitched --model DIR`), and keep agent-side analysis off "
        "unless your works council and the EU AI Act assessment allow it.",
        "",
    ]
    return "\n".join(lines)


def write_card(out_dir: Path, *, manifest: ModelManifest, cv: dict[str, Any] | None) -> Path:
    path = Path(out_dir) / CARD_FILE
    path.write_text(render_card(manifest=manifest, cv=cv))
    return path
