"""Event fan-out with replay, filters and bounded per-subscriber queues; no I/O.

Every event published gets the engine-wide ``seq`` (rising by exactly one), is kept
in a bounded replay buffer, and is appended to the queue of each subscriber whose
filter matches. The websocket adapter drains a subscriber's queue at its own pace.

Slow subscribers (the documented overflow policy): a queue holds at most
``max_queue`` events. When an event arrives at a full queue, the queue is emptied
and replaced by one ``events.lost`` message saying which seqs were dropped
(``from_seq``..``to_seq``, ``count``); the subscriber keeps receiving from there and
can fetch what it missed by reconnecting with ``?since=SEQ`` while the events are
still in the replay buffer. Ingest and other subscribers never wait for it.

A reconnecting client passes ``since`` (the last seq it saw). Events after it that
are still in the replay buffer are queued first; if some are already gone, an
``events.lost`` message with their count comes before them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from emotion_engine.publish.events import SCHEMA_VERSION, Event, EventSequencer

DEFAULT_REPLAY_EVENTS = 10_000
DEFAULT_MAX_QUEUE = 2_000


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
    dropped: int = 0

    def offer(self, event: dict[str, Any]) -> None:
        if not self.filter.matches(event):
            return
        if len(self.queue) >= self.max_queue:
            notices = [e for e in self.queue if e.get("type") == "events.lost"]
            dropped_now = [e["seq"] for e in self.queue if e.get("type") != "events.lost"]
            # an earlier notice still queued is folded into the new one, so the
            # subscriber sees one range from the first seq it never got
            starts = [int(n["from_seq"]) for n in notices] + dropped_now
            count = len(dropped_now) + sum(int(n.get("count", 0)) for n in notices)
            self.queue.clear()
            self.dropped += len(dropped_now)
            self.queue.append(
                lost_message(
                    count=count,
                    from_seq=min(starts) if starts else event["seq"],
                    to_seq=event["seq"] - 1,
                )
            )
        self.queue.append(event)
        if self.wake is not None:
            self.wake()

    def drain(self) -> list[dict[str, Any]]:
        items = list(self.queue)
        self.queue.clear()
        return items


def lost_message(*, count: int, from_seq: int, to_seq: int) -> dict[str, Any]:
    """The ``events.lost`` notice (not part of the seq stream: it carries no seq)."""
    return {
        "v": SCHEMA_VERSION,
        "type": "events.lost",
        "count": count,
        "from_seq": from_seq,
        "to_seq": to_seq,
    }


class EventHub:
    """Stamps events with the engine-wide seq and fans them out."""

    def __init__(
        self,
        *,
        replay_events: int = DEFAULT_REPLAY_EVENTS,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self._sequencer = EventSequencer()
        self._replay: deque[dict[str, Any]] = deque(maxlen=replay_events)
        self._subscribers: set[Subscriber] = set()
        self.max_queue = max_queue
        self.events_published = 0

    @property
    def last_seq(self) -> int:
        return self._replay[-1]["seq"] if self._replay else 0

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
        wake: Callable[[], None] | None = None,
    ) -> Subscriber:
        """Register a subscriber; with ``since``, queue the replayable events after it."""
        sub = Subscriber(filter=event_filter, max_queue=self.max_queue, wake=wake)
        if since is not None and since < self.last_seq:
            oldest = self._replay[0]["seq"] if self._replay else self.last_seq + 1
            if since + 1 < oldest:
                sub.queue.append(
                    lost_message(count=oldest - since - 1, from_seq=since + 1, to_seq=oldest - 1)
                )
            for event in self._replay:
                if event["seq"] > since and event_filter.matches(event):
                    sub.queue.append(event)
        self._subscribers.add(sub)
        if sub.queue and wake is not None:
            wake()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
