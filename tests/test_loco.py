"""Leave-one-corpus-out harness: the window path against the live engine, the clip
reading against a hand computation, the speaker perturbations, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32
from emotion_engine.engine.pipeline import Engine
from emotion_engine.frames import AudioChunk
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.augment import pitch_shift, speed_perturb, vtlp
from emotion_engine.training.featurize import (
    WindowFeatures,
    extract_window_features,
    window_bounds,
)
from emotion_engine.training.loco import clip_scores

MODELS = Path(__file__).resolve().parents[1] / "models"


def _voice(seconds: float, seed: int, vibrato_hz: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    f0 = 180 + vibrato_hz * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.15
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)  # syllable-like envelope
    x[: int(0.3 * 8000)] = 0.0  # leading silence, as acted clips have
    x = x + rng.normal(0, 1e-3, x.size)
    return int16_to_float32(float32_to_int16(x.astype(np.float32)))


@pytest.mark.parametrize("seconds", [0.7, 1.0, 2.3, 3.7])
def test_window_path_matches_the_live_engine(seconds: float) -> None:
    """Second path: the clip streamed through the Engine in 20 ms chunks; its
    emotion.update probabilities must be the model's outputs on our window rows."""
    model = EmotionModel.load(MODELS)
    if model.call_norm is not None:
        pytest.skip("shipped model normalises per call; the window path feeds raw rows")
    audio = _voice(seconds, seed=int(seconds * 10))
    x, speech = extract_window_features(samples=audio)
    ours = model.predict(x).probabilities

    engine = Engine(model=model)
    engine.open_leg(call_id="c", party="customer", sample_rate=8000)
    pcm = float32_to_int16(audio)
    events = []
    for start in range(0, pcm.size, 160):
        engine.push(AudioChunk("c", "customer", start / 8000, pcm[start : start + 160], 8000))
        events += engine.process()
    events += engine.close_leg(call_id="c", party="customer")
    updates = [e.to_dict() for e in events if e.to_dict()["type"] == "emotion.update"]
    assert len(updates) == x.shape[0] >= 1
    live = np.array([[u["probabilities"][lab] for lab in model.labels] for u in updates])
    np.testing.assert_allclose(ours, live, atol=1e-5)
    assert [u["is_speech"] for u in updates] == speech.tolist()


def test_window_bounds_follow_the_engine_schedule() -> None:
    # 1 s first window, then every 0.5 s up to 2 s long, a tail of >= 0.5 s at hang-up
    assert window_bounds(n_frames=40) == []
    assert window_bounds(n_frames=60) == [(0, 60)]
    assert window_bounds(n_frames=100) == [(0, 100)]
    assert window_bounds(n_frames=149) == [(0, 100)]
    # a tail shorter than a hop: no extra window (a longer one would be a regular hop)
    assert window_bounds(n_frames=399) == [
        (0, 100),
        (0, 150),
        (0, 200),
        (50, 250),
        (100, 300),
        (150, 350),
    ]


def test_clip_scores_mean_over_speech_windows_by_hand() -> None:
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5], [0.3, 0.7]])
    w = WindowFeatures(
        x=np.zeros((5, 1), dtype=np.float32),
        speech=np.array([True, False, True, False, False]),
        clip=np.array([0, 0, 0, 2, 2]),
    )
    out, scored = clip_scores(window_proba=proba, windows=w, n_clips=4)
    np.testing.assert_allclose(out[0], [(0.2 + 0.1) / 2, (0.8 + 0.9) / 2])  # speech only
    np.testing.assert_allclose(out[2], [(0.5 + 0.3) / 2, (0.5 + 0.7) / 2])  # no speech: all
    assert scored.tolist() == [True, False, True, False]


def _f0(x: np.ndarray) -> float:
    """Strongest autocorrelation lag in 120-400 Hz -> Hz (the test voice sits at 180 Hz)."""
    seg = x[4000:8000].astype(np.float64)
    ac = np.correlate(seg, seg, mode="full")[seg.size - 1 :]
    lo, hi = 8000 // 400, 8000 // 120
    return 8000 / (lo + int(np.argmax(ac[lo:hi])))


def _centroid(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x[4000:12000] * np.hanning(8000))) ** 2
    f = np.fft.rfftfreq(8000, 1 / 8000)
    return float((spec * f).sum() / spec.sum())


def test_speaker_perturbations_move_what_they_claim() -> None:
    x = _voice(2.0, seed=5, vibrato_hz=0.0)  # steady F0: any stretch of it has the same
    base_f0, base_c = _f0(x), _centroid(x)
    fast = speed_perturb(samples=x, factor=1.1)
    assert fast.size == pytest.approx(x.size / 1.1, abs=2)
    assert _f0(fast) == pytest.approx(base_f0 * 1.1, rel=0.04)
    up = pitch_shift(samples=x, semitones=2.0)
    assert up.size == x.size
    assert _f0(up) == pytest.approx(base_f0 * 2 ** (2 / 12), rel=0.04)
    warped = vtlp(samples=x, alpha=1.1)
    assert warped.size == x.size
    assert _f0(warped) == pytest.approx(base_f0, rel=0.03)  # F0 kept
    assert _centroid(warped) > base_c * 1.03  # envelope moved up
    assert _centroid(vtlp(samples=x, alpha=0.9)) < base_c * 0.97
    np.testing.assert_allclose(vtlp(samples=x, alpha=1.0), x, atol=2e-3)


def test_loco_end_to_end_on_a_tiny_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_training import _make_corpus

    from emotion_engine.training import loco

    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for i, name in enumerate(("one", "two", "three")):
        _make_corpus(root / name, speakers=2, per_class=2, seed=i)
    monkeypatch.setattr(
        "sys.argv",
        ["loco", "--data", str(root), "--recipes", "clips,windows", "--out", "x.json"],
    )
    out = tmp_path / "loco.json"
    card = tmp_path / "README.md"
    card.write_text("# card\n")
    args = type(
        "A",
        (),
        dict(
            data=root,
            recipes=["clips", "windows"],
            seed=0,
            stitched=False,
            speakers_per_corpus=1,
            calls_per_speaker=1,
            limit_per_corpus=None,
            out=out,
            card=card,
            merge=False,
            no_progress=True,
        ),
    )()
    assert loco.main(args) == 0  # type: ignore[arg-type]
    result = json.loads(out.read_text())
    for name in ("clips", "windows"):
        held = result["recipes"][name]["held_out"]
        assert set(held) == {"one", "two", "three"}
        aucs = [v["angry_auc"] for v in held.values()]
        assert result["recipes"][name]["summary"]["mean_angry_auc"] == pytest.approx(np.mean(aucs))
        assert all(0.0 <= v["uar"] <= 1.0 for v in held.values())
    text = card.read_text()
    assert text.startswith("# card") and loco.CARD_BEGIN in text and "| windows |" in text
    loco.write_card(card, result)  # rewriting replaces the block, does not append
    assert card.read_text().count(loco.CARD_BEGIN) == 1


def test_recipe_label_policies(tmp_path: Path) -> None:
    import soundfile as sf

    from emotion_engine.training.data import NO_LABEL
    from emotion_engine.training.train import RECIPES, load_recipe_dataset

    root = tmp_path / "data"
    for corpus, rows in {
        "acted": [("a.wav", "neutral", ""), ("b.wav", "fearful", ""), ("c.wav", "angry", "")],
        "baved": [("d.wav", "neutral", "neutral"), ("e.wav", "", "high")],
    }.items():
        (root / corpus).mkdir(parents=True)
        lines = ["file,speaker,emotion,intensity"]
        for name, emotion, intensity in rows:
            sf.write(root / corpus / name, np.zeros(800, dtype=np.float32), 8000)
            lines.append(f"{name},{corpus}_1,{emotion},{intensity}")
        (root / corpus / "labels.csv").write_text("\n".join(lines) + "\n")

    def labels(recipe: str) -> dict[str, str | None]:
        ds = load_recipe_dataset(root, RECIPES[recipe])
        return {
            c.path.name: (None if c.label == NO_LABEL else ds.labels[c.label]) for c in ds.clips
        }

    # default: fearful trains the arousal head only; BAVED (one class) arousal only
    assert labels("windows") == {
        "a.wav": "neutral",
        "b.wav": None,
        "c.wav": "angry",
        "d.wav": None,
        "e.wav": None,
    }
    assert labels("windows+fearful")["b.wav"] == "fearful"
    assert labels("windows+baved_neutral")["d.wav"] == "neutral"
    assert labels("windows+baved_neutral")["e.wav"] is None


def test_a_recipe_that_cannot_be_exported_is_refused_by_train(tmp_path: Path) -> None:
    from emotion_engine.errors import ConfigError
    from emotion_engine.training.train import run_train

    with pytest.raises(ConfigError, match="cannot be exported"):
        run_train(data_dir=tmp_path, out_dir=tmp_path / "m", recipe="windows+hgb")


def test_sample_weightings_by_hand() -> None:
    from emotion_engine.training.train import sample_weights

    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    corpus = np.array(["a"] * 4 + ["b"] * 6)
    speaker = np.array(["a1", "a1", "a2", "a2", "b1", "b1", "b1", "b1", "b2", "b2"])
    w = sample_weights(y=y, groups=corpus, weighting="speaker_class", speakers=speaker)
    assert w.mean() == pytest.approx(1.0)
    per_speaker = [w[speaker == s].sum() for s in ("a1", "a2", "b1", "b2")]
    np.testing.assert_allclose(per_speaker, per_speaker[0])  # every speaker the same
    # within a speaker every class the same (a2: one row each; b1: 1 vs 3 rows)
    assert w[(speaker == "b1") & (y == 0)].sum() == pytest.approx(
        w[(speaker == "b1") & (y == 1)].sum()
    )
    w = sample_weights(y=y, groups=corpus, weighting="class")
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum()) and w.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(sample_weights(y=y, groups=corpus, weighting="none"), 1.0)
