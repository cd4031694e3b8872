"""Evaluation harness: packet loss against a hand-built concealment, the harness on a
tiny synthetic dataset (every condition, groups, temperatures), per-call evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotion_engine.audio.pcm import float32_to_int16, int16_to_float32
from emotion_engine.training.harness_audio import HARNESS_CONDITIONS, harness_condition, packet_loss


def test_packet_loss_conceals_like_the_jitter_buffer_by_hand() -> None:
    rng_audio = np.random.default_rng(3)
    x = int16_to_float32(
        float32_to_int16((rng_audio.normal(size=160 * 40) * 0.1).astype(np.float32))
    )
    out = packet_loss(samples=x, loss_rate=0.2, rng=np.random.default_rng(11))
    # second path: the same draws, concealment written out by hand
    lost = np.random.default_rng(11).random(40) < 0.2
    lost[0] = False
    assert lost.sum() >= 3
    pcm = float32_to_int16(x).reshape(40, 160)
    want = np.zeros_like(pcm)
    last_received = -1
    for k in range(40):
        if not lost[k]:
            want[k] = pcm[k]
            last_received = k
        elif k == last_received + 1 and not lost[k:].all():
            # first packet of a gap: the last one at half level (jitter.py, plc_gain 0.5)
            want[k] = np.round(pcm[last_received].astype(np.float32) * 0.5).astype(np.int16)
        # later packets of a gap, and a gap nothing follows: silence
    np.testing.assert_array_equal(float32_to_int16(out), want.reshape(-1))
    same = packet_loss(samples=x, loss_rate=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(same, x)


@pytest.mark.parametrize("condition", list(HARNESS_CONDITIONS))
def test_every_condition_keeps_length_and_range(condition: str) -> None:
    t = np.arange(8000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    y = harness_condition(samples=x, condition=condition, rng=np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.abs(y) <= 1.0)


def test_harness_and_per_call_evaluation_on_a_tiny_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_training import _make_corpus

    from emotion_engine.training.evaluate import run_evaluate

    monkeypatch.setenv("EMOTION_ENGINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _make_corpus(root / "one", speakers=2, per_class=2, seed=1)
    _make_corpus(root / "two", speakers=2, per_class=2, seed=2)
    results = run_evaluate(
        data_dir=root,
        card_path=None,
        out_json=tmp_path / "evaluation.json",
        include_baseline=False,
        compare_candidates=False,
        progress=False,
        normalisation="per_call",
        harness=True,
    )
    assert set(results["normalisations"]) == {"none", "per_call", "per_call_neutral"}
    h = results["harness"]
    assert set(h["per_condition"]) == set(HARNESS_CONDITIONS)
    block = h["per_condition"]["mulaw"]["one"]["emotion"]
    assert block["n"] == 20  # 2 speakers x 5 labelled emotions x 2 clips
    recalls = [v for v in block["recall"].values() if v is not None]
    assert block["uar"] == pytest.approx(np.mean(recalls))
    assert 0.0 <= block["ece"] <= 1.0 and 0.0 <= block["ece_temperature"] <= 1.0
    # the mu-law harness condition is the main evaluation's test condition
    main = results["protocols"]["loco"]["one"]["ours"]["emotion"]
    assert block["uar"] == pytest.approx(main["uar"])
    assert h["groups_mulaw"]["overall_uar"] == pytest.approx(
        h["per_condition"]["mulaw"]["pooled"]["emotion"]["uar"]
    )
