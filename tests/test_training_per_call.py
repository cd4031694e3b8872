"""``train --normalisation per_call``: the manifest carries the population statistics
(checked against statistics computed here from the audio), and the engine loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotion_engine.features import extract_clip_features
from emotion_engine.model import EmotionModel, load_manifest
from emotion_engine.model.normalise import PER_CALL_KIND
from emotion_engine.model.runtime import MANIFEST_FILE
from emotion_engine.training.augment import telephone_channel
from emotion_engine.training.data import load_dataset, read_clip
from emotion_engine.training.train import PRIOR_WEIGHT_WINDOWS, run_train


def test_per_call_training_writes_population_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_training import _make_corpus

    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    data = _make_corpus(tmp_path / "calls", speakers=3, per_class=2)
    run_train(
        data_dir=data, out_dir=tmp_path / "m", seed=0, progress=False, normalisation="per_call"
    )
    manifest = load_manifest(tmp_path / "m" / MANIFEST_FILE)
    assert manifest.normalisation["kind"] == PER_CALL_KIND
    assert "--normalisation per_call" in manifest.command
    block = manifest.normalisation["per_call"]
    assert block["prior_weight_windows"] == PRIOR_WEIGHT_WINDOWS

    # second path: features straight from the audio, speaker statistics with numpy
    ds = load_dataset(data)
    x = np.stack(
        [
            extract_clip_features(samples=telephone_channel(samples=read_clip(c.path)))
            for c in ds.clips
        ]
    ).astype(np.float64)
    speakers = sorted(set(ds.speaker))
    means = np.array([x[ds.speaker == s].mean(axis=0) for s in speakers])
    variances = np.array([x[ds.speaker == s].var(axis=0) for s in speakers])
    np.testing.assert_allclose(block["prior_mean"], means.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        block["prior_std"], np.sqrt(variances.mean(axis=0)), rtol=1e-3, atol=1e-4
    )

    model = EmotionModel.load(tmp_path / "m")
    assert model.call_norm is not None
    out = model.predict(x.astype(np.float32))
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    # with per-speaker normalisation the separable caricatures still come out right
    norm = model.new_call_normaliser()
    assert norm is not None
    mine = ds.speaker == speakers[0]
    z = norm.apply(x[mine], is_speech=np.ones(int(mine.sum()), dtype=bool))
    assert np.isfinite(z).all()
