"""The detector sweep of ``training/operating_point.py``: replaying the detector over
recorded window scores gives what the live engine emits, and the choosing rule does
what the model card says it does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion_engine.audio.io import read_audio
from emotion_engine.config import DEFAULT_ENGINE_PARAMS
from emotion_engine.engine.pipeline import Engine
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.training.operating_point import (
    GridPoint,
    choose,
    choose_points,
    default_grid,
    format_table,
    grid_point_of,
    pareto,
    plot_tradeoff,
    replay_spikes,
    scores_from_events,
    temper,
)
from emotion_engine.training.stitched import StitchedCall, spike_starts, stream_events

DEMO = Path(__file__).resolve().parents[1] / "emotion_engine" / "data" / "demo_call.flac"


@pytest.fixture(scope="module")
def demo_customer() -> StitchedCall:
    channels, rate = read_audio(DEMO)
    assert rate == 8000
    return StitchedCall(
        name="demo",
        speaker="demo_customer",
        samples=np.ascontiguousarray(channels[0]),
        anger_onset_s=None,
        anger_end_s=None,
        neutral_s=channels[0].size / 8000,
    )


def _same(a: list[dict[str, object]], b: list[dict[str, object]]) -> None:
    keys = ("emotion", "t", "detected_at")
    assert [tuple(d.get(k) for k in keys) for d in a] == [tuple(d.get(k) for k in keys) for d in b]


@pytest.mark.parametrize(
    "point",
    [
        grid_point_of(DEFAULT_ENGINE_PARAMS.detector),  # the shipped defaults
        GridPoint(0.45, 0.1, 1, 1.0),  # a twitchier setting that fires more often
    ],
    ids=["defaults", "twitchy"],
)
def test_replay_gives_the_engines_spikes(
    model: EmotionModel, demo_customer: StitchedCall, point: GridPoint
) -> None:
    params = dataclasses.replace(DEFAULT_ENGINE_PARAMS, detector=point.params())
    events = stream_events(Engine(model=model, params=params), demo_customer)
    live = spike_starts(events)
    assert live, "the demo customer gets angry: the engine must report a spike"
    replayed = replay_spikes(
        scores_from_events(events),
        labels=model.labels,
        params=params.detector,
        t_end=demo_customer.samples.size / 8000,
    )
    _same(replayed, live)


def test_replay_differs_when_settings_differ(
    model: EmotionModel, demo_customer: StitchedCall
) -> None:
    """The sweep is only worth running if the settings change the outcome."""
    scores = scores_from_events(
        stream_events(Engine(model=model, params=DEFAULT_ENGINE_PARAMS), demo_customer)
    )
    t_end = demo_customer.samples.size / 8000
    twitchy = replay_spikes(
        scores, labels=model.labels, params=GridPoint(0.3, 0.0, 1, 0.5).params(), t_end=t_end
    )
    deaf = replay_spikes(
        scores, labels=model.labels, params=GridPoint(0.9, 0.4, 3, 1.0).params(), t_end=t_end
    )
    assert twitchy and deaf
    # the twitchy setting fires earlier (and the sweep sees the difference)
    assert float(twitchy[0]["detected_at"]) < float(deaf[0]["detected_at"]) - 1.0


def test_the_grid_holds_the_shipped_defaults() -> None:
    grid = default_grid()
    assert len(grid) == len(set(grid))
    plain = [p for p in grid if p.off_threshold is None and p.end_smoothing_windows is None]
    assert len(plain) >= 390  # 13 x 5 x 3 x 2
    default = grid_point_of(DEFAULT_ENGINE_PARAMS.detector)
    assert default in grid
    # the sweep's derived thresholds keep the shipped offsets, so "defaults" is exact
    assert default.params() == DEFAULT_ENGINE_PARAMS.detector


def test_temperature_one_is_identity_and_above_one_softens(
    model: EmotionModel, demo_customer: StitchedCall
) -> None:
    scores = scores_from_events(
        stream_events(Engine(model=model, params=DEFAULT_ENGINE_PARAMS), demo_customer)
    )[:40]
    same = temper(scores, 1.0)
    soft = temper(scores, 2.0)
    for s, a, b in zip(scores, same, soft, strict=True):
        p = np.array(list(s.probabilities.values()))
        np.testing.assert_allclose(list(a.probabilities.values()), p, atol=1e-6)  # float32 in
        assert max(b.probabilities.values()) <= p.max() + 1e-12
        assert sum(b.probabilities.values()) == pytest.approx(1.0)
        assert a.t == s.t and a.is_speech == s.is_speech


def _fig(recall: float, fa: float) -> dict[str, float]:
    return {"spike_recall_3s": recall, "false_spikes_per_hour": fa}


def test_choose_takes_the_best_recall_within_budget() -> None:
    per = {
        "a": {"x": _fig(0.9, 10.0), "y": _fig(0.6, 1.0), "z": _fig(0.5, 0.0)},
        "b": {"x": _fig(0.9, 8.0), "y": _fig(0.7, 2.0), "z": _fig(0.7, 0.0)},
    }
    # macro: x 0.90 @ 9/h, y 0.65 @ 1.5/h, z 0.60 @ 0/h
    assert choose(per, ["a", "b"], fa_budget=2.0) == ("y", True)
    assert choose(per, ["a", "b"], fa_budget=10.0) == ("x", True)
    # on corpus b alone y and z tie on recall: fewer false spikes wins
    assert choose(per, ["b"], fa_budget=2.0) == ("z", True)


def test_choose_falls_back_to_fewest_false_spikes() -> None:
    per = {"a": {"x": _fig(0.9, 10.0), "y": _fig(0.2, 5.0), "z": _fig(0.4, 5.0)}}
    assert choose(per, ["a"], fa_budget=2.0) == ("z", False)


def test_pareto_keeps_only_undominated_points() -> None:
    pts = [(0.0, 0.2), (1.0, 0.1), (1.0, 0.5), (3.0, 0.5), (5.0, 0.9), (0.0, 0.1)]
    assert pareto(pts) == [(0.0, 0.2), (1.0, 0.5), (5.0, 0.9)]


def test_budgets_nested_choice_table_and_plot(tmp_path: Path) -> None:
    """From a sweep alone (``--replot``): the rule per budget, the nested choice (picked
    on the other corpora, scored on the held-out one), a table and a plot."""
    grid = [GridPoint(0.6, 0.3, 2, 0.5), GridPoint(0.9, 0.4, 3, 1.0)]
    twitchy, deaf = (p.key() for p in grid)

    def fig(hits: int, fa: float) -> dict[str, float | int | None]:
        return {
            "anger_segments": 10,
            "detected_within_3s": hits,
            "spike_recall_3s": hits / 10,
            "median_delay_s": 2.0 if hits else None,
            "false_spikes_per_hour": fa,
        }

    sweep = {
        "a": {twitchy: fig(8, 20.0), deaf: fig(1, 0.0)},
        "b": {twitchy: fig(6, 1.0), deaf: fig(2, 0.0)},
    }
    result: dict[str, Any] = {
        "corpora": ["a", "b"],
        "calibration": {
            c: {"temperature": 2.0, "calibration_clips": 9, "ece_raw": 0.3, "ece_scaled": 0.1}
            for c in ("a", "b")
        },
        "fa_budget_per_hour": 2.0,
        "defaults": {"key": twitchy},
        "sweep": {"raw": sweep, "calibrated": sweep},
    }
    result.update(choose_points(result, grid=grid))
    assert result["budgets_per_hour"] == [2.0, 10.0, 30.0]
    # macro false alarms: twitchy 10.5/h, deaf 0/h
    assert result["chosen"]["raw"]["2"]["key"] == deaf
    assert result["chosen"]["raw"]["30"]["key"] == twitchy
    # held-out "a" gets the point picked on "b" alone: twitchy is within 2/h there
    assert result["nested"]["raw"]["2"]["a"]["key"] == twitchy
    assert result["nested"]["raw"]["2"]["a"]["false_spikes_per_hour"] == 20.0
    assert result["nested"]["raw"]["2"]["b"]["key"] == deaf
    table = format_table(result)
    assert "| 2/h | raw |" in table and "80 % (8/10), 20.0/h" in table
    plot_tradeoff(result, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_a_bad_detector_setting_is_one_error_line() -> None:
    """``--extra`` (operating_point) and ``--detector`` (stitched) typos: exit 1 with one
    ``error:`` line naming the setting, before any data is read."""
    import subprocess
    import sys

    for module, option, value, says in (
        ("operating_point", "--extra", "on_treshold=0.7", "unknown key 'on_treshold'"),
        ("stitched", "--detector", "on_threshold=high", "is not a valid float"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", f"emotion_engine.training.{module}", option, value],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: detector setting") and says in result.stderr
