"""Per-call feature normalisation: each leg's window functionals against its own statistics.

Voices differ more between speakers (pitch, loudness, timbre, language) than one
speaker's emotions do, so a model that sees a window relative to *this caller's* usual
voice generalises across speakers and corpora far better than one that sees raw values
(models/README.md: leave-one-corpus-out UAR 45.9 -> 54.3 % with per-speaker z-scores).

A live call only has its speech so far, so the statistics are a running estimate,
shrunk towards population statistics stored in the manifest::

    mean_n = (k * m0 + sum(x)) / (k + n)
    var_n  = (k * (v0 + (m0 - mean_n)**2) + sum((x - mean_n)**2)) / (k + n)

with ``n`` speech windows seen so far, ``m0``/``v0`` the population mean and typical
within-speaker variance, and ``k`` the prior weight in windows: the prior counts as
``k`` windows of a typical speaker. With no speech yet a window is scored against the
population (a sane first reading); after a few times ``k`` windows the call's own voice
dominates. A window is normalised by the statistics of the windows *before* it, so a
sudden change (the anger the detector looks for) stands out against the call's earlier
voice instead of being half-absorbed into it. The live engine adds a window to the
statistics only when it was judged calm speech (trusted speech whose spike-emotion
scores stay at or below ``DetectorParams.calm_max_score``): a caller angry from the first
word, or for a long stretch, is compared with the population and their calm speech,
never normalised into "angry is normal".

Use::

    norm = CallNormaliser(params)                    # one per call leg
    z = norm.normalise(features)                     # (n_windows, n_features), in order
    norm.learn(features[calm])                       # after the model judged them
    z = norm.apply(features, is_speech=speech)       # or: every speech window joins
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import ModelError

PER_CALL_KIND = "per_call_zscore"
"""``manifest.normalisation['kind']`` of a model trained on per-speaker z-scored features."""

MIN_REFERENCE_ROWS = 3
"""Fewest neutral/calm rows that may centre a training speaker (else all rows do)."""

STD_FLOOR_FRACTION = 1e-3
"""The running std never falls below this fraction of the population std (constant features)."""


@dataclass(frozen=True, slots=True)
class CallNormParams:
    """Population statistics for the running estimate (from the training speakers).

    ``mean``: (n_features,) population mean ``m0`` (prior for a call's mean);
    ``std``: (n_features,) typical within-speaker std ``sqrt(v0)`` (prior for a call's
    std); ``prior_weight``: ``k``, how many speech windows the prior is worth.
    """

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    prior_weight: float

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ModelError(
                f"per-call normalisation: mean {self.mean.shape} and std {self.std.shape} "
                "must be equal (n_features,)"
            )
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise ModelError("per-call normalisation: mean/std must be finite")
        if np.any(self.std <= 0):
            bad = int(np.flatnonzero(self.std <= 0)[0])
            raise ModelError(f"per-call normalisation: std[{bad}] = {self.std[bad]} must be > 0")
        if not (np.isfinite(self.prior_weight) and self.prior_weight > 0):
            raise ModelError(
                f"per-call normalisation: prior_weight {self.prior_weight} must be > 0"
            )

    @property
    def n_features(self) -> int:
        return int(self.mean.size)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``normalisation['per_call']`` block."""
        return {
            "prior_mean": [float(v) for v in self.mean],
            "prior_std": [float(v) for v in self.std],
            "prior_weight_windows": float(self.prior_weight),
            "update": "speech windows only (voice gate); each window is normalised by the "
            "statistics of the speech windows before it, then added to them",
            "formula": "z = (x - mean_n) / std_n; mean_n = (k*m0 + sum x) / (k + n); "
            "var_n = (k*(v0 + (m0 - mean_n)^2) + sum (x - mean_n)^2) / (k + n)",
        }

    @classmethod
    def from_manifest(
        cls, normalisation: Mapping[str, Any], *, n_features: int
    ) -> CallNormParams | None:
        """Parse ``manifest.normalisation``; ``None`` for a model fed raw features (every
        manifest written before per-call normalisation existed). Raises ModelError for a
        per-call block that does not fit ``n_features``."""
        if normalisation.get("kind") != PER_CALL_KIND:
            return None
        block = normalisation.get("per_call")
        if not isinstance(block, Mapping):
            raise ModelError(f"normalisation kind {PER_CALL_KIND!r} needs a 'per_call' block")
        try:
            mean = np.asarray(block["prior_mean"], dtype=np.float64)
            std = np.asarray(block["prior_std"], dtype=np.float64)
            weight = float(block["prior_weight_windows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"normalisation.per_call is malformed: {exc!r}") from exc
        if mean.shape != (n_features,):
            raise ModelError(
                f"normalisation.per_call.prior_mean has {mean.size} values for {n_features} "
                "features"
            )
        return cls(mean=mean, std=std, prior_weight=weight)


def running_zscore(
    *,
    x: NDArray[np.floating],
    update: NDArray[np.bool_],
    params: CallNormParams,
    count: float = 0.0,
    sum_d: NDArray[np.float64] | None = None,
    sum_d2: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float32], float, NDArray[np.float64], NDArray[np.float64]]:
    """Normalise rows in order, each by the shrunk statistics of the ``update`` rows
    before it (plus an earlier state ``count``/``sum_d``/``sum_d2``).

    ``x``: (n, n_features); ``update``: (n,) which rows join the statistics.
    Sums are of ``d = x - m0`` (centred on the prior mean, which keeps the float64 sums
    well conditioned for features such as centroid in Hz). Returns ``z`` (n, n_features)
    float32 and the new ``count``, ``sum_d``, ``sum_d2``.
    """
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim != 2 or x64.shape[1] != params.n_features:
        raise ModelError(f"features must be (n, {params.n_features}), got shape {x64.shape}")
    upd = np.asarray(update, dtype=bool)
    if upd.shape != (x64.shape[0],):
        raise ModelError(f"update must be ({x64.shape[0]},), got shape {upd.shape}")
    f = params.n_features
    s1 = np.zeros(f) if sum_d is None else sum_d
    s2 = np.zeros(f) if sum_d2 is None else sum_d2
    d = x64 - params.mean
    dw = d * upd[:, None]
    # exclusive prefix sums: row i sees the update rows 0..i-1 and the earlier state
    c1 = np.cumsum(dw, axis=0)
    c2 = np.cumsum(dw * d, axis=0)
    cn = np.cumsum(upd)
    prev_n = count + np.concatenate([[0.0], cn[:-1]])[:, None]
    prev_s1 = s1 + np.concatenate([np.zeros((1, f)), c1[:-1]])
    prev_s2 = s2 + np.concatenate([np.zeros((1, f)), c2[:-1]])
    k = params.prior_weight
    v0 = params.std**2
    total = k + prev_n
    shift = prev_s1 / total  # mean_n - m0
    # k*(v0 + shift^2) + sum (d - shift)^2 == k*v0 + sum d^2 - (k + n)*shift^2
    var = (k * v0 + prev_s2) / total - shift**2
    std = np.sqrt(np.maximum(var, (STD_FLOOR_FRACTION * params.std) ** 2))
    z = ((d - shift) / std).astype(np.float32)
    if not cn.size:
        return z, count, s1, s2
    return z, count + float(cn[-1]), s1 + c1[-1], s2 + c2[-1]


class CallNormaliser:
    """Running per-leg statistics (see the module docstring); ``apply`` then ``reset``."""

    __slots__ = ("count", "params", "sum_d", "sum_d2")

    def __init__(self, params: CallNormParams) -> None:
        self.params = params
        self.count = 0.0
        self.sum_d = np.zeros(params.n_features)
        self.sum_d2 = np.zeros(params.n_features)

    def __repr__(self) -> str:
        return f"CallNormaliser(n_speech_windows={self.count:g}, k={self.params.prior_weight:g})"

    def apply(
        self, features: NDArray[np.floating], *, is_speech: NDArray[np.bool_]
    ) -> NDArray[np.float32]:
        """Normalise (n, n_features) windows of this leg, in time order; speech windows
        then join the statistics. ``is_speech``: (n,). Returns (n, n_features) float32."""
        z, self.count, self.sum_d, self.sum_d2 = running_zscore(
            x=features,
            update=is_speech,
            params=self.params,
            count=self.count,
            sum_d=self.sum_d,
            sum_d2=self.sum_d2,
        )
        return z

    def normalise(self, features: NDArray[np.floating]) -> NDArray[np.float32]:
        """(n, n_features) windows against the statistics so far, which they do not
        join; returns (n, n_features) float32. Follow with :meth:`learn` for the windows
        judged calm (the engine's path)."""
        x = np.asarray(features, dtype=np.float64)
        z, *_ = running_zscore(
            x=x,
            update=np.zeros(x.shape[0], dtype=bool),
            params=self.params,
            count=self.count,
            sum_d=self.sum_d,
            sum_d2=self.sum_d2,
        )
        return z

    def learn(self, features: NDArray[np.floating]) -> None:
        """Add (n, n_features) windows to the statistics (windows judged calm speech)."""
        d = np.asarray(features, dtype=np.float64) - self.params.mean
        if d.ndim != 2 or d.shape[1] != self.params.n_features:
            raise ModelError(f"features must be (n, {self.params.n_features}), got {d.shape}")
        self.count += d.shape[0]
        self.sum_d = self.sum_d + d.sum(axis=0)
        self.sum_d2 = self.sum_d2 + np.square(d).sum(axis=0)

    def reset(self) -> None:
        self.count = 0.0
        self.sum_d = np.zeros(self.params.n_features)
        self.sum_d2 = np.zeros(self.params.n_features)


def population_stats(
    *, x: NDArray[np.floating], speaker: NDArray[np.str_], group: NDArray[np.str_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Prior ``m0`` and ``sqrt(v0)`` from training rows: the mean of speaker means and the
    root mean within-speaker variance, each averaged per ``group`` (corpus) first and then
    over groups, so a corpus with many speakers (BAVED, 60) does not set the prior alone.

    ``x``: (n, n_features); ``speaker``, ``group``: (n,). Returns two (n_features,) arrays.
    """
    x64 = np.asarray(x, dtype=np.float64)
    means: list[NDArray[np.float64]] = []
    variances: list[NDArray[np.float64]] = []
    for g in np.unique(group):
        in_g = group == g
        sm = []
        sv = []
        for s in np.unique(speaker[in_g]):
            rows = x64[in_g & (speaker == s)]
            sm.append(rows.mean(axis=0))
            sv.append(rows.var(axis=0))
        means.append(np.mean(sm, axis=0))
        variances.append(np.mean(sv, axis=0))
    m0 = np.mean(means, axis=0)
    s0 = np.sqrt(np.mean(variances, axis=0))
    # a feature constant within every speaker would give s0 = 0; keep it finite
    s0 = np.maximum(s0, 1e-6 * (1.0 + np.abs(m0)))
    return m0, s0


def shrunk_zscore_per_speaker(
    *,
    x: NDArray[np.floating],
    speaker: NDArray[np.str_],
    params: CallNormParams,
    reference: NDArray[np.bool_] | None = None,
) -> NDArray[np.float32]:
    """Training-side normalisation: each speaker's rows by the shrunk statistics of all of
    that speaker's rows (the module formula with ``n`` = the speaker's row count, so a
    speaker with one or two clips leans on the population instead of dividing by ~0).

    ``x``: (n, n_features); ``speaker``: (n,); ``params.prior_weight`` counts rows here.
    ``reference``: (n,) optional; where a speaker has at least ``MIN_REFERENCE_ROWS``
    reference rows (neutral/calm clips), the centre is the shrunk mean of those alone,
    closer to a live call, whose statistics mostly come from calm speech; the scale
    stays that of all the speaker's rows. Returns (n, n_features) float32.
    """
    x64 = np.asarray(x, dtype=np.float64)
    out = np.empty(x64.shape, dtype=np.float32)
    k = params.prior_weight
    for s in np.unique(speaker):
        mine = speaker == s
        d = x64[mine] - params.mean
        total = k + d.shape[0]
        shift = d.sum(axis=0) / total
        var = (k * params.std**2 + np.square(d).sum(axis=0)) / total - shift**2
        std = np.sqrt(np.maximum(var, (STD_FLOOR_FRACTION * params.std) ** 2))
        if reference is not None and int((mine & reference).sum()) >= MIN_REFERENCE_ROWS:
            d_ref = x64[mine & reference] - params.mean
            shift = d_ref.sum(axis=0) / (k + d_ref.shape[0])
        out[mine] = (d - shift) / std
    return out
