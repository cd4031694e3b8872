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

Call ids belong to the session that opened them: :meth:`EngineService.submit` takes
an ``owner`` (the ingest session object; by default the ``source``, so all RTP legs of
``serve``'s port share one owner, as do all SIP calls). A leg opened under a call id
that another owner holds is refused: :meth:`submit` returns the call id, the adapter
ends its session with the protocol's own error (:meth:`~EngineService.submit` logs the
refusal once and counts it in ``emotion_engine_call_id_collisions_total``), and
everything that owner sends for that call id afterwards is dropped, so the open call
keeps streaming, its events continue and only its own hang-up ends it. A call id that
breaks the identifier limits (``ingest.base.call_id_problem``) is refused the same
way, and every leg's ``info`` is cut to the metadata limits (``ingest.base.bounded_info``).

Protocol violations are logged at most once per ``VIOLATION_LOG_INTERVAL_S`` for each
source and cause (its ``cause``, else the message with its numbers and quoted values
taken out), with the count of those not logged; every one is counted in ``/metrics``.

Failures stay local: a bad command (unknown leg, unsupported rate, a chunk that is
not int16) is logged and counted; a leg whose processing raises is ended with a
``call.end`` whose reason is ``error``; the service and the other legs go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from emotion_engine.config import PARTIES
from emotion_engine.engine.pipeline import Engine
from emotion_engine.errors import EngineError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    bounded_info,
    call_id_problem,
    clip,
)
from emotion_engine.ingest.guard import RateLimitedLog
from emotion_engine.publish.events import Event
from emotion_engine.publish.hub import EventHub
from emotion_engine.publish.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.1
VIOLATION_LOG_INTERVAL_S = 10.0
_CAUSE_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def violation_cause(message: str) -> str:
    """``message`` without what varies between datagrams (quoted values, numbers,
    addresses), so equal causes share one key for the rate-limited log."""
    return _CAUSE_VARIABLE.sub("#", message[:200])


@dataclass(slots=True)
class _Claim:
    """Who holds a call id, and which of its parties are open."""

    owner: Hashable
    source: str
    parties: set[str]


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
        if engine.verifier is not None:
            self.metrics.counter_fn(
                "emotion_engine_windows_verified_total",
                "Windows stage 2 (the Whisper-tiny verifier) scored.",
                lambda: float(self.engine.windows_verified),
            )
            self.metrics.counter_fn(
                "emotion_engine_verifier_cpu_seconds_total",
                "CPU seconds the engine's worker spent in stage 2.",
                lambda: self.engine.verifier_cpu_s,
            )
        self._warned: set[tuple[str, str]] = set()
        # A flood of bad packets logs one line per cause per interval, with a count.
        self.violations_log = RateLimitedLog(log, interval_s=VIOLATION_LOG_INTERVAL_S)
        # --- call-id ownership and bounded identifiers (issue 15) ---
        self._claims: dict[str, _Claim] = {}
        self._claimed_by: dict[Hashable, set[str]] = {}  # owner -> call ids it holds
        self._refused: set[tuple[Hashable, str]] = set()  # (owner, call id) refused
        self.call_id_collisions: dict[str, int] = {}  # by source
        self.metrics.labelled_counter_fn(
            "emotion_engine_call_id_collisions_total",
            "Legs refused because another session holds their call id, by source.",
            "source",
            lambda: self.call_id_collisions,
        )
        # --- end call-id ownership ---
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

    def submit(
        self, outputs: Iterable[IngestOutput], *, source: str, owner: Hashable = None
    ) -> list[str]:
        """Queue what an ingest core produced. Replies and closes are the adapter's job.

        ``owner``: the session the outputs come from (default: ``source``). Returns the
        call ids refused in these outputs, each once: held by another owner, or not a
        valid call id. The adapter should end that session with its protocol's error;
        whatever ``owner`` sends for a refused call id is dropped here until
        :meth:`release`. Legs, audio and ends of a party not in :attr:`parties` are
        dropped here too."""
        owner = source if owner is None else owner
        refused: list[str] = []
        for out in outputs:
            if isinstance(out, AudioChunk | LegStarted | LegEnded | Dtmf):
                if isinstance(out, LegStarted):
                    checked = self._claim(out, source, owner)
                    if checked is None:
                        if out.call_id not in refused:
                            refused.append(out.call_id)
                        continue
                    out = checked
                elif (owner, out.call_id) in self._refused:
                    if isinstance(out, LegEnded):  # the refused leg is over
                        self._refused.discard((owner, out.call_id))
                    continue  # a refused session's audio, ends and digits go nowhere
                elif not self._holds(owner, out.call_id):
                    continue
                elif isinstance(out, LegEnded):
                    self._unclaim(owner, out.call_id, out.party)
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
                self.violation(source, out.message, out.cause)
            elif isinstance(out, Dtmf):
                log.info(
                    "%s: DTMF %s on %s/%s at %.2f s",
                    source,
                    out.digit,
                    out.call_id,
                    out.party,
                    out.t,
                )
        return refused

    def violation(self, source: str, message: str, cause: str = "") -> None:
        """Count a protocol violation of ``source`` and log it, at most one line per
        source and cause every ``VIOLATION_LOG_INTERVAL_S`` (the next line says how many
        were left out). ``cause``: a fixed name; empty: the message without its quoted
        values and numbers (:func:`violation_cause`), so one malformed header from many
        peers and ports is still one cause."""
        self.metrics.protocol_error(source)
        self.violations_log.log(
            f"{source}/{cause or violation_cause(message)}",
            f"{source}: {message}",
            time.monotonic(),
        )

    def owner_source(self, call_id: str) -> str | None:
        """The source of the session holding ``call_id``, or None when it is free."""
        claim = self._claims.get(call_id)
        return claim.source if claim is not None else None

    def release(self, owner: Hashable) -> None:
        """``owner`` is gone (its connection closed): every call id it holds is free,
        and its refusals are forgotten. Its legs must have been ended already."""
        for call_id in self._claimed_by.pop(owner, set()):
            claim = self._claims.get(call_id)
            if claim is not None and claim.owner == owner:
                del self._claims[call_id]
        self._refused = {r for r in self._refused if r[0] != owner}

    def _claim(self, out: LegStarted, source: str, owner: Hashable) -> LegStarted | None:
        """``out`` within the identifier limits when ``owner`` may open it, else None
        (refused: logged once and counted)."""
        problem = call_id_problem(out.call_id)
        if problem is not None:
            self._refused.add((owner, out.call_id))
            self.violation(source, f"leg refused: {problem}")
            return None
        claim = self._claims.get(out.call_id)
        if claim is not None and claim.owner != owner:
            if (owner, out.call_id) not in self._refused:
                self._refused.add((owner, out.call_id))
                self.call_id_collisions[source] = self.call_id_collisions.get(source, 0) + 1
                log.warning(
                    "%s: call id %s is already open from %s; this session is refused, "
                    "the open call goes on",
                    source,
                    clip(out.call_id),
                    claim.source,
                )
            return None
        if claim is None:
            claim = self._claims[out.call_id] = _Claim(owner, source, set())
            self._claimed_by.setdefault(owner, set()).add(out.call_id)
        claim.parties.add(out.party)
        info, problems = bounded_info(out.info)
        for problem in problems:
            self.violation(source, f"call {clip(out.call_id)} {problem}")
        return dataclasses.replace(out, info=info) if problems else out

    def _holds(self, owner: Hashable, call_id: str) -> bool:
        """Whether outputs of ``owner`` for ``call_id`` may pass."""
        claim = self._claims.get(call_id)
        return claim is None or claim.owner == owner

    def _unclaim(self, owner: Hashable, call_id: str, party: str) -> None:
        claim = self._claims.get(call_id)
        if claim is None or claim.owner != owner:
            return
        claim.parties.discard(party)
        if not claim.parties:
            del self._claims[call_id]
            held = self._claimed_by.get(owner)
            if held is not None:
                held.discard(call_id)
                if not held:
                    del self._claimed_by[owner]

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
