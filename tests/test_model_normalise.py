"""Per-call normalisation: the running estimate against a textbook mean/std, the manifest
round trip, EmotionModel's two input paths, and the engine keeping one state per leg."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from emotion_engine.config import DetectorParams, EngineParams
from emotion_engine.errors import ModelError
from emotion_engine.model import EmotionModel, ModelManifest
from emotion_engine.model.normalise import (
    PER_CALL_KIND,
    CallNormaliser,
    CallNormParams,
    population_stats,
    running_zscore,
    shrunk_zscore_per_speaker,
)
from emotion_engine.model.runtime import MANIFEST_FILE, MODEL_FILE, sha256_bytes
from emotion_engine.training.train import export_onnx, fit_model

RNG = np.random.default_rng(7)
F = 5
M0 = RNG.normal(size=F) * 10
S0 = RNG.uniform(0.5, 3.0, size=F)


def _params(k: float) -> CallNormParams:
    return CallNormParams(mean=M0, std=S0, prior_weight=k)


def _reference(x: np.ndarray, speech: np.ndarray, k: int) -> np.ndarray:
    """Second path: ``k`` pseudo-rows with exactly mean m0 and variance v0 (m0 +- s0,
    k even) joined to the earlier speech rows; np.mean/np.std of that pool."""
    pseudo = np.concatenate([np.tile(M0 + S0, (k // 2, 1)), np.tile(M0 - S0, (k // 2, 1))])
    out = np.empty_like(x)
    for i in range(len(x)):
        pool = np.concatenate([pseudo, x[:i][speech[:i]]])
        out[i] = (x[i] - pool.mean(axis=0)) / pool.std(axis=0)
    return out


def test_running_zscore_matches_pooled_textbook_statistics() -> None:
    x = M0 + RNG.normal(size=(40, F)) * S0 * 1.7 + 2.0
    speech = RNG.random(40) > 0.3
    z, count, *_ = running_zscore(x=x, update=speech, params=_params(4))
    np.testing.assert_allclose(z, _reference(x, speech, 4), rtol=1e-5, atol=1e-5)
    assert count == speech.sum()
    # the first row has only the prior: plain population z-score
    np.testing.assert_allclose(z[0], (x[0] - M0) / S0, rtol=1e-6)


def test_chunked_application_equals_one_pass() -> None:
    x = M0 + RNG.normal(size=(30, F)) * S0
    speech = RNG.random(30) > 0.2
    whole = CallNormaliser(_params(20)).apply(x, is_speech=speech)
    norm = CallNormaliser(_params(20))
    parts = [norm.apply(x[a:b], is_speech=speech[a:b]) for a, b in ((0, 1), (1, 13), (13, 30))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-6, atol=1e-6)
    assert norm.count == speech.sum()
    norm.reset()
    np.testing.assert_allclose(norm.apply(x[:5], is_speech=speech[:5]), whole[:5], atol=1e-6)


def test_non_speech_windows_do_not_move_the_statistics() -> None:
    x = M0 + RNG.normal(size=(6, F)) * S0
    silent = np.zeros(6, dtype=bool)
    z = CallNormaliser(_params(20)).apply(x, is_speech=silent)
    np.testing.assert_allclose(z, (x - M0) / S0, rtol=1e-5)


def test_shrunk_speaker_zscore_is_the_running_estimate_over_all_rows() -> None:
    x = M0 + RNG.normal(size=(12, F)) * S0 + 1.0
    speaker = np.array(["a"] * 7 + ["b"] * 5)
    z = shrunk_zscore_per_speaker(x=x, speaker=speaker, params=_params(4))
    for name in ("a", "b"):
        rows = x[speaker == name]
        # the running estimate's state after all rows, applied to each row
        probe = np.concatenate([rows, rows])
        upd = np.r_[np.ones(len(rows), bool), np.zeros(len(rows), bool)]
        ref, *_ = running_zscore(x=probe, update=upd, params=_params(4))
        np.testing.assert_allclose(z[speaker == name], ref[len(rows) :], rtol=1e-5, atol=1e-5)


def test_population_stats_balance_groups() -> None:
    x = np.array([[0.0], [2.0], [10.0], [10.0], [20.0], [24.0]])
    speaker = np.array(["a1", "a1", "a2", "a2", "b1", "b1"])
    group = np.array(["a", "a", "a", "a", "b", "b"])
    m0, s0 = population_stats(x=x, speaker=speaker, group=group)
    # corpus a: speaker means 1 and 10 -> 5.5, variances 1 and 0 -> 0.5; corpus b: 22, 4
    np.testing.assert_allclose(m0, [(5.5 + 22) / 2])
    np.testing.assert_allclose(s0, [np.sqrt((0.5 + 4) / 2)])


def test_manifest_block_round_trip_and_old_manifests() -> None:
    block = {"kind": PER_CALL_KIND, "per_call": _params(20).to_dict()}
    back = CallNormParams.from_manifest(block, n_features=F)
    assert back is not None
    np.testing.assert_array_equal(back.mean, M0)
    np.testing.assert_array_equal(back.std, S0)
    assert back.prior_weight == 20
    old = {"kind": "StandardScaler inside the graph (features are fed raw)", "mean": [0.0]}
    assert CallNormParams.from_manifest(old, n_features=F) is None
    assert CallNormParams.from_manifest({}, n_features=F) is None
    with pytest.raises(ModelError, match="3 values for 5 features"):
        bad = {**block["per_call"], "prior_mean": [0.0, 1.0, 2.0]}
        CallNormParams.from_manifest({"kind": PER_CALL_KIND, "per_call": bad}, n_features=F)
    with pytest.raises(ModelError, match="std"):
        CallNormParams(mean=M0, std=np.zeros(F), prior_weight=1.0)


def _per_call_model(folder: Path, *, per_call: bool) -> tuple[EmotionModel, CallNormParams]:
    labels = ("neutral", "happy", "sad", "angry")
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    x = (rng.normal(size=(200, F)) + y[:, None]).astype(np.float32)
    fitted = fit_model(
        x=x,
        y=y,
        arousal=np.array([1, 2, 0, 2])[y],
        corpus=np.array(["c"] * 200),
        labels=labels,
        seed=0,
    )
    blob = export_onnx(fitted, n_features=F).SerializeToString()
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(blob)
    params = _params(20)
    normalisation = {"kind": PER_CALL_KIND, "per_call": params.to_dict()} if per_call else {}
    ModelManifest(
        labels=labels,
        feature_names=tuple(f"f{i}" for i in range(F)),
        onnx_file=MODEL_FILE,
        onnx_sha256=sha256_bytes(blob),
        normalisation=normalisation,
    ).save(folder / MANIFEST_FILE)
    names = tuple(f"f{i}" for i in range(F))
    return EmotionModel.load(folder, expected_feature_names=names), params


def test_emotion_model_raw_path_uses_the_population_prior(tmp_path: Path) -> None:
    model, params = _per_call_model(tmp_path / "m", per_call=True)
    plain, _ = _per_call_model(tmp_path / "plain", per_call=False)
    assert model.call_norm is not None and plain.call_norm is None
    assert plain.new_call_normaliser() is None
    x = (M0 + RNG.normal(size=(4, F)) * S0).astype(np.float32)
    z = ((x - M0) / S0).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(x).probabilities,
        plain.predict(z).probabilities,
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        model.predict(z, normalised=True).probabilities, plain.predict(z).probabilities
    )
    norm = model.new_call_normaliser()
    assert isinstance(norm, CallNormaliser) and norm.params.prior_weight == params.prior_weight


@pytest.fixture(scope="module")
def per_call_engine_model(tmp_path_factory: pytest.TempPathFactory) -> EmotionModel:
    """A per-call model over the engine's real 61 functionals (synthetic weights)."""
    from emotion_engine.features.functionals import FUNCTIONAL_NAMES

    n = len(FUNCTIONAL_NAMES)
    labels = ("neutral", "happy", "sad", "angry")
    rng = np.random.default_rng(1)
    y = np.arange(400) % 4
    x = (rng.normal(size=(400, n)) + 0.5 * y[:, None]).astype(np.float32)
    fitted = fit_model(
        x=x,
        y=y,
        arousal=np.array([1, 2, 0, 2])[y],
        corpus=np.array(["c"] * 400),
        labels=labels,
        seed=0,
    )
    folder = tmp_path_factory.mktemp("per_call")
    blob = export_onnx(fitted, n_features=n).SerializeToString()
    (folder / MODEL_FILE).write_bytes(blob)
    # the shipped model's population statistics would do; any positive std works here
    params = CallNormParams(mean=np.zeros(n), std=np.ones(n) * 5.0, prior_weight=20.0)
    ModelManifest(
        labels=labels,
        feature_names=tuple(FUNCTIONAL_NAMES),
        onnx_file=MODEL_FILE,
        onnx_sha256=sha256_bytes(blob),
        normalisation={"kind": PER_CALL_KIND, "per_call": params.to_dict()},
    ).save(folder / MANIFEST_FILE)
    return EmotionModel.load(folder)


def test_engine_keeps_one_running_state_per_leg(
    per_call_engine_model: EmotionModel, call_pcm: np.ndarray
) -> None:
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.frames import AudioChunk

    other = call_pcm[::-1].copy()

    def updates(events: list) -> list[tuple[float, list[float], bool]]:
        return [
            (d["t"], list(d["probabilities"].values()), d["is_speech"])
            for d in (e.to_dict() for e in events)
            if d["type"] == "emotion.update"
        ]

    # every speech window judged calm: the statistics see all of them, as in training
    all_calm = EngineParams(detector=dataclasses.replace(DetectorParams(), calm_max_score=1.0))

    def alone(pcm: np.ndarray, chunk: int) -> tuple[list, float]:
        engine = Engine(model=per_call_engine_model, params=all_calm)
        events = engine.open_leg(call_id="x", party="customer", sample_rate=8000)
        norm = engine.legs[("x", "customer")].normaliser
        for s in range(0, len(pcm), chunk):
            engine.push(AudioChunk("x", "customer", s / 8000, pcm[s : s + chunk], 8000))
            events += engine.process()
        events += engine.close_leg(call_id="x", party="customer")
        assert norm is not None
        return updates(events), norm.count

    ref_a, count_a = alone(call_pcm, 160)
    ref_b, _ = alone(other, 160)
    assert count_a == sum(1 for u in ref_a if u[2]) > 10
    # one 1.6 s block per tick: several windows of a leg normalised in one batch
    block, _ = alone(call_pcm, 12800)
    np.testing.assert_allclose([u[1] for u in block], [u[1] for u in ref_a], atol=1e-5)

    engine = Engine(model=per_call_engine_model, params=all_calm)
    events: list = []
    for call in ("a", "b"):
        engine.open_leg(call_id=call, party="customer", sample_rate=8000)
    for s in range(0, len(call_pcm), 160):
        engine.push(AudioChunk("a", "customer", s / 8000, call_pcm[s : s + 160], 8000))
        engine.push(AudioChunk("b", "customer", s / 8000, other[s : s + 160], 8000))
        events += engine.process()
    events += engine.close_all()
    got_a = updates([e for e in events if e.call_id == "a"])
    got_b = updates([e for e in events if e.call_id == "b"])
    np.testing.assert_allclose([u[1] for u in got_a], [u[1] for u in ref_a], atol=1e-6)
    np.testing.assert_allclose([u[1] for u in got_b], [u[1] for u in ref_b], atol=1e-6)


def test_engine_learns_a_legs_statistics_from_calm_windows_only(
    per_call_engine_model: EmotionModel, call_pcm: np.ndarray
) -> None:
    """A window joins the leg's statistics only when the model judged it calm (P(angry)
    at most calm_max_score). This synthetic model scores every speech window of the
    call angry, so the statistics stay at the population prior: an angry caller is never
    normalised into their own "normal" (with calm_max_score=1 every speech window
    joins them: test_engine_keeps_one_running_state_per_leg)."""
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.frames import AudioChunk

    engine = Engine(model=per_call_engine_model)
    events = engine.open_leg(call_id="x", party="customer", sample_rate=8000)
    norm = engine.legs[("x", "customer")].normaliser
    assert norm is not None
    for s in range(0, len(call_pcm), 160):
        engine.push(AudioChunk("x", "customer", s / 8000, call_pcm[s : s + 160], 8000))
        events += engine.process()
    count = norm.count
    events += engine.close_leg(call_id="x", party="customer")
    speech = [
        e.payload["probabilities"]["angry"]
        for e in events
        if e.type == "emotion.update" and e.payload["is_speech"]
    ]
    assert len(speech) > 10 and min(speech) > DetectorParams().calm_max_score
    assert count == 0 and not norm.sum_d.any()


def test_normalise_then_learn_equals_the_running_zscore_over_the_learnt_rows() -> None:
    rng = np.random.default_rng(3)
    params = CallNormParams(mean=np.ones(4), std=np.full(4, 2.0), prior_weight=5.0)
    x = rng.normal(size=(30, 4)) * 3 + 2
    calm = rng.random(30) < 0.5
    norm = CallNormaliser(params)
    got = np.empty((30, 4), dtype=np.float32)
    for i in range(30):
        before = (norm.count, norm.sum_d.copy())
        got[i] = norm.normalise(x[i : i + 1])[0]
        assert norm.count == before[0] and np.array_equal(norm.sum_d, before[1])
        if calm[i]:
            norm.learn(x[i : i + 1])
    # the batch path: every row against the update rows before it
    want, count, *_ = running_zscore(x=x, update=calm, params=params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert count == norm.count == calm.sum()
