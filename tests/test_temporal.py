"""The temporal (LLD-sequence) model: windows and averaging in numpy, one tiny torch run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.errors import ConfigError, EngineError
from emotion_engine.features.functionals import voiced_ratio
from emotion_engine.features.lld import LLD_INDEX
from emotion_engine.training.data import NO_LABEL, Clip, Dataset
from emotion_engine.training.featurize import degrade
from emotion_engine.training.temporal import (
    N_LLD,
    ClipProbabilities,
    FusionAlignmentError,
    LldSequences,
    TorchMissingError,
    TrainConfig,
    TrainSet,
    average_windows,
    choose_fusion_weight,
    class_weights,
    clip_lld,
    clip_windows,
    crop,
    eval_windows,
    fuse_probabilities,
    fusion_loco,
    lld_sequences,
    probability_metrics,
    require_torch,
    speaker_frame_stats,
    speaker_normalise,
    voiced_counts,
    voiced_frames,
    window_starts,
)

RATE = 8000
RAMP = LLD_INDEX["rms_db"]  # a column the helpers below leave as the frame index


def _tone(seconds: float, *, hz: float = 150.0, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _lld_with_voicing(voiced: NDArray[np.bool_]) -> NDArray[np.float32]:
    """(n, N_LLD) frames whose voiced flags are ``voiced`` and other columns the frame index."""
    n = voiced.size
    lld = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, N_LLD))
    lld[:, LLD_INDEX["voiced"]] = voiced
    lld[:, LLD_INDEX["f0_hz"]] = np.where(voiced, 120.0, 0.0)
    return lld


def test_clip_lld_shapes() -> None:
    lld = clip_lld(samples=_tone(1.0))
    assert lld.shape == (1 + (RATE - 200) // 80, N_LLD)
    assert lld.dtype == np.float32
    assert clip_lld(samples=np.zeros(100, dtype=np.float32)).shape == (0, N_LLD)
    with pytest.raises(ConfigError):
        clip_lld(samples=np.zeros((2, 400), dtype=np.float32))


def test_voiced_frames_follow_the_engine_gate() -> None:
    lld = clip_lld(samples=np.concatenate([_tone(0.5), np.zeros(4000, dtype=np.float32)]))
    flags = voiced_frames(lld=lld)
    assert flags[:20].all() and not flags[-20:].any()
    assert flags.mean() == pytest.approx(float(voiced_ratio(lld=lld)))


def test_crop_slices_and_wrap_pads() -> None:
    lld = _lld_with_voicing(np.ones(10, dtype=bool))
    np.testing.assert_array_equal(crop(lld=lld, start=3, crop_frames=4), lld[3:7])
    padded = crop(lld=lld[:3], start=0, crop_frames=7)
    np.testing.assert_array_equal(padded[:, RAMP], [0, 1, 2, 0, 1, 2, 0])
    assert crop(lld=lld[:0], start=0, crop_frames=5).shape == (5, N_LLD)
    with pytest.raises(ConfigError):
        crop(lld=lld, start=7, crop_frames=4)


def test_window_starts_cover_the_clip_end() -> None:
    np.testing.assert_array_equal(
        window_starts(n_frames=260, crop_frames=100, hop_frames=50), [0, 50, 100, 150, 160]
    )
    np.testing.assert_array_equal(
        window_starts(n_frames=200, crop_frames=100, hop_frames=50), [0, 50, 100]
    )
    np.testing.assert_array_equal(window_starts(n_frames=60, crop_frames=100, hop_frames=50), [0])


def test_voiced_counts_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    voiced = rng.random(57) < 0.4
    counts = voiced_counts(voiced=voiced, crop_frames=10)
    expected = [int(voiced[s : s + 10].sum()) for s in range(57 - 10 + 1)]
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(
        voiced_counts(voiced=voiced[:5], crop_frames=10), [voiced[:5].sum()]
    )


def test_clip_windows_drop_unvoiced_windows() -> None:
    voiced = np.zeros(300, dtype=bool)
    voiced[200:260] = True  # speech only near the end
    lld = _lld_with_voicing(voiced)
    windows = clip_windows(lld=lld, crop_frames=100, hop_frames=50, min_voiced_frames=20)
    # starts 0, 50, 100, 150, 200: the first three end before the speech
    np.testing.assert_array_equal(windows[:, 0, RAMP], [150, 200])
    silent = _lld_with_voicing(np.zeros(300, dtype=bool))
    assert clip_windows(lld=silent, crop_frames=100, hop_frames=50, min_voiced_frames=20).shape == (
        1,
        100,
        N_LLD,
    )


def test_eval_windows_and_average() -> None:
    seqs = LldSequences.from_list(
        [_lld_with_voicing(np.ones(n, dtype=bool)) for n in (80, 250, 120)]
    )
    windows, owner = eval_windows(
        seqs=seqs, rows=np.array([1, 2]), crop_frames=100, hop_frames=50, min_voiced_frames=20
    )
    np.testing.assert_array_equal(owner, [0, 0, 0, 0, 1, 1])
    assert windows.shape == (6, 100, N_LLD)
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6]])
    mean = average_windows(probabilities=p, clip_index=owner, n_clips=2)
    np.testing.assert_allclose(mean, [[0.5, 0.5], [0.3, 0.7]])
    with pytest.raises(ConfigError):
        average_windows(probabilities=p, clip_index=owner, n_clips=3)


def _speaker_clips(
    rng: np.random.Generator, *, n_clips: int, loc: float, scale: float
) -> list[NDArray[np.float32]]:
    """Clips of one synthetic speaker: Gaussian LLDs around ``loc`` with spread ``scale``,
    about 70 % voiced frames (F0 > 0), unvoiced frames far off (all columns -500)."""
    clips = []
    for _ in range(n_clips):
        n = int(rng.integers(40, 90))
        lld = (loc + scale * rng.standard_normal((n, N_LLD))).astype(np.float32)
        voiced = rng.random(n) < 0.7
        lld[:, LLD_INDEX["voiced"]] = voiced
        lld[:, LLD_INDEX["f0_hz"]] = np.where(
            voiced, 100.0 + loc + scale * rng.standard_normal(n), 0.0
        )
        lld[~voiced] = np.where(np.arange(N_LLD) == LLD_INDEX["voiced"], 0.0, -500.0).astype(
            np.float32
        )
        lld[~voiced, LLD_INDEX["f0_hz"]] = 0.0
        clips.append(lld)
    return clips


def test_speaker_normalise_zscores_each_speakers_speech_frames() -> None:
    rng = np.random.default_rng(3)
    a = _speaker_clips(rng, n_clips=4, loc=10.0, scale=2.0)
    b = _speaker_clips(rng, n_clips=3, loc=-5.0, scale=3.0)
    # interleaved clip order: a speaker's statistics come from all of its clips
    clips = [a[0], b[0], a[1], a[2], b[1], b[2], a[3]]
    speaker = ["a", "b", "a", "a", "b", "b", "a"]
    # one column constant within speaker b only (its std gets floored, stays finite)
    for i, name in enumerate(speaker):
        if name == "b":
            clips[i][:, LLD_INDEX["zcr"]] = 0.25
    seqs = LldSequences.from_list(clips)
    normed, stats = speaker_normalise(seqs=seqs, speaker=speaker)

    np.testing.assert_array_equal(normed.offsets, seqs.offsets)
    assert normed.frames.dtype == np.float32
    assert np.all(np.isfinite(normed.frames))
    gate = voiced_frames(lld=seqs.frames)
    owner = np.repeat(np.array(speaker), np.diff(seqs.offsets))
    voiced_col = LLD_INDEX["voiced"]
    zcr = LLD_INDEX["zcr"]
    # the binary voiced flag is constant over speech frames: left unchanged everywhere
    assert stats.unchanged[voiced_col] and stats.unchanged.sum() == 1
    np.testing.assert_array_equal(normed.frames[:, voiced_col], seqs.frames[:, voiced_col])
    other = [k for k in range(N_LLD) if k != voiced_col]
    for name in ("a", "b"):
        speech = normed.frames[(owner == name) & gate]
        assert stats.speech_frames[name] == speech.shape[0]
        cols = [k for k in other if not (name == "b" and k == zcr)]
        np.testing.assert_allclose(speech[:, cols].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(speech[:, cols].std(axis=0), 1.0, atol=1e-4)
    # speaker b's constant column: centred to 0, divided by the floor, not blown up
    np.testing.assert_allclose(normed.frames[(owner == "b") & gate, zcr], 0.0, atol=1e-6)
    assert stats.std["b"][zcr] == pytest.approx(0.1 * stats.pooled_std[zcr])
    # the unvoiced frames are transformed with the speech statistics, not used for them
    k = LLD_INDEX["rms_db"]
    unvoiced_a = normed.frames[(owner == "a") & ~gate, k]
    np.testing.assert_allclose(
        unvoiced_a, (-500.0 - stats.mean["a"][k]) / stats.std["a"][k], rtol=1e-5
    )

    # speakers are independent: another speaker in b's place changes nothing of speaker a
    c = _speaker_clips(np.random.default_rng(9), n_clips=3, loc=-8.0, scale=2.5)
    swapped = [a[0], c[0], a[1], a[2], c[1], c[2], a[3]]
    normed2, _ = speaker_normalise(seqs=LldSequences.from_list(swapped), speaker=speaker)
    owner2 = np.repeat(np.array(speaker), [x.shape[0] for x in swapped])
    np.testing.assert_array_equal(normed2.frames[owner2 == "a"], normed.frames[owner == "a"])
    # ... and normalising a speaker alone gives the same frames as among others
    alone, _ = speaker_normalise(seqs=LldSequences.from_list(a), speaker=["a"] * len(a))
    np.testing.assert_allclose(
        alone.frames[:, other], normed.frames[owner == "a"][:, other], atol=1e-5
    )


def test_speaker_frame_stats_checks_names_and_handles_silent_speakers() -> None:
    seqs = LldSequences.from_list([_lld_with_voicing(np.zeros(30, dtype=bool))])
    with pytest.raises(ConfigError):
        speaker_frame_stats(seqs=seqs, speaker=["a", "b"])
    stats = speaker_frame_stats(seqs=seqs, speaker=["a"])
    # no speech frame at all: falls back to the speaker's every frame, stays finite
    assert stats.speech_frames["a"] == 30
    assert all(np.all(np.isfinite(v)) for v in (*stats.mean.values(), *stats.std.values()))


def test_clip_windows_gate_on_the_raw_frames() -> None:
    voiced = np.zeros(300, dtype=bool)
    voiced[200:260] = True
    raw = _lld_with_voicing(voiced)
    normed = raw.copy()
    normed[:, LLD_INDEX["voiced"]] = 1.0 - normed[:, LLD_INDEX["voiced"]]  # gate now inverted
    windows = clip_windows(
        lld=normed, crop_frames=100, hop_frames=50, min_voiced_frames=20, gate_lld=raw
    )
    np.testing.assert_array_equal(windows[:, 0, RAMP], [150, 200])
    with pytest.raises(ConfigError):
        clip_windows(
            lld=normed, crop_frames=100, hop_frames=50, min_voiced_frames=20, gate_lld=raw[:10]
        )


def test_class_weights_balance_the_loss() -> None:
    y = np.array([0, 0, 0, 1, 2, 3])
    w = class_weights(y=y, n_classes=4)
    totals = np.bincount(y, weights=w[y], minlength=4)
    np.testing.assert_allclose(totals, totals[0])
    assert float(np.mean(w[y])) == pytest.approx(1.0)


def test_lld_sequences_are_cached(tmp_path: Path) -> None:
    import soundfile as sf

    clips = []
    for k in range(2):
        path = tmp_path / f"clip{k}.wav"
        sf.write(path, _tone(0.6 + 0.2 * k, seed=k), RATE, subtype="PCM_16")
        clips.append(Clip(path, "synth", f"synth_{k}", "angry", 3, 2))
    cache = tmp_path / "cache"
    seqs = lld_sequences(clips=clips, condition="test", cache_dir=cache, progress=False)
    assert len(seqs) == 2
    from emotion_engine.training.data import read_clip

    expected = clip_lld(samples=degrade(samples=read_clip(clips[1].path), condition="test"))
    np.testing.assert_array_equal(seqs.clip(1), expected)
    assert len(list(cache.glob("lldseq-test-*.npz"))) == 1
    again = lld_sequences(clips=clips, condition="test", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.frames, seqs.frames)


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(TorchMissingError, match=r"\.\[temporal\]") as info:
        require_torch()
    assert isinstance(info.value, EngineError)


@pytest.mark.parametrize("arch", ["cnn", "gru"])
def test_tiny_training_exports_matching_onnx(arch: str, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch not installed (pip install -e '.[temporal]')")
    from emotion_engine.training.temporal import (
        export_onnx,
        onnx_probabilities,
        onnx_session,
        torch_probabilities,
        train_net,
    )

    rng = np.random.default_rng(0)
    seqs = []
    y = np.arange(16) % 4
    for label in y:
        lld = rng.standard_normal((int(rng.integers(15, 40)), N_LLD)).astype(np.float32)
        lld[:, 5] += label  # a learnable per-class offset
        lld[:, LLD_INDEX["voiced"]] = 1.0
        lld[:, LLD_INDEX["f0_hz"]] = 100.0
        seqs.append(lld)
    data = LldSequences.from_list(seqs)
    config = TrainConfig(arch=arch, crop_frames=20, channels=8, epochs=2, batch_size=8)
    net = train_net(
        train_set=TrainSet(sources=(data,), rows=np.arange(16), y=y), config=config, progress=False
    )
    path = tmp_path / "tiny.onnx"
    export_onnx(net=net, path=path, crop_frames=20)
    windows, _ = eval_windows(
        seqs=data, rows=np.arange(16), crop_frames=20, hop_frames=10, min_voiced_frames=5
    )
    p_onnx = onnx_probabilities(session=onnx_session(path), windows=windows, batch_size=7)
    p_torch = torch_probabilities(net=net, windows=windows)
    assert p_onnx.shape == (windows.shape[0], 4)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1.0, atol=1e-5)


LABELS = ("neutral", "happy", "sad", "angry")


def _clip_probabilities(
    probabilities: NDArray[np.float64], y: NDArray[np.int64], *, prefix: str = "clip"
) -> ClipProbabilities:
    ids = tuple(f"{prefix}{k}.flac" for k in range(y.size))
    return ClipProbabilities(clip_ids=ids, y=y, probabilities=probabilities, labels=LABELS)


def _two_systems(seed: int = 0) -> tuple[ClipProbabilities, ClipProbabilities]:
    """Random (temporal, functionals) probabilities for the same 40 clips, all 4 classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(40, dtype=np.int64) % 4
    return (
        _clip_probabilities(rng.dirichlet(np.ones(4), size=40), y),
        _clip_probabilities(rng.dirichlet(np.ones(4), size=40), y),
    )


def test_fusion_at_the_end_weights_reproduces_each_model() -> None:
    temporal, functionals = _two_systems()
    for weight, alone in ((1.0, temporal), (0.0, functionals)):
        fused = fuse_probabilities(
            temporal=temporal, functionals=functionals, temporal_weight=weight
        )
        np.testing.assert_array_equal(fused.probabilities, alone.probabilities)
        assert probability_metrics(fused) == probability_metrics(alone)
    # the two random systems disagree, so the equal average is neither of them
    half = fuse_probabilities(temporal=temporal, functionals=functionals, temporal_weight=0.5)
    np.testing.assert_allclose(
        half.probabilities, (temporal.probabilities + functionals.probabilities) / 2
    )
    assert probability_metrics(half) != probability_metrics(temporal)
    assert half.clip_ids == temporal.clip_ids
    with pytest.raises(ConfigError):
        fuse_probabilities(temporal=temporal, functionals=functionals, temporal_weight=1.5)


def test_fusion_refuses_misaligned_clips() -> None:
    temporal, functionals = _two_systems()
    reverse = slice(None, None, -1)
    shuffled = ClipProbabilities(
        clip_ids=functionals.clip_ids[reverse],
        y=functionals.y[reverse],
        probabilities=functionals.probabilities[reverse],
        labels=LABELS,
    )
    with pytest.raises(FusionAlignmentError, match="different order"):
        fuse_probabilities(temporal=temporal, functionals=shuffled, temporal_weight=0.5)
    other = _clip_probabilities(functionals.probabilities, functionals.y, prefix="other")
    with pytest.raises(FusionAlignmentError, match="different clips"):
        fuse_probabilities(temporal=temporal, functionals=other, temporal_weight=0.5)
    relabelled = ClipProbabilities(
        clip_ids=functionals.clip_ids,
        y=functionals.y,
        probabilities=functionals.probabilities,
        labels=("happy", "neutral", "sad", "angry"),
    )
    with pytest.raises(FusionAlignmentError, match="label order"):
        fuse_probabilities(temporal=temporal, functionals=relabelled, temporal_weight=0.5)
    wrong_truth = _clip_probabilities(functionals.probabilities, (functionals.y + 1) % 4)
    with pytest.raises(FusionAlignmentError, match="true labels"):
        fuse_probabilities(temporal=temporal, functionals=wrong_truth, temporal_weight=0.5)
    assert issubclass(FusionAlignmentError, EngineError)
    with pytest.raises(ConfigError):
        ClipProbabilities(
            clip_ids=("a",),
            y=np.zeros(2, dtype=np.int64),
            probabilities=np.zeros((2, 4)),
            labels=LABELS,
        )


def test_fusion_weight_is_chosen_on_validation_uar() -> None:
    y = np.array([0, 1], dtype=np.int64)
    # clip 0 (neutral) is right for temporal weights below 1/1.4 = 0.714, clip 1 (happy)
    # above 0.8/1.28 = 0.625: only 0.7 of the grid gets both
    temporal = _clip_probabilities(np.array([[0.3, 0.7, 0, 0], [0.2, 0.8, 0, 0]]), y)
    functionals = _clip_probabilities(np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]), y)
    weight, scores = choose_fusion_weight(validation=[(temporal, functionals)])
    assert weight == 0.7
    assert scores["0.7"] == 1.0 and scores["0.5"] == 0.5 and scores["1.0"] == 0.5
    # identical systems tie everywhere: the data-free choice, 0.5, is kept
    weight, scores = choose_fusion_weight(validation=[(temporal, temporal)])
    assert weight == 0.5 and len(set(scores.values())) == 1
    with pytest.raises(ConfigError):
        choose_fusion_weight(validation=[])


def test_fusion_loco_means_and_chosen_weights() -> None:
    t_a, f_a = _two_systems(seed=1)
    t_b, f_b = _two_systems(seed=2)
    chosen = {"a": {"temporal_weight": 1.0}, "b": {"temporal_weight": 0.0}}
    out = fusion_loco(
        temporal={"a": t_a, "b": t_b}, functionals={"a": f_a, "b": f_b}, chosen=chosen
    )
    equal = out["equal_weight"]
    assert equal["temporal_weight"] == 0.5
    uars = [equal["per_corpus"][c]["uar"] for c in ("a", "b")]
    assert equal["uar_mean"] == pytest.approx(np.mean(uars))
    tuned = out["training_corpora_weight"]["per_corpus"]
    assert tuned["a"]["uar"] == probability_metrics(t_a)["uar"]
    assert tuned["b"]["angry_auc"] == probability_metrics(f_b)["angry_auc"]
    assert tuned["a"]["temporal_weight"] == 1.0
    with pytest.raises(FusionAlignmentError):
        fusion_loco(temporal={"a": t_a}, functionals={"b": f_b})


def test_functionals_probabilities_align_with_the_temporal_rows(tmp_path: Path) -> None:
    """The functionals model scores the full dataset, the network its labelled subset:
    the held-out clips must come out in the same order under both indexings."""
    from emotion_engine.training.evaluate import Features
    from emotion_engine.training.temporal import functionals_clip_probabilities

    rng = np.random.default_rng(0)
    clips = []
    for corpus in ("a", "b", "c"):
        for k in range(12):
            # every third clip has no emotion label (arousal only), interleaved
            label = NO_LABEL if k % 3 == 2 else k % 4
            clips.append(
                Clip(tmp_path / f"{corpus}{k}.flac", corpus, f"{corpus}_{k % 2}", "x", label, k % 3)
            )
    dataset = Dataset(clips=tuple(clips), labels=LABELS, root=tmp_path)
    x = rng.standard_normal((len(clips), 6)).astype(np.float32)
    x[:, 0] += 3 * np.maximum(dataset.y, 0)
    feats = Features(test=x, train=x + 0.01, baseline=None)
    got = functionals_clip_probabilities(
        dataset=dataset, feats=feats, excluded=["b"], test_corpus="b", seed=0, candidate="logreg"
    )
    emo = dataset.subset(np.flatnonzero(dataset.y != NO_LABEL))
    rows = np.flatnonzero(emo.corpus == "b")
    assert got.clip_ids == tuple(str(emo.clips[int(i)].path) for i in rows)
    np.testing.assert_array_equal(got.y, emo.y[rows])
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_format_table_lists_every_system() -> None:
    from emotion_engine.training.temporal import format_table

    labels = ["neutral", "happy", "sad", "angry"]

    def block(u: float) -> dict[str, object]:
        per = {"uar": u, "angry_auc": 0.8, "recall": dict.fromkeys(labels, 0.5)}
        return {"per_corpus": {"a": per, "b": per}, "uar_mean": u, "angry_auc_mean": 0.8}

    timing = {"p50_ms": 0.1, "p99_ms": 0.2}
    report = {
        "labels": labels,
        "temporal": {"cnn": block(0.41), "gru": block(0.42)},
        "functionals": {**block(0.45), "source": "test"},
        "latency": {
            "repeats": 3,
            **{
                f"{k}_batch{b}": timing
                for k in ("temporal_cnn", "functionals_onnx")
                for b in (1, 100)
            },
        },
    }
    report["fusion"] = {
        "per_arch": {"cnn": {"equal_weight": block(0.47), "training_corpora_weight": block(0.48)}}
    }
    report["latency"]["temporal_cnn_plus_functionals_batch1"] = timing
    report["latency"]["temporal_cnn_plus_functionals_batch100"] = timing
    table = format_table(report)
    assert "| fused cnn + functionals, w=0.5 | 47.0 |" in table
    assert "| fused cnn + functionals, w from training corpora | 48.0 |" in table
    assert "| fused cnn + functionals, w=0.5 | a | 50.0 |" in table
    assert (
        "| fused: temporal cnn ONNX + compute_functionals + emotion.onnx + average | 0.100" in table
    )
    assert "| temporal cnn | 41.0 | 41.0 | 41.0 |" in table
    assert "| temporal gru | 42.0 |" in table
    assert "| functionals (shipped recipe) | 45.0 |" in table
    assert "| temporal cnn ONNX (input: LLD frames) | 0.100 | 0.200 |" in table
    assert "temporal gru ONNX" not in table  # no latency measured for it here
