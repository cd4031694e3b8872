"""Call ids, identifiers and numbers from the wire, against a real ``serve`` on
loopback (port 0) with real clients (issue 15, findings 2, 5 and 10).

What each bad input gets:

- a second session opening a call id that is open (any two of Twilio, L16, AudioHook;
  an AudioSocket UUID equal to an AudioHook ``conversationId``): Twilio / L16 close
  1008 "call id already open in another session", AudioHook ``disconnect`` (reason
  ``error``), AudioSocket a hang-up message and the connection closed. The open call
  keeps streaming, its events continue and only its own hang-up ends it; the refusal
  is one log line and one count in ``emotion_engine_call_id_collisions_total``.
- a call id of 1 MB (or 60 kB where AudioHook's 64 KiB frame limit comes first, or a
  65,535-byte AudioSocket UUID): refused with the protocol's error, no ``call.start``.
- metadata strings past the limits (Twilio customParameters, AudioHook participant,
  L16 metadata): cut to ``MAX_META_TEXT_CHARS`` in ``call.start``, counted.
- Twilio ``timestamp`` 1e308, NaN, negative, 10**400: a protocol error each (counted),
  the audio placed at the end of the timeline, the stream goes on (no close 1011).
- AudioHook positions and L16 rates with hundreds of digits: the protocol's error.
- SIP numbers in Unicode digits (``CSeq: ²``) and a truncated ``From: <sip:a@127``:
  400 each time, no traceback, one log line per cause however often it comes.
- ``/v1/control``: 404 for a leg that is not open, 400 for a party outside the known
  set or a bad call id, 409 for a call id another session holds, HTTP 403 for the
  media token (only ``--control-token`` opens it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import urllib.request
import uuid
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from test_serve import run, running
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emotion_engine.audio.g711 import ulaw_encode
from emotion_engine.clients import rtp_packets, subscribe
from emotion_engine.config import MAX_META_TEXT_CHARS, ServeParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError
from emotion_engine.ingest.audiosocket import Kind, encode_message
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

TOKEN = "media-token"
CONTROL_TOKEN = "control-token"
PARAMS = ServeParams(
    host="127.0.0.1",
    port=0,
    rtp_port=0,
    audiosocket_port=0,
    rtp_leg_timeout_s=5.0,
    tick_s=0.05,
    token=TOKEN,
    control_token=CONTROL_TOKEN,
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MEGABYTE_ID = "x" * 1_000_000
ORG = "d7934305-0972-4844-938e-9060eef73d05"


def voice(seconds: float, *, seed: int = 0) -> NDArray[np.int16]:
    """A voiced, speech-like 8 kHz signal: harmonics of a wandering F0 with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 8000)) / 8000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.05 * rng.standard_normal(t.size)
    return (3000 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t) ** 2)).astype(np.int16)


def urls(server: EngineServer) -> dict[str, str]:
    assert server.addresses is not None
    return server.addresses.urls()


async def metrics(server: EngineServer) -> str:
    """``GET /metrics`` over HTTP (from a thread: the server runs on this loop)."""

    def get() -> str:
        request = urllib.request.Request(urls(server)["metrics"], headers=AUTH)
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(get)


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def until(ws: ClientConnection, want: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
    """Subscriber events up to and including the first for which ``want(event)``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while not events or not want(events[-1]):
            events.append(json.loads(await ws.recv()))
    return events


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    try:
        async with asyncio.timeout(30):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


# -- step-by-step clients (each protocol as its platform sends it) -------------------


class Twilio:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.seq, self.ms = ws, 0, 0

    async def send(self, msg: dict[str, Any]) -> None:
        self.seq += 1
        await self.ws.send(json.dumps({**msg, "sequenceNumber": str(self.seq), "streamSid": "MZ1"}))

    async def start(self, call_sid: str, custom: dict[str, Any] | None = None) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
        start = {
            "streamSid": "MZ1",
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": custom or {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self.send({"event": "start", "start": start})

    async def media(self, pcm: NDArray[np.int16], timestamp: object = None) -> None:
        for off in range(0, pcm.size, 160):
            payload = base64.b64encode(ulaw_encode(pcm[off : off + 160]).tobytes()).decode()
            ts = str(self.ms) if timestamp is None else timestamp
            await self.send(
                {
                    "event": "media",
                    "media": {"track": "inbound", "payload": payload, "timestamp": ts},
                }
            )
            self.ms += 20

    async def stop(self) -> None:
        await self.send({"event": "stop", "stop": {"callSid": "x"}})


async def l16_open(url: str, call_id: str, **metadata: Any) -> ClientConnection:
    ws = await connect(url, additional_headers=AUTH, max_size=None)
    await ws.send(
        json.dumps({"callSid": call_id, "sampleRate": 8000, "mixType": "mono", **metadata})
    )
    return ws


class AudioHook:
    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws, self.id, self.seq, self.serverseq = ws, session_id, 0, 0

    @classmethod
    async def connect(cls, url: str) -> AudioHook:
        session_id = str(uuid.uuid4())
        headers = {
            "X-API-KEY": TOKEN,
            "Audiohook-Organization-Id": ORG,
            "Audiohook-Session-Id": session_id,
        }
        return cls(await connect(url, additional_headers=headers, max_size=None), session_id)

    async def send(self, mtype: str, parameters: dict[str, Any], position: str = "PT0S") -> None:
        self.seq += 1
        msg = {
            "version": "2",
            "id": self.id,
            "type": mtype,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": position,
            "parameters": parameters,
        }
        await self.ws.send(json.dumps(msg))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(30):
            msg = json.loads(await self.ws.recv())
        self.serverseq = msg["seq"]
        return dict(msg)

    async def open(
        self, conversation_id: str, participant: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        media = [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]
        await self.send(
            "open",
            {
                "organizationId": ORG,
                "conversationId": conversation_id,
                "participant": participant
                or {"id": "p1", "ani": "+1555", "aniName": "x", "dnis": "+1666"},
                "media": media,
                "language": "en-US",
            },
        )
        return await self.recv()

    async def audio(self, pcm: NDArray[np.int16]) -> None:
        for off in range(0, pcm.size, 1600):
            await self.ws.send(ulaw_encode(pcm[off : off + 1600]).tobytes())

    async def close(self) -> dict[str, Any]:
        await self.send("close", {"reason": "end"})
        return await self.recv()


async def audiosocket_open(
    server: EngineServer, call_uuid: uuid.UUID
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.addresses is not None and server.addresses.audiosocket_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses.audiosocket_port)
    writer.write(encode_message(Kind.UUID, call_uuid.bytes))
    return reader, writer


def slin(pcm: NDArray[np.int16]) -> bytes:
    return b"".join(
        encode_message(Kind.SLIN, pcm[o : o + 160].astype("<i2").tobytes())
        for o in range(0, pcm.size, 160)
    )


# -- finding 2: a call id belongs to the session that opened it ------------------------

FIRST = voice(3.0, seed=1)
AFTER = voice(3.0, seed=2)


async def _first_opens(kind: str, server: EngineServer, call_id: str) -> Any:
    u = urls(server)
    if kind == "twilio":
        tw = Twilio(await connect(u["twilio"], additional_headers=AUTH))
        await tw.start(call_id)
        await tw.media(FIRST)
        return tw
    if kind == "l16":
        ws = await l16_open(u["l16"], call_id)
        await ws.send(FIRST.astype("<i2").tobytes())
        return ws
    ah = await AudioHook.connect(u["audiohook"])
    assert (await ah.open(call_id))["type"] == "opened"
    await ah.audio(FIRST)
    return ah


async def _first_goes_on_and_hangs_up(kind: str, first: Any) -> None:
    if kind == "twilio":
        await first.media(AFTER)
        await first.stop()
        await closed(first.ws)
    elif kind == "l16":
        await first.send(AFTER.astype("<i2").tobytes())
        await first.close()
    else:
        await first.audio(AFTER)
        assert (await first.close())["type"] == "closed"
        await closed(first.ws)


async def _second_is_refused(kind: str, server: EngineServer, call_id: str) -> Any:
    """The colliding session opens and sends audio; what the server answered it."""
    u = urls(server)
    if kind == "twilio":
        tw = Twilio(await connect(u["twilio"], additional_headers=AUTH))
        await tw.start(call_id)
        with suppress(ConnectionClosed):
            await tw.media(voice(1.0, seed=9))
        return await closed(tw.ws)
    if kind == "l16":
        ws = await l16_open(u["l16"], call_id)
        with suppress(ConnectionClosed):
            await ws.send(voice(1.0, seed=9).astype("<i2").tobytes())
        return await closed(ws)
    if kind == "audiohook":
        ah = await AudioHook.connect(u["audiohook"])
        opened = await ah.open(call_id)
        disconnect = await ah.recv()
        closed_reply = await ah.close()
        code = (await closed(ah.ws))[0]
        return (
            opened["type"],
            disconnect["type"],
            disconnect["parameters"],
            closed_reply["type"],
            code,
        )
    reader, writer = await audiosocket_open(server, uuid.UUID(call_id))
    writer.write(slin(voice(1.0, seed=9)))
    await writer.drain()
    async with asyncio.timeout(30):
        answer = await reader.read()  # up to EOF: the server closed the connection
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("first_kind", "second_kind"),
    [
        ("twilio", "l16"),
        ("l16", "twilio"),
        ("twilio", "twilio"),
        ("l16", "audiohook"),
        ("audiohook", "audiosocket"),
    ],
)
def test_a_colliding_open_is_refused_and_the_open_call_is_untouched(
    model: EmotionModel, caplog: pytest.LogCaptureFixture, first_kind: str, second_kind: str
) -> None:
    call_id = str(uuid.uuid4())

    async def scenario() -> tuple[list[dict[str, Any]], Any, str]:
        async with running(model, PARAMS) as server:
            async with subscribe(urls(server)["events"], token=TOKEN, call_id=call_id) as sub:
                first = await _first_opens(first_kind, server, call_id)
                # the first call is open and analysed before the second one tries
                events = await until(sub, lambda e: e["type"] == "emotion.update")
                answer = await _second_is_refused(second_kind, server, call_id)
                await _first_goes_on_and_hangs_up(first_kind, first)
                events += await until(sub, lambda e: e["type"] == "call.end")
            return events, answer, await metrics(server)

    with caplog.at_level(logging.WARNING):
        events, answer, text = run(scenario())

    if second_kind in ("twilio", "l16"):
        assert answer == (1008, "call id already open in another session")
    elif second_kind == "audiohook":
        opened, disconnect, params, closed_reply, _ = answer
        assert (opened, disconnect, closed_reply) == ("opened", "disconnect", "closed")
        assert params == {"reason": "error", "info": "call id already open in another session"}
    else:  # AudioSocket: a hang-up message, then the connection closed
        assert answer == encode_message(Kind.HANGUP)
    # the open call: one start, updates on to the end of its audio, its own hang-up
    types = [e["type"] for e in events]
    assert types.count("call.start") == 1 and types.count("call.end") == 1
    assert events[0]["type"] == "call.start" and events[0]["info"]["source"] == first_kind
    updates = [e["t"] for e in events if e["type"] == "emotion.update"]
    assert max(updates) > FIRST.size / 8000 + 1.0  # audio sent after the refusal analysed
    end = events[-1]
    assert end["type"] == "call.end" and end["reason"] in ("hangup", "disconnect")
    assert end["reason"] == ("disconnect" if first_kind == "l16" else "hangup")
    # counted once and logged once
    source = second_kind
    assert metric(text, f'emotion_engine_call_id_collisions_total{{source="{source}"}}') == 1
    lines = [r for r in caplog.records if "already open from" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


def test_the_refused_session_cannot_end_the_open_call(model: EmotionModel) -> None:
    """The finding as reported: the second session's hang-up (Twilio ``stop``) used to
    end the first session's leg; now the first call ends only with its own hang-up."""
    call_id = "CA-shared"

    async def scenario() -> list[dict[str, Any]]:
        async with running(model, PARAMS) as server:
            async with subscribe(urls(server)["events"], token=TOKEN, call_id=call_id) as sub:
                ws = await l16_open(urls(server)["l16"], call_id)
                await ws.send(FIRST.astype("<i2").tobytes())
                events = await until(sub, lambda e: e["type"] == "emotion.update")
                tw = Twilio(await connect(urls(server)["twilio"], additional_headers=AUTH))
                await tw.start(call_id)
                with suppress(ConnectionClosed):
                    await tw.stop()  # a hang-up from the refused session
                assert (await closed(tw.ws))[0] == 1008
                await ws.send(AFTER.astype("<i2").tobytes())
                await ws.close()
                events += await until(sub, lambda e: e["type"] == "call.end")
            return events

    events = run(scenario())
    ends = [e for e in events if e["type"] == "call.end"]
    assert len(ends) == 1 and ends[0]["reason"] == "disconnect"  # the L16 socket's own end
    assert max(e["t"] for e in events if e["type"] == "emotion.update") > FIRST.size / 8000 + 1.0


def test_a_call_id_is_free_again_after_its_call_ended(model: EmotionModel) -> None:
    async def scenario() -> list[str]:
        async with running(model, PARAMS) as server:
            async with subscribe(urls(server)["events"], token=TOKEN, call_id="again") as sub:
                types = []
                for _ in range(2):
                    ws = await l16_open(urls(server)["l16"], "again")
                    await ws.send(voice(1.0).astype("<i2").tobytes())
                    await ws.close()
                    types += [
                        e["type"] for e in await until(sub, lambda e: e["type"] == "call.end")
                    ]
            return types

    types = run(scenario())
    assert types.count("call.start") == 2 and types.count("call.end") == 2


# -- finding 5: identifiers have limits on every path --------------------------------


def test_a_megabyte_call_id_is_refused_on_every_path(model: EmotionModel) -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        answers: dict[str, Any] = {}
        async with running(model, PARAMS) as server:
            u = urls(server)
            async with subscribe(u["events"], token=TOKEN) as sub:
                tw = Twilio(await connect(u["twilio"], additional_headers=AUTH, max_size=None))
                await tw.start(MEGABYTE_ID)
                answers["twilio callSid"] = await closed(tw.ws)
                tw = Twilio(await connect(u["twilio"], additional_headers=AUTH, max_size=None))
                await tw.start("CA-ok", custom={"call_id": MEGABYTE_ID})
                answers["twilio customParameters.call_id"] = await closed(tw.ws)
                ws = await l16_open(u["l16"], MEGABYTE_ID)
                answers["l16"] = await closed(ws)
                for size in (1_000_000, 60_000):  # past AudioHook's 64 KiB frame, and within
                    ah = await AudioHook.connect(u["audiohook"])
                    try:
                        await ah.send(
                            "open",
                            {"organizationId": ORG, "conversationId": "c" * size, "media": []},
                        )
                        answers[f"audiohook {size}"] = (await ah.recv())["parameters"]
                    finally:
                        await ah.ws.close()
                assert (
                    server.addresses is not None and server.addresses.audiosocket_port is not None
                )
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", server.addresses.audiosocket_port
                )
                writer.write(encode_message(Kind.UUID, b"u" * 65_535) + slin(voice(0.2)))
                writer.write(encode_message(Kind.HANGUP))
                await writer.drain()
                async with asyncio.timeout(30):
                    answers["audiosocket"] = await reader.read()
                writer.close()
                async with connect(
                    u["control"],
                    additional_headers={"Authorization": f"Bearer {CONTROL_TOKEN}"},
                    max_size=None,
                ) as control:
                    await control.send(
                        json.dumps(
                            {
                                "action": "name_rtp_leg",
                                "remote": "127.0.0.1:4000",
                                "ssrc": 1,
                                "call_id": MEGABYTE_ID,
                            }
                        )
                    )
                    answers["control"] = json.loads(await control.recv())
                # a good call afterwards: the only call.start the subscriber sees
                ws = await l16_open(u["l16"], "good")
                await ws.send(voice(1.0).astype("<i2").tobytes())
                await ws.close()
                events = await until(sub, lambda e: e["type"] == "call.end")
            answers["metrics"] = await metrics(server)
        return answers, events

    answers, events = run(scenario())
    too_long = "call id of 1,000,000 characters is longer than 128"
    assert answers["twilio callSid"] == (1008, f"twilio: {too_long}")
    assert answers["twilio customParameters.call_id"] == (1008, f"twilio: {too_long}")
    assert answers["l16"] == (1008, f"l16: {too_long}")
    assert answers["audiohook 1000000"]["reason"] == "error"
    assert "Text message too large" in answers["audiohook 1000000"]["info"]
    assert answers["audiohook 60000"] == {
        "reason": "error",
        "info": "Client Error: Invalid Message: conversationId of 60,000 characters is longer than 128",
    }
    assert answers["audiosocket"] == b""  # its hang-up closed it; no leg ever started
    assert answers["control"] == {"ok": False, "status": 400, "error": too_long}
    assert [e["call_id"] for e in events if e["type"] == "call.start"] == ["good"]
    assert (
        metric(answers["metrics"], 'emotion_engine_protocol_errors_total{protocol="audiosocket"}')
        >= 2
    )


def test_metadata_strings_are_cut_to_the_limit(model: EmotionModel) -> None:
    long = "m" * 200_000

    async def scenario() -> list[dict[str, Any]]:
        async with running(model, PARAMS) as server:
            u = urls(server)
            async with subscribe(u["events"], token=TOKEN) as sub:
                tw = Twilio(await connect(u["twilio"], additional_headers=AUTH, max_size=None))
                await tw.start("CA-meta", custom={"note": long, "ctl": "a\x00\x1bb"})
                await tw.media(voice(0.5))
                await tw.stop()
                ws = await l16_open(u["l16"], "l16-meta", caller=long)
                await ws.send(voice(0.5).astype("<i2").tobytes())
                await ws.send(json.dumps({"update": long}))  # later metadata: same limits
                await ws.close()
                ah = await AudioHook.connect(u["audiohook"])
                await ah.open(str(uuid.uuid4()), participant={"id": "p", "ani": "a" * 60_000})
                await ah.audio(voice(0.5))
                await ah.close()
                await ah.ws.close()
                events: list[dict[str, Any]] = []
                for _ in range(3):
                    events += await until(sub, lambda e: e["type"] == "call.end")
            return [e for e in events if e["type"] == "call.start"]

    starts = {e["info"]["protocol"]: e["info"] for e in run(scenario())}
    assert starts["twilio"]["custom_parameters"] == {
        "note": "m" * MAX_META_TEXT_CHARS,
        "ctl": "a\ufffd\ufffdb",
    }
    assert starts["l16"]["metadata"]["caller"] == "m" * MAX_META_TEXT_CHARS
    assert starts["audiohook"]["participant"]["ani"] == "a" * MAX_META_TEXT_CHARS


# -- finding 10: numbers at the boundaries, SIP logs, /v1/control ---------------------


def test_twilio_timestamps_out_of_range_are_protocol_errors(model: EmotionModel) -> None:
    async def scenario() -> tuple[tuple[int | None, str | None], list[dict[str, Any]], str]:
        async with running(model, PARAMS) as server:
            u = urls(server)
            async with subscribe(u["events"], token=TOKEN, call_id="CA-ts") as sub:
                tw = Twilio(await connect(u["twilio"], additional_headers=AUTH))
                await tw.start("CA-ts")
                await tw.media(voice(1.0))
                for bad in (1e308, "1e308", float("nan"), "NaN", -5, "-1", 10**400, "9" * 400):
                    raw = json.dumps(bad) if not isinstance(bad, int) or bad < 10**300 else str(bad)
                    tw.seq += 1
                    payload = base64.b64encode(ulaw_encode(voice(0.02)).tobytes()).decode()
                    text = (
                        f'{{"event":"media","sequenceNumber":"{tw.seq}","streamSid":"MZ1","media":'
                        f'{{"track":"inbound","payload":"{payload}","timestamp":{raw}}}}}'
                    )
                    await tw.ws.send(text)
                await tw.media(voice(1.0))
                await tw.stop()
                answer = await closed(tw.ws)
                events = await until(sub, lambda e: e["type"] == "call.end")
            return answer, events, await metrics(server)

    answer, events, text = run(scenario())
    assert answer == (1000, "stream stopped")  # not 1011: the stream went on
    assert events[-1]["reason"] == "hangup"
    assert metric(text, 'emotion_engine_protocol_errors_total{protocol="twilio"}') == 8


def test_audiohook_and_l16_numbers_out_of_range_get_protocol_errors(model: EmotionModel) -> None:
    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(model, PARAMS) as server:
            u = urls(server)
            ah = await AudioHook.connect(u["audiohook"])
            await ah.open(str(uuid.uuid4()))
            await ah.send("ping", {}, position="PT" + "9" * 400 + "S")
            out["position"] = (await ah.recv())["parameters"]
            await ah.ws.close()
            ah = await AudioHook.connect(u["audiohook"])
            await ah.open(str(uuid.uuid4()))
            await ah.send("discarded", {"start": "PT" + "9" * 400 + "S", "discarded": "PT1S"})
            out["discarded"] = (await ah.recv())["parameters"]
            await ah.ws.close()
            ah = await AudioHook.connect(u["audiohook"])
            await ah.open(str(uuid.uuid4()))
            ah.seq = 2**60 - 1
            await ah.send("ping", {})
            out["seq"] = (await ah.recv())["parameters"]
            await ah.ws.close()
            ws = await connect(u["l16"], additional_headers=AUTH)
            await ws.send(json.dumps({"callSid": "r", "sampleRate": "9" * 5000}))
            out["l16 rate"] = await closed(ws)
            ws = await connect(u["l16"], additional_headers=AUTH)
            await ws.send(
                json.dumps({"callSid": "r", "content-type": "audio/l16;rate=" + "1" * 5000})
            )
            out["l16 content-type"] = await closed(ws)
        return out

    out = run(scenario())
    assert out["position"]["reason"] == "error"
    assert "is not an ISO 8601 duration up to a week" in out["position"]["info"]
    assert out["discarded"]["reason"] == "error"
    assert "bad 'discarded' parameters" in out["discarded"]["info"]
    assert (
        out["seq"]["reason"] == "error"
        and "is not an integer from 0 to 2**53" in out["seq"]["info"]
    )
    assert out["l16 rate"][0] == 1003 and "unsupported sample rate" in str(out["l16 rate"][1])
    assert out["l16 content-type"][0] == 1003


SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP {fmt}\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(
    n: int,
    *,
    cseq: str = "1",
    length: str | None = None,
    port: str = "4000",
    fmt: str = "0",
    from_: str = "<sip:a@127.0.0.1>;tag=1",
) -> bytes:
    body = SDP.format(port=port, fmt=fmt).encode()
    head = (
        "INVITE sip:engine@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}\r\n"
        f"From: {from_}\r\nTo: <sip:engine@127.0.0.1>\r\nCall-ID: probe-{n}\r\n"
        f"CSeq: {cseq} INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {length or len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_malformed_sip_gets_400_and_one_log_line_per_cause(
    model: EmotionModel, caplog: pytest.LogCaptureFixture
) -> None:
    repeats = 20
    cases = {
        "truncated From": lambda n: invite(n, from_="<sip:a@127"),
        "CSeq in Unicode digits": lambda n: invite(n, cseq="²"),
        "Content-Length in Unicode digits": lambda n: invite(n, length="²"),
        "SDP port in Unicode digits": lambda n: invite(n, port="²"),
        "SDP port past 65535": lambda n: invite(n, port="99999999999999999999999"),
        "Call-ID of 1,000 characters": lambda n: invite(n).replace(
            f"Call-ID: probe-{n}".encode(), f"Call-ID: {n:05d}{'c' * 995}".encode()
        ),
    }

    async def scenario() -> tuple[dict[str, list[bytes]], str]:
        async with running(model, replace(PARAMS, sip="127.0.0.1:0", sip_rtp_ports="0")) as server:
            assert server.addresses is not None and server.addresses.sip_port is not None
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(10)
            answers: dict[str, list[bytes]] = {}
            n = 0
            for name, make in cases.items():
                answers[name] = []
                for _ in range(repeats):
                    n += 1
                    sock.sendto(make(n), ("127.0.0.1", server.addresses.sip_port))
                    answer = await asyncio.to_thread(sock.recv, 65535)
                    answers[name].append(answer.split(b"\r\n", 1)[0])
            sock.close()
            return answers, await metrics(server)

    with caplog.at_level(logging.WARNING):
        answers, text = run(scenario())
    for name, status_lines in answers.items():
        assert len(status_lines) == repeats, name
        assert all(line.startswith(b"SIP/2.0 400 Bad Request") for line in status_lines), (
            name,
            status_lines[0],
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no tracebacks
    sip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sip: ")]
    assert len(sip_lines) <= len(cases), sip_lines  # one line per cause, not per datagram
    assert any("unterminated <...>" in line for line in sip_lines)
    assert metric(text, 'emotion_engine_protocol_errors_total{protocol="sip"}') == repeats * len(
        cases
    )


def test_control_scoping_unknown_legs_and_parties(model: EmotionModel) -> None:
    control_auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running(model, PARAMS) as server:
            u = urls(server)
            for name, headers in (("media token", AUTH), ("no token", None)):
                try:
                    async with connect(u["control"], additional_headers=headers):
                        out[name] = 101
                except InvalidStatus as exc:
                    out[name] = exc.response.status_code
            async with subscribe(u["events"], token=TOKEN, call_id="held-by-l16") as sub:
                ws = await l16_open(u["l16"], "held-by-l16")
                await ws.send(voice(0.5).astype("<i2").tobytes())
                await until(sub, lambda e: e["type"] == "call.start")
            async with connect(u["control"], additional_headers=control_auth) as control:
                for name, cmd in (
                    (
                        "end unknown",
                        {"action": "end_rtp_leg", "remote": "127.0.0.1:4000", "ssrc": 7},
                    ),
                    (
                        "party",
                        {
                            "action": "name_rtp_leg",
                            "remote": "127.0.0.1:4000",
                            "ssrc": 7,
                            "call_id": "c",
                            "party": "boss",
                        },
                    ),
                    (
                        "ssrc",
                        {
                            "action": "name_rtp_leg",
                            "remote": "127.0.0.1:4000",
                            "ssrc": 2**40,
                            "call_id": "c",
                        },
                    ),
                    (
                        "held",
                        {
                            "action": "name_rtp_leg",
                            "remote": "127.0.0.1:4000",
                            "ssrc": 7,
                            "call_id": "held-by-l16",
                        },
                    ),
                    (
                        "ok",
                        {
                            "action": "name_rtp_leg",
                            "remote": "127.0.0.1:4000",
                            "ssrc": 7,
                            "call_id": "c",
                        },
                    ),
                ):
                    await control.send(json.dumps(cmd))
                    out[name] = json.loads(await control.recv())
            await ws.close()
        # a token but no control token: /v1/control is closed
        async with running(model, replace(PARAMS, control_token="")) as server:
            try:
                async with connect(urls(server)["control"], additional_headers=AUTH):
                    out["no control token set"] = 101
            except InvalidStatus as exc:
                out["no control token set"] = exc.response.status_code
        return out

    out = run(scenario())
    assert out["media token"] == 403 and out["no token"] == 403
    assert out["no control token set"] == 403
    assert out["end unknown"] == {
        "ok": False,
        "status": 404,
        "error": "no RTP leg open from 127.0.0.1:4000 with ssrc 7",
    }
    assert out["party"] == {
        "ok": False,
        "status": 400,
        "error": "party 'boss' is not one of customer, agent",
    }
    assert out["ssrc"]["status"] == 400
    assert out["held"] == {
        "ok": False,
        "status": 409,
        "error": "call id 'held-by-l16' is open from l16",
    }
    assert out["ok"] == {"ok": True, "error": None}


def test_control_token_must_differ_from_the_token(model: EmotionModel) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        EngineServer(
            params=replace(PARAMS, control_token=TOKEN),
            service=EngineService(engine=Engine(model=model)),
        )


def test_sip_leg_into_an_open_call_id_is_refused_and_display_names_are_cut(
    model: EmotionModel,
) -> None:
    """SIP has no way to tell an answered call that its call id is taken: its leg is
    refused (counted, logged once) and the open L16 call goes on; a From display name of
    2,000 characters reaches ``call.start`` cut to the limit."""
    name = "N" * 2000

    def sip_invite(call_id: str, display: str, local: tuple[str, int]) -> bytes:
        body = SDP.format(port=9, fmt="0").encode()
        return (
            "INVITE sip:engine@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-{call_id}\r\n"
            f'From: "{display}" <sip:+155501@127.0.0.1>;tag=t1\r\n'
            f"To: <sip:engine@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:a@{local[0]}:{local[1]}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def answer_and_stream(
        sock: socket.socket, engine: tuple[str, int], call_id: str, display: str
    ) -> None:
        sock.sendto(sip_invite(call_id, display, sock.getsockname()), engine)
        while True:
            answer = await asyncio.to_thread(sock.recv, 65535)
            if answer.startswith(b"SIP/2.0 200"):
                break
        head, _, sdp = answer.partition(b"\r\n\r\n")
        port = int(sdp.split(b"m=audio ")[1].split(b" ")[0])
        to = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"to:"))
        ack = (
            f"ACK sip:engine@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {sock.getsockname()[0]}:"
            f"{sock.getsockname()[1]};branch=z9hG4bK-ack-{call_id}\r\n"
            f'From: "x" <sip:+155501@127.0.0.1>;tag=t1\r\n{to.decode()}\r\n'
            f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(ack.encode(), engine)
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i, packet in enumerate(rtp_packets(pcm=voice(1.0), ssrc=0x55)):
            rtp.sendto(packet, ("127.0.0.1", port))
            if i % 10 == 9:
                await asyncio.sleep(0.01)
        rtp.close()

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        params = replace(PARAMS, sip="127.0.0.1:0", sip_rtp_ports="0")
        async with running(model, params) as server:
            assert server.addresses is not None and server.addresses.sip_port is not None
            engine = ("127.0.0.1", server.addresses.sip_port)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(10)
            async with subscribe(urls(server)["events"], token=TOKEN) as sub:
                ws = await l16_open(urls(server)["l16"], "shared-sip")
                await ws.send(FIRST.astype("<i2").tobytes())
                held = await until(
                    sub, lambda e: e["type"] == "emotion.update" and e["call_id"] == "shared-sip"
                )
                await answer_and_stream(sock, engine, "shared-sip", "x")
                await answer_and_stream(sock, engine, "sip-named", name)
                start = (await until(sub, lambda e: e["type"] == "call.start"))[-1]
                await ws.send(AFTER.astype("<i2").tobytes())
                await ws.close()
                held += await until(
                    sub, lambda e: e["type"] == "call.end" and e["call_id"] == "shared-sip"
                )
            sock.close()
            return [e for e in held if e["call_id"] == "shared-sip"], start, await metrics(server)

    held, start, text = run(scenario())
    types = [e["type"] for e in held]
    assert types.count("call.start") == 1 and types.count("call.end") == 1
    assert held[-1]["reason"] == "disconnect"  # the L16 socket's own end
    assert max(e["t"] for e in held if e["type"] == "emotion.update") > FIRST.size / 8000 + 1.0
    assert metric(text, 'emotion_engine_call_id_collisions_total{source="sip"}') == 1
    assert start["call_id"] == "sip-named"
    assert start["info"]["from"]["name"] == "N" * MAX_META_TEXT_CHARS
