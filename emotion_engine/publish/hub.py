"""Event fan-out with replay, filters and bounded per-subscriber queues; no I/O.

Every event published gets the engine-wide ``seq`` (rising by exactly one) and the
hub's ``epoch`` (a new one at every server start), is kept in a bounded replay buffer,
and is appended to the queue of each subscriber whose filter matches. The websocket
adapter drains a subscriber's queue at its own pace.

Slow subscribers (the documented overflow policy): a queue holds at most
``max_queue`` events. When an event arrives at a full queue, the queue is emptied
and replaced by one ``events.lost`` message saying which seqs were dropped
(``from_seq``..``to_seq``, ``count``); the subscriber keeps receiving from there and
can fetch what it missed by reconnecting with ``?since=SEQ`` while the events are
still in the replay buffer. Ingest and other subscribers never wait for it. Drops
are counted per subscriber and in :attr:`EventHub.events_dropped`.

Fast subscribers: whoever publishes a large batch (one engine step after a stall can
hold thousands of events) hands it over in slices of at most :attr:`EventHub.handoff_events`
and lets the subscribers' senders run in between (``EngineService`` yields to the
event loop), so a queue that its sender empties as fast as it fills never overflows.

A reconnecting client passes ``since`` (the last seq it saw) and, to be safe across
restarts, ``epoch`` (the epoch of that seq). Events after it that are still in the
replay buffer are queued first; if some are already gone, an ``events.lost`` message
with their count comes before them. When ``since`` cannot belong to this stream (the
epoch differs, or ``since`` is beyond the newest seq: the server restarted) an
``events.resync`` notice says so first and the replay starts from the oldest event
held, as for ``since=0``. A negative ``since`` is an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from emotion_engine.errors import EventError
from emotion_engine.publish.events import (
    EVENTS_LOST,
    EVENTS_RESYNC,
    SCHEMA_VERSION,
    Event,
    EventSequencer,
)

DEFAULT_REPLAY_EVENTS = 10_000
DEFAULT_MAX_QUEUE = 2_000
HANDOFF_MAX_EVENTS = 256
"""Largest slice of a batch handed to subscribers before their senders get a turn."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants; an empty set means "all"."""

    call_ids: frozenset[str] = frozenset()
    parties: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: Mapping[str, Collection[str]]) -> EventFilter:
        """From URL query values (``call_id``, ``party``, ``type``; repeated or comma-separated)."""

        def values(name: str) -> frozenset[str]:
            out: set[str] = set()
            for raw in query.get(name, ()):
                out.update(v.strip() for v in raw.split(",") if v.strip())
            return frozenset(out)

        return cls(call_ids=values("call_id"), parties=values("party"), types=values("type"))

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        if self.call_ids and event.get("call_id") not in self.call_ids:
            return False
        return not (self.parties and event.get("party") not in self.parties)


@dataclass(slots=True, eq=False)  # identity semantics: subscribers live in a set
class Subscriber:
    """One subscriber's filter and pending events. ``wake`` is called after events are
    queued (the adapter sets an asyncio.Event there)."""

    filter: EventFilter
    max_queue: int = DEFAULT_MAX_QUEUE
    wake: Callable[[], None] | None = None
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    dropped: int = 0  # events dropped from this queue (announced by events.lost)
    overflows: int = 0  # times the queue was full when an event arrived

    def offer(self, event: dict[str, Any]) -> None:
        if not self.filter.matches(event):
            return
        if len(self.queue) >= self.max_queue:
            self.overflows += 1
            notices = [e for e in self.queue if e.get("type") == EVENTS_LOST]
            dropped_now = [e["seq"] for e in self.queue if "seq" in e]
            # an earlier notice still queued is folded into the new one, so the
            # subscriber sees one range from the first seq it never got
            starts = [int(n["from_seq"]) for n in notices] + dropped_now
            count = len(dropped_now) + sum(int(n.get("count", 0)) for n in notices)
            resyncs = [e for e in self.queue if e.get("type") == EVENTS_RESYNC]
            self.queue.clear()
            self.queue.extend(resyncs)  # what the seqs that follow mean
            self.dropped += len(dropped_now)
            self.queue.append(
                lost_message(
                    count=count,
                    from_seq=min(starts) if starts else event["seq"],
                    to_seq=event["seq"] - 1,
                    epoch=event["epoch"],
                )
            )
        self.queue.append(event)
        if self.wake is not None:
            self.wake()

    def drain(self) -> list[dict[str, Any]]:
        items = list(self.queue)
        self.queue.clear()
        return items


def lost_message(*, count: int, from_seq: int, to_seq: int, epoch: str) -> dict[str, Any]:
    """The ``events.lost`` notice (not part of the seq stream: it carries no seq):
    ``count`` events ``from_seq``..``to_seq`` of ``epoch`` will not come."""
    return {
        "v": SCHEMA_VERSION,
        "epoch": epoch,
        "type": EVENTS_LOST,
        "count": count,
        "from_seq": from_seq,
        "to_seq": to_seq,
    }


def resync_message(*, epoch: str, reason: str, since: int, head: int) -> dict[str, Any]:
    """The ``events.resync`` notice: ``since`` (and the epoch the client named) does
    not belong to this stream; what follows is a replay from its oldest held event."""
    if reason == "epoch_changed":
        why = "the epoch the client named is not this stream's (the server restarted)"
    else:
        why = f"since={since} is ahead of the newest seq {head} (epoch changed?)"
    return {
        "v": SCHEMA_VERSION,
        "epoch": epoch,
        "type": EVENTS_RESYNC,
        "reason": reason,
        "since": since,
        "head": head,
        "message": f"{why}: seqs of epoch {epoch} restarted at 1; "
        "replaying from the oldest event held",
    }


class EventHub:
    """Stamps events with the engine-wide seq and fans them out."""

    def __init__(
        self,
        *,
        replay_events: int = DEFAULT_REPLAY_EVENTS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        epoch: str | None = None,
    ) -> None:
        if max_queue < 1:
            raise EventError(f"a subscriber queue must hold >= 1 event, got {max_queue}")
        self._sequencer = EventSequencer(epoch=epoch)
        self._replay: deque[dict[str, Any]] = deque(maxlen=replay_events)
        self._subscribers: set[Subscriber] = set()
        self.max_queue = max_queue
        self.events_published = 0
        self._retired_dropped = 0  # events_dropped of subscribers gone
        self._retired_overflows = 0

    @property
    def epoch(self) -> str:
        """This stream's id (new at every start): seqs of two epochs are unrelated."""
        return self._sequencer.epoch

    @property
    def last_seq(self) -> int:
        return self._sequencer.last_seq

    @property
    def handoff_events(self) -> int:
        """How many events to publish before letting the subscribers' senders run:
        half a queue, so a queue its sender empties at every turn cannot overflow."""
        return max(1, min(HANDOFF_MAX_EVENTS, self.max_queue // 2))

    @property
    def events_dropped(self) -> int:
        """Events dropped from subscriber queues since the start (all subscribers)."""
        return self._retired_dropped + sum(s.dropped for s in self._subscribers)

    @property
    def overflows(self) -> int:
        """Times a subscriber queue overflowed since the start (all subscribers)."""
        return self._retired_overflows + sum(s.overflows for s in self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: Event) -> dict[str, Any]:
        stamped = self._sequencer.stamp(event)
        self._replay.append(stamped)
        self.events_published += 1
        for sub in self._subscribers:
            sub.offer(stamped)
        return stamped

    def subscribe(
        self,
        *,
        event_filter: EventFilter = EventFilter(),
        since: int | None = None,
        epoch: str | None = None,
        wake: Callable[[], None] | None = None,
    ) -> Subscriber:
        """Register a subscriber; with ``since``, queue the replayable events after it
        (``epoch``: the epoch of that seq, when the client knows it). Raises EventError
        for a negative ``since``."""
        if since is not None and since < 0:
            raise EventError(f"since must be a seq >= 0 (0: everything held), got {since}")
        sub = Subscriber(filter=event_filter, max_queue=self.max_queue, wake=wake)
        if since is not None:
            head = self.last_seq
            reason = None
            if epoch is not None and epoch != self.epoch:
                reason = "epoch_changed"
            elif since > head:
                reason = "since_ahead"
            if reason is not None:
                sub.queue.append(
                    resync_message(epoch=self.epoch, reason=reason, since=since, head=head)
                )
                since = 0
        if since is not None and since < self.last_seq:
            oldest = self._replay[0]["seq"] if self._replay else self.last_seq + 1
            if since + 1 < oldest:
                sub.queue.append(
                    lost_message(
                        count=oldest - since - 1,
                        from_seq=since + 1,
                        to_seq=oldest - 1,
                        epoch=self.epoch,
                    )
                )
            for event in self._replay:
                if event["seq"] > since and event_filter.matches(event):
                    sub.queue.append(event)
        self._subscribers.add(sub)
        if sub.queue and wake is not None:
            wake()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            self._retired_dropped += sub.dropped
            self._retired_overflows += sub.overflows
