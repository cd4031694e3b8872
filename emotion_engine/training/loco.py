"""Leave-one-corpus-out over every corpus, scored through the engine's window path.

    python -m emotion_engine.training.loco --data ../shared/data [--recipes shipped,...]

For each held-out corpus a recipe (``RECIPES``) is trained on the other corpora (so no
speaker is ever on both sides) and scored on the held-out corpus's G.711 mu-law audio
as a live call would score it:

- **clips**: each clip is streamed as one leg (``featurize.extract_window_features``:
  the engine's windows, 2 s at a 0.5 s hop, the first after 1 s, a tail window at
  hang-up); the clip's reading is the mean of the model's probabilities over its speech
  windows (all its windows when none passes the speech gate). Reported per held-out
  corpus: angry-vs-rest ROC-AUC and 4-class UAR over neutral/happy/sad/angry clips
  (calm counts as neutral), angry-vs-rest AUC over every labelled clip (fearful,
  disgust, surprised as "rest" too), and for BAVED (arousal labels only) the arousal
  head's low/mid/high UAR and the AUC of P(angry) for high vs other arousal;
- **stitched calls** (``--stitched``): one-speaker calls of the held-out corpus's
  speakers (``stitched.build_calls``: calm for >= 20 s, angry for >= 6 s, calm again;
  and calm-only calls; BAVED: calm-only calls from its neutral level), streamed in
  20 ms chunks through :class:`~emotion_engine.engine.pipeline.Engine` with the
  recipe's exported ONNX model and the default detector: spike recall within 3 s of
  the angry voice's onset, false spikes per hour of calm speech, median delay; per
  corpus, per language and over all calls.

Every recipe's figures go to ``--out`` (JSON, default ``models/loco.json``) with the
command that made them; ``--card`` rewrites the comparison table in the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError
from emotion_engine.training.data import NO_LABEL, Dataset, load_dataset
from emotion_engine.training.featurize import WindowFeatures, featurize_windows
from emotion_engine.training.harness import LANGUAGE_OF_CORPUS
from emotion_engine.training.metrics import roc_auc, uar
from emotion_engine.training.train import EXPORTABLE, RECIPES, Recipe, recipe_dataset

log = logging.getLogger(__name__)

EVAL_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
"""The 4 classes UAR is reported over (a 5-class recipe's fearful column is dropped)."""

CARD_BEGIN = "<!-- BEGIN LOCO (written by python -m emotion_engine.training.loco; do not edit) -->"
CARD_END = "<!-- END LOCO -->"


def clip_scores(
    *, window_proba: NDArray[np.float64], windows: WindowFeatures, n_clips: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per-clip reading from per-window outputs: the mean over the clip's speech windows,
    or over all its windows when none is speech. ``window_proba``: (n_rows, k) aligned
    with ``windows``. Returns (n_clips, k) and (n_clips,) whether the clip had a window."""
    k = window_proba.shape[1]
    out = np.zeros((n_clips, k), dtype=np.float64)
    counts = np.zeros(n_clips, dtype=np.float64)
    has_speech = np.zeros(n_clips, dtype=np.bool_)
    has_speech[windows.clip[windows.speech]] = True
    use = windows.speech | ~has_speech[windows.clip]
    np.add.at(out, windows.clip[use], window_proba[use])
    np.add.at(counts, windows.clip[use], 1.0)
    scored = counts > 0
    out[scored] /= counts[scored, None]
    return out, scored


def _fit(
    dataset: Dataset,
    recipe: Recipe,
    train_clips: NDArray[np.int64],
    *,
    seed: int,
    progress: bool,
) -> tuple[Any, NDArray[np.float32]]:
    from emotion_engine.training.train import fit_model, recipe_rows

    rows = recipe_rows(dataset, recipe, seed=seed, progress=progress, clips=train_clips)
    fitted = fit_model(
        x=rows.x,
        y=rows.y,
        arousal=rows.arousal,
        corpus=rows.corpus,
        labels=dataset.labels,
        candidate=recipe.candidate,
        seed=seed,
        weighting=recipe.weights,
        speaker=rows.speaker,
    )
    return fitted, rows.x


def corpus_metrics(
    dataset: Dataset,
    corpus: str,
    proba: NDArray[np.float64],
    arousal_level: NDArray[np.int64],
    scored: NDArray[np.bool_],
) -> dict[str, Any]:
    """Clip-level figures for one held-out corpus (``proba``: (n_clips, n_labels))."""
    labels = dataset.labels
    mine = (dataset.corpus == corpus) & scored
    out: dict[str, Any] = {
        "language": LANGUAGE_OF_CORPUS.get(corpus, corpus),
        "clips": int((dataset.corpus == corpus).sum()),
        "unscored_clips": int(((dataset.corpus == corpus) & ~scored).sum()),
    }
    angry = labels.index("angry")
    orig = np.array([c.orig_emotion for c in dataset.clips])
    mapped = np.where(orig == "calm", "neutral", orig)
    four = mine & np.isin(mapped, EVAL_LABELS)
    if four.any() and len(set(mapped[four])) > 1:
        y4 = np.array([EVAL_LABELS.index(m) for m in mapped[four]])
        p4 = proba[four][:, [labels.index(lab) for lab in EVAL_LABELS]]
        out["n_4class"] = int(four.sum())
        out["uar"] = uar(y_true=y4, y_pred=p4.argmax(axis=1), n_classes=len(EVAL_LABELS))
        if (mapped[four] == "angry").any():
            out["angry_auc"] = roc_auc(y_true=mapped[four] == "angry", scores=proba[four, angry])
            labelled = mine & (orig != "")
            out["angry_auc_all_labels"] = roc_auc(
                y_true=mapped[labelled] == "angry", scores=proba[labelled, angry]
            )
    aro = mine & (dataset.arousal != NO_LABEL)
    if "uar" not in out and aro.any():
        out["arousal_uar"] = uar(
            y_true=dataset.arousal[aro], y_pred=arousal_level[aro], n_classes=3
        )
        high = dataset.arousal[aro] == 2
        if high.any() and (~high).any():
            out["p_angry_auc_high_arousal"] = roc_auc(y_true=high, scores=proba[aro, angry])
    return out


def _stitched_for(
    *,
    fitted: Any,
    x_train: NDArray[np.float32],
    dataset: Dataset,
    corpus: str,
    data_dir: Path,
    seed: int,
    speakers_per_corpus: int,
    calls_per_speaker: int,
) -> dict[str, Any]:
    """Stream stitched calls of ``corpus``'s speakers through the engine with ``fitted``."""
    from emotion_engine.config import DEFAULT_ENGINE_PARAMS
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES
    from emotion_engine.model.runtime import EmotionModel
    from emotion_engine.training.stitched import build_calls, run_call, score
    from emotion_engine.training.train import save_model

    calls = stitched_calls(
        data_dir=data_dir,
        corpus=corpus,
        seed=seed,
        speakers_per_corpus=speakers_per_corpus,
        calls_per_speaker=calls_per_speaker,
        build=build_calls,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_model(
            fitted,
            x=x_train,
            names=tuple(FUNCTIONAL_NAMES),
            norm=None,
            normalisation="none",
            dataset=dataset,
            data_dir=data_dir,
            out_dir=Path(tmp),
            seed=seed,
            command="loco fold",
            started=time.monotonic(),
        )
        model = EmotionModel.load(Path(tmp))
        found = [run_call(Engine(model=model, params=DEFAULT_ENGINE_PARAMS), c) for c in calls]
    result = score(calls, found)
    result.pop("by_corpus", None)
    return {"calls": calls, "found": found, "summary": result}


def stitched_calls(
    *,
    data_dir: Path,
    corpus: str,
    seed: int,
    speakers_per_corpus: int,
    calls_per_speaker: int,
    build: Any,
) -> list[Any]:
    """Stitched calls of up to ``speakers_per_corpus`` of ``corpus``'s speakers (seeded
    choice): anger calls and calm calls for speakers with angry and neutral/calm clips,
    calm calls only for a corpus without angry clips (BAVED, its neutral level)."""
    import csv

    from emotion_engine.training.stitched import StitchedCall

    with (data_dir / corpus / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    emotions: dict[str, set[str]] = {}
    for r in rows:
        emotions.setdefault(r["speaker"], set()).add(r["emotion"])
    any_angry = any("angry" in e for e in emotions.values())
    usable = sorted(
        s
        for s, e in emotions.items()
        if (e & {"neutral", "calm"}) and ("angry" in e or not any_angry)
    )
    rng = np.random.default_rng([seed, len(corpus)])
    chosen = sorted(
        rng.choice(usable, size=min(speakers_per_corpus, len(usable)), replace=False).tolist()
    )
    if any_angry:
        calls: list[StitchedCall] = build(
            data_dir=data_dir, speakers=chosen, seed=seed, calls_per_speaker=calls_per_speaker
        )
        return calls
    # calm-only calls (about 60 s each) from the neutral clips
    from emotion_engine.training.data import read_clip
    from emotion_engine.training.stitched import calm_call

    out: list[StitchedCall] = []
    for speaker in chosen:
        neutral = [
            read_clip(data_dir / corpus / r["file"])
            for r in rows
            if r["speaker"] == speaker and r["emotion"] in ("neutral", "calm")
        ]
        out += [
            calm_call(speaker=speaker, k=k, neutral=neutral, rng=rng)
            for k in range(calls_per_speaker)
        ]
    return out


def run_loco(
    *,
    data_dir: Path,
    recipes: Sequence[str],
    seed: int = 0,
    stitched: bool = False,
    speakers_per_corpus: int = 8,
    calls_per_speaker: int = 2,
    limit_per_corpus: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """LOCO figures of every recipe in ``recipes`` (see the module docstring)."""
    from tqdm import tqdm

    from emotion_engine.training.stitched import score

    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown recipe(s) {unknown} (choose from {list(RECIPES)})")
    base = load_dataset(
        data_dir,
        labels=(*EVAL_LABELS, "fearful"),
        limit_per_corpus=limit_per_corpus,
        seed=seed,
    )
    test = featurize_windows(clips=base.clips, condition="test", seed=seed, progress=progress)
    corpora = base.corpora
    results: dict[str, Any] = {}
    steps = [(r, c) for r in recipes for c in corpora]
    bar = tqdm(steps, desc="loco", unit="fold", disable=not progress)
    per_recipe_calls: dict[str, list[tuple[Any, Any]]] = {}
    for name, held_out in bar:
        bar.set_postfix_str(f"{name} / {held_out}")
        recipe = RECIPES[name]
        dataset = recipe_dataset(base, recipe)
        train_clips = np.flatnonzero(dataset.corpus != held_out)
        fitted, x_train = _fit(dataset, recipe, train_clips, seed=seed, progress=progress)
        rows = dataset.corpus[test.clip] == held_out
        sub = WindowFeatures(x=test.x[rows], speech=test.speech[rows], clip=test.clip[rows])
        proba_w = fitted.predict_proba(sub.x)
        level_w = fitted.predict_arousal(sub.x)[:, None]
        proba, scored = clip_scores(window_proba=proba_w, windows=sub, n_clips=len(dataset))
        aro, _ = clip_scores(window_proba=level_w, windows=sub, n_clips=len(dataset))
        level = np.digitize(aro[:, 0], [1 / 3, 2 / 3]).astype(np.int64)
        entry = corpus_metrics(dataset, held_out, proba, level, scored)
        if stitched and recipe.candidate in EXPORTABLE:
            st = _stitched_for(
                fitted=fitted,
                x_train=x_train,
                dataset=dataset.subset(train_clips),
                corpus=held_out,
                data_dir=data_dir,
                seed=seed,
                speakers_per_corpus=speakers_per_corpus,
                calls_per_speaker=calls_per_speaker,
            )
            entry["stitched"] = st["summary"]
            per_recipe_calls.setdefault(name, []).append((st["calls"], st["found"]))
        results.setdefault(name, {"recipe": asdict(recipe), "held_out": {}})["held_out"][
            held_out
        ] = entry
    for name, block in results.items():
        block["summary"] = summarise(block["held_out"])
        if name in per_recipe_calls:
            calls = [c for cs, _ in per_recipe_calls[name] for c in cs]
            found = [f for _, fs in per_recipe_calls[name] for f in fs]
            overall = score(calls, found)
            overall.pop("by_corpus", None)
            overall.pop("calls", None)
            block["stitched_overall"] = overall
            by_lang: dict[str, Any] = {}
            for lang in sorted(set(LANGUAGE_OF_CORPUS.get(c, c) for c in corpora)):
                idx = [
                    i
                    for i, c in enumerate(calls)
                    if LANGUAGE_OF_CORPUS.get(c.speaker.split("_")[0], "") == lang
                ]
                if idx:
                    s = score([calls[i] for i in idx], [found[i] for i in idx])
                    s.pop("by_corpus", None)
                    s.pop("calls", None)
                    by_lang[lang] = s
            block["stitched_by_language"] = by_lang
    return {
        "protocol": "leave-one-corpus-out, G.711 mu-law test audio, engine window path "
        "(2 s windows, 0.5 s hop), clip reading = mean probability over its speech windows",
        "corpora": list(corpora),
        "seed": seed,
        "limit_per_corpus": limit_per_corpus,
        "recipes": results,
    }


def summarise(held_out: dict[str, Any]) -> dict[str, Any]:
    """Means over held-out corpora with the figure (angry AUC, UAR)."""

    def mean(key: str) -> float | None:
        vals = [v[key] for v in held_out.values() if v.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    def low(key: str) -> float | None:
        vals = [v[key] for v in held_out.values() if v.get(key) is not None]
        return float(np.min(vals)) if vals else None

    return {
        "mean_angry_auc": mean("angry_auc"),
        "min_angry_auc": low("angry_auc"),
        "mean_uar": mean("uar"),
        "mean_angry_auc_all_labels": mean("angry_auc_all_labels"),
    }


def _f(v: float | None, pct: bool = True) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per recipe, per held-out corpus angry AUC / UAR, means, and the
    stitched figures per language where measured."""
    corpora = result["corpora"]
    lines = [
        "| recipe | "
        + " | ".join(f"{c} AUC / UAR %" for c in corpora)
        + " | mean AUC % | min AUC % | mean UAR % |",
        "|---|" + "---|" * (len(corpora) + 3),
    ]
    for name, block in result["recipes"].items():
        cells = []
        for c in corpora:
            e = block["held_out"].get(c, {})
            if "angry_auc" in e:
                cells.append(f"{_f(e['angry_auc'])} / {_f(e.get('uar'))}")
            elif "arousal_uar" in e:
                cells.append(f"(arousal UAR {_f(e['arousal_uar'])})")
            else:
                cells.append("–")
        s = block["summary"]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {_f(s['mean_angry_auc'])} | {_f(s['min_angry_auc'])} | {_f(s['mean_uar'])} |"
        )
    stitched = {k: v for k, v in result["recipes"].items() if "stitched_overall" in v}
    if stitched:
        langs = sorted({lang for v in stitched.values() for lang in v["stitched_by_language"]})
        lines += [
            "",
            "Stitched calls (recall within 3 s % / false spikes per hour of calm speech / "
            "median delay s):",
            "",
            "| recipe | " + " | ".join(langs) + " | overall |",
            "|---|" + "---|" * (len(langs) + 1),
        ]
        for name, v in stitched.items():

            def cell(s: dict[str, Any]) -> str:
                fph = s.get("false_spikes_per_hour")
                return (
                    f"{_f(s.get('spike_recall_3s'))} / "
                    f"{'–' if fph is None else f'{fph:.1f}'} / "
                    f"{_f(s.get('median_delay_s'), pct=False)}"
                )

            lines.append(
                f"| {name} | "
                + " | ".join(cell(v["stitched_by_language"].get(lang, {})) for lang in langs)
                + f" | {cell(v['stitched_overall'])} |"
            )
    return "\n".join(lines) + "\n"


def write_card(card: Path, result: dict[str, Any]) -> None:
    """Replace (or append) the LOCO block of the model card."""
    text = card.read_text() if card.is_file() else ""
    block = f"{CARD_BEGIN}\n\nCommand: `{result.get('command', '')}`\n\n{format_table(result)}\n{CARD_END}"
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        _, tail = rest.split(CARD_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card.write_text(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="the corpora")
    parser.add_argument(
        "--recipes",
        type=lambda s: [r for r in s.split(",") if r],
        default=["clips"],
        metavar="A,B",
        help=f"recipes to compare (default: clips; 'all' for {', '.join(RECIPES)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stitched", action="store_true", help="also stream stitched calls")
    parser.add_argument("--speakers-per-corpus", type=int, default=8)
    parser.add_argument("--calls-per-speaker", type=int, default=2)
    parser.add_argument("--limit-per-corpus", type=int, default=None, metavar="N")
    parser.add_argument("--out", type=Path, default=Path("models/loco.json"))
    parser.add_argument("--card", type=Path, default=None, help="model card to update")
    parser.add_argument("--merge", action="store_true", help="keep other recipes already in --out")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    recipes = list(RECIPES) if args.recipes == ["all"] else args.recipes
    result = run_loco(
        data_dir=args.data,
        recipes=recipes,
        seed=args.seed,
        stitched=args.stitched,
        speakers_per_corpus=args.speakers_per_corpus,
        calls_per_speaker=args.calls_per_speaker,
        limit_per_corpus=args.limit_per_corpus,
        progress=not args.no_progress,
    )
    command = shlex.join(["python", "-m", "emotion_engine.training.loco", *sys.argv[1:]])
    for block in result["recipes"].values():
        block["command"] = command
    if args.merge and args.out.is_file():
        old = json.loads(args.out.read_text())
        merged = {**old.get("recipes", {}), **result["recipes"]}
        result["recipes"] = merged
    result["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    if args.card is not None:
        write_card(args.card, result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import run_module

    run_module(
        prog="python -m emotion_engine.training.loco",
        doc=__doc__,
        add_arguments=add_arguments,
        main=main,
    )
