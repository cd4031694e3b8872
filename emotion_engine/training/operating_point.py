"""The spike detector's operating point, on held-out corpora.

    python -m emotion_engine.training.operating_point --data ../shared/data \\
        [--out models/operating_point.json] [--plot models/tradeoff.png] [--calibrate]

For each of the five corpora, with that corpus held out entirely (leave-one-corpus-out,
as ``loco``):

1. the shipped recipe (``train.DEFAULT_RECIPE``: rows, augmentation copies, weights,
   head, seed; ``--recipe`` for another) is trained on the other corpora;
2. with ``--calibrate``, a temperature is fitted on *held-out speakers of those training
   corpora* (out-of-fold, 5 folds by speaker), never on the held-out corpus;
3. stitched calls of up to 8 of the held-out corpus's speakers are built as ``loco``
   builds them (``loco.stitched_calls``: neutral/calm speech, then anger, then calm; and
   calm-only calls; BAVED, without anger, calm-only calls from its neutral level; G.711
   mu-law) and streamed once through the live engine; every window's scores are kept
   (``--scores-cache`` keeps them for a rerun of the sweep);
4. the spike detector is replayed over those scores for a grid of its settings
   (``detector_grid``: start threshold, margin over the call's baseline, smoothing,
   minimum duration, early threshold, the baseline's calm bar and population prior).
   Replaying is exact: the engine feeds the same ``EmotionScores`` to the same detector
   (a test checks the two paths agree).

Reported per held-out corpus and grid point: spike recall within 3 s of the anger onset,
false spikes per hour of neutral/calm speech and median delay (the figures of
``stitched``).

The operating point is chosen by a stated rule, not by eye: the highest macro recall
(mean over the corpora with anger) whose macro false-alarm rate (mean over all corpora)
is within ``--fa-budget`` per hour and whose worst corpus is within
``--worst-fa-budget`` (ties: fewer on the worst corpus, then on average; without such a
setting the worst-corpus budget is dropped; without any, the fewest false spikes). It is
chosen twice: on all corpora (the candidate default; in-sample), and for each corpus on
the *other* corpora only, then scored on that corpus (an honest estimate of what the
rule gives on a corpus it never saw).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_ENGINE_PARAMS, DetectorParams, engine_params_with_detector
from emotion_engine.detect.spike import SpikeDetector
from emotion_engine.engine.pipeline import Engine
from emotion_engine.errors import DatasetError
from emotion_engine.frames import EmotionScores
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.data import NO_LABEL, Dataset, load_dataset
from emotion_engine.training.metrics import (
    apply_temperature,
    fit_temperature,
)
from emotion_engine.training.stitched import (
    StitchedCall,
    build_calls,
    score,
    spike_starts,
    stream_events,
)

log = logging.getLogger(__name__)

CALIBRATION_FOLDS = 5
DEFAULT_FA_BUDGET_PER_HOUR = 5.0
"""The model-quality issue's target: at most 5 false spikes per hour of calm speech
overall (here: the mean over held-out corpora, each corpus weighing the same)."""

DEFAULT_WORST_FA_BUDGET_PER_HOUR: float | None = 10.0
"""... and at most 10 in every language (here: every held-out corpus)."""

SWEEP_FIGURES: tuple[str, ...] = (
    "anger_segments",
    "detected_within_3s",
    "spike_recall_3s",
    "median_delay_s",
    "detected_at_all",
    "false_spikes",
    "neutral_hours",
    "false_spikes_per_hour",
)
"""What the sweep keeps of :func:`stitched.score` per grid point and corpus."""


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One detector setting of the sweep; the other fields stay at their defaults.

    ``off_threshold`` and ``early_on_threshold`` follow ``on_threshold`` (-0.20 and +0.15,
    the offsets of the original defaults) unless given."""

    on_threshold: float
    on_margin: float
    smoothing_windows: int
    min_duration_s: float
    off_threshold: float | None = None
    early_on_threshold: float | None = None
    end_smoothing_windows: int | None = None
    prior_baseline: float | None = None
    calm_max_score: float | None = None
    early_min_duration_s: float | None = None
    merge_gap_s: float | None = None

    @property
    def off(self) -> float:
        if self.off_threshold is not None:
            return self.off_threshold
        return round(max(0.0, self.on_threshold - 0.20), 4)

    @property
    def early(self) -> float:
        if self.early_on_threshold is not None:
            return self.early_on_threshold
        return round(min(1.0, self.on_threshold + 0.15), 4)

    def params(self, base: DetectorParams = DEFAULT_ENGINE_PARAMS.detector) -> DetectorParams:
        return dataclasses.replace(
            base,
            on_threshold=self.on_threshold,
            on_margin=self.on_margin,
            off_threshold=self.off,
            early_on_threshold=self.early,
            smoothing_windows=self.smoothing_windows,
            min_duration_s=self.min_duration_s,
            end_smoothing_windows=(
                0 if self.end_smoothing_windows is None else self.end_smoothing_windows
            ),
            **{
                name: getattr(self, name)
                for name in OPTIONAL_FIELDS
                if getattr(self, name) is not None
            },
        )

    def key(self) -> str:
        return (
            f"on={self.on_threshold:.2f} margin={self.on_margin:.2f} "
            f"smooth={self.smoothing_windows} min={self.min_duration_s:g}s"
            + ("" if self.off_threshold is None else f" off={self.off_threshold:.2f}")
            + ("" if self.early_on_threshold is None else f" early={self.early_on_threshold:.2f}")
            + ("" if self.end_smoothing_windows is None else f" end={self.end_smoothing_windows}")
            + "".join(
                f" {OPTIONAL_FIELDS[name]}={getattr(self, name):g}"
                for name in OPTIONAL_FIELDS
                if getattr(self, name) is not None
            )
        )


OPTIONAL_FIELDS: dict[str, str] = {
    "prior_baseline": "prior",
    "calm_max_score": "calm_max",
    "early_min_duration_s": "early_min",
    "merge_gap_s": "merge",
}
"""GridPoint fields left at the shipped defaults when None, and their short names in keys."""


def default_grid(extra: Sequence[GridPoint] = ()) -> list[GridPoint]:
    """13 thresholds x 5 margins x 3 smoothings x 2 minimum durations (390 points), then
    the shipped defaults and ``extra`` where they are not among them."""
    ons = [round(0.30 + 0.05 * i, 2) for i in range(13)]
    grid = [
        GridPoint(on, margin, smooth, min_s)
        for on, margin, smooth, min_s in product(
            ons, (0.0, 0.1, 0.2, 0.3, 0.4), (1, 2, 3), (0.5, 1.0)
        )
    ]
    for point in (grid_point_of(DEFAULT_ENGINE_PARAMS.detector), *extra):
        if point not in grid:
            grid.append(point)
    return grid


def detector_grid(extra: Sequence[GridPoint] = ()) -> list[GridPoint]:
    """The sweep for the current detector (one-window start, three-window end): 10 start
    thresholds (0.50-0.95) x 4 margins x 3 smoothings x 3 minimum durations x 2 early
    thresholds (the start threshold +0.15, capped at 0.99, or 0.99) x 2 calm bars for the
    baseline x 2 population priors = 2,880 points; then the shipped defaults and
    ``extra`` where they are not among them."""
    ons = [round(0.50 + 0.05 * i, 2) for i in range(10)]
    grid = [
        GridPoint(
            on,
            margin,
            smooth,
            min_s,
            early_on_threshold=round(min(0.99, on + early), 2),
            end_smoothing_windows=3,
            calm_max_score=calm,
            prior_baseline=prior,
        )
        for on, margin, smooth, min_s, early, calm, prior in product(
            ons,
            (0.2, 0.3, 0.4, 0.5),
            (1, 2, 3),
            (0.5, 1.0, 2.0),
            (0.15, 1.0),
            (0.4, 0.5),
            (0.10, 0.20),
        )
    ]
    for point in (grid_point_of(DEFAULT_ENGINE_PARAMS.detector), *extra):
        if point not in grid:
            grid.append(point)
    return list(dict.fromkeys(grid))


def grid_point_of(params: DetectorParams) -> GridPoint:
    """``params`` as a grid point: off/early thresholds explicit only where they differ
    from the derived ones (so the original defaults map onto the plain grid)."""
    plain = GridPoint(
        params.on_threshold, params.on_margin, params.smoothing_windows, params.min_duration_s
    )
    point = dataclasses.replace(
        plain,
        off_threshold=None if params.off_threshold == plain.off else params.off_threshold,
        early_on_threshold=(
            None if params.early_on_threshold == plain.early else params.early_on_threshold
        ),
        end_smoothing_windows=params.end_smoothing_windows or None,
    )
    defaults = DEFAULT_ENGINE_PARAMS.detector
    changed: dict[str, Any] = {
        name: None if getattr(params, name) == getattr(defaults, name) else getattr(params, name)
        for name in OPTIONAL_FIELDS
    }
    return dataclasses.replace(point, **changed)


# -- scores: one pass of each call through the live engine ------------------------------


def scores_from_events(events: Sequence[dict[str, Any]]) -> list[EmotionScores]:
    """The ``EmotionScores`` of every window, read back from its ``emotion.update`` event
    (the event carries everything the detector was given)."""
    return [
        EmotionScores(
            call_id=d["call_id"],
            party=d["party"],
            t=float(d["t"]),
            probabilities={k: float(v) for k, v in d["probabilities"].items()},
            arousal=float(d["arousal"]),
            voiced_ratio=float(d["voiced_ratio"]),
            is_speech=bool(d["is_speech"]),
            low_confidence=bool(d.get("low_confidence", False)),
            stage=int(d.get("stage", 1)),
        )
        for d in events
        if d["type"] == "emotion.update"
    ]


def temper(scores: Sequence[EmotionScores], temperature: float) -> list[EmotionScores]:
    """The same windows with ``softmax(log p / T)`` probabilities."""
    if not scores:
        return []
    labels = list(scores[0].probabilities)
    p = np.array([[s.probabilities[k] for k in labels] for s in scores], dtype=np.float64)
    q = apply_temperature(probabilities=p, temperature=temperature)
    return [
        dataclasses.replace(s, probabilities=dict(zip(labels, map(float, row), strict=True)))
        for s, row in zip(scores, q, strict=True)
    ]


def replay_spikes(
    scores: Sequence[EmotionScores], *, labels: Sequence[str], params: DetectorParams, t_end: float
) -> list[dict[str, Any]]:
    """Spike-start events (as dicts) of a fresh detector fed ``scores`` then finished at
    ``t_end``: what the engine's tracker would emit with ``params``."""
    detector = SpikeDetector(labels=labels, params=params)
    events = []
    for s in scores:
        events += detector.update(s)
    events += detector.finish(t=t_end)
    return spike_starts([e.to_dict() for e in events])


# -- models: the shipped recipe without the held-out corpus -------------------------------


def oof_temperature(
    dataset: Dataset, feats: Any, train_idx: NDArray[np.int64], *, seed: int
) -> tuple[float, int]:
    """Temperature fitted on out-of-fold probabilities of ``train_idx``'s labelled clips
    (5 folds by speaker; mu-law copies scored). Returns (T, clips scored)."""
    from sklearn.model_selection import GroupKFold

    from emotion_engine.training.evaluate import training_rows
    from emotion_engine.training.train import fit_model

    labelled = train_idx[dataset.y[train_idx] != NO_LABEL]
    gkf = GroupKFold(n_splits=CALIBRATION_FOLDS, shuffle=True, random_state=seed)
    probs = np.zeros((labelled.size, len(dataset.labels)), dtype=np.float64)
    for _, score_part in gkf.split(labelled, groups=dataset.speaker[labelled]):
        # every clip of the scored speakers leaves training; arousal-only clips (BAVED)
        # of other speakers stay, as in the shipped recipe
        scored_speakers = np.unique(dataset.speaker[labelled[score_part]])
        fit_idx = train_idx[~np.isin(dataset.speaker[train_idx], scored_speakers)]
        fitted = fit_model(
            **training_rows(dataset, feats, fit_idx), labels=dataset.labels, seed=seed
        )
        probs[score_part] = fitted.predict_proba(feats.test[labelled[score_part]])
    return fit_temperature(y_true=dataset.y[labelled], probabilities=probs), int(labelled.size)


def train_without(
    dataset: Dataset, feats: Any, train_idx: NDArray[np.int64], *, seed: int, out_dir: Path
) -> tuple[EmotionModel, Any]:
    """The shipped recipe on ``train_idx`` only, exported and loaded like the shipped model."""
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES
    from emotion_engine.training.evaluate import training_rows
    from emotion_engine.training.train import fit_model, save_model

    rows = training_rows(dataset, feats, train_idx)
    fitted = fit_model(**rows, labels=dataset.labels, seed=seed)
    path = save_model(
        fitted,
        x=rows["x"],
        names=tuple(FUNCTIONAL_NAMES),
        norm=None,
        normalisation="none",
        dataset=dataset.subset(train_idx),
        data_dir=dataset.root,
        out_dir=out_dir,
        seed=seed,
        command="emotion_engine.training.operating_point (one leave-one-corpus-out fold)",
        started=time.monotonic(),
    )
    return EmotionModel.load(path), fitted


# -- metrics over the grid ---------------------------------------------------------------


@dataclass(slots=True)
class CorpusCalls:
    """One held-out corpus: its calls and each call's window scores (raw and scaled)."""

    corpus: str
    labels: tuple[str, ...]
    calls: list[StitchedCall]
    raw: list[list[EmotionScores]]
    calibrated: list[list[EmotionScores]]


def sweep(
    held_out: Sequence[CorpusCalls],
    grid: Sequence[GridPoint],
    *,
    scales: Sequence[str] = ("raw", "calibrated"),
    progress: bool = True,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``[scale][corpus][grid key]`` -> stitched-call figures (recall within 3 s, false
    spikes per hour, delays); ``scale`` is ``raw`` or ``calibrated``."""
    from tqdm import tqdm

    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {scale: {} for scale in scales}
    bar = tqdm(
        total=len(scales) * len(grid) * len(held_out),
        desc="detector sweep",
        unit="setting",
        disable=not progress,
    )
    for scale in scales:
        for hc in held_out:
            per_point: dict[str, dict[str, Any]] = {}
            windows = hc.raw if scale == "raw" else hc.calibrated
            for point in grid:
                params = point.params()
                found = [
                    replay_spikes(w, labels=hc.labels, params=params, t_end=c.samples.size / 8000)
                    for c, w in zip(hc.calls, windows, strict=True)
                ]
                s = score(hc.calls, found)
                per_point[point.key()] = {k: s[k] for k in SWEEP_FIGURES}
                bar.update()
            out[scale][hc.corpus] = per_point
    bar.close()
    return out


def macro(
    per_corpus: dict[str, dict[str, dict[str, Any]]], corpora: Iterable[str], key: str
) -> dict[str, float]:
    """Grid key -> mean over ``corpora`` of figure ``key`` (each corpus weighs the same)."""
    names = list(corpora)
    keys = per_corpus[names[0]].keys()
    if key == "spike_recall_3s":  # only corpora with anger to detect (not calm-only ones)
        first = next(iter(keys))
        names = [c for c in names if per_corpus[c][first].get("anger_segments", 1)] or names
    return {k: float(np.mean([float(per_corpus[c][k][key] or 0.0) for c in names])) for k in keys}


def worst(
    per_corpus: dict[str, dict[str, dict[str, Any]]], corpora: Iterable[str], key: str
) -> dict[str, float]:
    """Grid key -> the largest figure ``key`` over ``corpora``."""
    names = list(corpora)
    keys = per_corpus[names[0]].keys()
    return {k: max(float(per_corpus[c][k][key] or 0.0) for c in names) for k in keys}


def choose(
    per_corpus: dict[str, dict[str, dict[str, Any]]],
    corpora: Sequence[str],
    *,
    fa_budget: float,
    worst_fa_budget: float | None = None,
) -> tuple[str, bool]:
    """The grid key the rule picks on ``corpora`` and whether it met the budget: highest
    macro recall within ``fa_budget`` false spikes per hour (mean over ``corpora``) and,
    if ``worst_fa_budget`` is given, within it on every corpus (ties: fewer false spikes
    on the worst corpus, then fewer on average). If none meets both, the worst-corpus
    budget is dropped; if none meets the mean budget, the fewest false spikes (ties:
    higher recall)."""
    recall = macro(per_corpus, corpora, "spike_recall_3s")
    fa = macro(per_corpus, corpora, "false_spikes_per_hour")
    top = worst(per_corpus, corpora, "false_spikes_per_hour")
    within = [
        k
        for k in recall
        if fa[k] <= fa_budget and (worst_fa_budget is None or top[k] <= worst_fa_budget)
    ]
    if not within:
        within = [k for k in recall if fa[k] <= fa_budget]
    if within:
        return max(within, key=lambda k: (recall[k], -top[k], -fa[k])), True
    return min(recall, key=lambda k: (fa[k], -recall[k])), False


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(false spikes/h, recall) pairs on the lower-right frontier, by false-alarm rate:
    no other point has fewer false spikes and at least the recall."""
    best: list[tuple[float, float]] = []
    for fa, rec in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not best or rec > best[-1][1]:
            best.append((fa, rec))
    return best


def _figures(
    result: dict[str, Any], scale: str, panel: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Grid key -> (recall within 3 s, false spikes per hour) on one corpus or the macro
    mean (``panel == "macro"``)."""
    per = result["sweep"][scale]
    if panel == "macro":
        names = list(result["corpora"])
        return (
            macro(per, names, "spike_recall_3s"),
            macro(per, names, "false_spikes_per_hour"),
        )
    return (
        {k: float(v["spike_recall_3s"] or 0.0) for k, v in per[panel].items()},
        {k: float(v["false_spikes_per_hour"] or 0.0) for k, v in per[panel].items()},
    )


def plot_tradeoff(result: dict[str, Any], path: Path) -> None:
    """One panel per held-out corpus and one for the macro mean: every grid point, the
    frontier for raw and calibrated scores, the shipped defaults, and the points the rule
    picks on all corpora at ``fa_budget_per_hour``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(result["corpora"])
    panels = [*corpora, "macro"]
    budget = f"{result['fa_budget_per_hour']:g}"
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 4.2 * rows), sharey=True, squeeze=False)
    colours = {"raw": "tab:blue", "calibrated": "tab:orange"}
    fa_max = 1.0
    for ax, panel in zip(axes.flat, panels, strict=False):
        for scale in result["sweep"]:
            rec, fa = _figures(result, scale, panel)
            pts = [(fa[k], rec[k]) for k in rec]
            fa_max = max(fa_max, *(p[0] for p in pts))
            ax.scatter(*zip(*pts, strict=True), s=6, alpha=0.15, color=colours[scale])
            front = pareto(pts)
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color=colours[scale],
                label=f"{scale} scores: best recall for each false-alarm rate",
            )
            for marker, key, name in (
                ("s", result["defaults"]["key"], "shipped defaults"),
                ("*", result["chosen"][scale][budget]["key"], f"rule at {budget}/h"),
            ):
                ax.scatter(
                    [fa[key]],
                    [rec[key]],
                    marker=marker,
                    s=110 if marker == "*" else 45,
                    color=colours[scale],
                    edgecolor="black",
                    zorder=3,
                    label=f"{name} ({scale})",
                )
        ax.axvline(result["fa_budget_per_hour"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, fa_max * 1.3)
        ax.set_xlabel("false spikes per hour of calm speech")
        ax.set_ylabel("anger spikes within 3 s of onset")
        ax.set_title(f"held out: {panel}" if panel != "macro" else "mean over the held-out corpora")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        "Spike detector on stitched calls from corpora the model never heard "
        f"(dotted line: {budget} false spikes/h)"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    """Markdown: calibration per held-out corpus; then per false-alarm budget and scale,
    the point picked on all corpora and each corpus scored with the point picked on the
    other corpora; then the shipped defaults per corpus."""
    names = list(result["corpora"])

    def cell(m: dict[str, Any]) -> str:
        delay = m.get("median_delay_s")
        recall = (
            f"{100 * (m['spike_recall_3s'] or 0):.0f} % "
            f"({m['detected_within_3s']}/{m['anger_segments']}), "
            if m["anger_segments"]
            else "(calm only) "
        )
        return (
            recall
            + f"{m['false_spikes_per_hour']:.1f}/h"
            + ("" if delay is None else f", {delay:.1f} s")
        )

    lines = (
        [
            "| held-out corpus | T | clips for T | ECE raw | ECE scaled |",
            "|---|---|---|---|---|",
        ]
        if any("ece_raw" in v for v in result["calibration"].values())
        else []
    )
    for c in (c for c in names if "ece_raw" in result["calibration"].get(c, {})):
        cal = result["calibration"][c]
        lines.append(
            f"| {c} | {cal['temperature']:.2f} | {cal['calibration_clips']} | "
            f"{100 * cal['ece_raw']:.1f} % | {100 * cal['ece_scaled']:.1f} % |"
        )
    lines += [
        f"Recipe {result.get('recipe', '?')}; each cell: recall within 3 s, false spikes "
        "per hour of calm speech, median delay.",
        "",
        "| budget | scores | picked on all corpora (macro recall, false spikes) | "
        + " | ".join(f"{c}: picked on the others" for c in names)
        + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for budget in (f"{b:g}" for b in result["budgets_per_hour"]):
        for scale in result["sweep"]:
            ch = result["chosen"][scale][budget]
            nested = result["nested"][scale][budget]
            lines.append(
                f"| {budget}/h | {scale} | `{ch['key']}`: {100 * ch['macro_recall']:.0f} %, "
                f"{ch['macro_fa_per_hour']:.1f}/h"
                + ("" if ch["within_budget"] else " (none within budget)")
                + " | "
                + " | ".join(cell(nested[c]) for c in names)
                + " |"
            )
    for scale in result["sweep"]:
        rec, fa = _figures(result, scale, "macro")
        key = result["defaults"]["key"]
        lines.append(
            f"| defaults | {scale} | `{key}`: {100 * rec[key]:.0f} %, {fa[key]:.1f}/h | "
            + " | ".join(cell(result["sweep"][scale][c][key]) for c in names)
            + " |"
        )
    return "\n".join(lines)


REPORT_BUDGETS_PER_HOUR: tuple[float, ...] = (2.0, 10.0, 30.0)
"""False-alarm budgets the card's table reports (the issue's 2/h, and two looser ones a
team might accept for a cue that only colours the agent's screen)."""


def choose_points(result: dict[str, Any], *, grid: Sequence[GridPoint]) -> dict[str, Any]:
    """From ``result["sweep"]``: for each scale and budget (``fa_budget_per_hour`` and
    ``REPORT_BUDGETS_PER_HOUR``), the point the rule picks on all corpora (``chosen``)
    and, per corpus, the point picked on the other corpora scored on it (``nested``)."""
    names = list(result["corpora"])
    budgets = sorted({float(result["fa_budget_per_hour"]), *REPORT_BUDGETS_PER_HOUR})
    worst_budget = result.get("worst_fa_budget_per_hour")
    chosen: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for scale in result["sweep"]:
        per = result["sweep"][scale]
        recall = macro(per, names, "spike_recall_3s")
        fa = macro(per, names, "false_spikes_per_hour")
        chosen[scale], nested[scale] = {}, {}
        for budget in budgets:
            # the worst-corpus budget scales with the mean budget (10/h for 5/h)
            wb = (
                None
                if worst_budget is None
                else worst_budget * budget / result["fa_budget_per_hour"]
            )
            key, ok = choose(per, names, fa_budget=budget, worst_fa_budget=wb)
            chosen[scale][f"{budget:g}"] = {
                "key": key,
                "within_budget": ok,
                "macro_recall": recall[key],
                "macro_fa_per_hour": fa[key],
                "worst_fa_per_hour": worst(per, names, "false_spikes_per_hour")[key],
                "params": dataclasses.asdict(_point_of_key(grid, key).params()),
            }
            nested[scale][f"{budget:g}"] = {}
            for corpus in names:
                others = [c for c in names if c != corpus]
                k, ok = choose(per, others, fa_budget=budget, worst_fa_budget=wb)
                nested[scale][f"{budget:g}"][corpus] = {
                    "key": k,
                    "within_budget_on_others": ok,
                    **per[corpus][k],
                }
    return {"budgets_per_hour": budgets, "chosen": chosen, "nested": nested}


# -- the whole run -------------------------------------------------------------------------


def run(
    *,
    data_dir: Path,
    seed: int = 0,
    fa_budget: float = DEFAULT_FA_BUDGET_PER_HOUR,
    worst_fa_budget: float | None = DEFAULT_WORST_FA_BUDGET_PER_HOUR,
    grid: Sequence[GridPoint] | None = None,
    recipe: str | None = None,
    speakers_per_corpus: int = 8,
    calls_per_speaker: int = 2,
    calibrate: bool = False,
    scores_cache: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything in the module docstring; returns the JSON-ready result."""
    from tqdm import tqdm

    from emotion_engine.features.functionals import FUNCTIONAL_NAMES
    from emotion_engine.training.loco import EVAL_LABELS, _fit, stitched_calls
    from emotion_engine.training.train import DEFAULT_RECIPE, RECIPES, recipe_dataset, save_model

    started = time.monotonic()
    grid = list(grid or detector_grid())
    recipe_name = DEFAULT_RECIPE if recipe is None else recipe
    chosen_recipe = RECIPES[recipe_name]
    base = load_dataset(data_dir, labels=(*EVAL_LABELS, "fearful"), seed=seed)
    dataset = recipe_dataset(base, chosen_recipe)
    held_out: list[CorpusCalls] = []
    calibration: dict[str, Any] = {}
    if scores_cache is not None and scores_cache.is_file():
        import pickle

        held_out, calibration = pickle.loads(scores_cache.read_bytes())
    for corpus in [] if held_out else dataset.corpora:
        calls = stitched_calls(
            data_dir=data_dir,
            corpus=corpus,
            seed=seed,
            speakers_per_corpus=speakers_per_corpus,
            calls_per_speaker=calls_per_speaker,
            build=build_calls,
        )
        if not calls:
            continue
        train_idx = np.flatnonzero(dataset.corpus != corpus)
        log.info("held out %s: training %s on %d clips", corpus, recipe_name, train_idx.size)
        fitted, x_train = _fit(dataset, chosen_recipe, train_idx, seed=seed, progress=progress)
        temperature = 1.0
        if calibrate:
            from emotion_engine.training.evaluate import load_features

            feats = load_features(dataset, seed=seed, include_baseline=False, progress=progress)
            temperature, n_cal = oof_temperature(dataset, feats, train_idx, seed=seed)
            calibration[corpus] = {"temperature": temperature, "calibration_clips": n_cal}
        with tempfile.TemporaryDirectory() as tmp:
            save_model(
                fitted,
                x=x_train,
                names=tuple(FUNCTIONAL_NAMES),
                norm=None,
                normalisation="none",
                dataset=dataset.subset(train_idx),
                data_dir=data_dir,
                out_dir=Path(tmp),
                seed=seed,
                command="emotion_engine.training.operating_point (one leave-one-corpus-out fold)",
                started=time.monotonic(),
            )
            model = EmotionModel.load(Path(tmp))
            raw = [
                scores_from_events(
                    stream_events(Engine(model=model, params=DEFAULT_ENGINE_PARAMS), c)
                )
                for c in tqdm(calls, desc=f"{corpus} calls", unit="call", disable=not progress)
            ]
        held_out.append(
            CorpusCalls(
                corpus=corpus,
                labels=model.labels,
                calls=calls,
                raw=raw,
                calibrated=[temper(w, temperature) for w in raw] if calibrate else [],
            )
        )
    if scores_cache is not None and not scores_cache.is_file():
        import pickle

        scores_cache.parent.mkdir(parents=True, exist_ok=True)
        scores_cache.write_bytes(pickle.dumps((held_out, calibration)))
    if len(held_out) < 2:
        raise DatasetError(f"need at least two corpora with neutral/calm speech under {data_dir}")
    names = [hc.corpus for hc in held_out]
    result: dict[str, Any] = {
        "recipe": recipe_name,
        "corpora": names,
        "calls": {
            hc.corpus: {
                "anger_calls": sum(c.anger_onset_s is not None for c in hc.calls),
                "calm_calls": sum(c.anger_onset_s is None for c in hc.calls),
                "speakers": sorted({c.speaker for c in hc.calls}),
                "audio_minutes": round(sum(c.samples.size for c in hc.calls) / 8000 / 60, 1),
            }
            for hc in held_out
        },
        "calibration": calibration,
        "fa_budget_per_hour": fa_budget,
        "worst_fa_budget_per_hour": worst_fa_budget,
        "grid_points": len(grid),
        "grid": [dataclasses.asdict(p) for p in grid],
        "defaults": {"key": grid_point_of(DEFAULT_ENGINE_PARAMS.detector).key()},
    }
    result["sweep"] = sweep(
        held_out, grid, scales=("raw", "calibrated") if calibrate else ("raw",), progress=progress
    )
    result.update(choose_points(result, grid=grid))
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _point_of_key(grid: Sequence[GridPoint], key: str) -> GridPoint:
    return next(p for p in grid if p.key() == key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emotion_engine.training.operating_point",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, default=Path("../shared/data"), help="shared corpora (labels.csv)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--fa-budget",
        type=float,
        default=DEFAULT_FA_BUDGET_PER_HOUR,
        help="false spikes per hour of calm speech the rule may spend (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("models/operating_point.json"), help="JSON result"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("models/tradeoff.png"),
        help="recall vs false-alarm plot (default: %(default)s)",
    )
    parser.add_argument(
        "--worst-fa-budget",
        type=float,
        default=DEFAULT_WORST_FA_BUDGET_PER_HOUR,
        help="... and per held-out corpus (default: %(default)s; scaled with --fa-budget "
        "for the other budgets reported)",
    )
    parser.add_argument("--recipe", default=None, help="training recipe (default: train's)")
    parser.add_argument("--speakers-per-corpus", type=int, default=8)
    parser.add_argument("--calls-per-speaker", type=int, default=2)
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also fit a temperature per fold (5 more fits each) and sweep scaled scores",
    )
    parser.add_argument(
        "--scores-cache",
        type=Path,
        default=None,
        metavar="PICKLE",
        help="keep the streamed window scores here (and reuse them if the file exists)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="KEY=VALUE,...",
        help="more detector settings to sweep besides the grid, one per argument, as "
        "serve --detector takes them (e.g. on_threshold=0.7,smoothing_windows=1,"
        "off_threshold=0.4)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="no new run: redo the choice, table and plot from this earlier --out file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extra = [grid_point_of(engine_params_with_detector(e).detector) for e in args.extra]
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        result["fa_budget_per_hour"] = args.fa_budget
        result["worst_fa_budget_per_hour"] = args.worst_fa_budget
        grid = [GridPoint(**p) for p in result["grid"]] if "grid" in result else default_grid(extra)
        current = grid_point_of(DEFAULT_ENGINE_PARAMS.detector).key()
        if current in result["sweep"]["raw"][result["corpora"][0]]:
            result["defaults"] = {"key": current}  # else: keep the defaults of that run
        result.update(choose_points(result, grid=grid))
    else:
        result = run(
            data_dir=args.data,
            seed=args.seed,
            fa_budget=args.fa_budget,
            worst_fa_budget=args.worst_fa_budget,
            grid=detector_grid(extra),
            recipe=args.recipe,
            speakers_per_corpus=args.speakers_per_corpus,
            calls_per_speaker=args.calls_per_speaker,
            calibrate=args.calibrate,
            scores_cache=args.scores_cache,
            progress=not args.no_progress,
        )
        result["command"] = "python -m emotion_engine.training.operating_point " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, separators=(",", ":")) + "\n")  # ~2,300 sweep rows
    plot_tradeoff(result, args.plot)
    print(format_table(result))
    print(f"written to {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import exit_with

    exit_with(main)
