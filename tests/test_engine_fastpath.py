"""The engine's fast paths give the numbers of the general ones, bit for bit.

Scratch buffers reused across LLD blocks and calls, the all-plain-legs branch of
``Engine._run``, the frame starts kept from the last tick, the functionals' side-by-side
column sums and the unsmoothed shortcut of ``CallSummarizer.update`` must each be
invisible.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from typing import Any

import numpy as np
import pytest
import scipy.fft

from emotion_engine.config import DEFAULT_DETECTOR_PARAMS
from emotion_engine.detect.spike import SpikeDetector
from emotion_engine.detect.summary import CallSummarizer, _recent_means
from emotion_engine.engine.pipeline import Engine
from emotion_engine.features import functionals as functionals_module
from emotion_engine.features import lld as lld_module
from emotion_engine.features.functionals import FUNCTIONAL_NAMES, compute_functionals
from emotion_engine.features.lld import LLD_INDEX, LLD_NAMES, compute_lld, compute_lld_at
from emotion_engine.frames import AudioChunk, EmotionScores
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import Event


def _speechlike(n: int, *, seed: int) -> np.ndarray:
    """(n,) float32: a voiced tone with jitter, noise, loud and silent stretches."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000.0
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 8000.0) + 0.02 * rng.standard_normal(n)
    x[n // 3 : n // 3 + 2000] = 0.0  # digital silence
    x[n // 2 : n // 2 + 1500] *= 3.0  # clipped-loud stretch
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def test_lld_blocks_reusing_scratch_equal_fresh_calls() -> None:
    """Several blocks in one call (scratch reused, last block partial) give the rows
    of one call per block (fresh zero-padded buffers each) and of compute_lld."""
    chunk = lld_module._CHUNK_FRAMES
    signal = _speechlike(8000 * 8, seed=3)
    signal[12345] = np.nan  # read as 0, in any block
    n = 2 * chunk + 37
    starts = np.arange(n, dtype=np.int64) * 80
    whole = compute_lld_at(signal=signal, starts=starts)
    # blocks of a different size, each its own call (the thread's scratch again)
    pieces = [compute_lld_at(signal=signal, starts=starts[i : i + 100]) for i in range(0, n, 100)]
    assert np.array_equal(whole.view(np.uint32), np.concatenate(pieces).view(np.uint32))
    frames = np.stack([np.nan_to_num(signal[s : s + 200], nan=0.0) for s in starts])
    assert np.array_equal(whole.view(np.uint32), compute_lld(frames=frames).view(np.uint32))
    # a loud first block, then a quiet one: nothing of the first leaks into the second
    loud_then_quiet = compute_lld_at(signal=signal, starts=starts[chunk - 5 : chunk + 5])
    assert np.array_equal(
        loud_then_quiet.view(np.uint32), whole[chunk - 5 : chunk + 5].view(np.uint32)
    )


def test_lld_scratch_kept_across_calls_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's scratch, reused by every call, leaves nothing of a loud call in a
    quiet one: the rows equal those from fresh buffers, and another thread's."""
    signal = _speechlike(8000 * 3, seed=11)
    quiet = (signal * 1e-3).astype(np.float32)
    loud_starts = np.arange(250, dtype=np.int64) * 80
    quiet_starts = np.arange(0, 7, dtype=np.int64) * 80 + 13
    compute_lld_at(signal=signal, starts=loud_starts)  # fills most scratch rows
    reused = compute_lld_at(signal=quiet, starts=quiet_starts)
    fresh: dict[str, np.ndarray] = {}

    def in_new_thread() -> None:
        fresh["rows"] = compute_lld_at(signal=quiet, starts=quiet_starts)

    worker = threading.Thread(target=in_new_thread)
    worker.start()
    worker.join()
    monkeypatch.setattr(lld_module, "_THREAD_SCRATCH", lld_module._ThreadScratch())
    fresh_here = compute_lld_at(signal=quiet, starts=quiet_starts)
    assert np.array_equal(reused.view(np.uint32), fresh["rows"].view(np.uint32))
    assert np.array_equal(reused.view(np.uint32), fresh_here.view(np.uint32))


def test_voiced_mean_std_are_running_float32_sums() -> None:
    """The kernel's voiced means and stds (columns summed side by side) are, bit for
    bit, one running float32 sum per column over the frames in order."""
    rng = np.random.default_rng(4)
    lld = rng.standard_normal((3, 120, len(LLD_NAMES))).astype(np.float32) * 40
    lld[..., LLD_INDEX["voiced"]] = rng.random((3, 120)) < 0.6
    lld[..., LLD_INDEX["f0_hz"]] = np.abs(lld[..., LLD_INDEX["f0_hz"]]) + 50
    got = compute_functionals(lld=lld)
    for b in range(lld.shape[0]):
        voiced = lld[b, :, LLD_INDEX["voiced"]] > 0.5
        denom = np.float32(max(int(voiced.sum()), 1))
        for name in functionals_module._MEAN_STD_VOICED:
            column = lld[b, :, LLD_INDEX[name]]
            acc = np.float32(0.0)
            for v, is_voiced in zip(column, voiced, strict=True):
                if is_voiced:
                    acc = np.float32(acc + v)
            mean = np.float32(acc / denom)
            acc = np.float32(0.0)
            for v, is_voiced in zip(column, voiced, strict=True):
                dev = np.float32((v - mean) * np.float32(1.0 if is_voiced else 0.0))
                acc = np.float32(acc + dev * dev)
            std = np.sqrt(np.float32(acc / denom))
            i_mean = FUNCTIONAL_NAMES.index(f"{name}_mean")
            i_std = FUNCTIONAL_NAMES.index(f"{name}_std")
            assert got[b, i_mean].tobytes() == mean.tobytes(), name
            assert got[b, i_std].tobytes() == std.tobytes(), name


def test_frame_starts_follow_changing_sizes(model: EmotionModel) -> None:
    """The frame starts kept from the last tick serve only a tick with the same sizes."""
    engine = Engine(model=model)
    hop = engine.params.features.hop_length

    def naive(counts: list[int], bounds: list[int]) -> list[int]:
        return [b + k * hop for b, c in zip(bounds, counts, strict=False) for k in range(c)]

    ticks = [([10, 10], [0, 920, 1840]), ([10, 10], [0, 920, 1840]), ([9, 10], [0, 880, 1800])]
    ticks += [([10, 0], [0, 920, 1000]), ([10, 0], [0, 920, 1000]), ([10, 10], [0, 920, 1840])]
    for counts, bounds in ticks:
        got = engine._frame_starts(list(counts), list(bounds))
        assert got.dtype == np.int64
        assert got.tolist() == naive(counts, bounds)


def test_detector_view_is_the_snapshot() -> None:
    labels = ("neutral", "happy", "sad", "angry")
    detector = SpikeDetector(labels=labels)
    rng = np.random.default_rng(2)
    for i in range(40):
        p = rng.dirichlet(np.ones(4) * (0.3 if i > 20 else 3.0)).tolist()
        detector.update(
            EmotionScores(
                "c", "customer", 0.5 * i, dict(zip(labels, p, strict=True)), 0.5, 0.5, i % 5 != 0
            )
        )
        want = {
            emotion: {
                "state": snap.state.value,
                "score": snap.score,
                "baseline": snap.baseline,
                "baseline_ready": snap.baseline_ready,
            }
            for emotion, snap in detector.snapshot().items()
        }
        assert detector.view() == want


def _run_legs(
    model: EmotionModel, pcm: np.ndarray, offsets: list[int], *, float_leg: bool
) -> list[Event]:
    """Legs fed 100 ms ticks of ``pcm`` from different offsets, all in one engine."""
    engine = Engine(model=model)
    events: list[Event] = []
    for i in range(len(offsets)):
        events += engine.open_leg(call_id=f"c{i}", party="customer", sample_rate=8000)
    if float_leg:
        events += engine.open_leg(call_id="f", party="customer", sample_rate=8000)
    for k in range(0, 8000 * 4, 800):
        for i, off in enumerate(offsets):
            part = pcm[off + k : off + k + 800]
            engine.push(AudioChunk(f"c{i}", "customer", k / 8000, part, 8000))
        if float_leg:
            engine.push_float(call_id="f", party="customer", samples=np.full(800, 0.01, np.float32))
        events += engine.process()
    events += engine.close_all()
    return [e for e in events if e.call_id != "f"]


def test_all_plain_ticks_equal_mixed_ticks(model: EmotionModel) -> None:
    """The all-int16 branch of ``_run`` and the mixed one (a float leg beside) give the
    same events for the same int16 legs."""
    pcm = (_speechlike(8000 * 6, seed=5) * 32767).astype(np.int16)
    offsets = [0, 3000, 7777]
    plain = _run_legs(model, pcm, offsets, float_leg=False)
    mixed = _run_legs(model, pcm, offsets, float_leg=True)
    assert sum(e.type == "emotion.update" for e in plain) >= 3 * 6
    assert [e.to_dict() for e in plain] == [e.to_dict() for e in mixed]


def test_unsmoothed_summary_equals_the_general_mean() -> None:
    """With smoothing_windows=1 the peak is the mean of a one-window deque, exactly."""
    labels = ("neutral", "happy", "sad", "angry")
    params = dataclasses.replace(DEFAULT_DETECTOR_PARAMS, smoothing_windows=1)
    summarizer = CallSummarizer(labels=labels, params=params)
    rng = np.random.default_rng(7)
    weights = np.array([0.0, 1.0, -1.0, -1.0])
    best: float | None = None
    for i in range(60):
        p = rng.dirichlet(np.ones(4))
        arousal = float(rng.random()) if i else -0.0  # -0.0: the mean's 0.0 + a
        scores = EmotionScores(
            "c", "customer", 0.5 * i, dict(zip(labels, p.tolist(), strict=True)), arousal, 0.5, True
        )
        summarizer.update(scores)
        p_s, a_s = _recent_means(deque([(np.array(p.tolist()), arousal)]))
        v_s = float(weights @ p_s)
        if best is None or v_s < best:
            best = v_s
            peak = summarizer.summarize().peak
            assert peak is not None
            assert (peak.valence, peak.arousal, peak.t) == (v_s, a_s, scores.t)
            assert str(peak.arousal) == str(a_s)  # the sign of zero too


# -- FFTs: scipy's pocketfft called directly, checked against scipy.fft ---------------------


def test_direct_pocketfft_gives_what_scipy_fft_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    lld = lld_module
    rng = np.random.default_rng(3)
    direct, public = lld._row_fft(lld._load_pocketfft()), lld._public_fft()
    assert direct.direct  # the scipy here has the module; elsewhere the fallback is fine
    for rows, n in ((1, 256), (7, 320), (256, 320), (256, 256)):
        x = rng.standard_normal((rows, n)).astype(np.float32)
        spec = direct.rfft_rows(x)
        np.testing.assert_array_equal(spec, public.rfft_rows(x))
        assert spec.dtype == np.complex64
        back = direct.irfft_rows(spec, n)
        np.testing.assert_array_equal(back, public.irfft_rows(spec.copy(), n))
        assert back.dtype == np.float32
    # and the LLDs are the same numbers either way
    frames = rng.uniform(-0.5, 0.5, (300, 200)).astype(np.float32)
    with_direct = lld.compute_lld(frames=frames)
    monkeypatch.setattr(lld, "_FFT", public)
    np.testing.assert_array_equal(lld.compute_lld(frames=frames), with_direct)


class _WrongPocketfft:
    """A private module that moved on: another scaling for the inverse."""

    @staticmethod
    def r2c(x: Any, axes: Any, forward: Any, norm: Any, out: Any, nthreads: Any) -> Any:
        return scipy.fft.rfft(x, axis=1)

    @staticmethod
    def c2r(spec: Any, axes: Any, n: Any, forward: Any, norm: Any, out: Any, nthreads: Any) -> Any:
        return scipy.fft.irfft(spec, n=n, axis=1) * 2


@pytest.mark.parametrize("module", [None, object(), _WrongPocketfft()])
def test_a_missing_or_changed_pocketfft_falls_back_to_scipy_fft(module: object) -> None:
    fft = lld_module._row_fft(module)
    assert not fft.direct
    x = np.random.default_rng(0).standard_normal((4, 320)).astype(np.float32)
    np.testing.assert_array_equal(fft.rfft_rows(x), scipy.fft.rfft(x, axis=1))
