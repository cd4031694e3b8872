"""Evaluation harness: leave-one-corpus-out under realistic telephone faults, by group.

    python -m emotion_engine.training.evaluate --data ../shared/data --harness [--card models/README.md]

For each leave-one-corpus-out split the shipped recipe (features, augmentation,
normalisation, head) is trained once on the other corpora and tested on the held-out
corpus under every condition of ``harness_audio.HARNESS_CONDITIONS`` (mu-law, A-law,
packet loss with the engine's concealment, noise, level, band-limit). Reported per
condition and held-out corpus: per-class recall, UAR, angry-vs-rest ROC-AUC, top-label
expected calibration error (ECE, 10 bins) before and after temperature scaling, and
for BAVED the low/mid/high arousal accuracy. On mu-law, UAR by sex (labels.csv ``sex``)
and by language (per corpus) over the pooled held-out predictions.

Temperature scaling is judged without peeking: the temperature applied to a held-out
corpus is fitted on the *other* held-out corpora's mu-law predictions (speakers the
model never saw in either case). The spike-detection figures come from
``models/detection.json`` (``python -m emotion_engine.training.stitched``), which
trains its own held-out model, and are copied into the harness JSON when present.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.training.data import NO_LABEL, Dataset
from emotion_engine.training.harness_audio import HARNESS_CONDITIONS
from emotion_engine.training.metrics import (
    accuracy,
    apply_temperature,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    recalls,
    roc_auc,
    uar,
)

LANGUAGE_OF_CORPUS: dict[str, str] = {
    "ravdess": "English",
    "tess": "English",
    "turevdb": "Turkish",
    "baved": "Arabic",
    "ased": "Amharic",
}


def clip_sex(dataset: Dataset) -> NDArray[np.str_]:
    """(n_clips,) ``M``/``F`` from each corpus's labels.csv ``sex`` column, ``?`` if absent."""
    by_path: dict[Path, str] = {}
    for csv_path in {c.path.parent / "labels.csv" for c in dataset.clips}:
        if not csv_path.is_file():
            continue
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                by_path[(csv_path.parent / row["file"]).resolve()] = (
                    row.get("sex") or ""
                ).strip().upper() or "?"
    return np.array([by_path.get(c.path.resolve(), "?") for c in dataset.clips])


def _condition_features(
    dataset: Dataset, *, seed: int, progress: bool, test: NDArray[np.float32]
) -> dict[str, NDArray[np.float32]]:
    from emotion_engine.training.featurize import engine_extractor, featurize

    extractor, _ = engine_extractor()
    out: dict[str, NDArray[np.float32]] = {"mulaw": test}
    for name in HARNESS_CONDITIONS:
        if name == "mulaw":
            continue  # identical to the evaluation's test condition (one cache)
        out[name] = featurize(
            clips=dataset.clips,
            condition=f"harness-{name}",
            seed=seed,
            extractor=extractor,
            progress=progress,
        )
    return out


def _emotion_metrics(
    y: NDArray[np.int64], proba: NDArray[np.float64], labels: tuple[str, ...]
) -> dict[str, Any]:
    pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true=y, y_pred=pred, n_classes=len(labels))
    r = recalls(confusion=cm)
    out: dict[str, Any] = {
        "n": int(y.size),
        "uar": uar(y_true=y, y_pred=pred, n_classes=len(labels)),
        "recall": {
            label: (None if np.isnan(v) else float(v)) for label, v in zip(labels, r, strict=True)
        },
        "ece": expected_calibration_error(y_true=y, probabilities=proba),
    }
    if "angry" in labels:
        out["angry_auc"] = roc_auc(
            y_true=y == labels.index("angry"), scores=proba[:, labels.index("angry")]
        )
    return out


def run_harness(
    dataset: Dataset,
    feats: Any,
    *,
    seed: int,
    normalisation: str,
    progress: bool = True,
    detection_json: Path | None = None,
) -> dict[str, Any]:
    """All harness numbers as one JSON-ready dict (see the module docstring)."""
    from tqdm import tqdm

    from emotion_engine.training.evaluate import (
        _fit_ours,
        _running_by_speaker,
        make_splits,
        split_features,
    )
    from emotion_engine.training.train import DEFAULT_CANDIDATE, call_norm_params

    labels = dataset.labels
    conditions = _condition_features(dataset, seed=seed, progress=progress, test=feats.test)
    splits = [s for s in make_splits(dataset, seed=seed) if s.protocol == "loco"]
    sex = clip_sex(dataset)
    # per condition: held-out probabilities and arousal levels for every clip (NaN: none)
    proba = {c: np.full((len(dataset), len(labels)), np.nan) for c in conditions}
    level = {c: np.full(len(dataset), NO_LABEL, dtype=np.int64) for c in conditions}
    for split in tqdm(splits, desc="harness", unit="split", disable=not progress):
        sf = split_features(dataset, feats, split, normalisation=normalisation, seed=seed)
        model = _fit_ours(dataset, sf, split.train, candidate=DEFAULT_CANDIDATE, seed=seed)
        te = split.test
        params = (
            None
            if normalisation == "none"
            else call_norm_params(
                x=feats.test[split.train],
                speaker=dataset.speaker[split.train],
                corpus=dataset.corpus[split.train],
            )
        )
        for name, x in conditions.items():
            xt = (
                x
                if params is None
                else _running_by_speaker(
                    x=x, rows=te, speaker=dataset.speaker, params=params, seed=seed
                )
            )
            proba[name][te] = model.predict_proba(xt[te])
            level[name][te] = model.predict_arousal_level(xt[te])

    y = dataset.y
    corpus = dataset.corpus
    emo_sets = [c for c in dataset.corpora if np.any((corpus == c) & (y != NO_LABEL))]
    # temperature for each held-out corpus from the other held-out corpora (mu-law)
    temperatures: dict[str, float] = {}
    for c in emo_sets:
        other = (corpus != c) & (y != NO_LABEL) & np.isin(corpus, emo_sets)
        if other.any():
            temperatures[c] = fit_temperature(y_true=y[other], probabilities=proba["mulaw"][other])
    pooled_mask = (y != NO_LABEL) & np.isin(corpus, emo_sets)
    shipped_t = (
        fit_temperature(y_true=y[pooled_mask], probabilities=proba["mulaw"][pooled_mask])
        if pooled_mask.any()
        else 1.0
    )

    results: dict[str, Any] = {
        "normalisation": normalisation,
        "conditions": dict(HARNESS_CONDITIONS),
        "per_condition": {},
        "temperature": {
            "per_held_out_corpus (fitted on the other held-out corpora)": temperatures,
            "all held-out corpora pooled": shipped_t,
        },
    }
    for name in conditions:
        block: dict[str, Any] = {}
        for c in dataset.corpora:
            mine = corpus == c
            emo = mine & (y != NO_LABEL)
            entry: dict[str, Any] = {}
            if emo.any() and c in emo_sets:
                p = proba[name][emo]
                entry["emotion"] = _emotion_metrics(y[emo], p, labels)
                if c in temperatures:
                    cal = apply_temperature(probabilities=p, temperature=temperatures[c])
                    entry["emotion"]["ece_temperature"] = expected_calibration_error(
                        y_true=y[emo], probabilities=cal
                    )
            aro = mine & (dataset.arousal != NO_LABEL)
            if aro.any() and not entry:
                entry["arousal"] = {
                    "n": int(aro.sum()),
                    "accuracy": accuracy(y_true=dataset.arousal[aro], y_pred=level[name][aro]),
                    "uar": uar(y_true=dataset.arousal[aro], y_pred=level[name][aro], n_classes=3),
                }
            if entry:
                block[c] = entry
        if pooled_mask.any():
            block["pooled"] = {
                "emotion": _emotion_metrics(y[pooled_mask], proba[name][pooled_mask], labels)
            }
        results["per_condition"][name] = block

    # groups on mu-law, over the pooled held-out predictions
    groups: dict[str, Any] = {}
    if pooled_mask.any():
        pred = proba["mulaw"].argmax(axis=1)
        overall = uar(y_true=y[pooled_mask], y_pred=pred[pooled_mask], n_classes=len(labels))
        groups["overall_uar"] = overall
        for kind, values in (
            ("sex", sex),
            ("language", np.array([LANGUAGE_OF_CORPUS.get(c, c) for c in corpus])),
        ):
            for g in np.unique(values[pooled_mask]):
                m = pooled_mask & (values == g)
                u = uar(y_true=y[m], y_pred=pred[m], n_classes=len(labels))
                groups[f"{kind}={g}"] = {
                    "n": int(m.sum()),
                    "uar": u,
                    "below_overall_points": 100 * (overall - u),
                    "corpora": sorted(set(corpus[m].tolist())),
                }
    results["groups_mulaw"] = groups
    if detection_json is not None and detection_json.is_file():
        det = json.loads(detection_json.read_text())
        results["detection"] = {
            k: det.get(k)
            for k in (
                "spike_recall_3s",
                "median_delay_s",
                "median_delay_all_s",
                "median_delay_all_from_clip_start_s",
                "false_spikes_per_hour",
                "anger_segments",
                "false_spikes",
                "neutral_hours",
                "by_corpus",
                "normalisation",
                "model",
            )
        }
        results["detection"]["source"] = str(detection_json)
    return results


def _pct(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def format_harness(h: dict[str, Any], labels: tuple[str, ...] | list[str]) -> str:
    """Markdown tables of :func:`run_harness` output."""
    lines = [
        "### Harness: leave-one-corpus-out under telephone faults "
        f"(normalisation: {h['normalisation']})",
        "",
        "| condition | held-out | n | UAR % | "
        + " | ".join(f"recall {x} %" for x in labels)
        + " | angry AUC % | ECE % | ECE after T % | arousal acc % |",
        "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|---|",
    ]
    for cond, block in h["per_condition"].items():
        for test_set, entry in block.items():
            e = entry.get("emotion")
            a = entry.get("arousal")
            if e:
                lines.append(
                    f"| {cond} | {test_set} | {e['n']} | {_pct(e['uar'])} | "
                    + " | ".join(_pct(e["recall"].get(x)) for x in labels)
                    + f" | {_pct(e.get('angry_auc'))} | {_pct(e['ece'])} | "
                    f"{_pct(e.get('ece_temperature'))} | – |"
                )
            elif a:
                lines.append(
                    f"| {cond} | {test_set} (arousal) | {a['n']} | {_pct(a['uar'])} | "
                    + " | ".join("–" for _ in labels)
                    + f" | – | – | – | {_pct(a['accuracy'])} |"
                )
    t = h["temperature"]
    per = t["per_held_out_corpus (fitted on the other held-out corpora)"]
    lines += [
        "",
        "Temperatures (fitted on the other held-out corpora's mu-law predictions): "
        + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        + f"; all held-out corpora pooled: {t['all held-out corpora pooled']:.2f}.",
    ]
    g = h.get("groups_mulaw", {})
    if g:
        lines += [
            "",
            f"Groups (mu-law, pooled held-out predictions; overall UAR {_pct(g['overall_uar'])} %):",
            "",
            "| group | n | UAR % | points below overall | corpora |",
            "|---|---|---|---|---|",
        ]
        for k, v in g.items():
            if k == "overall_uar":
                continue
            lines.append(
                f"| {k} | {v['n']} | {_pct(v['uar'])} | {v['below_overall_points']:+.1f} | "
                f"{', '.join(v['corpora'])} |"
            )
    d = h.get("detection")
    if d:
        lines += [
            "",
            f"Stitched-call detection (from {d['source']}, normalisation "
            f"{d.get('normalisation') or 'none'}): spike "
            f"recall within 3 s {_pct(d['spike_recall_3s'])} % of {d['anger_segments']}, "
            f"median delay {d['median_delay_s']:.2f} s from the angry voice's onset"
            + (
                f" ({d['median_delay_all_from_clip_start_s']:.2f} s over all detected segments"
                " from the anger clip's first sample, its leading silence included)"
                if d.get("median_delay_all_from_clip_start_s") is not None
                else ""
            )
            + f", false spikes {d['false_spikes_per_hour']:.1f} per hour of neutral/calm speech.",
        ]
    return "\n".join(lines) + "\n"
