"""`serve` for real: listeners on OS-chosen loopback ports, real clients per protocol.

Every ingest test streams the same labelled call (one RAVDESS actor: neutral/calm
speech, then angry speech) and a websocket subscriber must see ``call.start``,
``emotion.update``s, an anger ``emotion.spike`` and ``call.end`` with the right call
id and party.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from emotion_engine.clients import (
    collect_until,
    rtp_packets,
    stream_audiosocket,
    stream_l16,
    stream_twilio,
    subscribe,
)
from emotion_engine.config import ServeParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.hub import EventHub
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

LOOPBACK = ServeParams(
    host="127.0.0.1", port=0, rtp_port=0, audiosocket_port=0, rtp_leg_timeout_s=1.0, tick_s=0.05
)


@asynccontextmanager
async def running(
    model: EmotionModel, params: ServeParams = LOOPBACK, hub: EventHub | None = None
) -> AsyncIterator[EngineServer]:
    service = EngineService(engine=Engine(model=model), hub=hub, tick_s=params.tick_s)
    server = EngineServer(params=params, service=service)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=120))  # type: ignore[arg-type]


def assert_call(events: list[dict[str, Any]], *, call_id: str, party: str) -> None:
    mine = [e for e in events if e.get("call_id") == call_id and e.get("party") == party]
    types = [e["type"] for e in mine]
    assert types[0] == "call.start", types[:3]
    assert "emotion.update" in types
    spikes = [e for e in mine if e["type"] == "emotion.spike" and e["phase"] == "start"]
    assert spikes and spikes[0]["emotion"] == "angry", f"no anger spike in {len(mine)} events"
    # a hint judged at hang-up (e.g. the call ended angry) follows the leg's call.end
    ends = [e for e in mine if e["type"] != "route.hint"]
    assert ends[-1]["type"] == "call.end", [e["type"] for e in ends[-3:]]
    assert ends[-1]["summary"]["n_spikes"] >= 1


async def _stream_and_collect(
    server: EngineServer,
    send: Callable[[], Awaitable[Any]],
    *,
    n_ends: int = 1,
    **filters: str,
) -> list[dict[str, Any]]:
    assert server.addresses is not None
    async with subscribe(server.addresses.urls()["events"], **filters) as ws:
        sender = asyncio.create_task(send())
        events = await collect_until(ws, count=n_ends, timeout_s=90)
        await sender
    return events


def test_l16_stereo_websocket_gives_both_parties(model: EmotionModel, call_pcm: np.ndarray) -> None:
    stereo = np.stack(
        [call_pcm, call_pcm[::-1].copy()]
    )  # agent: same voice reversed (no clean spike)

    async def scenario() -> list[dict[str, Any]]:
        # the agent's side is analysed only when switched on (privacy default: off)
        async with running(model, replace(LOOPBACK, analyze_agent=True)) as server:
            url = server.addresses.urls()["l16"]  # type: ignore[union-attr]
            return await _stream_and_collect(
                server,
                lambda: stream_l16(
                    url, pcm=stereo, sample_rate=8000, call_id="l16-call", speed=None
                ),
                n_ends=2,
            )

    events = run(scenario())
    assert_call(events, call_id="l16-call", party="customer")
    assert any(e["type"] == "call.end" and e["party"] == "agent" for e in events)


def test_every_subscriber_gets_the_same_text_encoded_once(
    model: EmotionModel, call_pcm: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emotion_engine import server as server_module

    encoded: list[int] = []
    real_to_json = server_module.to_json

    def counting_to_json(event: dict[str, Any]) -> str:
        encoded.append(id(event))
        return real_to_json(event)

    monkeypatch.setattr(server_module, "to_json", counting_to_json)

    async def scenario() -> tuple[list[str], list[str]]:
        async with running(model) as server:
            urls = server.addresses.urls()  # type: ignore[union-attr]
            async with subscribe(urls["events"]) as first, subscribe(urls["events"]) as second:
                await stream_l16(
                    urls["l16"], pcm=call_pcm[: 8000 * 6], sample_rate=8000, call_id="c", speed=None
                )
                texts: list[list[str]] = [[], []]
                for ws, out in ((first, texts[0]), (second, texts[1])):
                    while not out or json.loads(out[-1])["type"] != "call.end":
                        out.append(str(await asyncio.wait_for(ws.recv(), 30)))
                return texts[0], texts[1]

    first, second = run(scenario())
    assert first == second  # the same bytes on the wire
    assert len(first) >= 5  # call.start, updates, call.end
    assert len(encoded) == len(first)  # one encoding per event, not per subscriber


def test_twilio_media_stream(model: EmotionModel, call_pcm: np.ndarray) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running(model) as server:
            url = server.addresses.urls()["twilio"]  # type: ignore[union-attr]
            return await _stream_and_collect(
                server, lambda: stream_twilio(url, pcm=call_pcm, call_sid="CA-test", speed=None)
            )

    assert_call(run(scenario()), call_id="CA-test", party="customer")


def test_rtp_leg_named_by_control_message_ends_by_timeout(
    model: EmotionModel, call_pcm: np.ndarray
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running(model) as server:
            addr = server.addresses
            assert addr is not None and addr.rtp_port is not None
            # name the leg before its first packet: bind the sender port ourselves
            import socket

            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            local = sock.getsockname()
            async with connect(addr.urls()["control"]) as control:
                await control.send(
                    json.dumps(
                        {
                            "action": "name_rtp_leg",
                            "remote": f"{local[0]}:{local[1]}",
                            "ssrc": 0x1234,
                            "call_id": "rtp-call",
                            "party": "customer",
                        }
                    )
                )
                assert json.loads(await control.recv())["ok"] is True
                await control.send("not json")
                assert json.loads(await control.recv())["ok"] is False

            async def send() -> None:
                for i, packet in enumerate(rtp_packets(pcm=call_pcm, ssrc=0x1234)):
                    sock.sendto(packet, ("127.0.0.1", addr.rtp_port))
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)  # ~20x real time: loopback buffers stay small
                sock.close()

            return await _stream_and_collect(server, send)

    events = run(scenario())
    assert_call(events, call_id="rtp-call", party="customer")
    assert events[-1]["reason"] == "timeout"


def test_rtp_still_queued_at_shutdown_is_analysed(model: EmotionModel) -> None:
    """RTP is read at engine ticks; packets that arrived after the last tick are read
    when the server stops, not dropped: the leg's call.end comes at its last audio."""
    import socket

    pcm = (np.sin(np.arange(16000) * 0.05) * 8000).astype(np.int16)  # 2 s

    async def scenario() -> list[dict[str, Any]]:
        # the first tick comes 3 s after the start, long after the stop begins (the stop
        # then waits for it)
        params = replace(LOOPBACK, tick_s=3.0)
        service = EngineService(engine=Engine(model=model), tick_s=params.tick_s)
        server = EngineServer(params=params, service=service)
        addr = await server.start()
        async with subscribe(addr.urls()["events"]) as ws:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for packet in rtp_packets(pcm=pcm, ssrc=0x77):
                sock.sendto(packet, ("127.0.0.1", addr.rtp_port))  # type: ignore[arg-type]
            sock.close()
            await asyncio.sleep(0.2)
            stopping = asyncio.create_task(server.stop())
            events = await collect_until(ws, timeout_s=30)
            await stopping
        return events

    events = run(scenario())
    assert events[0]["type"] == "call.start"
    end = events[-1]
    assert end["type"] == "call.end" and end["reason"] == "shutdown"
    assert end["t"] == pytest.approx(2.0)  # all 100 packets: none left in the socket


def test_audiosocket(model: EmotionModel, call_pcm: np.ndarray) -> None:
    call_uuid = uuid.uuid4()

    async def scenario() -> list[dict[str, Any]]:
        async with running(model) as server:
            addr = server.addresses
            assert addr is not None and addr.audiosocket_port is not None
            return await _stream_and_collect(
                server,
                lambda: stream_audiosocket(
                    "127.0.0.1",
                    addr.audiosocket_port,
                    pcm=call_pcm,
                    call_uuid=call_uuid,
                    speed=None,
                ),
            )

    events = run(scenario())
    assert_call(events, call_id=str(call_uuid), party="customer")
    assert events[-1]["reason"] == "hangup"


def test_healthz_metrics_and_unknown_path(model: EmotionModel) -> None:
    async def scenario() -> tuple[dict[str, Any], str, int]:
        async with running(model) as server:
            base = f"http://127.0.0.1:{server.addresses.port}"  # type: ignore[union-attr]
            health = await asyncio.to_thread(
                lambda: json.loads(urllib.request.urlopen(base + "/healthz").read())
            )
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "/metrics").read().decode()
            )
            try:
                await asyncio.to_thread(urllib.request.urlopen, base + "/nope")
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            return health, metrics, status

    health, metrics, status = run(scenario())
    assert health["status"] == "ok"
    for series in (
        "emotion_engine_legs_active",
        "emotion_engine_chunks_total",
        "emotion_engine_rtp_packets_lost_total",
        "emotion_engine_events_sent_total",
        "emotion_engine_processing_seconds_bucket",
    ):
        assert series in metrics
    assert status == 404


@pytest.mark.parametrize("compression", [True, False])
def test_websocket_compression_is_offered_unless_switched_off(
    model: EmotionModel, compression: bool
) -> None:
    """A client asking for permessage-deflate (websockets does by default) gets it,
    unless ``ws_compression`` is off."""

    async def scenario() -> tuple[list[str], str]:
        params = replace(LOOPBACK, ws_compression=compression)
        async with running(model, params) as server:
            url = server.addresses.urls()["events"]  # type: ignore[union-attr]
            async with connect(url) as ws:
                extensions = [e.name for e in ws.protocol.extensions]
                return extensions, str(ws.response.headers.get("Sec-WebSocket-Extensions", ""))

    extensions, header = run(scenario())
    if compression:
        assert extensions == ["permessage-deflate"] and "permessage-deflate" in header
    else:
        assert extensions == [] and header == ""


def test_token_is_required_when_configured(model: EmotionModel) -> None:
    params = replace(LOOPBACK, token="s3cret")

    async def scenario() -> tuple[int, int, bool]:
        async with running(model, params) as server:
            urls = server.addresses.urls()  # type: ignore[union-attr]
            codes = []
            for headers in (None, {"Authorization": "Bearer wrong"}):
                try:
                    async with connect(urls["events"], additional_headers=headers):
                        pass
                    codes.append(101)
                except InvalidStatus as exc:
                    codes.append(exc.response.status_code)
            async with connect(
                urls["events"], additional_headers={"Authorization": "Bearer s3cret"}
            ):
                ok = True
            return codes[0], codes[1], ok

    missing, wrong, ok = run(scenario())
    assert (missing, wrong, ok) == (401, 401, True)


def test_non_loopback_without_token_is_refused(model: EmotionModel) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        EngineServer(
            params=replace(LOOPBACK, host="0.0.0.0"),
            service=EngineService(engine=Engine(model=model)),
        )


def test_since_replays_missed_events_and_reports_lost(
    model: EmotionModel, call_pcm: np.ndarray
) -> None:
    hub = EventHub(replay_events=5)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with running(model, hub=hub) as server:
            urls = server.addresses.urls()  # type: ignore[union-attr]
            await stream_l16(
                urls["l16"], pcm=call_pcm[: 8000 * 4], sample_rate=8000, call_id="r", speed=None
            )
            for _ in range(100):
                if hub.last_seq and any(e.get("type") == "call.end" for e in hub._replay):
                    break
                await asyncio.sleep(0.05)
            last = hub.last_seq
            async with subscribe(urls["events"], since=last - 3) as ws:
                recent = [json.loads(await ws.recv()) for _ in range(3)]
            async with subscribe(urls["events"], since=0) as ws:
                lost = [json.loads(await ws.recv()) for _ in range(2)]
            return recent, lost

    recent, lost = run(scenario())
    assert [e["seq"] for e in recent] == sorted(e["seq"] for e in recent)
    assert recent[-1]["type"] == "call.end"
    assert lost[0]["type"] == "events.lost" and lost[0]["count"] >= 1
    assert lost[1]["seq"] == lost[0]["to_seq"] + 1


def test_bad_media_input_never_hurts_other_calls(model: EmotionModel, call_pcm: np.ndarray) -> None:
    """Garbage on every ingest path while a good L16 call streams: the good call completes."""

    async def garbage(server: EngineServer) -> None:
        addr = server.addresses
        assert addr is not None and addr.rtp_port is not None and addr.audiosocket_port is not None
        urls = addr.urls()
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for junk in (b"", b"\x00", b"\x80" * 11, b"\xff" * 200, bytes(range(256))):
            sock.sendto(junk, ("127.0.0.1", addr.rtp_port))
        sock.close()
        for path in ("twilio", "l16", "audiohook"):
            try:
                async with connect(urls[path]) as ws:
                    await ws.send("{not json")
                    await ws.send(b"\x01\x02\x03")
                    await ws.send(json.dumps({"event": "media", "media": {"payload": "!!"}}))
                    await asyncio.sleep(0.05)
            except Exception:
                pass
        _, writer = await asyncio.open_connection("127.0.0.1", addr.audiosocket_port)
        writer.write(b"\x10\x00\x05abc")  # audio before UUID, truncated
        await writer.drain()
        writer.close()

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        async with running(model) as server:
            url = server.addresses.urls()["l16"]  # type: ignore[union-attr]

            async def send() -> None:
                await garbage(server)
                await stream_l16(url, pcm=call_pcm, sample_rate=8000, call_id="good", speed=None)

            # The garbage L16 socket's JSON media frame counts as late metadata
            # without a call id, so it opens a call of its own under a random
            # UUID (documented in ingest/l16.py): follow only the good call.
            events = await _stream_and_collect(server, send, call_id="good")
            metrics = server.service.metrics.render()
            return events, metrics

    events, metrics = run(scenario())
    assert_call(events, call_id="good", party="customer")
    assert 'emotion_engine_protocol_errors_total{protocol="rtp"}' in metrics
