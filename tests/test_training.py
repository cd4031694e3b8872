"""Training pipeline: data layouts and label policy, weights, end-to-end train -> load ->
predict on a tiny synthetic dataset, evaluation on it, and the shipped model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_engine.errors import DatasetError
from emotion_engine.features import FUNCTIONAL_NAMES, extract_clip_features
from emotion_engine.model import DEFAULT_MODEL_DIR, EmotionModel, load_manifest
from emotion_engine.model.runtime import MANIFEST_FILE, MODEL_FILE, sha256_bytes
from emotion_engine.training.augment import telephone_channel
from emotion_engine.training.data import NO_LABEL, load_dataset, read_clip
from emotion_engine.training.evaluate import CARD_BEGIN, CARD_END, run_evaluate
from emotion_engine.training.featurize import featurize
from emotion_engine.training.train import balanced_weights, run_train
from emotion_engine.training.training_card import CARD_FILE

# Class -> (F0 Hz, amplitude): crude acted-emotion caricatures a classifier can separate.
VOICES = {
    "neutral": (120.0, 0.08),
    "happy": (230.0, 0.25),
    "sad": (95.0, 0.03),
    "angry": (170.0, 0.6),
}


def _voice(
    f0_hz: float, amplitude: float, *, rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 4.0 * t)
    phase = 2 * np.pi * np.cumsum(f0_hz * vibrato) / rate
    harmonics = np.sum([np.sin(k * phase) / k for k in range(1, 12)], axis=0)
    envelope = np.clip(np.sin(np.pi * t / seconds) * 2, 0, 1)
    x = amplitude * envelope * harmonics / 3 + rng.normal(scale=0.002, size=t.size)
    out: np.ndarray = x.astype(np.float32)
    return out


def _make_corpus(
    folder: Path,
    *,
    speakers: int = 3,
    per_class: int = 2,
    rate: int = 8000,
    emotions: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "disgust"),
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for s in range(speakers):
        shift = 1.0 + 0.1 * (s - 1)
        for emotion in emotions:
            f0, amp = VOICES["neutral" if emotion in ("calm", "disgust") else emotion]
            for k in range(per_class):
                name = f"s{s}_{emotion}_{k}.wav"
                audio = _voice(f0 * shift, amp, rate=rate, seconds=0.8 + 0.1 * k, rng=rng)
                sf.write(folder / name, audio, rate, subtype="PCM_16")
                rows.append({"file": name, "speaker": f"spk{s}", "emotion": emotion})
    with (folder / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "speaker", "emotion"])
        w.writeheader()
        w.writerows(rows)
    return folder


def test_single_folder_layout_and_label_policy(tmp_path: Path) -> None:
    folder = _make_corpus(tmp_path / "calls", speakers=2, per_class=1, rate=16000)
    ds = load_dataset(folder)
    assert ds.labels == ("neutral", "happy", "sad", "angry")
    assert ds.skipped == {"disgust": 2}
    by_orig = {c.orig_emotion: c for c in ds.clips}
    assert by_orig["calm"].label == ds.labels.index("neutral")  # calm -> neutral
    assert by_orig["calm"].arousal == 1 and by_orig["sad"].arousal == 0
    assert by_orig["angry"].arousal == 2
    assert "disgust" not in by_orig  # neither an emotion nor an arousal label
    assert {c.speaker for c in ds.clips} == {"calls_spk0", "calls_spk1"}
    # 16 kHz WAV goes through the engine's resampler to 8 kHz.
    x = read_clip(by_orig["happy"].path)
    assert x.dtype == np.float32 and abs(x.size - 0.8 * 8000) <= 2


def test_card_says_when_there_are_too_few_speakers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    data = _make_corpus(tmp_path / "calls", speakers=2)
    run_train(data_dir=data, out_dir=tmp_path / "model", seed=0, progress=False)
    card = (tmp_path / "model" / CARD_FILE).read_text()
    assert "Not estimated: the data has fewer than 3 speakers" in card
    assert "UAR" not in card


def test_single_class_corpus_is_arousal_only(tmp_path: Path) -> None:
    _make_corpus(tmp_path / "data" / "a", speakers=2, per_class=1)
    b = tmp_path / "data" / "b"
    b.mkdir(parents=True)
    sf.write(b / "x.wav", np.zeros(800, dtype=np.float32), 8000)
    sf.write(b / "y.wav", np.zeros(800, dtype=np.float32), 8000)
    (b / "labels.csv").write_text(
        "file,speaker,emotion,intensity\nx.wav,b_1,neutral,neutral\ny.wav,b_1,,high\n"
    )
    ds = load_dataset(tmp_path / "data")
    assert ds.emotion_excluded_corpora == ("b",)
    b_clips = [c for c in ds.clips if c.corpus == "b"]
    assert [c.label for c in b_clips] == [NO_LABEL, NO_LABEL]
    assert [c.arousal for c in b_clips] == [1, 2]  # from the intensity column
    with pytest.raises(DatasetError, match="corpora \\['zzz'\\] not found"):
        load_dataset(tmp_path / "data", corpora=["zzz"])
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing")


def test_balanced_weights() -> None:
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    groups = np.array(["a"] * 4 + ["b"] * 6)
    w = balanced_weights(y=y, groups=groups)
    assert w.mean() == pytest.approx(1.0)
    assert w[groups == "a"].sum() == pytest.approx(w[groups == "b"].sum())
    for g in "ab":
        sums = [w[(groups == g) & (y == k)].sum() for k in (0, 1)]
        assert sums[0] == pytest.approx(sums[1])


def test_train_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    data = _make_corpus(tmp_path / "calls")
    onnx_path = run_train(data_dir=data, out_dir=tmp_path / "model", seed=0, progress=False)
    assert onnx_path == tmp_path / "model" / MODEL_FILE
    manifest = load_manifest(tmp_path / "model" / MANIFEST_FILE)
    assert manifest.onnx_sha256 == sha256_bytes(onnx_path.read_bytes())
    assert manifest.feature_names == FUNCTIONAL_NAMES
    assert manifest.training_data["corpora"]["calls"]["speakers"] == 3
    assert len(manifest.normalisation["mean"]) == len(FUNCTIONAL_NAMES)

    # The card beside the model: data, licence, and a speaker-grouped estimate (3 speakers
    # -> 3 folds; the caricatures differ by emotion far more than by speaker).
    card = (tmp_path / "model" / CARD_FILE).read_text()
    assert "| calls | " in card and "user data" in card
    assert "Speaker-grouped 3-fold cross-validation" in card
    uar_cell = card.split("| UAR |")[1].splitlines()[2].split("|")[1]
    assert float(uar_cell.strip().rstrip("%")) > 50.0

    model = EmotionModel.load(tmp_path / "model")
    ds = load_dataset(data)
    # Second path: features computed here directly from the audio, not from the cache.
    x = np.stack(
        [
            extract_clip_features(samples=telephone_channel(samples=read_clip(c.path)))
            for c in ds.clips
        ]
    )
    out = model.predict(x)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all((out.arousal >= 0) & (out.arousal <= 1))
    has_label = ds.y != NO_LABEL
    train_acc = np.mean(out.probabilities.argmax(axis=1)[has_label] == ds.y[has_label])
    assert train_acc > 0.7  # separable caricatures: the recipe must learn them
    angry = ds.y == ds.labels.index("angry")
    sad = ds.y == ds.labels.index("sad")
    assert out.arousal[angry].mean() > out.arousal[sad].mean()

    # The cache holds exactly what the extractor gives.
    cached = featurize(clips=ds.clips, condition="test", progress=False)
    np.testing.assert_allclose(cached, x, rtol=1e-6, atol=1e-6)
    assert len(list((tmp_path / "cache" / "features").glob("engine-test-*.npz"))) == 1


def test_evaluate_writes_card_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _make_corpus(root / "one", speakers=2, per_class=1, seed=1)
    _make_corpus(root / "two", speakers=2, per_class=1, seed=2)
    card = tmp_path / "card" / "README.md"
    card.parent.mkdir()
    card.write_text(f"# Card\n\nintro\n\n{CARD_BEGIN}\nSTALE-TABLE\n{CARD_END}\n\nlimitations\n")
    results = run_evaluate(
        data_dir=root,
        card_path=card,
        out_json=tmp_path / "card" / "evaluation.json",
        include_baseline=False,
        compare_candidates=False,
        progress=False,
    )
    assert set(results["protocols"]["loco"]) == {"one", "two"}
    block = results["protocols"]["loco"]["one"]["ours"]["emotion"]
    cm = np.array(block["confusion"])
    assert cm.sum() == block["n"] == 10  # 2 speakers x (neutral, calm, happy, sad, angry)
    recalls = np.diag(cm)[cm.sum(1) > 0] / cm.sum(1)[cm.sum(1) > 0]
    assert block["uar"] == pytest.approx(recalls.mean())
    text = card.read_text()
    assert "intro" in text and "limitations" in text and "STALE-TABLE" not in text
    assert "leave-one-corpus-out" in text
    assert json.loads((tmp_path / "card" / "evaluation.json").read_text())["labels"] == list(
        results["labels"]
    )


def test_shipped_model_loads_and_matches_manifest() -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR / MANIFEST_FILE)
    blob = (DEFAULT_MODEL_DIR / manifest.onnx_file).read_bytes()
    assert sha256_bytes(blob) == manifest.onnx_sha256
    model = EmotionModel.load(DEFAULT_MODEL_DIR)  # also checks against the running FUNCTIONAL_NAMES
    assert model.labels == ("neutral", "happy", "sad", "angry")
    out = model.predict(np.zeros((3, len(FUNCTIONAL_NAMES)), dtype=np.float32))
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
