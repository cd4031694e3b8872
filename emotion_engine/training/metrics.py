"""Evaluation metrics in plain numpy: UAR, confusion matrix, ROC-AUC.

UAR (unweighted average recall, i.e. macro recall over the classes present in the
truth) is the usual figure for emotion corpora, whose class sizes differ by corpus.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError


def confusion_matrix(
    *, y_true: NDArray[np.integer], y_pred: NDArray[np.integer], n_classes: int
) -> NDArray[np.int64]:
    """(n_classes, n_classes) counts; row = true class, column = predicted class.

    ``y_true``, ``y_pred``: (n,) class indices in ``0..n_classes-1``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ConfigError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal (n,)")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ConfigError(f"{name} holds {y.min()}..{y.max()}, outside 0..{n_classes - 1}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def recalls(*, confusion: NDArray[np.int64]) -> NDArray[np.float64]:
    """(n_classes,) recall per class; NaN for a class absent from the truth."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)


def uar(*, y_true: NDArray[np.integer], y_pred: NDArray[np.integer], n_classes: int) -> float:
    """Unweighted average recall over the classes present in ``y_true`` (0..1)."""
    r = recalls(confusion=confusion_matrix(y_true=y_true, y_pred=y_pred, n_classes=n_classes))
    if np.all(np.isnan(r)):
        raise ConfigError("uar of an empty set")
    return float(np.nanmean(r))


def accuracy(*, y_true: NDArray[np.integer], y_pred: NDArray[np.integer]) -> float:
    """Share of exact matches (0..1)."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        raise ConfigError("accuracy of an empty set")
    return float(np.mean(y_true == np.asarray(y_pred)))


def roc_auc(
    *, y_true: NDArray[np.integer] | NDArray[np.bool_], scores: NDArray[np.floating]
) -> float:
    """Area under the ROC curve of ``scores`` for the binary truth ``y_true`` (n,).

    Mann-Whitney form: the probability that a random positive outscores a random
    negative, ties counting one half (average ranks). NaN when one class is absent.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ConfigError(f"y_true {y.shape} and scores {s.shape} must be equal (n,)")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average rank within each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum = ranks[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
