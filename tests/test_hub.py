"""Event hub: seq, filters, replay and the slow-subscriber policy, on hand-made events."""

from __future__ import annotations

import pytest

from emotion_engine.errors import EventError
from emotion_engine.publish.events import Event
from emotion_engine.publish.hub import EventFilter, EventHub


def event(i: int, *, call_id: str = "c1", party: str = "customer") -> Event:
    return Event(type="emotion.update", call_id=call_id, party=party, t=0.5 * i, payload={})


def test_slow_subscriber_gets_one_lost_notice_and_never_holds_back_others() -> None:
    hub = EventHub(replay_events=100, max_queue=5)
    fast = hub.subscribe()
    slow = hub.subscribe()
    received: list[int] = []
    for i in range(1, 13):
        hub.publish(event(i))
        received += [e["seq"] for e in fast.drain()]  # the fast one keeps up
    assert received == list(range(1, 13))  # every seq, in order, no gap
    queued = slow.drain()
    # full at seq 6: seqs 1-5 become a notice; full again at seq 10: 6-9 are folded
    # into it, so one notice covers 1-9 and 10-12 follow (worked by hand, max_queue 5)
    assert queued[0] == {
        "v": 1,
        "epoch": hub.epoch,
        "type": "events.lost",
        "count": 9,
        "from_seq": 1,
        "to_seq": 9,
    }
    assert [e["seq"] for e in queued[1:]] == [10, 11, 12]
    assert (slow.dropped, slow.overflows) == (9, 2)
    assert (hub.events_dropped, hub.overflows) == (9, 2)
    hub.unsubscribe(slow)  # the totals outlive the subscriber
    assert (hub.events_dropped, hub.overflows) == (9, 2)
    # what it missed is still in the replay buffer: a reconnect with since= gets it all
    again = hub.subscribe(since=0)
    assert [e["seq"] for e in again.drain()] == list(range(1, 13))


def test_since_past_the_replay_buffer_says_how_many_are_gone() -> None:
    hub = EventHub(replay_events=4, max_queue=100)
    for i in range(1, 11):
        hub.publish(event(i))
    sub = hub.subscribe(since=2)
    queued = sub.drain()
    assert queued[0]["type"] == "events.lost"
    assert (queued[0]["from_seq"], queued[0]["to_seq"], queued[0]["count"]) == (3, 6, 4)
    assert [e["seq"] for e in queued[1:]] == [7, 8, 9, 10]


def test_filters_by_call_party_and_type() -> None:
    hub = EventHub()
    only = hub.subscribe(
        event_filter=EventFilter.from_query({"call_id": ["a,b"], "party": ["agent"]})
    )
    hub.publish(event(1, call_id="a", party="agent"))
    hub.publish(event(2, call_id="a", party="customer"))
    hub.publish(event(3, call_id="c", party="agent"))
    hub.publish(event(4, call_id="b", party="agent"))
    assert [(e["call_id"], e["seq"]) for e in only.drain()] == [("a", 1), ("b", 4)]
    typed = EventFilter.from_query({"type": ["call.end"]})
    assert not typed.matches({"type": "emotion.update"})


def test_every_event_carries_the_hub_epoch_and_a_new_hub_has_a_new_one() -> None:
    hub = EventHub()
    stamped = [hub.publish(event(i)) for i in range(1, 4)]
    assert {e["epoch"] for e in stamped} == {hub.epoch}
    assert [e["seq"] for e in stamped] == [1, 2, 3]
    assert EventHub().epoch != hub.epoch
    assert EventHub(epoch="fixed").publish(event(1))["epoch"] == "fixed"


def test_since_outside_the_stream_resyncs_and_negative_since_is_an_error() -> None:
    hub = EventHub(replay_events=3, epoch="now")
    for i in range(1, 6):
        hub.publish(event(i))
    with pytest.raises(EventError, match="since must be a seq >= 0"):
        hub.subscribe(since=-5)
    for since, epoch, reason in ((9, None, "since_ahead"), (4, "before", "epoch_changed")):
        queued = hub.subscribe(since=since, epoch=epoch).drain()
        assert queued[0]["type"] == "events.resync", queued[0]
        assert (queued[0]["reason"], queued[0]["since"], queued[0]["head"]) == (reason, since, 5)
        assert queued[0]["epoch"] == "now"
        # then as since=0: 1..2 are gone from the 3-event buffer, 3..5 follow
        assert (queued[1]["type"], queued[1]["from_seq"], queued[1]["to_seq"]) == (
            "events.lost",
            1,
            2,
        )
        assert [e["seq"] for e in queued[2:]] == [3, 4, 5]
    # the same epoch and a seq it holds: no notice at all
    assert [e["seq"] for e in hub.subscribe(since=4, epoch="now").drain()] == [5]
    assert hub.subscribe(since=5, epoch="now").drain() == []


def test_resync_notice_survives_an_overflow() -> None:
    hub = EventHub(max_queue=3, epoch="e")
    hub.publish(event(1))
    sub = hub.subscribe(since=7)  # ahead: resync, then seq 1
    for i in range(2, 8):
        hub.publish(event(i))
    queued = sub.drain()
    assert [e["type"] for e in queued[:2]] == ["events.resync", "events.lost"]
    lost = queued[1]
    assert [e["seq"] for e in queued[2:]] == list(range(lost["to_seq"] + 1, 8))
    assert lost["from_seq"] == 1 and lost["count"] == lost["to_seq"]


def test_handoff_slice_is_half_a_queue() -> None:
    assert EventHub(max_queue=50).handoff_events == 25
    assert EventHub(max_queue=1).handoff_events == 1
    assert EventHub(max_queue=100_000).handoff_events == 256
    with pytest.raises(EventError, match=">= 1 event"):
        EventHub(max_queue=0)
