"""Does normalising features per speaker help across corpora? A measured comparison.

    python -m emotion_engine.training.speaker_norm --data ../shared/data [--out models/speaker_norm.json]

Runs the model card's protocols (RAVDESS speaker k-fold, leave-one-corpus-out; G.711
mu-law test audio) on the same cached features four ways, for our features and for
the eGeMAPS + SVM baseline alike:

- ``none``: raw features (what the shipped model does);
- ``zscore``: each speaker's features minus that speaker's mean, divided by that
  speaker's standard deviation, over all of the speaker's clips;
- ``zscore_neutral_mean``: as ``zscore`` but centred on the speaker's neutral/calm
  (BAVED: mid-arousal) clips, closer to what a call offers (its calm start);
- ``mean_only``: the speaker's mean subtracted, no scaling.

This is transductive: a test speaker's statistics come from all of that speaker's
test clips, as the published per-speaker normalisation results do. A live call only
has its own speech so far, so these numbers are an upper bound for per-call
normalisation in the engine (the causal version: evaluate --normalisation per_call).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.training.data import Dataset, load_dataset
from emotion_engine.training.evaluate import (
    Features,
    evaluate_features,
    load_features,
    normalisation_digest,
)
from emotion_engine.training.train import reference_rows

log = logging.getLogger(__name__)

MODES = ("none", "zscore", "zscore_neutral_mean", "mean_only")
MIN_REFERENCE_CLIPS = 5


def normalise_per_speaker(
    *,
    x: NDArray[np.float32],
    speaker: NDArray[np.str_],
    reference: NDArray[np.bool_],
    mode: str,
) -> NDArray[np.float32]:
    """Per-speaker normalisation of a feature matrix.

    ``x`` (n_clips, n_features), ``speaker`` (n_clips,), ``reference`` (n_clips,): the
    clips whose mean centres a speaker in ``zscore_neutral_mean`` (all clips when a
    speaker has fewer than 5). Returns (n_clips, n_features) float32.
    """
    if mode == "none":
        return x
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    out = np.empty_like(x)
    for name in np.unique(speaker):
        mine = speaker == name
        centre = mine
        if mode == "zscore_neutral_mean" and int((mine & reference).sum()) >= MIN_REFERENCE_CLIPS:
            centre = mine & reference
        shifted = x[mine] - x[centre].mean(axis=0)
        if mode == "mean_only":
            out[mine] = shifted
        else:
            out[mine] = shifted / (x[mine].std(axis=0) + 1e-6)
    return out


def compare(dataset: Dataset, feats: Features, *, seed: int) -> dict[str, Any]:
    reference = reference_rows(dataset)
    out: dict[str, Any] = {}
    for mode in MODES:

        def norm(x: NDArray[np.float32], mode: str = mode) -> NDArray[np.float32]:
            return normalise_per_speaker(
                x=x, speaker=dataset.speaker, reference=reference, mode=mode
            )

        normed = Features(
            test=norm(feats.test),
            train=norm(feats.train),
            baseline=norm(feats.baseline) if feats.baseline is not None else None,
        )
        results = evaluate_features(
            dataset, normed, seed=seed, compare_candidates=False, progress=False
        )
        out[mode] = normalisation_digest(results)
        log.info("%s: %s", mode, results["summary"])
    return out


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| normalisation | system | loco UAR mean | ravdess | tess | turevdb | "
        "angry AUC ravdess | tess | turevdb | RAVDESS k-fold UAR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, entry in results.items():
        for system in ("ours", "baseline"):
            s = entry["summary"].get(system, {})
            loco = entry["loco"]

            def cell(test_set: str, key: str, system: str = system, loco: Any = loco) -> str:
                v = (loco.get(test_set, {}).get(system) or {}).get(key)
                return "–" if v is None else f"{100 * v:.1f}"

            mean = s.get("loco_emotion_uar_mean")
            kfold = s.get("ravdess_kfold_uar")
            lines.append(
                f"| {mode} | {system} | {'–' if mean is None else f'{100 * mean:.1f}'} | "
                + " | ".join(cell(t, "uar") for t in ("ravdess", "tess", "turevdb"))
                + " | "
                + " | ".join(cell(t, "angry_auc") for t in ("ravdess", "tess", "turevdb"))
                + f" | {'–' if kfold is None else f'{100 * kfold:.1f}'} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emotion_engine.training.speaker_norm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("models/speaker_norm.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dataset = load_dataset(args.data)
    feats = load_features(dataset, seed=args.seed, include_baseline=True, progress=True)
    results = compare(dataset, feats, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
