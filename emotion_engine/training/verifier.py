"""Stage 2 (the Whisper-tiny verifier): embeddings, leave-one-corpus-out comparison,
and training the shipped head.

    python -m emotion_engine.training.verifier loco --data ../shared/data [--json out.json]
    python -m emotion_engine.training.verifier train --data ../shared/data [--out models]
    (also ``emotion-engine train --verifier``)

Every clip is G.711 mu-law degraded (the card's test condition), then two views are
embedded: the whole clip, and the engine's window (2 s: the 2 s stretch of the clip
with the most energy, stepped by the window hop; the whole clip when shorter). Each
view gets the pooled encoder embedding (768) and the engine's functionals (stage 1's
input), cached under ``<cache>/verifier/`` (``$EMOTION_ENGINE_CACHE`` or ``.cache``).

Angry-vs-rest truth: ``angry`` positive, every other emotion label negative. BAVED
has no emotion labels beyond its arousal levels: its low and mid arousal clips are
negatives, its high-arousal clips are left out of training, and its held-out score
is high-arousal-vs-rest (a proxy, marked as such).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import DEFAULT_WINDOW_PARAMS, FRAMES_PER_SECOND, MODEL_SAMPLE_RATE_HZ
from emotion_engine.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from emotion_engine.model.verifier import VerifierHead

log = logging.getLogger(__name__)

DEFAULT_PROPOSE_THRESHOLD = 0.5
"""Stage-1 P(angry) at or above which the engine asks stage 2 (written to the manifest)."""

VIEWS: tuple[str, ...] = ("clip", "window")
WINDOW_SAMPLES = DEFAULT_WINDOW_PARAMS.window_frames * MODEL_SAMPLE_RATE_HZ // FRAMES_PER_SECOND
HOP_SAMPLES = DEFAULT_WINDOW_PARAMS.hop_frames * MODEL_SAMPLE_RATE_HZ // FRAMES_PER_SECOND
EMBED_VERSION = "1"
"""Bump when the embedding recipe changes (the cache key holds it)."""


@dataclass(frozen=True, slots=True)
class Item:
    path: Path
    corpus: str
    speaker: str
    emotion: str
    angry: int  # 1 angry, 0 rest, -1 unknown (BAVED high arousal)
    eval_positive: int  # the held-out truth: angry, or BAVED's high arousal


def read_items(data_dir: Path, corpora: Sequence[str] | None = None) -> list[Item]:
    """Every clip of every corpus folder (``labels.csv``) with an angry-vs-rest truth."""
    data_dir = Path(data_dir)
    folders = sorted(p for p in data_dir.iterdir() if (p / "labels.csv").is_file())
    if corpora:
        folders = [p for p in folders if p.name in corpora]
    if not folders:
        raise DatasetError(f"no corpus folder with labels.csv in {data_dir}")
    items: list[Item] = []
    for folder in folders:
        with (folder / "labels.csv").open(newline="") as fh:
            for row in csv.DictReader(fh):
                emotion = (row.get("emotion") or "").strip().lower()
                intensity = (row.get("intensity") or "").strip().lower()
                if emotion:
                    angry = int(emotion == "angry")
                    positive = angry
                elif intensity in ("low", "neutral"):
                    angry, positive = 0, 0
                elif intensity == "high":
                    angry, positive = -1, 1
                else:
                    continue
                items.append(
                    Item(
                        path=folder / row["file"],
                        corpus=folder.name,
                        speaker=row["speaker"],
                        emotion=emotion or f"arousal-{intensity}",
                        angry=angry,
                        eval_positive=positive,
                    )
                )
    return items


def loudest_window(*, samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """The engine's window over a clip: the 2 s stretch (stepped by the 0.5 s hop) with
    the most energy, or the whole clip when it is shorter than 2 s."""
    if samples.size <= WINDOW_SAMPLES:
        return samples
    csum = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    starts = np.arange(0, samples.size - WINDOW_SAMPLES + 1, HOP_SAMPLES)
    energy = csum[starts + WINDOW_SAMPLES] - csum[starts]
    s = int(starts[int(np.argmax(energy))])
    return samples[s : s + WINDOW_SAMPLES]


def cache_dir() -> Path:
    return Path(os.environ.get("EMOTION_ENGINE_CACHE", ".cache")) / "verifier"


def _key(items: Sequence[Item]) -> str:
    h = hashlib.sha256(EMBED_VERSION.encode())
    for it in items:
        st = it.path.stat()
        h.update(f"{it.path.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def embed_items(items: Sequence[Item], *, progress: bool = True) -> dict[str, NDArray[np.float32]]:
    """Per corpus, cached: ``{view}_emb`` (n, 768) and ``{view}_s1`` (n, n_functionals)
    for both views, in ``items`` order. Returns the concatenation over corpora."""
    from tqdm import tqdm

    from emotion_engine.features import extract_clip_features
    from emotion_engine.model.verifier import WhisperEncoder
    from emotion_engine.training.augment import telephone_channel
    from emotion_engine.training.data import read_clip

    encoder: WhisperEncoder | None = None
    by_corpus: dict[str, list[Item]] = {}
    for it in items:
        by_corpus.setdefault(it.corpus, []).append(it)
    parts: dict[str, list[NDArray[np.float32]]] = {}
    for corpus, group in by_corpus.items():
        path = cache_dir() / f"{corpus}-{_key(group)}.npz"
        if path.is_file():
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            if encoder is None:
                encoder = WhisperEncoder.load()
            rows: dict[str, list[NDArray[np.float32]]] = {
                f"{v}_{k}": [] for v in VIEWS for k in ("emb", "s1")
            }
            cpu = time.process_time()
            seconds = 0.0
            for it in tqdm(group, desc=f"encoder {corpus}", unit="clip", disable=not progress):
                audio = telephone_channel(samples=read_clip(it.path))
                window = loudest_window(samples=audio)
                seconds += audio.size / MODEL_SAMPLE_RATE_HZ
                same = window.size == audio.size  # a clip no longer than a window
                embs = encoder.embed(windows=[audio] if same else [audio, window])
                rows["clip_emb"].append(embs[0])
                rows["window_emb"].append(embs[-1])
                rows["clip_s1"].append(extract_clip_features(samples=audio))
                rows["window_s1"].append(
                    rows["clip_s1"][-1] if same else extract_clip_features(samples=window)
                )
            log.info(
                "%s: %d clips, %.0f audio s, %.1f CPU s",
                corpus,
                len(group),
                seconds,
                time.process_time() - cpu,
            )
            arrays = {k: np.stack(v).astype(np.float32) for k, v in rows.items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


# -- heads and leave-one-corpus-out ---------------------------------------------------

HEADS: tuple[str, ...] = ("stage1", "stage2", "fused", "stage2_mlp", "fused_mlp")
"""``stage1``: logistic regression on the functionals (the stage-1 proxy);
``stage2``: logistic regression on the pooled embedding; ``fused``: on both;
``*_mlp``: one hidden layer of 64 instead."""


def _inputs(head: str, data: dict[str, NDArray[np.float32]], view: str) -> NDArray[np.float32]:
    emb, s1 = data[f"{view}_emb"], data[f"{view}_s1"]
    if head == "stage1":
        return s1
    if head.startswith("stage2"):
        return emb
    return np.concatenate([emb, s1], axis=1)


def fit_head(
    *, x: NDArray[np.float32], y: NDArray[np.int64], mlp: bool, seed: int = 0, c: float = 0.1
) -> Any:
    """A scikit-learn pipeline: standardise, then logistic regression (class-balanced)
    or a 64-unit MLP."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf: Any
    if mlp:
        clf = MLPClassifier(
            hidden_layer_sizes=(64,),
            alpha=1e-2,
            early_stopping=True,
            max_iter=300,
            random_state=seed,
        )
    else:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    return make_pipeline(StandardScaler(), clf).fit(x, y)


def loco(
    data: dict[str, NDArray[np.float32]],
    items: Sequence[Item],
    *,
    heads: Sequence[str] = HEADS,
    views: Sequence[str] = VIEWS,
) -> dict[str, Any]:
    """Angry-vs-rest AUC per held-out corpus, head and view (train on the others)."""
    from emotion_engine.training.metrics import roc_auc

    corpus = np.array([it.corpus for it in items])
    angry = np.array([it.angry for it in items], dtype=np.int64)
    positive = np.array([it.eval_positive for it in items], dtype=np.int64)
    out: dict[str, Any] = {}
    for view in views:
        for head in heads:
            x = _inputs(head, data, view)
            row: dict[str, float] = {}
            for held in dict.fromkeys(corpus):
                train = (corpus != held) & (angry >= 0)
                model = fit_head(x=x[train], y=angry[train], mlp=head.endswith("_mlp"))
                test = corpus == held
                row[str(held)] = roc_auc(
                    y_true=positive[test], scores=model.predict_proba(x[test])[:, 1]
                )
                log.info("%s %s held-out %s: AUC %.3f", view, head, held, row[str(held)])
            out[f"{view}/{head}"] = row
    return out


def head_from_pipeline(model: Any, *, stage1_features: int) -> VerifierHead:
    """The numpy :class:`VerifierHead` of a fitted ``fit_head`` pipeline."""
    from emotion_engine.model.verifier import VerifierHead

    scaler, clf = model[0], model[-1]
    if hasattr(clf, "coefs_"):  # MLPClassifier: ReLU hidden layers, logistic output
        weights = tuple(np.asarray(w, dtype=np.float32) for w in clf.coefs_)
        biases = tuple(np.asarray(b, dtype=np.float32) for b in clf.intercepts_)
    else:
        weights = (np.asarray(clf.coef_.T, dtype=np.float32),)
        biases = (np.asarray(clf.intercept_, dtype=np.float32),)
    return VerifierHead(
        mean=np.asarray(scaler.mean_, dtype=np.float32),
        scale=np.asarray(scaler.scale_, dtype=np.float32),
        weights=weights,
        biases=biases,
        stage1_features=stage1_features,
    )


def train_verifier(
    *,
    data_dir: Path,
    out_dir: Path,
    head: str = "stage2",
    view: str = "window",
    propose_threshold: float = DEFAULT_PROPOSE_THRESHOLD,
    corpora: Sequence[str] | None = None,
    command: str = "",
) -> Path:
    """Fit ``head`` (one of HEADS but ``stage1``) on every corpus's ``view`` and write
    ``verifier.npz`` and ``verifier.manifest.json`` into ``out_dir``; returns the manifest."""
    from emotion_engine.model.verifier import (
        VERIFIER_MANIFEST,
        VerifierManifest,
        sha256_file,
    )

    if head not in HEADS or head == "stage1":
        raise ConfigError(f"verifier head {head!r}: expected one of {HEADS[1:]}")
    items = read_items(data_dir, corpora)
    data = embed_items(items)
    angry = np.array([it.angry for it in items], dtype=np.int64)
    x = _inputs(head, data, view)
    keep = angry >= 0
    model = fit_head(x=x[keep], y=angry[keep], mlp=head.endswith("_mlp"))
    n_s1 = 0 if head.startswith("stage2") else data[f"{view}_s1"].shape[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    head_path = out_dir / "verifier.npz"
    head_from_pipeline(model, stage1_features=n_s1).save(head_path)
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        c = counts.setdefault(it.corpus, {"angry": 0, "rest": 0, "unused": 0})
        c["angry" if it.angry == 1 else "rest" if it.angry == 0 else "unused"] += 1
    manifest = VerifierManifest(
        head_file=head_path.name,
        head_sha256=sha256_file(head_path),
        propose_threshold=propose_threshold,
        training={
            "head": head,
            "view": view,
            "inputs": "mean+std pooled Whisper tiny.en encoder frames (768)"
            + ("" if not n_s1 else f" + {n_s1} stage-1 functionals"),
            "audio": "G.711 mu-law round trip, 8 kHz resampled to 16 kHz, unpadded",
            "truth": "angry vs every other emotion label; BAVED low/mid arousal as rest",
            "clips": counts,
            "command": command,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    path = out_dir / VERIFIER_MANIFEST
    manifest.save(path)
    return path


STITCHED_HELD_OUT: tuple[str, ...] = (
    "ravdess_21",
    "ravdess_22",
    "ravdess_23",
    "ravdess_24",
    "turevdb_",
    "ased_01",
    "ased_02",
    "ased_03",
)
"""Speakers left out of both stages for the stitched-call comparison (English, Turkish,
Amharic); prefixes resolve as in training/stitched.py."""


def stitched_comparison(
    *,
    data_dir: Path,
    speakers: Sequence[str] = STITCHED_HELD_OUT,
    head: str = "stage2",
    view: str = "window",
    propose_threshold: float = DEFAULT_PROPOSE_THRESHOLD,
    calls_per_speaker: int = 2,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Stitched calls of held-out speakers through the engine with the verifier off and
    on: both stages trained without those speakers. Returns the two scorings
    (``training/stitched.score``) plus the windows verified and stage 2's CPU."""
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import EmotionModel
    from emotion_engine.model.verifier import Verifier, VerifierManifest, WhisperEncoder
    from emotion_engine.training import stitched
    from emotion_engine.training.train import run_train

    work_dir = cache_dir() / "stitched" if work_dir is None else work_dir
    resolved = stitched.resolve_speakers(stitched._rows(data_dir), speakers)
    recipe = (Path(__file__).parent / "train.py").read_bytes()  # a new recipe retrains
    tag = hashlib.sha256("|".join(resolved).encode() + recipe).hexdigest()[:8]
    model_dir = work_dir / f"stage1-{tag}"
    if not (model_dir / "emotion.onnx").is_file():
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            filtered = stitched._filtered_data_dir(data_dir, resolved, Path(tmp) / "data")
            run_train(data_dir=filtered, out_dir=Path(tmp) / "model")
            shutil.copytree(Path(tmp) / "model", model_dir, dirs_exist_ok=True)
    model = EmotionModel.load(model_dir / "emotion.onnx")
    items = read_items(data_dir)
    data = embed_items(items)
    angry = np.array([it.angry for it in items], dtype=np.int64)
    keep = (angry >= 0) & np.array([it.speaker not in resolved for it in items])
    x = _inputs(head, data, view)
    fitted = fit_head(x=x[keep], y=angry[keep], mlp=head.endswith("_mlp"))
    n_s1 = 0 if head.startswith("stage2") else data[f"{view}_s1"].shape[1]
    verifier = Verifier(
        encoder=WhisperEncoder.load(),
        head=head_from_pipeline(fitted, stage1_features=n_s1),
        manifest=VerifierManifest(
            head_file="-", head_sha256="-", propose_threshold=propose_threshold
        ),
    )
    calls = stitched.build_calls(
        data_dir=data_dir, speakers=resolved, calls_per_speaker=calls_per_speaker
    )
    out: dict[str, Any] = {"held_out_speakers": resolved, "head": head, "view": view}
    for mode in ("off", "on"):
        engine = Engine(model=model, verifier=verifier if mode == "on" else None)
        found = []
        stage1_cpu = time.process_time()
        for call in calls:
            found.append(stitched.run_call(engine, call))
        cpu = time.process_time() - stage1_cpu
        result = stitched.score(calls, found)
        result.pop("calls", None)
        result["windows"] = engine.windows_scored
        result["windows_verified"] = engine.windows_verified
        result["verifier_cpu_s"] = round(engine.verifier_cpu_s, 3)
        result["cpu_s"] = round(cpu, 3)
        audio_s = sum(c.samples.size for c in calls) / MODEL_SAMPLE_RATE_HZ
        result["audio_s"] = round(audio_s, 1)
        out[mode] = result
        log.info(
            "verifier %s: recall %s, false spikes/h %s, %d/%d windows verified",
            mode,
            result["spike_recall_3s"],
            result["false_spikes_per_hour"],
            engine.windows_verified,
            engine.windows_scored,
        )
    return out


def _print_table(result: dict[str, Any]) -> None:
    rows = list(result)
    corpora = list(result[rows[0]])
    print(f"{'view/head':22s} " + " ".join(f"{c:>8s}" for c in corpora) + "  mean(angry)")
    for r in rows:
        vals = result[r]
        angry_mean = np.mean([v for c, v in vals.items() if c != "baved"])
        print(f"{r:22s} " + " ".join(f"{vals[c]:8.3f}" for c in corpora) + f"  {angry_mean:.3f}")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("loco", "embed", "train", "stitched"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path("../shared/data"))
        p.add_argument("--corpora", nargs="*", default=None)
        p.add_argument("--json", type=Path, default=None)
        if name == "train":
            add_train_arguments(p)
        if name == "loco":
            p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
            p.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
        if name == "stitched":
            p.add_argument("--verifier-head", choices=HEADS[1:], default="stage2")
            p.add_argument("--view", choices=VIEWS, default="window")
            p.add_argument("--propose-threshold", type=float, default=DEFAULT_PROPOSE_THRESHOLD)
            p.add_argument("--calls-per-speaker", type=int, default=2)


def add_train_arguments(parser: argparse._ActionsContainer) -> None:
    """The head's options (also on ``emotion-engine train --verifier``)."""
    parser.add_argument(
        "--verifier-head",
        choices=HEADS[1:],
        default="stage2",
        help="stage-2 head: logistic regression (stage2) or MLP (stage2_mlp) on the "
        "pooled encoder embedding, or on it plus the functionals (fused, fused_mlp)",
    )
    parser.add_argument(
        "--propose-threshold",
        type=float,
        default=DEFAULT_PROPOSE_THRESHOLD,
        help="stage-1 P(angry) at or above which a window is verified",
    )
    if not any(a.dest == "out" for a in parser._actions):
        parser.add_argument("--out", type=Path, default=Path("models"))


def train_main(args: argparse.Namespace) -> int:
    """``emotion-engine train --verifier``: fit and write the stage-2 head."""
    import shlex
    import sys

    path = train_verifier(
        data_dir=Path(args.data),
        out_dir=Path(args.out),
        head=args.verifier_head,
        propose_threshold=args.propose_threshold,
        corpora=args.corpora,
        command=shlex.join(
            ["emotion-engine", "train", "--verifier"]
            + [a for a in sys.argv[1:] if a not in ("train", "--verifier")]
        ),
    )
    print(f"wrote {path}")
    return 0


def _main(args: argparse.Namespace) -> int:
    if args.command == "train":
        return train_main(args)
    if args.command == "stitched":
        result = stitched_comparison(
            data_dir=args.data,
            head=args.verifier_head,
            view=args.view,
            propose_threshold=args.propose_threshold,
            calls_per_speaker=args.calls_per_speaker,
        )
        text = json.dumps(result, indent=2) + "\n"
        print(text)
        if args.json:
            args.json.write_text(text)
        return 0
    items = read_items(args.data, args.corpora)
    data = embed_items(items)
    if args.command == "embed":
        return 0
    result = loco(data, items, heads=args.heads, views=args.views)
    _print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from emotion_engine.training._entry import run_module

    run_module(
        prog="python -m emotion_engine.training.verifier",
        doc=__doc__,
        add_arguments=_add_arguments,
        main=_main,
    )
