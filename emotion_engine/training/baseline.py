"""Reference baseline: openSMILE eGeMAPSv02 functionals + StandardScaler + RBF SVM.

openSMILE's licence forbids redistributing it, so it is a dev/benchmark-only
dependency: imported lazily, and the baseline is skipped with a message when absent.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.config import MODEL_SAMPLE_RATE_HZ
from emotion_engine.training.featurize import Extractor

BASELINE_ID = "egemaps"
BASELINE_DESCRIPTION = (
    "openSMILE eGeMAPSv02 functionals (88) at 8 kHz + StandardScaler + SVC(RBF, C=1, "
    "class_weight=balanced)"
)


def baseline_unavailable_reason() -> str | None:
    """``None`` when openSMILE imports, else a one-line reason to print."""
    try:
        import opensmile  # noqa: F401
    except ImportError as exc:
        return (
            f"eGeMAPS baseline skipped: openSMILE is not installed ({exc}); pip install opensmile"
        )
    return None


@functools.cache
def _smile() -> Any:
    import opensmile

    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.Functionals,
    )


def egemaps_extractor() -> Extractor:
    """(n,) float32 8 kHz samples -> (88,) float32 eGeMAPSv02 functionals."""

    def extract(samples: NDArray[np.float32]) -> NDArray[np.float32]:
        values = np.asarray(
            _smile().process_signal(samples, MODEL_SAMPLE_RATE_HZ).to_numpy(), dtype=np.float32
        ).reshape(-1)
        # openSMILE returns NaN/inf for degenerate clips (no voiced frame): zero them.
        out: NDArray[np.float32] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    return extract


def make_baseline_classifier(*, seed: int = 0) -> Any:
    """Unfitted ``Pipeline(StandardScaler, SVC(rbf, class_weight=balanced))``."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline(
        [
            ("scaler", StandardScaler()),
            (
                "svm",
                SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed),
            ),
        ]
    )
