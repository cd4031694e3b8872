"""Labelled clips for training and evaluation: the shared corpora or a user's own folder.

Two layouts are accepted:

- a folder with one ``labels.csv`` (columns at least ``file,speaker,emotion``) and the
  audio files it names (a user's own labelled calls); the folder is one "corpus";
- a folder of corpora, each a subfolder with its own ``labels.csv`` (the shared layout:
  ``ravdess/``, ``tess/``, ``turevdb/``, ``baved/``, ``ased/``).

Label policy (also written into the manifest):

- ``calm`` is mapped to ``neutral`` (RAVDESS and TurEV-DB use it for low-arousal neutral
  speech; a contact centre has no use for the distinction);
- labels outside the model's label set (``disgust``, ``surprised``, ``fearful`` for the
  4-class model, empty) are not used for the emotion head and are counted as skipped
  (ASED's and RAVDESS's fearful clips still train the arousal head, as high);
- a corpus whose usable emotion labels cover only one class (BAVED: ``neutral`` for its
  middle arousal level only) is not used for the emotion head: the classifier would learn
  "this language/recording -> that class". Its clips still train the arousal head;
- arousal level (0 low, 1 mid, 2 high) comes from an ``intensity`` column holding
  ``low/neutral/high`` (BAVED) or an ``arousal`` column (``low/mid/high`` or ``0/1/2``),
  else from the emotion (angry/happy/fearful/surprised high, neutral/calm mid, sad low).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import MODEL_SAMPLE_RATE_HZ
from emotion_engine.errors import DatasetError

log = logging.getLogger(__name__)

DEFAULT_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")
LABEL_MAP: dict[str, str] = {"calm": "neutral"}
"""Corpus label -> model label, applied before the label-set check."""

AROUSAL_LEVELS: tuple[str, ...] = ("low", "mid", "high")
AROUSAL_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0)
"""Target of the ``arousal`` output for each level."""

AROUSAL_OF_EMOTION: dict[str, int] = {
    "sad": 0,
    "neutral": 1,
    "calm": 1,
    "happy": 2,
    "angry": 2,
    "fearful": 2,
    "surprised": 2,
}
"""Arousal level implied by an emotion label; ``disgust`` is left out (it varies)."""

_AROUSAL_WORDS: dict[str, int] = {
    "low": 0,
    "0": 0,
    "neutral": 1,
    "mid": 1,
    "medium": 1,
    "1": 1,
    "high": 2,
    "2": 2,
}

CORPUS_LICENCES: dict[str, str] = {
    "ravdess": "CC BY-NC-SA 4.0 (RAVDESS, Livingstone & Russo 2018)",
    "tess": "CC BY-NC-ND 4.0 (TESS, Pichora-Fuller & Dupuis 2020)",
    "turevdb": "CC BY-NC-ND 4.0 (TurEV-DB, Canpolat et al. 2020)",
    "baved": "no licence stated; research use (BAVED)",
    "ased": "no licence stated; research use (ASED v1, Northwest University 2021)",
}

NO_LABEL = -1


@dataclass(frozen=True, slots=True)
class Clip:
    """One labelled clip. ``label``: index into the dataset's labels or ``NO_LABEL``;
    ``arousal``: 0/1/2 or ``NO_LABEL``."""

    path: Path
    corpus: str
    speaker: str
    orig_emotion: str
    label: int
    arousal: int


@dataclass(frozen=True, slots=True)
class Dataset:
    """Clips plus the label policy that produced them."""

    clips: tuple[Clip, ...]
    labels: tuple[str, ...]
    root: Path
    skipped: dict[str, int] = field(default_factory=dict)
    emotion_excluded_corpora: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def y(self) -> NDArray[np.int64]:
        """(n_clips,) label index, ``NO_LABEL`` where the emotion head must not learn."""
        return np.array([c.label for c in self.clips], dtype=np.int64)

    @property
    def arousal(self) -> NDArray[np.int64]:
        """(n_clips,) arousal level 0/1/2 or ``NO_LABEL``."""
        return np.array([c.arousal for c in self.clips], dtype=np.int64)

    @property
    def corpus(self) -> NDArray[np.str_]:
        return np.array([c.corpus for c in self.clips])

    @property
    def speaker(self) -> NDArray[np.str_]:
        return np.array([c.speaker for c in self.clips])

    @property
    def corpora(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.corpus for c in self.clips))

    def subset(self, index: NDArray[np.int64] | Sequence[int]) -> Dataset:
        return Dataset(
            clips=tuple(self.clips[int(i)] for i in index),
            labels=self.labels,
            root=self.root,
            skipped=self.skipped,
            emotion_excluded_corpora=self.emotion_excluded_corpora,
        )

    def summary(self) -> dict[str, dict[str, object]]:
        """Per corpus: clip and speaker counts, label and arousal counts (for the manifest)."""
        out: dict[str, dict[str, object]] = {}
        for name in self.corpora:
            clips = [c for c in self.clips if c.corpus == name]
            out[name] = {
                "clips": len(clips),
                "speakers": len({c.speaker for c in clips}),
                "emotion_clips": {
                    self.labels[k]: v
                    for k, v in sorted(Counter(c.label for c in clips if c.label >= 0).items())
                },
                "arousal_clips": {
                    AROUSAL_LEVELS[k]: v
                    for k, v in sorted(Counter(c.arousal for c in clips if c.arousal >= 0).items())
                },
                "used_for_emotion": name not in self.emotion_excluded_corpora,
                "licence": CORPUS_LICENCES.get(name, "user data"),
            }
        return out


def _arousal_of(row: dict[str, str], emotion: str) -> int:
    value = (row.get("arousal") or "").strip().lower()
    if value in _AROUSAL_WORDS:
        return _AROUSAL_WORDS[value]
    value = (row.get("intensity") or "").strip().lower()
    # Only BAVED's words: RAVDESS's intensity (normal/strong) is acting strength, not arousal.
    if value in ("low", "neutral", "high"):
        return _AROUSAL_WORDS[value]
    return AROUSAL_OF_EMOTION.get(emotion, NO_LABEL)


def _read_corpus(
    folder: Path, corpus: str, labels: Sequence[str]
) -> tuple[list[Clip], Counter[str]]:
    csv_path = folder / "labels.csv"
    try:
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DatasetError(f"cannot read {csv_path}: {exc.strerror or exc}") from exc
    if not rows:
        raise DatasetError(f"{csv_path} has no rows")
    missing = {"file", "speaker", "emotion"} - set(rows[0])
    if missing:
        raise DatasetError(
            f"{csv_path} lacks column(s) {sorted(missing)} (needs file,speaker,emotion)"
        )
    index = {name: i for i, name in enumerate(labels)}
    clips: list[Clip] = []
    skipped: Counter[str] = Counter()
    for row in rows:
        emotion = (row["emotion"] or "").strip().lower()
        mapped = LABEL_MAP.get(emotion, emotion)
        label = index.get(mapped, NO_LABEL)
        if label == NO_LABEL:
            skipped[emotion or "<empty>"] += 1
        arousal = _arousal_of(row, emotion)
        if label == NO_LABEL and arousal == NO_LABEL:
            continue
        speaker = (row["speaker"] or "").strip()
        if not speaker:
            raise DatasetError(f"{csv_path}: row for {row['file']!r} has no speaker")
        clips.append(
            Clip(
                path=folder / row["file"],
                corpus=corpus,
                speaker=speaker if speaker.startswith(corpus) else f"{corpus}_{speaker}",
                orig_emotion=emotion,
                label=label,
                arousal=arousal,
            )
        )
    return clips, skipped


def load_dataset(
    data_dir: Path,
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    corpora: Sequence[str] | None = None,
    limit_per_corpus: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Read ``data_dir`` (either layout, see the module docstring) into a ``Dataset``.

    ``corpora``: subfolder names to use (default: all with a ``labels.csv``).
    ``limit_per_corpus``: keep at most this many clips per corpus, drawn at random with
    ``seed`` (for quick runs and tests). Raises ``DatasetError`` when nothing usable is found.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory not found: {data_dir}")
    if (data_dir / "labels.csv").is_file():
        folders = {data_dir.name or "data": data_dir}
    else:
        folders = {p.name: p for p in sorted(data_dir.iterdir()) if (p / "labels.csv").is_file()}
    if corpora is not None:
        unknown = sorted(set(corpora) - set(folders))
        if unknown:
            raise DatasetError(
                f"corpora {unknown} not found in {data_dir} (have {sorted(folders)})"
            )
        folders = {name: folders[name] for name in corpora}
    if not folders:
        raise DatasetError(f"no labels.csv in {data_dir} or its subfolders")

    rng = np.random.default_rng(seed)
    all_clips: list[Clip] = []
    skipped: Counter[str] = Counter()
    excluded: list[str] = []
    for name, folder in folders.items():
        clips, skip = _read_corpus(folder, name, labels)
        if limit_per_corpus is not None and len(clips) > limit_per_corpus:
            keep = np.sort(rng.choice(len(clips), size=limit_per_corpus, replace=False))
            clips = [clips[i] for i in keep]
        skipped.update(skip)
        classes = {c.label for c in clips if c.label != NO_LABEL}
        if len(classes) < 2:
            excluded.append(name)
            clips = [
                Clip(c.path, c.corpus, c.speaker, c.orig_emotion, NO_LABEL, c.arousal)
                for c in clips
            ]
        all_clips.extend(clips)
    if skipped:
        log.info(
            "labels outside %s not used for the emotion head: %s",
            list(labels),
            dict(skipped.most_common()),
        )
    if excluded:
        log.info("corpora with a single emotion class, used for arousal only: %s", excluded)
    if not any(c.label != NO_LABEL for c in all_clips):
        raise DatasetError(f"no clip in {data_dir} carries one of the labels {list(labels)}")
    return Dataset(
        clips=tuple(all_clips),
        labels=tuple(labels),
        root=data_dir,
        skipped=dict(skipped),
        emotion_excluded_corpora=tuple(excluded),
    )


def read_clip(path: Path) -> NDArray[np.float32]:
    """(n_samples,) float32 mono at the model rate (8 kHz) from an audio file.

    Multi-channel files are averaged; other rates go through the engine's resampler.
    Raises ``DatasetError`` naming the file when it cannot be read.
    """
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises its own error types
        raise DatasetError(f"cannot read audio {path}: {exc}") from exc
    samples = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if rate != MODEL_SAMPLE_RATE_HZ:
        from emotion_engine.audio.resample import resample

        samples = resample(samples=samples, rate_in_hz=int(rate), rate_out_hz=MODEL_SAMPLE_RATE_HZ)
    if samples.size == 0:
        raise DatasetError(f"audio file {path} is empty")
    return samples
