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


def expected_calibration_error(
    *, y_true: NDArray[np.integer], probabilities: NDArray[np.floating], n_bins: int = 10
) -> float:
    """Top-label ECE: the confidence of the predicted class against its accuracy.

    ``y_true``: (n,) class indices; ``probabilities``: (n, n_classes). Predictions are
    put in ``n_bins`` equal-width bins of confidence (0, 1]; ECE = sum over bins of
    (bin share) x |accuracy - mean confidence|, 0..1.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ConfigError(f"probabilities {p.shape} must be (n, n_classes) for y_true {y.shape}")
    if y.size == 0:
        raise ConfigError("ece of an empty set")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin b holds confidences in (b/n_bins, (b+1)/n_bins]
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / y.size)


def apply_temperature(
    *, probabilities: NDArray[np.floating], temperature: float
) -> NDArray[np.float64]:
    """softmax(log(p) / T) row-wise: (n, n_classes) -> (n, n_classes); T > 1 softens."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def fit_temperature(*, y_true: NDArray[np.integer], probabilities: NDArray[np.floating]) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of
    :func:`apply_temperature` on (n,) labels and (n, n_classes) probabilities."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true)
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        q = apply_temperature(probabilities=probabilities, temperature=float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(q[rows, y], 1e-12, 1.0))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))
