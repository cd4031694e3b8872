"""``emotion-engine report``: per-agent end-of-call table from recorded events, checked
against hand-counted synthetic calls and end to end on the analysed demo call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from emotion_engine import cli, report
from emotion_engine.detect.summary import end_mood
from emotion_engine.report import agent_of, by_agent, calls_from_events, format_table


def call(
    call_id: str,
    info: dict[str, Any],
    *,
    end_valence: float | None,
    peak_end: float | None = None,
    recovery: str | None = None,
    spikes: int = 0,
    with_mood: bool = True,
) -> list[dict[str, Any]]:
    """One call's start and end events (both parties), customer summary as given."""
    end_state = None if end_valence is None else {"emotion": "neutral", "valence": end_valence}
    summary: dict[str, Any] = {
        "end_state": end_state,
        "peak_end_score": peak_end,
        "recovery": None if recovery is None else {"outcome": recovery, "delta": 0.3},
        "n_spikes": spikes,
    }
    if with_mood:
        summary["end_mood"] = end_mood(end_valence) if end_valence is not None else None
    return [
        {"type": "call.start", "call_id": call_id, "party": "customer", "t": 0.0, "info": info},
        {"type": "call.start", "call_id": call_id, "party": "agent", "t": 0.0, "info": {}},
        {"type": "route.hint", "call_id": call_id, "party": "customer", "t": 5.0},
        {
            "type": "call.end",
            "call_id": call_id,
            "party": "customer",
            "t": 60.0,
            "summary": summary,
        },
        {"type": "call.end", "call_id": call_id, "party": "agent", "t": 60.0, "summary": {}},
    ]


def synthetic() -> list[dict[str, Any]]:
    return [
        # agent "ana": 3 calls, agent id in three different places
        *call(
            "c1",
            {"metadata": {"agent": "ana"}},
            end_valence=-0.5,
            peak_end=-0.6,
            recovery="not_recovered",
            spikes=2,
        ),
        *call(
            "c2",
            {"custom_parameters": {"agent_id": "ana"}},
            end_valence=0.0,
            peak_end=-0.3,
            recovery="recovered",
            spikes=1,
        ),
        *call("c3", {"agent": "ana"}, end_valence=0.4, peak_end=0.2, recovery="no_low_point"),
        # "ben": one call with speech (old events without end_mood), one without
        *call(
            "c4",
            {"custom_config": {"agentId": "ben"}},
            end_valence=-0.3,
            peak_end=-0.5,
            recovery="recovered",
            spikes=1,
            with_mood=False,
        ),
        *call("c5", {"metadata": {"agentName": "ben"}}, end_valence=None),
        # no agent anywhere; and the same call id reused for a second call
        *call("c6", {"protocol": "rtp"}, end_valence=0.1, peak_end=0.0),
        *call("c6", {"protocol": "rtp"}, end_valence=-0.35, peak_end=-0.4),
        {"v": 1, "type": "events.lost", "count": 3, "from_seq": 1, "to_seq": 3},
    ]


def test_agent_is_found_where_each_ingest_puts_it() -> None:
    assert agent_of({"metadata": {"agent": "a1"}}) == "a1"  # L16 start message
    assert agent_of({"custom_parameters": {"agent_id": "a2"}}) == "a2"  # Twilio
    assert agent_of({"custom_config": {"agentId": 7}}) == "7"  # AudioHook
    assert agent_of({"agent": "a4", "metadata": {"agent": "other"}}) == "a4"
    assert agent_of({"metadata": "x", "agent": ""}) is None
    assert agent_of(None) is None


def test_per_agent_numbers_by_hand() -> None:
    calls = calls_from_events(synthetic())
    assert [(c.call_id, c.agent) for c in calls] == [
        ("c1", "ana"),
        ("c2", "ana"),
        ("c3", "ana"),
        ("c4", "ben"),
        ("c5", "ben"),
        ("c6", "unknown"),
        ("c6", "unknown"),
    ]
    assert all(c.n_hints == 1 for c in calls)
    ana, ben, unknown = by_agent(calls)
    assert (ana.agent, ana.calls, ana.no_speech) == ("ana", 3, 0)
    assert ana.end_moods == {"negative": 1, "neutral": 1, "positive": 1}
    assert ana.mean_end_valence == pytest.approx((-0.5 + 0.0 + 0.4) / 3)
    assert ana.mean_peak_end == pytest.approx((-0.6 - 0.3 + 0.2) / 3)
    assert (ana.recovered, ana.low_points) == (1, 2)
    assert ana.spikes_per_call == pytest.approx(1.0)
    # end_mood derived from the valence when the events predate it (-0.3: negative)
    assert (ben.calls, ben.no_speech, ben.end_moods["negative"]) == (2, 1, 1)
    assert ben.share("negative") == 1.0
    assert (unknown.calls, unknown.end_moods) == (2, {"negative": 1, "neutral": 1, "positive": 0})

    table = format_table([ana, ben, unknown], source="x.jsonl")
    lines = table.splitlines()
    assert lines[0] == "Customer end state by agent: 7 call(s), 3 agent(s) from x.jsonl"
    ana_row = next(line for line in lines if line.startswith("ana"))
    assert ana_row.split() == [
        "ana",
        "3",
        "0",
        "1",
        "(33%)",
        "1",
        "(33%)",
        "1",
        "(33%)",
        "-0.03",
        "-0.23",
        "1/2",
        "1.0",
    ]
    ben_row = next(line for line in lines if line.startswith("ben"))
    assert ben_row.split()[-3:] == ["-0.50", "1/1", "0.5"]
    assert lines.index(ana_row) < lines.index(ben_row)
    assert next(line for line in lines if line.startswith("unknown")).split()[-2] == "-"


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.main(parser.parse_args(argv))


def test_command_prints_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in synthetic()) + "\n\n")
    png = tmp_path / "out" / "agents.png"
    assert run_report([str(events), "--plot", str(png)]) == 0
    out = capsys.readouterr()
    assert "Customer end state by agent: 7 call(s), 3 agent(s)" in out.out
    assert f"plot written to {png}" in out.err
    image = matplotlib.image.imread(png)
    assert image.shape[1] == 1200 and image.shape[0] >= 200  # 10 in wide at 120 dpi
    assert run_report([str(events), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [s["agent"] for s in stats] == ["ana", "ben", "unknown"]
    assert stats[0]["end_moods"] == {"negative": 1, "neutral": 1, "positive": 1}


def test_command_errors_name_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "call.start"}\nnot json\n')
    assert run_report([str(bad)]) == 1
    assert f"{bad}:2: not a JSON event" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run_report([str(empty)]) == 1
    assert "no ended calls" in capsys.readouterr().err
    assert run_report([str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read events file" in capsys.readouterr().err


@pytest.mark.slow
def test_report_on_the_analysed_demo_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "demo.jsonl"
    assert cli.main(["analyze", str(cli.DEMO_CALL), "--out", str(events), "--no-progress"]) == 0
    capsys.readouterr()
    assert run_report([str(events), "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)
    # the demo customer gets angry mid-call and calms down again before the end
    end = next(
        json.loads(line)
        for line in events.read_text().splitlines()
        if '"call.end"' in line and '"customer"' in line
    )
    assert stats["agent"] == "unknown" and stats["calls"] == 1
    assert stats["end_moods"][end["summary"]["end_mood"]] == 1
    assert stats["mean_peak_end"] == pytest.approx(end["summary"]["peak_end_score"])
    assert stats["recovered"] == (end["summary"]["recovery"]["outcome"] == "recovered")
