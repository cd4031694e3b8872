"""Recordings through the live engine: the ``analyze`` and ``demo`` commands' core.

A file is streamed through :class:`~emotion_engine.engine.pipeline.Engine` in blocks
exactly as live audio would be (so results on files are the results a live call
gets), one leg per channel. Nothing here prints; callers pass ``emit`` for events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotion_engine.audio.io import open_audio
from emotion_engine.engine.pipeline import MIN_TAIL_WINDOW_FRAMES, Engine
from emotion_engine.errors import AudioFileError, EngineError
from emotion_engine.publish.events import Event, EventSequencer

log = logging.getLogger(__name__)

MIN_ANALYSABLE_S = MIN_TAIL_WINDOW_FRAMES / 100
"""Shortest file that yields one emotion window (0.5 s)."""


@dataclass(slots=True)
class FileReport:
    """What happened to one file: its summaries per party, or why it failed."""

    path: Path
    call_id: str
    ok: bool = False
    error: str | None = None
    duration_s: float = 0.0
    sample_rate: int = 0
    parties: tuple[str, ...] = ()
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_events: int = 0
    notes: list[str] = field(default_factory=list)


def analyze_file(
    *,
    path: Path,
    engine: Engine,
    channels: Sequence[str] = ("customer", "agent"),
    emit: Callable[[dict[str, Any]], None],
    sequencer: EventSequencer | None = None,
    block_s: float = 1.0,
    on_progress: Callable[[float], None] | None = None,
    realtime_speed: float | None = None,
    call_id: str | None = None,
) -> FileReport:
    """Stream one file through ``engine``; every event goes to ``emit`` as a dict.

    Channel ``i`` is party ``channels[i]`` (mono: ``channels[0]``). ``on_progress``
    gets seconds of audio done since the last call. ``realtime_speed`` paces the
    stream (1.0 = real time) so a demo looks live. Never raises for a bad file:
    the report says what went wrong.
    """
    sequencer = sequencer or EventSequencer()
    report = FileReport(path=path, call_id=call_id or path.stem)
    try:
        source = open_audio(path)
    except AudioFileError as exc:
        report.error = str(exc)
        return report
    report.duration_s = source.duration_s
    report.sample_rate = source.sample_rate
    if source.n_channels > len(channels):
        report.error = (
            f"{path}: {source.n_channels} channels but only {len(channels)} party names "
            f"({','.join(channels)}); pass --channels with one name per channel"
        )
        return report
    if source.duration_s < MIN_ANALYSABLE_S:
        report.error = (
            f"{path}: too short to analyse ({source.duration_s:.3f} s); "
            f"one emotion window needs at least {MIN_ANALYSABLE_S:.1f} s"
        )
        return report
    parties = tuple(channels[: source.n_channels])
    report.parties = parties

    def send(events: list[Event]) -> None:
        for event in events:
            d = sequencer.stamp(event)
            report.n_events += 1
            if d["type"] == "call.end":
                report.summaries[d["party"]] = d.get("summary", {})
            emit(d)

    opened: list[str] = []
    reason = "hangup"
    try:
        for party in parties:
            send(
                engine.open_leg(
                    call_id=report.call_id,
                    party=party,
                    sample_rate=source.sample_rate,
                    info={"source": "file", "path": str(path), "channel": parties.index(party)},
                )
            )
            opened.append(party)
        block_samples = max(1, int(block_s * source.sample_rate))
        wall_start = time.monotonic()
        done_s = 0.0
        for block in source.blocks(block_samples=block_samples):
            for ch, party in enumerate(parties):
                engine.push_float(call_id=report.call_id, party=party, samples=block[ch])
            send(engine.process())
            block_dur = block.shape[1] / source.sample_rate
            done_s += block_dur
            if on_progress is not None:
                on_progress(block_dur)
            if realtime_speed:
                ahead = done_s / realtime_speed - (time.monotonic() - wall_start)
                if ahead > 0:
                    time.sleep(ahead)
    except (EngineError, OSError) as exc:
        log.error("%s: %s", path, exc)
        report.error = f"{path}: {exc}"
        reason = "error"
    finally:
        for party in opened:
            send(engine.close_leg(call_id=report.call_id, party=party, reason=reason))
    # counted while the blocks were read, so only known now
    if source.non_finite_samples:
        note = f"{source.non_finite_samples} NaN/inf samples replaced with 0"
        log.warning("%s: %s", path, note)
        report.notes.append(note)
    report.ok = report.error is None
    return report
