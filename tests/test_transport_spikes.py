"""One episode, one spike, whatever the transport: the demo call over every path.

The bundled demo call (one customer angry from 32.3 s to 51.9 s, with a calmer moment
and an agent reply inside) is streamed to a real ``serve`` on loopback ports over L16
(8 and 16 kHz), Twilio media (mu-law), RTP PCMU and PCMA, a SIP call (TCP signalling,
RTP in the answered codec), and analysed from its file.
Each path must give the customer exactly one anger spike, the same one within one
window hop, and the built-in routing rules must not read it as repeated anger.
Before episodes were merged, L16's slightly lower scores (no companding noise) split
the episode in two at 42 s and fired a priority-8 "2 anger spikes" escalation.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from emotion_engine.audio.g711 import alaw_encode, ulaw_encode
from emotion_engine.audio.io import read_audio
from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.clients import collect_until, stream_l16, stream_twilio, subscribe
from emotion_engine.config import ServeParams
from emotion_engine.engine.offline import analyze_file
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.ingest.rtp import RtpPacket
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.routing import RuleEngine, load_rules
from emotion_engine.serve_cli import DEMO_CALL
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

LOOPBACK = ServeParams(
    host="127.0.0.1", port=0, rtp_port=0, audiosocket_port=0, rtp_leg_timeout_s=1.0, tick_s=0.05
)
HOP_S = 0.5


def customer_spikes(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (e["phase"], e["t"])
        for e in events
        if e["type"] == "emotion.spike" and e["party"] == "customer"
    ]


def rtp(pcm: np.ndarray, *, law: str, ssrc: int) -> list[bytes]:
    encode, pt = (ulaw_encode, 0) if law == "pcmu" else (alaw_encode, 8)
    return [
        RtpPacket(
            payload_type=pt,
            sequence=i & 0xFFFF,
            timestamp=off,
            ssrc=ssrc,
            marker=i == 0,
            payload=encode(pcm[off : off + 160]).tobytes(),
        ).serialize()
        for i, off in enumerate(range(0, pcm.size, 160))
    ]


async def _collect(
    server: EngineServer, send: Callable[[], Awaitable[Any]]
) -> list[dict[str, Any]]:
    assert server.addresses is not None
    async with subscribe(server.addresses.urls()["events"], party="customer") as ws:
        sender = asyncio.create_task(send())
        events = await collect_until(ws, count=1, timeout_s=90)
        await sender
    return events


async def over_the_wire(model: EmotionModel, stereo: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    from scipy.signal import resample_poly

    customer = np.ascontiguousarray(stereo[0])
    wide = float32_to_int16(resample_poly(stereo.astype(np.float64) / 32768.0, 2, 1, axis=1))
    out: dict[str, list[dict[str, Any]]] = {}
    service = EngineService(engine=Engine(model=model), tick_s=LOOPBACK.tick_s)
    server = EngineServer(params=LOOPBACK, service=service)
    addr = await server.start()
    try:
        urls = addr.urls()
        out["L16 8 kHz"] = await _collect(
            server,
            lambda: stream_l16(
                urls["l16"], pcm=stereo, sample_rate=8000, call_id="l16", speed=None
            ),
        )
        out["L16 16 kHz"] = await _collect(
            server,
            lambda: stream_l16(urls["l16"], pcm=wide, sample_rate=16000, call_id="wb", speed=None),
        )
        out["Twilio PCMU"] = await _collect(
            server, lambda: stream_twilio(urls["twilio"], pcm=stereo, call_sid="tw", speed=None)
        )
        for law, ssrc in (("pcmu", 0x11), ("pcma", 0x22)):

            async def send(law: str = law, ssrc: int = ssrc) -> None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i, packet in enumerate(rtp(customer, law=law, ssrc=ssrc)):
                    sock.sendto(packet, ("127.0.0.1", addr.rtp_port))  # type: ignore[arg-type]
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)  # ~20x real time: loopback buffers stay small
                sock.close()

            out[f"RTP {law.upper()}"] = await _collect(server, send)
    finally:
        await server.stop()
    out["SIP"] = await over_sip(model, customer)
    return out


async def over_sip(model: EmotionModel, customer: np.ndarray) -> list[dict[str, Any]]:
    """A SIP call over TCP (INVITE offering PCMA and PCMU, ACK, RTP in the answered
    codec, BYE), as tests/test_sip_server.py drives it."""
    from test_sip_server import offer, request

    from emotion_engine.ingest.sdp import parse_sdp
    from emotion_engine.ingest.sip import SipStreamFramer, parse_message, parse_name_addr

    params = replace(LOOPBACK, sip="127.0.0.1:0", sip_rtp_ports="0")
    service = EngineService(engine=Engine(model=model), tick_s=params.tick_s)
    server = EngineServer(params=params, service=service)
    addr = await server.start()
    try:
        assert addr.sip_port is not None
        async with subscribe(addr.urls()["events"], party="customer") as ws:
            reader, writer = await asyncio.open_connection("127.0.0.1", addr.sip_port)
            local = writer.get_extra_info("sockname")[:2]
            framer = SipStreamFramer()

            async def next_message() -> Any:
                while True:
                    for raw in framer.feed(await reader.read(65536)):
                        if raw:
                            return parse_message(raw, stream=True)

            sip = {"transport": "TCP", "local": local, "call_id": "sip-call"}
            writer.write(request("INVITE", cseq=1, body=offer(9), **sip))  # type: ignore[arg-type]
            ok = await asyncio.wait_for(next_message(), 5)
            tag = parse_name_addr(ok.get("to") or "").tag
            media = parse_sdp(ok.body).media[0]
            writer.write(request("ACK", cseq=1, to_tag=tag, **sip))  # type: ignore[arg-type]
            law = "pcma" if media.formats[0] == "8" else "pcmu"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i, packet in enumerate(rtp(customer, law=law, ssrc=0x5151)):
                sock.sendto(packet, ("127.0.0.1", media.port))
                if i % 10 == 9:
                    await asyncio.sleep(0.01)
            sock.close()
            await asyncio.sleep(0.3)  # the jitter buffer's last packets
            writer.write(request("BYE", cseq=2, to_tag=tag, **sip))  # type: ignore[arg-type]
            events = await collect_until(ws, count=1, timeout_s=90)
            writer.close()
    finally:
        await server.stop()
    return events


def test_the_demo_call_gives_one_spike_on_every_transport(model: EmotionModel) -> None:
    samples, rate = read_audio(DEMO_CALL)
    assert rate == 8000
    stereo = float32_to_int16(samples)
    paths = asyncio.run(asyncio.wait_for(over_the_wire(model, stereo), timeout=300))
    file_events: list[dict[str, Any]] = []
    report = analyze_file(path=DEMO_CALL, engine=Engine(model=model), emit=file_events.append)
    assert report.ok, report.error
    paths["file (FLAC)"] = file_events

    spikes = {name: customer_spikes(events) for name, events in paths.items()}
    for name, got in spikes.items():
        print(f"{name:12s} {got}")  # shown with -s: the cross-transport table
    for name, got in spikes.items():
        assert [phase for phase, _ in got] == ["start", "end"], f"{name}: {got}"
    starts = [got[0][1] for got in spikes.values()]
    ends = [got[1][1] for got in spikes.values()]
    assert max(starts) - min(starts) <= HOP_S + 1e-6, spikes
    assert max(ends) - min(ends) <= HOP_S + 1e-6, spikes
    # the episode the demo call's ground truth names: anger from 32.3 s to 51.9 s
    phases = json.loads(DEMO_CALL.with_suffix(".json").read_text())["phases"]
    angry = next(p for p in phases if p["state"] == "angry")
    assert angry["start_s"] <= min(starts) <= angry["start_s"] + 3.0
    assert angry["end_s"] <= min(ends) <= angry["end_s"] + 6.0

    # the built-in routing rules see one episode: no "repeated anger" escalation
    for name, events in paths.items():
        rules = RuleEngine(load_rules(None), labels=model.labels)
        hints = [h.to_dict() for e in events for h in rules.update(e)]
        fired = {h["rule"] for h in hints}
        assert "escalate-on-repeated-anger" not in fired, f"{name}: {sorted(fired)}"
        assert "listen-in-on-long-anger" in fired, f"{name}: {sorted(fired)}"


def test_offline_codec_paths_agree_window_by_window(model: EmotionModel) -> None:
    """The same call through the engine as L16, PCMU, A-law and float samples: the
    same spike, and P(angry) within 0.15 on every window (the codecs' noise)."""
    from emotion_engine.audio.g711 import alaw_decode, ulaw_decode
    from emotion_engine.frames import AudioChunk

    samples, _ = read_audio(DEMO_CALL)
    pcm = np.ascontiguousarray(float32_to_int16(samples)[0])
    signals = {
        "l16": pcm,
        "pcmu": ulaw_decode(ulaw_encode(pcm)),
        "alaw": alaw_decode(alaw_encode(pcm)),
    }
    runs: dict[str, tuple[list[tuple[str, float]], list[float]]] = {}
    for name, x in signals.items():
        engine = Engine(model=model)
        events = engine.open_leg(call_id="c", party="customer", sample_rate=8000)
        for off in range(0, x.size, 160):
            engine.push(AudioChunk("c", "customer", off / 8000, x[off : off + 160], 8000))
            events += engine.process()
        events += engine.close_leg(call_id="c", party="customer")
        dicts = [e.to_dict() for e in events]
        angry = [d["probabilities"]["angry"] for d in dicts if d["type"] == "emotion.update"]
        runs[name] = (customer_spikes(dicts), angry)
    ref_spikes, ref_angry = runs["l16"]
    assert [p for p, _ in ref_spikes] == ["start", "end"]
    for name, (got, angry) in runs.items():
        assert [p for p, _ in got] == ["start", "end"], f"{name}: {got}"
        assert np.allclose([t for _, t in got], [t for _, t in ref_spikes], atol=HOP_S)
        assert np.max(np.abs(np.subtract(angry, ref_angry))) < 0.15, name
