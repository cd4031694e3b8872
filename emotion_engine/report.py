"""``emotion-engine report EVENTS.jsonl``: how customers felt at the end of each agent's calls.

A call is judged by how the customer felt at its end (the peak-end rule), which
rewards the agents who turn a bad moment around rather than those who happen to get
easy calls. From recorded events (``analyze --out``, or ``/v1/events`` captured as
JSON lines; several files may be given) this groups calls by agent and prints, per
agent:

- ``calls``: calls seen (a call is its ``call_id``; a ``call_id`` that starts again
  after ending counts as a new call), and ``no speech``: calls where the customer
  never spoke (no end state);
- ``end negative / neutral / positive``: the customer's end mood (``call.end``
  summary ``end_mood``: end-state valence <= -0.3, between, >= 0.2), count and share
  of the calls with customer speech;
- ``end valence``: mean customer end-state valence (-1..1);
- ``peak-end``: mean customer peak-end score (-1..1);
- ``recovered``: calls whose customer recovered from a low point, of the calls that
  had one (``summary.recovery.outcome``);
- ``spikes/call``: mean number of customer emotion spikes.

The agent is read from the ``call.start`` info of any leg of the call: a field
``agent``, ``agent_id``, ``agentId`` or ``agentName``, at the top level or inside
``metadata`` (L16 start message), ``custom_parameters`` (Twilio
``customParameters``) or ``custom_config`` (AudioHook ``customConfig``); otherwise
the agent is ``unknown``. ``--plot PNG`` draws the end moods per agent (hatched, so
colour is not needed to read it) beside the mean peak-end score.

Only summaries are read: no audio is needed or stored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from emotion_engine.detect.summary import end_mood
from emotion_engine.errors import EngineError, EventError

UNKNOWN_AGENT: Final = "unknown"
AGENT_KEYS: Final = ("agent", "agent_id", "agentId", "agentName")
INFO_PLACES: Final = ("metadata", "custom_parameters", "custom_config")
END_MOODS: Final = ("negative", "neutral", "positive")


def agent_of(info: object) -> str | None:
    """The agent id in a ``call.start`` info dict (see the module docstring), or None."""
    if not isinstance(info, Mapping):
        return None
    for place in (info, *(info.get(k) for k in INFO_PLACES)):
        if not isinstance(place, Mapping):
            continue
        for key in AGENT_KEYS:
            value = place.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
    return None


@dataclass(slots=True)
class CallOutcome:
    """One call as the report sees it (customer side)."""

    call_id: str
    agent: str = UNKNOWN_AGENT
    ended: bool = False
    end_mood: str | None = None
    end_valence: float | None = None
    peak_end_score: float | None = None
    recovery: str | None = None
    n_spikes: int = 0
    n_hints: int = 0


@dataclass(slots=True)
class AgentStats:
    """Per-agent aggregates over their calls (see the module docstring)."""

    agent: str
    calls: int = 0
    no_speech: int = 0
    end_moods: dict[str, int] = field(default_factory=lambda: dict.fromkeys(END_MOODS, 0))
    mean_end_valence: float | None = None
    mean_peak_end: float | None = None
    recovered: int = 0
    low_points: int = 0
    spikes_per_call: float = 0.0

    @property
    def with_speech(self) -> int:
        return self.calls - self.no_speech

    def share(self, mood: str) -> float | None:
        return self.end_moods[mood] / self.with_speech if self.with_speech else None


def read_events(paths: Sequence[Path]) -> Iterable[dict[str, Any]]:
    """Events from JSON-lines files, in order; raises EventError naming the file and
    line of anything that is not a JSON object."""
    for path in paths:
        try:
            fh = path.open(encoding="utf-8")
        except OSError as exc:
            raise EventError(f"cannot read events file {path}: {exc}") from None
        with fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EventError(f"{path}:{n}: not a JSON event ({exc.msg})") from None
                if not isinstance(event, dict):
                    raise EventError(f"{path}:{n}: expected a JSON object, got {line[:40]!r}")
                yield event


def calls_from_events(
    events: Iterable[Mapping[str, Any]], *, party: str = "customer"
) -> list[CallOutcome]:
    """One :class:`CallOutcome` per call, in order of first appearance. ``party``:
    whose end state judges the call (the customer)."""
    calls: list[CallOutcome] = []
    current: dict[str, CallOutcome] = {}
    for e in events:
        call_id = e.get("call_id")
        if not isinstance(call_id, str):
            continue  # events.lost and the like
        kind = e.get("type")
        call = current.get(call_id)
        if call is None or (kind == "call.start" and e.get("party") == party and call.ended):
            call = CallOutcome(call_id=call_id)
            current[call_id] = call
            calls.append(call)
        if kind == "call.start":
            agent = agent_of(e.get("info"))
            if agent is not None and call.agent == UNKNOWN_AGENT:
                call.agent = agent
        elif kind == "route.hint":
            call.n_hints += 1
        elif kind == "call.end" and e.get("party") == party:
            call.ended = True
            summary = e.get("summary") or {}
            end_state = summary.get("end_state") or {}
            call.end_mood = summary.get("end_mood")
            call.end_valence = _number(end_state.get("valence"))
            if call.end_mood is None and call.end_valence is not None:
                call.end_mood = end_mood(call.end_valence)  # events from before end_mood
            call.peak_end_score = _number(summary.get("peak_end_score"))
            call.recovery = (summary.get("recovery") or {}).get("outcome")
            call.n_spikes = int(summary.get("n_spikes") or 0)
    return [c for c in calls if c.ended]


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def by_agent(calls: Iterable[CallOutcome]) -> list[AgentStats]:
    """Aggregates per agent, sorted by agent id (``unknown`` last)."""
    groups: dict[str, list[CallOutcome]] = {}
    for call in calls:
        groups.setdefault(call.agent, []).append(call)
    out = []
    for agent, mine in groups.items():
        stats = AgentStats(agent=agent, calls=len(mine))
        for call in mine:
            if call.end_mood in stats.end_moods:
                stats.end_moods[call.end_mood] += 1
            else:
                stats.no_speech += 1
        stats.mean_end_valence = _mean([c.end_valence for c in mine if c.end_valence is not None])
        stats.mean_peak_end = _mean(
            [c.peak_end_score for c in mine if c.peak_end_score is not None]
        )
        stats.recovered = sum(c.recovery == "recovered" for c in mine)
        stats.low_points = sum(c.recovery in ("recovered", "not_recovered") for c in mine)
        stats.spikes_per_call = sum(c.n_spikes for c in mine) / len(mine)
        out.append(stats)
    out.sort(key=lambda s: (s.agent == UNKNOWN_AGENT, s.agent))
    return out


def _fmt(x: float | None, spec: str = "+.2f") -> str:
    return "-" if x is None else format(x, spec)


def _count_share(n: int, share: float | None) -> str:
    return f"{n} ({share:.0%})" if share is not None else str(n)


def format_table(stats: Sequence[AgentStats], *, source: str = "") -> str:
    """The per-agent table as plain text (fixed-width columns)."""
    n_calls = sum(s.calls for s in stats)
    title = f"Customer end state by agent: {n_calls} call(s), {len(stats)} agent(s)" + (
        f" from {source}" if source else ""
    )
    header = (
        "agent",
        "calls",
        "no speech",
        "end negative",
        "end neutral",
        "end positive",
        "end valence",
        "peak-end",
        "recovered",
        "spikes/call",
    )
    rows: list[tuple[str, ...]] = [header]
    for s in stats:
        rows.append(
            (
                s.agent,
                str(s.calls),
                str(s.no_speech),
                *(_count_share(s.end_moods[m], s.share(m)) for m in END_MOODS),
                _fmt(s.mean_end_valence),
                _fmt(s.mean_peak_end),
                f"{s.recovered}/{s.low_points}" if s.low_points else "-",
                f"{s.spikes_per_call:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title, ""]
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        "end mood: customer end-state valence over the last 12 s of speech (negative <= -0.3 < "
        "neutral < 0.2 <= positive); shares are of calls with customer speech.",
        "peak-end: (worst moment + end) / 2, -1..1; recovered: calls that ended clearly better "
        "than their low point, of those that had one.",
    ]
    return "\n".join(lines)


def plot_agents(stats: Sequence[AgentStats], out_path: Path, *, title: str = "") -> None:
    """PNG: per agent, the customers' end moods as stacked, hatched bars (share of calls
    with speech, count written in each) and the mean peak-end score beside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = {  # Okabe-Ito colours, and a hatch each so print and colour-blind readers see it
        "negative": ("#D55E00", "xx"),
        "neutral": ("#BBBBBB", ""),
        "positive": ("#009E73", ".."),
    }
    agents = [s.agent for s in stats]
    height = 1.2 + 0.45 * max(1, len(agents))
    fig = Figure(figsize=(10, height), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    ys = list(range(len(agents)))
    starts = [0.0] * len(agents)
    for mood in END_MOODS:
        shares = [s.share(mood) or 0.0 for s in stats]
        colour, hatch = styles[mood]
        bars = left.barh(
            ys,
            shares,
            left=starts,
            color=colour,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.6,
            label=f"ended {mood}",
        )
        for bar, s in zip(bars, stats, strict=True):
            n = s.end_moods[mood]
            if n and bar.get_width() >= 0.06:
                left.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_y() + bar.get_height() / 2,
                    str(n),
                    ha="center",
                    va="center",
                    fontsize=9,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"},
                )
        starts = [a + b for a, b in zip(starts, shares, strict=True)]
    left.set_yticks(ys, [f"{s.agent} ({s.calls})" for s in stats])
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("share of calls with customer speech (count in bars)")
    left.set_title("How customers felt at the end")
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    scores = [s.mean_peak_end if s.mean_peak_end is not None else math.nan for s in stats]
    right.barh(ys, scores, color="#0072B2", edgecolor="black", linewidth=0.6)
    for y, s in zip(ys, stats, strict=True):
        recovered = f"recovered {s.recovered}/{s.low_points}" if s.low_points else "no low point"
        score = s.mean_peak_end or 0.0
        # the words sit on the side of zero the bar does not use
        right.text(
            0.04 if score <= 0 else -0.04,
            y,
            f"{_fmt(s.mean_peak_end)}, {recovered}",
            ha="left" if score <= 0 else "right",
            va="center",
            fontsize=9,
        )
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlim(-1, 1)
    right.set_xticks([-1, -0.5, 0, 0.5, 1])
    right.set_xlabel("mean peak-end score (-1 bad .. +1 good)")
    right.set_title("Peak-end")
    if title:
        fig.suptitle(title)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "events",
        nargs="+",
        type=Path,
        metavar="EVENTS.jsonl",
        help="event files (analyze --out, or /v1/events captured as JSON lines)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw the end moods and peak-end score per agent",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the per-agent numbers as JSON instead of a table"
    )


def main(args: argparse.Namespace) -> int:
    """Print the per-agent table (or ``--json``); 1 when no ended call was found."""
    source = ", ".join(str(p) for p in args.events)
    try:
        stats = by_agent(calls_from_events(read_events(args.events)))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not stats:
        print(f"error: no ended calls (call.end for the customer) in {source}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(s) for s in stats], indent=2))
    else:
        print(format_table(stats, source=source))
    if args.plot is not None:
        plot_agents(stats, args.plot, title=f"Customer end state by agent ({source})")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
