"""Event hub: seq, filters, replay and the slow-subscriber policy, on hand-made events."""

from __future__ import annotations

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
    assert queued[0] == {"v": 1, "type": "events.lost", "count": 9, "from_seq": 1, "to_seq": 9}
    assert [e["seq"] for e in queued[1:]] == [10, 11, 12]
    assert slow.dropped == 9
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
