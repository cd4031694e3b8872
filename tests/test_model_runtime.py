"""EmotionModel: ONNX output against sklearn, and every way a model folder can be wrong."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from emotion_engine.errors import ManifestMismatchError, ModelError
from emotion_engine.model import EmotionModel, ModelManifest, load_manifest
from emotion_engine.model.runtime import MANIFEST_FILE, MODEL_FILE, sha256_bytes
from emotion_engine.training.train import FittedModel, export_onnx, fit_model

LABELS = ("neutral", "happy", "sad", "angry")
N_FEATURES = 6
NAMES = tuple(f"f{i}" for i in range(N_FEATURES))


def _synthetic(
    seed: int = 0, n: int = 240
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(LABELS)
    centres = rng.normal(scale=2.0, size=(len(LABELS), N_FEATURES))
    x = (centres[y] + rng.normal(size=(n, N_FEATURES)) * 3.0 + 10.0).astype(np.float32)
    arousal = np.array([1, 2, 0, 2])[y]
    corpus = np.where(np.arange(n) < n // 2, "a", "b")
    return x, y, arousal, corpus


def _write_model(folder: Path, fitted: FittedModel, *, labels: tuple[str, ...] = LABELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    blob = export_onnx(fitted, n_features=N_FEATURES).SerializeToString()
    (folder / MODEL_FILE).write_bytes(blob)
    ModelManifest(
        labels=labels,
        feature_names=NAMES,
        onnx_file=MODEL_FILE,
        onnx_sha256=sha256_bytes(blob),
    ).save(folder / MANIFEST_FILE)
    return folder


@pytest.fixture(scope="module", params=["logreg", "mlp", "svm"])
def fitted(request: pytest.FixtureRequest) -> FittedModel:
    x, y, arousal, corpus = _synthetic()
    return fit_model(
        x=x, y=y, arousal=arousal, corpus=corpus, labels=LABELS, candidate=request.param, seed=0
    )


def test_onnx_matches_sklearn(tmp_path: Path, fitted: FittedModel) -> None:
    model = EmotionModel.load(_write_model(tmp_path / "m", fitted), expected_feature_names=NAMES)
    x, *_ = _synthetic(seed=1, n=50)
    out = model.predict(x)
    assert out.probabilities.shape == (50, 4) and out.probabilities.dtype == np.float32
    assert out.arousal.shape == (50,) and out.arousal.dtype == np.float32
    np.testing.assert_allclose(out.probabilities, fitted.predict_proba(x), atol=1e-5)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Second path for arousal: sklearn level probabilities times the level values by hand.
    level_p = fitted.arousal.predict_proba(fitted.scaler.transform(x))
    np.testing.assert_allclose(out.arousal, level_p @ np.array([0.0, 0.5, 1.0]), atol=1e-5)
    assert np.all((out.arousal >= 0) & (out.arousal <= 1))
    assert model.labels == LABELS and model.feature_names == NAMES


def test_load_by_onnx_path_and_manifest_path(tmp_path: Path, fitted: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", fitted)
    x, *_ = _synthetic(seed=2, n=5)
    ref = EmotionModel.load(folder, expected_feature_names=NAMES).predict(x).probabilities
    for path in (folder / MODEL_FILE, folder / MANIFEST_FILE):
        got = EmotionModel.load(path, expected_feature_names=NAMES).predict(x).probabilities
        np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def one_model() -> FittedModel:
    x, y, arousal, corpus = _synthetic()
    return fit_model(x=x, y=y, arousal=arousal, corpus=corpus, labels=LABELS, candidate="logreg")


def test_missing_files(tmp_path: Path, one_model: FittedModel) -> None:
    with pytest.raises(ModelError, match="manifest not found"):
        EmotionModel.load(tmp_path / "nowhere", expected_feature_names=NAMES)
    folder = _write_model(tmp_path / "m", one_model)
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ModelError, match=r"emotion\.onnx"):
        EmotionModel.load(folder, expected_feature_names=NAMES)


def test_sha_mismatch(tmp_path: Path, one_model: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", one_model)
    blob = bytearray((folder / MODEL_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(blob))
    with pytest.raises(ManifestMismatchError, match="sha256"):
        EmotionModel.load(folder, expected_feature_names=NAMES)


def test_corrupt_onnx_with_matching_sha(tmp_path: Path, one_model: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", one_model)
    garbage = b"this is not an onnx graph"
    (folder / MODEL_FILE).write_bytes(garbage)
    manifest = load_manifest(folder / MANIFEST_FILE)
    dataclasses.replace(manifest, onnx_sha256=sha256_bytes(garbage)).save(folder / MANIFEST_FILE)
    with pytest.raises(ModelError, match=r"cannot load .*emotion\.onnx"):
        EmotionModel.load(folder, expected_feature_names=NAMES)


def test_feature_count_mismatch_names_both_numbers(tmp_path: Path, one_model: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", one_model)
    with pytest.raises(ManifestMismatchError, match=r"lists 6 features .* produces 7"):
        EmotionModel.load(folder, expected_feature_names=(*NAMES, "extra"))
    with pytest.raises(ManifestMismatchError, match="feature 2 is 'f2'"):
        EmotionModel.load(folder, expected_feature_names=("f0", "f1", "x", "f3", "f4", "f5"))
    # Default: the running FUNCTIONAL_NAMES, which this synthetic model does not match.
    with pytest.raises(ManifestMismatchError):
        EmotionModel.load(folder)


def test_label_count_mismatch(tmp_path: Path, one_model: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", one_model, labels=("neutral", "happy", "angry"))
    with pytest.raises(ManifestMismatchError, match=r"gives 4 probabilities .* 3 labels"):
        EmotionModel.load(folder, expected_feature_names=NAMES)


def test_bad_manifest(tmp_path: Path, one_model: FittedModel) -> None:
    folder = _write_model(tmp_path / "m", one_model)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        EmotionModel.load(folder, expected_feature_names=NAMES)
    (folder / MANIFEST_FILE).write_text(json.dumps({"format_version": 1, "labels": ["a"]}))
    with pytest.raises(ModelError, match="lacks required"):
        EmotionModel.load(folder, expected_feature_names=NAMES)
    (folder / MANIFEST_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ModelError, match="format_version 99"):
        EmotionModel.load(folder, expected_feature_names=NAMES)


def test_predict_input_checks(tmp_path: Path, one_model: FittedModel) -> None:
    model = EmotionModel.load(_write_model(tmp_path / "m", one_model), expected_feature_names=NAMES)
    with pytest.raises(ModelError, match=r"\(batch, 6\), got shape \(2, 5\)"):
        model.predict(np.zeros((2, 5), dtype=np.float32))
    empty = model.predict(np.zeros((0, 6), dtype=np.float32))
    assert empty.probabilities.shape == (0, 4) and empty.arousal.shape == (0,)
    # float64 input is accepted and cast.
    x, *_ = _synthetic(seed=3, n=3)
    np.testing.assert_allclose(
        model.predict(x.astype(np.float64)).probabilities, model.predict(x).probabilities
    )
    rows = model.predict_dict(x)
    assert list(rows[0]) == list(LABELS) and sum(rows[0].values()) == pytest.approx(1.0, abs=1e-5)


def test_manifest_roundtrip(tmp_path: Path) -> None:
    m = ModelManifest(
        labels=LABELS,
        feature_names=NAMES,
        onnx_file=MODEL_FILE,
        onnx_sha256="ab" * 32,
        normalisation={"mean": [1.0], "scale": [2.0]},
        seed=3,
    )
    assert load_manifest(m.save(tmp_path / "x.manifest.json")) == m
