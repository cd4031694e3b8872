"""Real clients of the engine's ingest paths and event stream.

Used by ``serve --demo`` (the demo call streamed in over a real ingest path), the
integration tests and the benchmarks. Each streamer sends 20 ms frames, paced in
real time unless ``speed`` says otherwise (``None``: as fast as possible).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.client import ClientConnection, connect

from emotion_engine.audio.g711 import ulaw_encode
from emotion_engine.ingest.audiosocket import Kind, encode_message
from emotion_engine.ingest.rtp import RtpPacket

FRAME_S = 0.02


def _headers(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


async def _pace(start: float, sent_s: float, speed: float | None) -> None:
    """Sleep so that ``sent_s`` of audio took ``sent_s / speed`` of wall time
    (``speed`` None: as fast as possible, yielding to the loop)."""
    if speed:
        ahead = sent_s / speed - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
    else:
        await asyncio.sleep(0)


async def stream_l16(
    url: str,
    *,
    pcm: NDArray[np.int16],
    sample_rate: int,
    call_id: str,
    token: str | None = None,
    speed: float | None = 1.0,
) -> None:
    """jambonz/mod_audio_fork style: metadata frame, then interleaved L16 frames.

    ``pcm``: (n,) mono or (2, n) stereo (customer, agent)."""
    stereo = pcm.ndim == 2
    interleaved = pcm.T.reshape(-1) if stereo else pcm
    channels = 2 if stereo else 1
    step = int(sample_rate * FRAME_S) * channels
    async with connect(url, additional_headers=_headers(token), max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "callSid": call_id,
                    "sampleRate": sample_rate,
                    "mixType": "stereo" if stereo else "mono",
                }
            )
        )
        start = time.monotonic()
        for i, off in enumerate(range(0, interleaved.size, step)):
            await ws.send(interleaved[off : off + step].astype("<i2").tobytes())
            await _pace(start, (i + 1) * FRAME_S, speed)


async def stream_twilio(
    url: str,
    *,
    pcm: NDArray[np.int16],
    call_sid: str,
    token: str | None = None,
    speed: float | None = 1.0,
) -> None:
    """Twilio Media Streams: connected, start, media (base64 mu-law, 20 ms), stop.

    ``pcm``: (n,) inbound only, or (2, n) inbound (customer) and outbound (agent) at 8 kHz."""
    tracks = pcm[None, :] if pcm.ndim == 1 else pcm
    names = ("inbound", "outbound")[: tracks.shape[0]]
    stream_sid = "MZ" + uuid.uuid4().hex
    seq = 0

    def msg(**fields: Any) -> str:
        nonlocal seq
        seq += 1
        return json.dumps({"sequenceNumber": str(seq), "streamSid": stream_sid, **fields})

    async with connect(url, additional_headers=_headers(token)) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            msg(
                event="start",
                start={
                    "streamSid": stream_sid,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": call_sid,
                    "tracks": list(names),
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            )
        )
        start = time.monotonic()
        n = tracks.shape[1]
        for i, off in enumerate(range(0, n, 160)):
            for track, name in zip(tracks, names, strict=True):
                payload = base64.b64encode(ulaw_encode(track[off : off + 160]).tobytes()).decode()
                await ws.send(
                    msg(
                        event="media",
                        media={
                            "track": name,
                            "chunk": str(i + 1),
                            "timestamp": str(i * 20),
                            "payload": payload,
                        },
                    )
                )
            await _pace(start, (i + 1) * FRAME_S, speed)
        await ws.send(msg(event="stop", stop={"accountSid": "AC" + "0" * 32, "callSid": call_sid}))


def rtp_packets(
    *, pcm: NDArray[np.int16], ssrc: int, first_seq: int = 0, first_ts: int = 0
) -> list[bytes]:
    """PCMU packets of 20 ms for ``pcm`` at 8 kHz (sequence and timestamp wrap)."""
    out = []
    for i, off in enumerate(range(0, pcm.size, 160)):
        packet = RtpPacket(
            payload_type=0,
            sequence=(first_seq + i) & 0xFFFF,
            timestamp=(first_ts + off) & 0xFFFFFFFF,
            ssrc=ssrc,
            marker=i == 0,
            payload=ulaw_encode(pcm[off : off + 160]).tobytes(),
        )
        out.append(packet.serialize())
    return out


async def send_rtp(
    host: str, port: int, *, pcm: NDArray[np.int16], ssrc: int, speed: float | None = 1.0
) -> tuple[str, int]:
    """Send ``pcm`` as PCMU RTP from a fresh UDP socket; returns the local address used."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    local = sock.getsockname()
    try:
        start = time.monotonic()
        for i, data in enumerate(rtp_packets(pcm=pcm, ssrc=ssrc)):
            sock.sendto(data, (host, port))
            await _pace(start, (i + 1) * FRAME_S, speed)
    finally:
        sock.close()
    return (str(local[0]), int(local[1]))


async def stream_audiosocket(
    host: str,
    port: int,
    *,
    pcm: NDArray[np.int16],
    call_uuid: uuid.UUID,
    speed: float | None = 1.0,
    hangup: bool = True,
) -> None:
    """Asterisk AudioSocket: UUID, slin 8 kHz 20 ms messages, hang-up."""
    _, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(encode_message(Kind.UUID, call_uuid.bytes))
        start = time.monotonic()
        for i, off in enumerate(range(0, pcm.size, 160)):
            writer.write(encode_message(Kind.SLIN, pcm[off : off + 160].astype("<i2").tobytes()))
            await writer.drain()
            await _pace(start, (i + 1) * FRAME_S, speed)
        if hangup:
            writer.write(encode_message(Kind.HANGUP))
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def subscribe(
    url: str, *, token: str | None = None, **query: str | int
) -> AsyncIterator[ClientConnection]:
    """A websocket subscription to ``/v1/events`` with optional filters."""
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    async with connect(
        f"{url}?{qs}" if qs else url, additional_headers=_headers(token), max_size=None
    ) as ws:
        yield ws


async def collect_until(
    ws: ClientConnection,
    *,
    types: Sequence[str] = ("call.end",),
    count: int = 1,
    timeout_s: float = 60.0,
) -> list[dict[str, Any]]:
    """Read events until ``count`` events whose type is in ``types`` arrived."""
    events: list[dict[str, Any]] = []
    seen = 0
    async with asyncio.timeout(timeout_s):
        while seen < count:
            event = json.loads(await ws.recv())
            events.append(event)
            if event.get("type") in types:
                seen += 1
    return events
