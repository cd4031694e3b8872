"""Calibration metrics: ECE against a per-sample loop, temperature scaling recovers a
known over-confidence."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_engine.training.metrics import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)


def _ece_loop(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Second path: plain Python, one sample at a time, bins (lo, hi]."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [
            i for i in range(len(y)) if (lo < p[i].max() <= hi) or (b == 0 and p[i].max() <= 0)
        ]
        if not members:
            continue
        acc = np.mean([p[i].argmax() == y[i] for i in members])
        conf = np.mean([p[i].max() for i in members])
        total += len(members) / len(y) * abs(acc - conf)
    return total


@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(300, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, size=300)
    assert expected_calibration_error(y_true=y, probabilities=p) == pytest.approx(
        _ece_loop(y, p, 10), abs=1e-12
    )


def test_ece_hand_example() -> None:
    # two predictions at confidence 0.9 (one right), two at 0.6 (both right)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    # bins: 0.9 -> |0.5 - 0.9| * 2/4 = 0.2; 0.6 -> |1 - 0.6| * 2/4 = 0.2
    assert expected_calibration_error(y_true=y, probabilities=p) == pytest.approx(0.4)


def test_temperature_recovers_known_overconfidence() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 4)) * 3
    true_p = np.exp(logits / 2.5)
    true_p /= true_p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in true_p])
    shown = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # T = 1: too sharp
    t = fit_temperature(y_true=y, probabilities=shown)
    assert t == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(y_true=y, probabilities=shown)
    after = expected_calibration_error(
        y_true=y, probabilities=apply_temperature(probabilities=shown, temperature=t)
    )
    assert after < before / 3
    # T keeps the ranking of classes, so the predicted class never changes
    np.testing.assert_array_equal(
        apply_temperature(probabilities=shown, temperature=t).argmax(1), shown.argmax(1)
    )
