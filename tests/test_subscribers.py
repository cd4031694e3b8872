"""Event subscribers against a real ``serve`` on loopback, with real websocket clients.

- A slow subscriber (one that reads, but slower than events come) gets ``events.lost``
  with the exact range it missed and stays connected, however late it answers pings;
  one that reads nothing at all is disconnected after ``subscriber_stall_s``, and every
  disconnection is counted in ``/metrics`` by reason and logged.
- A large engine step (here: a 3 s tick, what a 3 s stall leaves behind) is handed to
  subscribers in slices, so fast ones with ``subscriber_queue=50`` lose nothing; the
  loss of a subscriber that does not keep up is what ``/metrics`` says.
- Every event and ``/healthz`` carry the server's epoch; ``?since=`` outside the stream
  says so (400 for a negative or non-integer one, ``events.resync`` for one beyond the
  head or of another epoch) and never invents an ``events.lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from test_serve import run, running
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emotion_engine.clients import stream_l16
from emotion_engine.config import ServeParams
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import Event
from emotion_engine.publish.hub import EventHub

pytestmark = pytest.mark.slow

PARAMS = ServeParams(host="127.0.0.1", port=0, rtp_port=-1, audiosocket_port=-1, tick_s=0.05)
PAD = "x" * 16_000  # 16 kB events fill socket buffers with few of them


def padded(i: int, call_id: str = "slow") -> Event:
    return Event("call.start", call_id, "customer", float(i), {"labels": ["x"], "info": {"p": PAD}})


async def until(condition: Any, what: str) -> None:
    """Poll ``condition()`` (the whole test runs under a timeout)."""
    while not condition():  # noqa: ASYNC110 (state of the server, no event to wait on)
        await asyncio.sleep(0.01)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def account(received: list[dict[str, Any]], last_seq: int) -> tuple[list[int], list[int]]:
    """(seqs received, seqs announced lost), each in arrival order."""
    got: list[int] = []
    lost: list[int] = []
    for e in received:
        if e["type"] == "events.lost":
            assert e["count"] == e["to_seq"] - e["from_seq"] + 1, e
            lost += range(e["from_seq"], e["to_seq"] + 1)
        else:
            got.append(e["seq"])
    return got, lost


# -- slow and stalled subscribers ----------------------------------------------------------


def test_slow_subscriber_gets_events_lost_and_stays_connected(model: EmotionModel) -> None:
    """Pings every 0.2 s with a 0.2 s timeout: a reader that answers a ping only after
    the events written before it used to be cut off (websockets' keepalive, close 1011
    "keepalive ping timeout"); now it stays and is told exactly what it missed."""
    params = replace(PARAMS, ws_ping_interval_s=0.2, ws_ping_timeout_s=0.2)
    hub = EventHub(replay_events=50_000, max_queue=20)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], str, str]:
        async with running(model, params, hub=hub) as server:
            url = server.addresses.urls()["events"]  # type: ignore[union-attr]
            async with connect(url, compression=None, max_queue=4, max_size=None) as ws:
                await until(lambda: hub.subscriber_count == 1, "subscribed")
                # the client reads nothing while far more than its queue is published
                i = 0
                while hub.overflows < 3:
                    i += 1
                    hub.publish(padded(i))
                    await asyncio.sleep(0)
                hub.publish(padded(0, call_id="marker"))
                # then it reads, slowly: a ping waits behind what was written before it
                received: list[dict[str, Any]] = []
                while not received or received[-1].get("call_id") != "marker":
                    received.append(json.loads(await ws.recv()))
                    await asyncio.sleep(0.005)
                # still connected: a later event arrives on the same connection
                hub.publish(padded(0, call_id="after"))
                after = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await until(lambda: hub.subscriber_count == 0, "unsubscribed")
            metrics = server.service.metrics.render()
            return received, after, metrics, hub.epoch

    received, after, metrics, epoch = run(scenario())
    got, lost = account(received, after["seq"] - 1)
    print(f"slow subscriber: {len(got)} events received, {len(lost)} announced lost")
    notices = [e for e in received if e["type"] == "events.lost"]
    assert notices, "no events.lost"
    assert all(n["epoch"] == epoch for n in notices)
    # every seq exactly once: received or announced lost, in order
    assert sorted(got + lost) == list(range(1, received[-1]["seq"] + 1))
    assert got == sorted(got)
    assert after["call_id"] == "after" and after["seq"] == received[-1]["seq"] + 1
    # the loss is what /metrics says, and the subscriber left only when the client closed
    assert metric(metrics, "emotion_engine_events_dropped_total") == len(lost)
    assert metric(metrics, "emotion_engine_subscriber_overflows_total") >= 3
    assert 'emotion_engine_subscriber_disconnects_total{reason="client_closed"} 1' in metrics
    assert "stalled" not in metrics


def test_stalled_subscriber_is_disconnected_counted_and_logged(
    model: EmotionModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that reads nothing at all is closed after ``subscriber_stall_s`` (here
    0.5 s), with the reason in /metrics and the log; a reading one beside it is not."""
    params = replace(PARAMS, ws_ping_interval_s=0.1, subscriber_stall_s=0.5)
    hub = EventHub(replay_events=1_000, max_queue=20)

    async def scenario() -> tuple[str, int, bool]:
        async with running(model, params, hub=hub) as server:
            url = server.addresses.urls()["events"]  # type: ignore[union-attr]
            async with (
                connect(url, compression=None, max_queue=4, max_size=None) as stalled,
                connect(url, compression=None) as reading,
            ):
                await until(lambda: hub.subscriber_count == 2, "subscribed")
                metrics = server.service.metrics
                n = 0
                reader_got = 0
                while not metrics.subscriber_disconnects_total.get("stalled"):
                    n += 1
                    hub.publish(padded(n))
                    reader_got += 1
                    json.loads(await reading.recv())  # keeps up, answers pings
                    await asyncio.sleep(0.01)
                try:
                    while True:  # what was in flight, then the close
                        await stalled.recv()
                except ConnectionClosed:
                    pass
                alive = reading.state.name == "OPEN"
            await until(lambda: hub.subscriber_count == 0, "unsubscribed")
            return metrics.render(), reader_got, alive

    with caplog.at_level(logging.INFO, logger="emotion_engine.server"):
        metrics, reader_got, alive = run(scenario())
    assert 'emotion_engine_subscriber_disconnects_total{reason="stalled"} 1' in metrics
    assert alive and reader_got >= 1
    assert any(
        "disconnected: stalled (took no event and answered no ping for 0.5 s)" in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]
    # the reading client closed normally at the end: counted, with its reason
    assert 'emotion_engine_subscriber_disconnects_total{reason="client_closed"} 1' in metrics


def test_idle_subscriber_without_pings_is_not_taken_for_stalled(model: EmotionModel) -> None:
    """With pings off, a subscriber that has had nothing to read for several
    ``subscriber_stall_s`` is idle, not stalled: the next event reaches it."""
    params = replace(PARAMS, ws_ping_interval_s=0, subscriber_stall_s=0.2)
    hub = EventHub()

    async def scenario() -> tuple[dict[str, Any], dict[str, int]]:
        async with running(model, params, hub=hub) as server:
            url = server.addresses.urls()["events"]  # type: ignore[union-attr]
            async with connect(url) as ws:
                await until(lambda: hub.subscriber_count == 1, "subscribed")
                await asyncio.sleep(1.0)  # five stall periods with nothing to send
                hub.publish(padded(1))
                got = json.loads(await asyncio.wait_for(ws.recv(), 30))
            return got, dict(server.service.metrics.subscriber_disconnects_total)

    got, disconnects = run(scenario())
    assert got["seq"] == 1
    assert "stalled" not in disconnects


# -- one large step --------------------------------------------------------------------------


def test_large_step_does_not_overflow_fast_subscribers(
    model: EmotionModel, call_pcm: np.ndarray
) -> None:
    """Eight calls streamed as fast as possible into an engine that steps every 3 s
    (what a 3 s stall leaves behind): the first step holds more events than
    ``subscriber_queue`` (50). Two subscribers that read as fast as they can get every
    seq, and /metrics counts no loss; handing the whole step over at once overflowed
    both queues at the same seq."""
    params = replace(PARAMS, tick_s=3.0, routing_rules="off")
    hub = EventHub(replay_events=10_000, max_queue=50)
    n_calls = 8
    pcm = call_pcm[: 8000 * 6]

    ends: list[dict[str, Any]] = []

    async def fast(ws: ClientConnection, out: list[dict[str, Any]]) -> None:
        """Read until the last event of the run (the last call.end published)."""
        while not (len(ends) == n_calls and out and out[-1].get("seq") == ends[-1]["seq"]):
            out.append(json.loads(await ws.recv()))

    async def scenario() -> tuple[list[list[dict[str, Any]]], str, dict[int, int]]:
        steps: dict[int, int] = {}
        async with running(model, params, hub=hub) as server:
            service = server.service

            def per_step(e: dict[str, Any]) -> None:
                step = service.metrics.processing_seconds.count
                steps[step] = steps.get(step, 0) + 1
                if e["type"] == "call.end":
                    ends.append(e)

            service.add_listener(per_step)
            urls = server.addresses.urls()  # type: ignore[union-attr]
            async with (
                connect(urls["events"], max_size=None) as a,
                connect(urls["events"], max_size=None) as b,
            ):
                await until(lambda: hub.subscriber_count == 2, "subscribed")
                outs: list[list[dict[str, Any]]] = [[], []]
                readers = [
                    asyncio.create_task(fast(ws, out)) for ws, out in zip((a, b), outs, strict=True)
                ]
                await asyncio.gather(
                    *(
                        stream_l16(
                            urls["l16"], pcm=pcm, sample_rate=8000, call_id=f"c{k}", speed=None
                        )
                        for k in range(n_calls)
                    )
                )
                await asyncio.gather(*readers)
            return outs, service.metrics.render(), steps

    outs, metrics, steps = run(scenario())
    print(f"events per engine step: {sorted(steps.values(), reverse=True)}")
    assert max(steps.values()) > 50, steps  # one step handed over more than a queue
    for out in outs:
        assert not [e for e in out if e["type"] == "events.lost"]
    last = max(e["seq"] for e in outs[0])
    for out in outs:
        assert [e["seq"] for e in out] == list(range(1, last + 1))
    assert metric(metrics, "emotion_engine_events_dropped_total") == 0
    assert metric(metrics, "emotion_engine_subscriber_overflows_total") == 0


# -- epoch and since -------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_epoch_in_every_event_and_healthz_and_since_outside_the_stream(
    model: EmotionModel,
) -> None:
    hub = EventHub(replay_events=4)

    async def scenario() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        async with running(model, PARAMS, hub=hub) as server:
            addr = server.addresses
            assert addr is not None
            url = addr.urls()["events"]
            for i in range(1, 7):
                hub.publish(padded(i))
            _, body = await asyncio.to_thread(http_get, addr.urls()["health"])
            facts["health"] = json.loads(body)
            for bad in ("-5", "abc"):
                try:
                    async with connect(f"{url}?since={bad}"):
                        pass
                except InvalidStatus as exc:
                    facts[bad] = (exc.response.status_code, exc.response.body.decode())
            # since beyond the head, without an epoch: a resync notice, then the replay
            async with connect(f"{url}?since=500", max_size=None) as ws:
                facts["ahead"] = [json.loads(await ws.recv()) for _ in range(4)]
            # since of another epoch: resync although seq 5 exists here
            async with connect(f"{url}?since=5&epoch=0123456789abcdef", max_size=None) as ws:
                facts["other_epoch"] = [json.loads(await ws.recv()) for _ in range(4)]
            # the right epoch: exactly what comes after since, then live events
            async with connect(f"{url}?since=5&epoch={hub.epoch}", max_size=None) as ws:
                facts["same_epoch"] = json.loads(await ws.recv())
                hub.publish(padded(7))
                facts["live"] = json.loads(await ws.recv())
            facts["epoch"] = hub.epoch
        return facts

    facts = run(scenario())
    epoch = facts["epoch"]
    assert facts["health"]["epoch"] == epoch and facts["health"]["last_seq"] == 6
    for bad in ("-5", "abc"):
        status, body = facts[bad]
        assert status == 400 and "since must be" in body, facts[bad]
    for key, reason in (("ahead", "since_ahead"), ("other_epoch", "epoch_changed")):
        resync, *rest = facts[key]
        assert resync["type"] == "events.resync" and resync["reason"] == reason, resync
        assert resync["epoch"] == epoch and resync["head"] == 6
        # the buffer holds 3..6: 1..2 are announced lost, then the replay from 3
        assert rest[0]["type"] == "events.lost" and (rest[0]["from_seq"], rest[0]["to_seq"]) == (
            1,
            2,
        )
        assert [e["seq"] for e in rest[1:]] == [3, 4]
    assert "ahead of the newest seq 6 (epoch changed?)" in facts["ahead"][0]["message"]
    assert facts["same_epoch"]["seq"] == 6 and facts["same_epoch"]["epoch"] == epoch
    assert facts["live"]["epoch"] == epoch and facts["live"]["seq"] == 7


def test_restart_is_seen_by_epoch_and_resynchronised(model: EmotionModel) -> None:
    """A client that saw seq 1..8 of one server asks the next one (seqs start again at
    1) for ``since=8&epoch=OLD``: it is told and gets the new server's events, where it
    used to get nothing."""

    async def scenario() -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        first_hub = EventHub()
        async with running(model, PARAMS, hub=first_hub):
            for i in range(1, 9):
                first_hub.publish(padded(i))
        old = first_hub.epoch
        second_hub = EventHub()
        async with running(model, PARAMS, hub=second_hub) as server:
            for i in range(1, 4):
                second_hub.publish(padded(i, call_id="new"))
            url = server.addresses.urls()["events"]  # type: ignore[union-attr]
            async with connect(f"{url}?since=8&epoch={old}", max_size=None) as ws:
                got = [json.loads(await ws.recv()) for _ in range(4)]
            async with connect(f"{url}?since=8", max_size=None) as ws:
                no_epoch = [json.loads(await ws.recv()) for _ in range(4)]
        return old, got, no_epoch

    old, got, no_epoch = run(scenario())
    for stream in (got, no_epoch):
        assert stream[0]["type"] == "events.resync"
        assert stream[0]["epoch"] != old
        assert [e["seq"] for e in stream[1:]] == [1, 2, 3]
        assert {e["epoch"] for e in stream} == {stream[0]["epoch"]}
    assert got[0]["reason"] == "epoch_changed" and no_epoch[0]["reason"] == "since_ahead"
