"""Stage 2 of the cascade: the Whisper-tiny encoder's inputs and hash checks, the
numpy head against scikit-learn, and the engine with the verifier on and off on the
shipped demo call (events carry ``stage``, validate against the schema, and stage 2's
P(angry) is what the verifier gives for the same 2 s of audio)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError, ManifestMismatchError, ModelError
from emotion_engine.model.verifier import (
    DEFAULT_VERIFIER_DIR,
    ENCODER_WEIGHTS,
    VERIFIER_MANIFEST,
    Verifier,
    VerifierHead,
    VerifierManifest,
    WhisperEncoder,
    check_encoder_weights,
    encoder_dir,
    load_verifier,
    log_mel,
    pool_frames,
)

DEMO_CALL = Path(__file__).resolve().parents[1] / "emotion_engine" / "data" / "demo_call.flac"


@pytest.fixture(scope="module")
def encoder() -> WhisperEncoder:
    return WhisperEncoder.load()


@pytest.fixture(scope="module")
def verifier(encoder: WhisperEncoder) -> Verifier:
    return Verifier.load(DEFAULT_VERIFIER_DIR, encoder=encoder)


def test_log_mel_matches_librosa() -> None:
    """Whisper's features, computed a second way with librosa's STFT and filterbank."""
    import librosa

    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(24_000)).astype(np.float32)
    stft = librosa.stft(x, n_fft=400, hop_length=160, window="hann", pad_mode="reflect")
    power = np.abs(stft) ** 2  # as torch.stft in Whisper: centred, reflect-padded
    mel = librosa.filters.mel(sr=16_000, n_fft=400, n_mels=80) @ power[:, :-1]
    ref = np.log10(np.maximum(mel, 1e-10))
    ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
    ours = log_mel(samples_16k=x)
    assert ours.shape == (80, 150)
    np.testing.assert_allclose(ours, ref[:, :150], atol=1e-4)


def test_pooling_is_mean_then_std() -> None:
    frames = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    pooled = pool_frames(frames=frames)
    np.testing.assert_allclose(pooled[1, :4], frames[1].mean(axis=0))
    np.testing.assert_allclose(pooled[0, 4:], np.sqrt(np.var(frames[0], axis=0)))


def test_encoder_batches_like_single_windows(encoder: WhisperEncoder) -> None:
    """A batch of same-length windows gives each window's own embedding."""
    rng = np.random.default_rng(1)
    windows = [(0.05 * rng.standard_normal(16_000)).astype(np.float32) for _ in range(3)]
    batched = encoder.embed(windows=windows)
    single = np.concatenate([encoder.embed(windows=[w]) for w in windows])
    assert batched.shape == (3, 768)
    np.testing.assert_allclose(batched, single, atol=2e-3)


def test_corrupted_encoder_copy_is_refused(tmp_path: Path) -> None:
    src = encoder_dir()
    for f in src.iterdir():
        if f.name != ENCODER_WEIGHTS:
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(ModelError, match="missing"):
        check_encoder_weights(tmp_path)
    data = bytearray((src / ENCODER_WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / ENCODER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ManifestMismatchError, match="sha256"):
        WhisperEncoder.load(folder=tmp_path)


def test_corrupted_head_copy_is_refused(tmp_path: Path, encoder: WhisperEncoder) -> None:
    manifest = VerifierManifest.read(DEFAULT_VERIFIER_DIR / VERIFIER_MANIFEST)
    shutil.copy(DEFAULT_VERIFIER_DIR / VERIFIER_MANIFEST, tmp_path / VERIFIER_MANIFEST)
    with pytest.raises(ModelError, match="missing"):
        Verifier.load(tmp_path, encoder=encoder)
    data = bytearray((DEFAULT_VERIFIER_DIR / manifest.head_file).read_bytes())
    data[-10] ^= 0x01
    (tmp_path / manifest.head_file).write_bytes(bytes(data))
    with pytest.raises(ManifestMismatchError, match="sha256"):
        Verifier.load(tmp_path, encoder=encoder)


def test_load_verifier_modes() -> None:
    assert load_verifier("off") is None
    with pytest.raises(ConfigError, match="maybe"):
        load_verifier("maybe")


@pytest.mark.parametrize("mlp", [False, True])
def test_numpy_head_matches_sklearn(tmp_path: Path, mlp: bool) -> None:
    """The exported head (standardise, dense layers, sigmoid) against predict_proba."""
    from emotion_engine.training.verifier import fit_head, head_from_pipeline

    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 12)).astype(np.float32) * 3 + 1
    y = (x[:, 0] + 0.5 * x[:, 3] + rng.standard_normal(300) > 1).astype(np.int64)
    fitted = fit_head(x=x, y=y, mlp=mlp)
    head = head_from_pipeline(fitted, stage1_features=0)
    head.save(tmp_path / "h.npz")
    again = VerifierHead.read(tmp_path / "h.npz")
    np.testing.assert_allclose(again.predict(x), fitted.predict_proba(x)[:, 1], atol=1e-5)


# -- the cascade in the engine ---------------------------------------------------------


def _demo_customer_8k() -> NDArray[np.int16]:
    from emotion_engine.audio.io import read_audio
    from emotion_engine.audio.pcm import float32_to_int16
    from emotion_engine.audio.resample import resample

    samples, rate = read_audio(DEMO_CALL)
    return float32_to_int16(resample(samples=samples[0], rate_in_hz=rate, rate_out_hz=8000))


def _run(engine: Any, pcm: NDArray[np.int16]) -> list[dict[str, Any]]:
    from emotion_engine.frames import AudioChunk
    from emotion_engine.publish.events import EventSequencer

    seq = EventSequencer()
    events = engine.open_leg(call_id="demo", party="customer", sample_rate=8000)
    for i, start in enumerate(range(0, pcm.size, 160)):
        engine.push(AudioChunk("demo", "customer", start / 8000, pcm[start : start + 160], 8000))
        if i % 5 == 4:
            events += engine.process()
    events += engine.close_leg(call_id="demo", party="customer")
    return [seq.stamp(e) for e in events]


@pytest.fixture(scope="module")
def demo_runs(verifier: Verifier) -> dict[str, Any]:
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR, EmotionModel

    model = EmotionModel.load(DEFAULT_MODEL_DIR)
    pcm = _demo_customer_8k()
    off = Engine(model=model)
    on = Engine(model=model, verifier=verifier)
    return {"pcm": pcm, "off": _run(off, pcm), "on": _run(on, pcm), "engine_on": on}


def test_cascade_events_carry_stage_and_validate(demo_runs: dict[str, Any]) -> None:
    from emotion_engine.publish.events import load_schema

    validator = jsonschema.Draft202012Validator(load_schema())
    for mode in ("off", "on"):
        updates = [e for e in demo_runs[mode] if e["type"] == "emotion.update"]
        assert updates
        for e in demo_runs[mode]:
            validator.validate(e)
        stages = {e["stage"] for e in updates}
        assert stages == ({1} if mode == "off" else {1, 2})
    off_updates = [e for e in demo_runs["off"] if e["type"] == "emotion.update"]
    on_updates = [e for e in demo_runs["on"] if e["type"] == "emotion.update"]
    assert [e["t"] for e in off_updates] == [e["t"] for e in on_updates]
    for a, b in zip(off_updates, on_updates, strict=True):
        if b["stage"] == 1:  # stage 1 alone decided: the same numbers as with it off
            assert a["probabilities"] == b["probabilities"]
        else:  # stage 2 only where stage 1 proposed, or near a spike, on speech
            assert b["is_speech"]
            assert sum(b["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    engine = demo_runs["engine_on"]
    assert 0 < engine.windows_verified < engine.windows_scored


def test_stage2_score_is_the_verifiers_on_the_same_audio(
    demo_runs: dict[str, Any], verifier: Verifier
) -> None:
    """Second path: cut each verified window's 2 s out of the call's 8 kHz samples by
    its end time, and ask the verifier directly."""
    from emotion_engine.audio.pcm import int16_to_float32
    from emotion_engine.features import extract_clip_features

    x = int16_to_float32(demo_runs["pcm"])
    verified = [
        e
        for e in demo_runs["on"]
        if e["type"] == "emotion.update" and e["stage"] == 2 and e["window"][1] >= 2.0
    ][:4]
    assert verified
    windows = []
    for e in verified:
        stop = round(e["window"][1] * 8000)  # last frame's end: 200 frames of 80 + 120
        windows.append(x[stop - 16_120 : stop])
    stage1 = None
    if verifier.head.stage1_features:  # the window's functionals, from the clip path
        stage1 = np.stack([extract_clip_features(samples=w) for w in windows])
    expected = verifier.verify(windows=windows, stage1=stage1)
    got = [e["probabilities"]["angry"] for e in verified]
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_verifier_setting_derives_from_config(tmp_path: Path) -> None:
    """One declaration (ServeParams.verifier): TOML key, environment variable, flag."""
    from emotion_engine.cli import build_parser
    from emotion_engine.config import DEFAULT_VERIFIER, load_serve_params
    from emotion_engine.serve_cli import params_from_args

    assert load_serve_params(env={}).verifier == DEFAULT_VERIFIER
    assert load_serve_params(env={"EMOTION_ENGINE_VERIFIER": "on"}).verifier == "on"
    toml = tmp_path / "serve.toml"
    toml.write_text('verifier = "on"\n')
    assert load_serve_params(config_file=str(toml), env={}).verifier == "on"
    args = build_parser().parse_args(["serve", "--verifier", "off", "--config", str(toml)])
    assert params_from_args(args).verifier == "off"
    assert build_parser().parse_args(["analyze", "x.wav"]).verifier == DEFAULT_VERIFIER
    with pytest.raises(SystemExit):
        build_parser().parse_args(["analyze", "x.wav", "--verifier", "maybe"])


def test_analyze_with_the_verifier_on(tmp_path: Path) -> None:
    """``analyze --verifier on`` on the demo call: stage 2 decides some windows."""
    import json

    from emotion_engine.cli import main

    out = tmp_path / "events.jsonl"
    status = main(
        ["analyze", str(DEMO_CALL), "--verifier", "on", "--out", str(out), "--no-progress"]
    )
    assert status == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    stages = {e["stage"] for e in events if e["type"] == "emotion.update"}
    assert stages == {1, 2}
