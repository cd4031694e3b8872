"""The engine under asyncio: ingest outputs in, published events out.

Ingest adapters call :meth:`EngineService.submit` on the event loop with what their
sans-I/O cores produced. Nothing heavy happens there: commands (open a leg, audio,
close a leg) are queued, and every ``tick_s`` the whole queue is handed to ONE worker
thread, which owns the :class:`Engine` (so it needs no locks), applies the commands
in order and runs one batched features -> model -> detector step for every leg with
new audio. Network I/O therefore never waits for inference. While a step runs,
new commands simply accumulate for the next one.

Privacy: only the parties in :attr:`EngineService.parties` are analysed; audio of any
other party is dropped in :meth:`EngineService.submit`, before it is queued, so it is
never featurised, scored or published. ``EngineServer`` sets this from
``ServeParams.analyze_agent`` (off by default: customer only).

Failures stay local: a bad command (unknown leg, unsupported rate, a chunk that is
not int16) is logged and counted; a leg whose processing raises is ended with a
``call.end`` whose reason is ``error``; the service and the other legs go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from emotion_engine.config import PARTIES
from emotion_engine.engine.pipeline import Engine
from emotion_engine.errors import EngineError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import Dtmf, IngestOutput, LegEnded, LegStarted, ProtocolViolation
from emotion_engine.ingest.guard import RateLimitedLog
from emotion_engine.publish.events import Event
from emotion_engine.publish.hub import EventHub
from emotion_engine.publish.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.1
VIOLATION_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class _Open:
    started: LegStarted
    source: str


@dataclass(frozen=True, slots=True)
class _Close:
    ended: LegEnded


_Command = _Open | _Close | AudioChunk


class EngineService:
    """Owns the engine worker thread, the event hub and the metrics."""

    def __init__(
        self,
        *,
        engine: Engine,
        hub: EventHub | None = None,
        metrics: Metrics | None = None,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        self.engine = engine
        self.hub = hub or EventHub()
        self.metrics = metrics or Metrics()
        self.tick_s = tick_s
        self._commands: list[_Command] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._sources: list[tuple[Callable[[], list[IngestOutput]], str]] = []
        # --- party filter and event processors (issue 6) ---
        self.parties: frozenset[str] = frozenset(PARTIES)
        self.chunks_not_analysed = 0
        self._processors: list[Callable[[dict[str, Any]], list[Event]]] = []
        self.metrics.counter_fn(
            "emotion_engine_chunks_not_analysed_total",
            "Audio chunks dropped unanalysed because their party is not analysed "
            "(the agent, unless analyze_agent is on).",
            lambda: float(self.chunks_not_analysed),
        )
        # --- end party filter and event processors ---
        self._warned: set[tuple[str, str]] = set()
        # A flood of bad packets logs one line per cause per interval, with a count.
        self.violations_log = RateLimitedLog(log, interval_s=VIOLATION_LOG_INTERVAL_S)
        self.active_legs = 0
        self.metrics.gauge(
            "emotion_engine_legs_active",
            "Call legs currently open.",
            lambda: float(self.active_legs),
        )
        self.metrics.gauge(
            "emotion_engine_subscribers",
            "Connected event subscribers.",
            lambda: float(self.hub.subscriber_count),
        )
        self.metrics.counter_fn(
            "emotion_engine_events_dropped_total",
            "Events dropped from subscriber queues that were full (announced to the "
            "subscriber by events.lost).",
            lambda: float(self.hub.events_dropped),
        )
        self.metrics.counter_fn(
            "emotion_engine_subscriber_overflows_total",
            "Times an event found a subscriber's queue full (each one empties the queue "
            "into one events.lost notice).",
            lambda: float(self.hub.overflows),
        )

    # -- called on the event loop by ingest adapters ---------------------------------

    def submit(self, outputs: Iterable[IngestOutput], *, source: str) -> None:
        """Queue what an ingest core produced. Replies and closes are the adapter's job.
        Legs, audio and ends of a party not in :attr:`parties` are dropped here."""
        for out in outputs:
            if (
                isinstance(out, AudioChunk | LegStarted | LegEnded)
                and out.party not in self.parties
            ):
                if isinstance(out, AudioChunk):
                    self.chunks_not_analysed += 1
                elif isinstance(out, LegStarted):
                    log.info(
                        "%s: %s leg of call %s not analysed (party analysis is off)",
                        source,
                        out.party,
                        out.call_id,
                    )
                continue
            if isinstance(out, AudioChunk):
                self._commands.append(out)
                self.metrics.chunks_total += 1
                self.metrics.audio_seconds_total += out.pcm.size / out.sample_rate
            elif isinstance(out, LegStarted):
                self._commands.append(_Open(out, source))
            elif isinstance(out, LegEnded):
                self._commands.append(_Close(out))
            elif isinstance(out, ProtocolViolation):
                self.metrics.protocol_error(source)
                self.violations_log.log(
                    f"{source}/{out.cause or out.message}",
                    f"{source}: {out.message}",
                    time.monotonic(),
                )
            elif isinstance(out, Dtmf):
                log.info(
                    "%s: DTMF %s on %s/%s at %.2f s",
                    source,
                    out.digit,
                    out.call_id,
                    out.party,
                    out.t,
                )

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener`` with every published event (console cues, tests)."""
        self._listeners.append(listener)

    def add_source(self, take: Callable[[], list[IngestOutput]], *, source: str) -> None:
        """Call ``take()`` on the event loop at every tick, just before the queued
        commands go to the engine, and submit what it returns: for an ingest that holds
        its audio and hands it over once per tick (``RtpIngest(coalesce_audio=True)``)."""
        self._sources.append((take, source))

    def add_processor(self, processor: Callable[[dict[str, Any]], list[Event]]) -> None:
        """Feed every published event to ``processor`` (on the event loop, so it must be
        cheap); the events it returns are published right after the one that caused
        them, and fed to the processors in turn (e.g. routing rules -> ``route.hint``)."""
        self._processors.append(processor)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-ticks")

    async def stop(self) -> None:
        """Process everything queued, end every open leg (``call.end`` reason
        ``shutdown``) and publish those events."""
        self._stopping = True
        if self._task is not None:
            await self._task
        self._take_sources()
        commands, self._commands = self._commands, []
        events = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._step, commands, True
        )
        await self._publish(events)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not self._stopping:
            next_tick += self.tick_s
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # a step overran the tick: skip ahead instead of bursting
                next_tick = loop.time()
            self._take_sources()
            if not self._commands:
                continue
            commands, self._commands = self._commands, []
            events = await loop.run_in_executor(self._executor, self._step, commands, False)
            await self._publish(events)

    def _take_sources(self) -> None:
        for take, source in self._sources:
            try:
                outputs = take()
            except Exception:  # a bug in one ingest must not stop the ticks
                log.exception("%s: taking held audio failed", source)
                continue
            self.submit(outputs, source=source)

    async def _publish(self, events: list[Event]) -> None:
        """Publish one step's events in order. Every ``hub.handoff_events`` events the
        loop runs once, so subscribers' senders take what they were handed before the
        next slice comes: a step holding thousands of events (after a stall) does not
        overflow the queue of a subscriber that keeps up."""
        pending = deque(events)
        budget = self.hub.handoff_events
        handed = 0
        while pending:
            if handed >= budget:
                handed = 0
                await asyncio.sleep(0)
            handed += 1
            stamped = self.hub.publish(pending.popleft())
            self.metrics.events_published_total += 1
            for listener in self._listeners:
                try:
                    listener(stamped)
                except Exception:
                    log.exception("event listener failed")
            derived: list[Event] = []
            for processor in self._processors:
                try:
                    derived += processor(stamped)
                except Exception:
                    log.exception("event processor failed")
            pending.extendleft(reversed(derived))  # right after their cause, in order

    # -- the worker thread ----------------------------------------------------------

    def _step(self, commands: list[_Command], final: bool) -> list[Event]:
        started = time.perf_counter()
        engine = self.engine
        events: list[Event] = []
        for cmd in commands:
            try:
                if isinstance(cmd, AudioChunk):
                    engine.push(cmd)
                elif isinstance(cmd, _Open):
                    s = cmd.started
                    events += engine.open_leg(
                        call_id=s.call_id,
                        party=s.party,
                        sample_rate=s.sample_rate,
                        t0=s.t,
                        info={"source": cmd.source, **s.info},
                    )
                    self.metrics.legs_started_total += 1
                else:
                    e = cmd.ended
                    closing = engine.close_leg(call_id=e.call_id, party=e.party, reason=e.reason)
                    events += closing
            except EngineError as exc:
                self._warn_once(cmd, exc)
        try:
            events += engine.process()
        except Exception:
            log.exception("engine step failed; open legs are closed")
            events += engine.close_all(reason="error")
        if final:
            events += engine.close_all(reason="shutdown")
        failed = sum(
            1 for e in events if e.type == "call.end" and e.payload.get("reason") == "error"
        )
        self.metrics.legs_failed_total += failed
        self.active_legs = len(engine.legs)
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        return events

    def _warn_once(self, cmd: _Command, exc: EngineError) -> None:
        """One log line per leg and problem, not one per 20 ms packet."""
        if isinstance(cmd, AudioChunk):
            key = (f"{cmd.call_id}/{cmd.party}", type(exc).__name__)
        elif isinstance(cmd, _Open):
            key = (f"{cmd.started.call_id}/{cmd.started.party}", "open")
        else:
            key = (f"{cmd.ended.call_id}/{cmd.ended.party}", "close")
        if key not in self._warned:
            self._warned.add(key)
            log.warning("rejected: %s", exc)
