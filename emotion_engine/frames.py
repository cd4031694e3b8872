"""Small typed messages that travel along the data path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Raw audio of one party of one call, as every ingest adapter produces it.

    ``pcm``: (n_samples,) int16 mono at ``sample_rate`` Hz. ``t``: seconds of call
    audio at the chunk's first sample.
    """

    call_id: str
    party: str
    t: float
    pcm: NDArray[np.int16]
    sample_rate: int


@dataclass(frozen=True, slots=True)
class FeatureWindow:
    """Functionals of one analysis window of one party.

    ``features``: (n_features,) float32 in the model manifest's order.
    ``t_start``/``t_end``: seconds of call audio covered. ``voiced_ratio``: share of
    voiced frames in the window; ``is_speech`` says whether it passed the voice gate.
    """

    call_id: str
    party: str
    t_start: float
    t_end: float
    features: NDArray[np.float32]
    voiced_ratio: float
    is_speech: bool


@dataclass(frozen=True, slots=True)
class EmotionScores:
    """Model output for one window.

    ``probabilities``: label -> probability (sums to 1). ``arousal``: 0 (low) .. 1 (high).
    ``t``: seconds of call audio at the window's end (the moment the score is known).
    ``stage``: which model decided: 1 the functionals model alone, 2 the verifier
    (stage 2 of the cascade) replaced P(angry).
    """

    call_id: str
    party: str
    t: float
    probabilities: dict[str, float]
    arousal: float
    voiced_ratio: float
    is_speech: bool
    # the window is speech but not like the speech the model learnt from (synthetic
    # speech, music, tones: model/confidence.py); the detector ignores it
    low_confidence: bool = False
    low_confidence_reason: str | None = None
    ood_distance: float | None = None  # squared Mahalanobis distance, None if not checked
    stage: int = 1
