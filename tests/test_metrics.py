"""Metrics against scikit-learn and a slow pairwise ROC-AUC reference."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from emotion_engine.errors import ConfigError
from emotion_engine.training.metrics import accuracy, confusion_matrix, roc_auc, uar


@pytest.mark.parametrize("seed", range(5))
def test_uar_equals_balanced_accuracy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, size=200))
    assert uar(y_true=y, y_pred=pred, n_classes=4) == pytest.approx(
        balanced_accuracy_score(y, pred), abs=1e-12
    )


def test_uar_ignores_classes_absent_from_truth() -> None:
    # Class 3 is predicted but never true (a corpus without that emotion).
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 3, 1, 1, 3, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the extra predicted class
        expected = balanced_accuracy_score(y, pred)
    assert uar(y_true=y, y_pred=pred, n_classes=4) == pytest.approx(expected)
    assert expected == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=100)
    pred = rng.integers(0, 3, size=100)
    np.testing.assert_array_equal(
        confusion_matrix(y_true=y, y_pred=pred, n_classes=3),
        sk_confusion_matrix(y, pred, labels=[0, 1, 2]),
    )
    assert accuracy(y_true=y, y_pred=pred) == pytest.approx(np.mean(y == pred))


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = s[y == 1]
    neg = s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_sklearn_and_pairwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=120)
    # Rounded scores force ties, which the average-rank formula must count as halves.
    s = np.round(rng.random(120) + 0.4 * y, 1)
    got = roc_auc(y_true=y, scores=s)
    assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_roc_auc_one_class_is_nan() -> None:
    assert np.isnan(roc_auc(y_true=np.ones(5, dtype=int), scores=np.arange(5.0)))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match=r"outside 0\.\.2"):
        confusion_matrix(y_true=np.array([0, 3]), y_pred=np.array([0, 1]), n_classes=3)
    with pytest.raises(ConfigError, match="must be equal"):
        uar(y_true=np.array([0, 1]), y_pred=np.array([0]), n_classes=2)
