"""Window functionals against a slow per-window Python reference."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.errors import AudioError
from emotion_engine.features import (
    FUNCTIONAL_NAMES,
    LLD_INDEX,
    LLD_NAMES,
    compute_functionals,
    compute_lld,
    extract_clip_features,
    voiced_ratio,
)
from emotion_engine.features.functionals import MAX_PERIOD_FACTOR, PERCENTILES

FRAME_S = 0.01


def _random_lld(rng: np.random.Generator, n_frames: int, p_voiced: float) -> NDArray[np.float32]:
    lld = rng.normal(size=(n_frames, len(LLD_NAMES))).astype(np.float32)
    voiced = rng.random(n_frames) < p_voiced
    f0 = rng.uniform(80, 300, n_frames)
    # some octave jumps, so the period-factor rule is exercised
    f0 = np.where(rng.random(n_frames) < 0.1, f0 * 2, f0)
    lld[:, LLD_INDEX["voiced"]] = voiced
    lld[:, LLD_INDEX["f0_hz"]] = np.where(voiced, f0, 0.0)
    lld[:, LLD_INDEX["loudness"]] = rng.uniform(0, 5, n_frames)
    lld[:, LLD_INDEX["peak_amplitude"]] = rng.uniform(0.01, 0.8, n_frames)
    return lld


def _reference(lld: NDArray[np.float32]) -> dict[str, float]:
    """Every functional with plain loops, lists and the statistics module."""
    rows = lld.astype(np.float64)
    col = {name: [float(r[LLD_INDEX[name]]) for r in rows] for name in LLD_NAMES}
    n = len(rows)
    voiced = [col["voiced"][i] > 0.5 and col["f0_hz"][i] > 0 for i in range(n)]
    idx = [i for i in range(n) if voiced[i]]
    out: dict[str, float] = dict.fromkeys(FUNCTIONAL_NAMES, 0.0)

    def stats(base: str, values: list[float], with_percentiles: bool) -> None:
        if not values:
            return
        out[f"{base}_mean"] = statistics.fmean(values)
        out[f"{base}_std"] = statistics.pstdev(values)
        if with_percentiles:
            pct = [float(np.percentile(values, p)) for p in PERCENTILES]
            for p, v in zip(PERCENTILES, pct, strict=True):
                out[f"{base}_p{p}"] = v
            out[f"{base}_p{PERCENTILES[0]}_{PERCENTILES[-1]}_range"] = pct[-1] - pct[0]

    semitones = [12 * math.log2(col["f0_hz"][i] / 27.5) for i in idx]
    stats("f0_semitone", semitones, True)
    stats("loudness", [col["loudness"][i] for i in idx], True)
    for name in LLD_NAMES:
        if f"{name}_mean" in out and name not in ("loudness",):
            stats(name, [col[name][i] for i in idx], False)

    jit_num = jit_den = shim = dst = 0.0
    pairs = 0
    for i in range(1, n):
        if not (voiced[i] and voiced[i - 1]):
            continue
        t0, t1 = 1 / col["f0_hz"][i - 1], 1 / col["f0_hz"][i]
        if max(t0, t1) / min(t0, t1) > MAX_PERIOD_FACTOR:
            continue
        pairs += 1
        jit_num += abs(t1 - t0)
        jit_den += (t0 + t1) / 2
        a0 = max(col["peak_amplitude"][i - 1], 1e-6)
        a1 = max(col["peak_amplitude"][i], 1e-6)
        shim += abs(20 * math.log10(a1 / a0))
        dst += abs(12 * math.log2(t0 / t1))
    if pairs:
        out["jitter_local"] = jit_num / jit_den
        out["shimmer_db"] = shim / pairs
        out["f0_delta_semitone_abs_mean"] = dst / pairs

    segments = sum(1 for i in range(n) if voiced[i] and (i == 0 or not voiced[i - 1]))
    out["voiced_ratio"] = len(idx) / n
    out["loudness_all_mean"] = statistics.fmean(col["loudness"])
    out["rms_db_all_mean"] = statistics.fmean(col["rms_db"])
    deltas = [col["loudness"][i] - col["loudness"][i - 1] for i in range(1, n)]
    out["loudness_delta_std"] = statistics.pstdev(deltas) if deltas else 0.0
    out["voiced_segments_per_s"] = segments / (n * FRAME_S)
    out["voiced_segment_mean_s"] = len(idx) * FRAME_S / segments if segments else 0.0
    return out


def _as_dict(values: NDArray[np.float32]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(FUNCTIONAL_NAMES, values, strict=True)}


def test_names_unique_and_sized() -> None:
    assert len(set(FUNCTIONAL_NAMES)) == len(FUNCTIONAL_NAMES)
    out = compute_functionals(lld=np.zeros((200, len(LLD_NAMES)), dtype=np.float32))
    assert out.shape == (len(FUNCTIONAL_NAMES),)
    assert out.dtype == np.float32


@pytest.mark.parametrize(("n_frames", "p_voiced"), [(200, 0.6), (200, 0.05), (37, 0.9), (2, 1.0)])
def test_matches_loop_reference(n_frames: int, p_voiced: float) -> None:
    rng = np.random.default_rng(n_frames)
    lld = _random_lld(rng, n_frames, p_voiced)
    got = _as_dict(compute_functionals(lld=lld))
    want = _reference(lld)
    for name in FUNCTIONAL_NAMES:
        assert got[name] == pytest.approx(want[name], rel=2e-4, abs=2e-4), name


def test_batched_equals_per_window() -> None:
    rng = np.random.default_rng(1)
    batch = np.stack([_random_lld(rng, 120, p) for p in (0.0, 0.3, 0.7, 1.0)]).reshape(
        2, 2, 120, len(LLD_NAMES)
    )
    out = compute_functionals(lld=batch)
    assert out.shape == (2, 2, len(FUNCTIONAL_NAMES))
    for i in range(2):
        for j in range(2):
            want = _reference(batch[i, j])
            np.testing.assert_allclose(
                out[i, j], [want[n] for n in FUNCTIONAL_NAMES], rtol=2e-4, atol=2e-4
            )
    np.testing.assert_allclose(
        voiced_ratio(lld=batch), out[..., FUNCTIONAL_NAMES.index("voiced_ratio")], rtol=1e-6
    )


def test_window_without_voiced_frames_gives_zeros() -> None:
    rng = np.random.default_rng(2)
    lld = _random_lld(rng, 150, 0.0)
    out = _as_dict(compute_functionals(lld=lld))
    all_frame = {"loudness_all_mean", "rms_db_all_mean", "loudness_delta_std"}
    for name, value in out.items():
        if name not in all_frame:
            assert value == 0.0, name
    assert voiced_ratio(lld=lld) == 0.0


def test_always_finite() -> None:
    rng = np.random.default_rng(3)
    lld = _random_lld(rng, 50, 0.5)
    lld[3, LLD_INDEX["hnr_db"]] = np.nan
    lld[4, LLD_INDEX["loudness"]] = np.inf
    lld[:, LLD_INDEX["peak_amplitude"]] = 0.0
    for window in (lld, lld[:0], lld[:1]):
        assert np.all(np.isfinite(compute_functionals(lld=window)))
    assert np.all(compute_functionals(lld=lld[:0]) == 0.0)


def test_jitter_and_shimmer_of_known_sequences() -> None:
    lld = np.zeros((4, len(LLD_NAMES)), dtype=np.float32)
    lld[:, LLD_INDEX["voiced"]] = 1
    lld[:, LLD_INDEX["f0_hz"]] = [100.0, 125.0, 100.0, 125.0]  # periods 10, 8, 10, 8 ms
    lld[:, LLD_INDEX["peak_amplitude"]] = [0.1, 0.2, 0.1, 0.2]  # 6.02 dB steps
    out = _as_dict(compute_functionals(lld=lld))
    assert out["jitter_local"] == pytest.approx(2.0 / 9.0, rel=1e-5)
    assert out["shimmer_db"] == pytest.approx(20 * math.log10(2), rel=1e-5)
    assert out["voiced_segments_per_s"] == pytest.approx(1 / 0.04)


def test_bad_shape_raises() -> None:
    with pytest.raises(AudioError, match="7"):
        compute_functionals(lld=np.zeros((10, 7), dtype=np.float32))


def test_extract_clip_features_equals_explicit_pipeline() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(12345) / 8000
    samples = (0.2 * np.sin(2 * np.pi * 140 * t) * (t % 0.5 < 0.3)).astype(np.float32)
    samples += (0.01 * rng.standard_normal(t.size)).astype(np.float32)
    frames = np.stack([samples[i : i + 200] for i in range(0, samples.size - 199, 80)])
    want = compute_functionals(lld=compute_lld(frames=frames))
    got = extract_clip_features(samples=samples)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _as_dict(got)["voiced_ratio"] == pytest.approx(0.6, abs=0.05)
    assert _as_dict(got)["f0_semitone_p50"] == pytest.approx(12 * math.log2(140 / 27.5), abs=0.1)


def test_extract_clip_features_short_clip_and_bad_shape() -> None:
    assert np.all(extract_clip_features(samples=np.ones(199, dtype=np.float32)) == 0.0)
    assert extract_clip_features(samples=np.zeros(0, dtype=np.float32)).shape == (
        len(FUNCTIONAL_NAMES),
    )
    with pytest.raises(AudioError, match="2, 400"):
        extract_clip_features(samples=np.zeros((2, 400), dtype=np.float32))
