"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from numpy.typing import NDArray

if TYPE_CHECKING:
    from emotion_engine.model.runtime import EmotionModel

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The shared corpora: ``$EMOTION_ENGINE_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("EMOTION_ENGINE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared corpora (ravdess/, tess/, ...); skips the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"shared corpora not found at {path} (set EMOTION_ENGINE_DATA to the data folder)"
        )
    return path


@pytest.fixture(scope="session")
def model() -> EmotionModel:
    """The shipped model (models/)."""
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR, EmotionModel

    return EmotionModel.load(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def call_pcm(data_dir: Path) -> NDArray[np.int16]:
    """A labelled test call at 8 kHz int16: one RAVDESS actor's neutral/calm clips
    (~14 s, sets the call's baseline), then strong-intensity angry clips (~10 s).

    Strong anger because the tests that use this call check the plumbing (every path
    carries the spike), not the model's recall on mild anger: the five-corpus harness
    (``training/loco.py``, the model card) measures that, misses included."""
    import csv

    from emotion_engine.audio.io import read_audio
    from emotion_engine.audio.pcm import float32_to_int16

    with (data_dir / "ravdess" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker"] == "ravdess_03"]

    def clips(emotions: tuple[str, ...], seconds: float) -> list[NDArray[np.float32]]:
        out: list[NDArray[np.float32]] = []
        total = 0.0
        for r in rows:
            strong = r["emotion"] != "angry" or r["intensity"] == "strong"
            if r["emotion"] in emotions and strong and total < seconds:
                audio = read_audio(data_dir / "ravdess" / r["file"])[0][0]
                out += [audio, np.zeros(3200, dtype=np.float32)]
                total += audio.size / 8000 + 0.4
        return out

    calm = clips(("neutral", "calm"), 14.0)
    angry = clips(("angry",), 10.0)
    return float32_to_int16(np.concatenate(calm + angry))
