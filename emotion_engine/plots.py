"""Timeline plot of a call's events: one panel per party.

Per panel: each emotion's probability over time (from ``emotion.update``; a line per
label in the Okabe-Ito colour-blind-safe palette, each with its own line style so
meaning does not rest on colour), arousal as a dashed black line, spike emotions thicker, the spike
detector's baseline as a thin dotted line, spikes shaded (hatched) from start to
end, and windows that are not speech greyed out (and their scores hidden).

Uses matplotlib's Agg canvas on a private Figure (no pyplot global state), so it
is safe to call from any thread and needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from emotion_engine.config import PARTIES
from emotion_engine.errors import EventError

OKABE_ITO: dict[str, str] = {
    "neutral": "#999999",
    "happy": "#E69F00",
    "sad": "#0072B2",
    "angry": "#D55E00",
    "fearful": "#CC79A7",
    "disgust": "#009E73",
    "surprised": "#56B4E9",
    "calm": "#F0E442",
}
"""Label -> colour (Okabe & Ito 2008). Unknown labels take the remaining colours in turn."""

_SPARE_COLOURS = ("#009E73", "#56B4E9", "#F0E442", "#000000")
LINE_STYLES: dict[str, Any] = {
    "angry": "-",  # the emotion spikes are about by default: the one solid line
    "neutral": ":",
    "happy": "-.",
    "sad": (0, (3, 1, 1, 1, 1, 1)),
    "fearful": (0, (8, 2, 1, 2)),
    "disgust": (0, (1, 1)),
    "surprised": (0, (4, 1, 4, 1, 1, 1)),
    "calm": (0, (2, 3)),
}
"""Label -> line style, so no meaning rests on colour alone; arousal is dashed (6, 3)."""
_SPARE_STYLES: tuple[Any, ...] = ((0, (5, 1, 1, 1)), (0, (1, 4)), (0, (10, 2)))
_NON_SPEECH_GREY = "#dddddd"


def _colour(label: str, i: int) -> str:
    return OKABE_ITO.get(label, _SPARE_COLOURS[i % len(_SPARE_COLOURS)])


def _style(label: str, i: int) -> Any:
    return LINE_STYLES.get(label, _SPARE_STYLES[i % len(_SPARE_STYLES)])


def _labels_of(party_events: Sequence[Mapping[str, Any]]) -> list[str]:
    for e in party_events:
        if e.get("type") == "call.start" and e.get("labels"):
            return [str(x) for x in e["labels"]]
    labels: list[str] = []
    for e in party_events:
        for k in e.get("probabilities", {}) if e.get("type") == "emotion.update" else ():
            if k not in labels:
                labels.append(str(k))
    return labels


def _spans(
    party_events: Sequence[Mapping[str, Any]], t_max: float
) -> list[tuple[str, float, float]]:
    """(emotion, start, end) of each spike; one still open at the end runs to ``t_max``."""
    open_: dict[str, float] = {}
    spans: list[tuple[str, float, float]] = []
    for e in party_events:
        if e.get("type") != "emotion.spike":
            continue
        emotion = str(e.get("emotion"))
        if e.get("phase") == "start":
            open_[emotion] = float(e["t"])
        else:
            start = float(e.get("started_at", open_.get(emotion, e["t"])))
            spans.append((emotion, start, float(e["t"])))
            open_.pop(emotion, None)
    spans += [(emotion, start, t_max) for emotion, start in open_.items()]
    return spans


def _draw_party(ax: Any, party: str, party_events: Sequence[Mapping[str, Any]]) -> float:
    """Draw one party's panel; returns its last event time (s)."""
    updates = sorted(
        (e for e in party_events if e.get("type") == "emotion.update"), key=lambda e: e["t"]
    )
    labels = _labels_of(party_events)
    t = np.array([float(e["t"]) for e in updates])
    speech = np.array([bool(e.get("is_speech", True)) for e in updates], dtype=bool)
    t_max = float(max([*t.tolist(), *(float(e["t"]) for e in party_events)], default=1.0))

    # each score stands for the hop before it, so grey [t - hop, t] for non-speech windows
    hop = float(np.median(np.diff(t))) if len(t) > 1 else 0.5
    for ti in t[~speech]:
        ax.axvspan(ti - hop, ti, color=_NON_SPEECH_GREY, linewidth=0, zorder=0)

    colours = {label: _colour(label, i) for i, label in enumerate(labels)}
    spike_emotions = sorted({k for e in updates for k in e.get("detector", {})})
    for i, label in enumerate(labels):
        p = np.array([float(e.get("probabilities", {}).get(label, np.nan)) for e in updates])
        p[~speech] = np.nan  # scores of non-speech windows mean nothing
        ax.plot(
            t,
            p,
            color=colours[label],
            linestyle=_style(label, i),
            linewidth=2.2 if label in spike_emotions else 1.5,
            label=label,
            zorder=3,
        )
    if updates:
        arousal = np.array([float(e.get("arousal", np.nan)) for e in updates])
        arousal[~speech] = np.nan
        ax.plot(
            t,
            arousal,
            color="black",
            linestyle=(0, (6, 3)),
            linewidth=1.4,
            label="arousal",
            zorder=4,
        )
    for emotion in spike_emotions:
        base = np.array(
            [float(e.get("detector", {}).get(emotion, {}).get("baseline", np.nan)) for e in updates]
        )
        ax.plot(
            t,
            base,
            color=colours.get(emotion, "black"),
            linestyle=(0, (1, 2)),
            linewidth=1.0,
            label=f"{emotion} baseline",
            zorder=2,
        )

    spans = _spans(party_events, t_max)
    for emotion, start, end in spans:
        colour = colours.get(emotion, "black")
        ax.axvspan(
            start,
            end,
            facecolor=colour,
            alpha=0.18,
            hatch="//",
            edgecolor=colour,
            linewidth=0,
            zorder=1,
        )

    handles, names = ax.get_legend_handles_labels()
    for emotion in sorted({s[0] for s in spans}):
        colour = colours.get(emotion, "black")
        handles.append(Patch(facecolor=colour, alpha=0.3, hatch="//", edgecolor=colour))
        names.append(f"{emotion} spike")
    if not speech.all():
        handles.append(Patch(facecolor=_NON_SPEECH_GREY))
        names.append("no speech")
    ax.legend(
        handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("probability / arousal (0..1)")
    ax.set_title(party, loc="left", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return t_max


def plot_timeline(
    *,
    events: Sequence[Mapping[str, Any]],
    out_path: Path,
    title: str = "",
    width_in: float = 12.0,
    panel_height_in: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG timeline of ``events`` (dicts as published) to ``out_path``.

    One panel per party present (customer first), ``width_in`` x ``panel_height_in``
    inches each at ``dpi``, so the image is exactly ``round(width_in * dpi)`` by
    ``round(n_parties * panel_height_in * dpi)`` pixels. Returns ``out_path``.
    Raises EventError when no event names a known party.
    """
    by_party: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        if e.get("party") in PARTIES:
            by_party.setdefault(str(e["party"]), []).append(e)
    parties = [p for p in PARTIES if p in by_party]
    if not parties:
        raise EventError(f"no events of a known party {PARTIES} to plot ({len(events)} events)")

    fig = Figure(figsize=(width_in, panel_height_in * len(parties)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(parties), 1, sharex=True, squeeze=False)[:, 0]
    t_max = max(_draw_party(ax, p, by_party[p]) for ax, p in zip(axes, parties, strict=True))
    axes[-1].set_xlim(0.0, max(t_max, 1e-3))  # shared by every panel
    axes[-1].set_xlabel("time (seconds of call audio)")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(
        left=0.07,
        right=0.84,
        bottom=0.12 / len(parties) + 0.05,
        top=0.88 if title else 0.93,
        hspace=0.3,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=dpi)
    return out_path
