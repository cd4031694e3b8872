"""AudioSocketSession: committed captures replayed whole, byte by byte and in random splits."""

from __future__ import annotations

import json
import os
import random
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion_engine.errors import ProtocolError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.audiosocket import KIND_RATES, AudioSocketSession, Kind, encode_message
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
)

DATA = Path(__file__).parent / "data" / "audiosocket"
REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EMOTION_ENGINE_DATA", REPO.parent / "shared" / "data"))


def comparable(outputs: list[IngestOutput]) -> list[tuple[Any, ...]]:
    """Outputs as plain tuples (numpy arrays do not compare with ==)."""
    rows: list[tuple[Any, ...]] = []
    for o in outputs:
        if isinstance(o, AudioChunk):
            rows.append(("chunk", o.call_id, o.party, o.t, o.sample_rate, o.pcm.tobytes()))
        else:
            rows.append((type(o).__name__, repr(o)))
    return rows


def replay(blob: bytes, cuts: list[int], **kwargs: Any) -> list[IngestOutput]:
    session = AudioSocketSession(**kwargs)
    out: list[IngestOutput] = []
    for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        out.extend(session.receive_data(blob[a:b]))
    out.extend(session.connection_lost())
    return out


def split_variants(blob: bytes) -> list[list[int]]:
    rng = random.Random(1)
    variants = [[], list(range(1, len(blob)))]  # whole, byte by byte
    for _ in range(5):
        variants.append(sorted(rng.sample(range(1, len(blob)), rng.randrange(1, 400))))
    return variants


@pytest.mark.parametrize("name", ["call_slin8.bin", "malformed.bin"])
def test_any_split_gives_identical_outputs(name: str) -> None:
    blob = (DATA / name).read_bytes()
    variants = split_variants(blob)
    whole = comparable(replay(blob, variants[0]))
    assert len(whole) > 5
    for cuts in variants[1:]:
        assert comparable(replay(blob, cuts)) == whole


def scan_messages(blob: bytes) -> list[tuple[int, bytes]]:
    """Independent reader of the wire format: type, big-endian length, payload."""
    out, pos = [], 0
    while pos < len(blob):
        kind = blob[pos]
        (length,) = struct.unpack(">H", blob[pos + 1 : pos + 3])
        out.append((kind, blob[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    assert pos == len(blob)
    return out


def test_call_capture() -> None:
    m = json.loads((DATA / "call_slin8.json").read_text())
    blob = (DATA / "call_slin8.bin").read_bytes()
    out = replay(blob, [])
    call_id = m["uuid"]
    assert out[0] == LegStarted(
        call_id, "customer", 8000, info={"protocol": "audiosocket", "kind": "0x10"}
    )
    chunks = [o for o in out if isinstance(o, AudioChunk)]
    position = 0
    for c in chunks:
        assert (c.call_id, c.party, c.sample_rate) == (call_id, "customer", 8000)
        assert c.t == pytest.approx(position / 8000)
        position += c.pcm.size
    assert position == m["n_samples"]
    payloads = [p for k, p in scan_messages(blob) if k == 0x10]
    assert [c.pcm.size for c in chunks] == [len(p) // 2 for p in payloads]
    expected = np.array(
        [v for p in payloads for (v,) in struct.iter_unpack("<h", p)], dtype=np.int16
    )
    np.testing.assert_array_equal(np.concatenate([c.pcm for c in chunks]), expected)
    dtmf = [o for o in out if isinstance(o, Dtmf)]
    assert dtmf == [
        Dtmf(call_id, "customer", m["dtmf"]["digit"], m["dtmf"]["after_samples"] / 8000)
    ]
    assert out[-2:] == [LegEnded(call_id, "customer", "hangup"), Close(reason="hangup")]


@pytest.mark.data
def test_call_capture_carries_the_source_clip() -> None:
    m = json.loads((DATA / "call_slin8.json").read_text())
    clip = SHARED / m["source"]
    if not clip.exists():
        pytest.skip(f"shared data not found at {clip}")
    import soundfile as sf

    source, _ = sf.read(clip, dtype="int16")
    out = replay((DATA / "call_slin8.bin").read_bytes(), [])
    audio = np.concatenate([o.pcm for o in out if isinstance(o, AudioChunk)])
    np.testing.assert_array_equal(audio, source[: m["n_samples"]])


def test_malformed_capture() -> None:
    out = replay((DATA / "malformed.bin").read_bytes(), [])
    call_id = "40325ec2-5efd-4bd3-805f-53576e581d13"
    kinds = [type(o).__name__ for o in out]
    assert kinds == [
        "ProtocolViolation",  # audio before the UUID
        "ProtocolViolation",  # 15-byte UUID
        "ProtocolViolation",  # unknown kind 0x02
        "ProtocolViolation",  # odd-length audio
        "LegStarted",
        "AudioChunk",
        "ProtocolViolation",  # two-digit DTMF
        "ProtocolViolation",  # 'x'
        "Dtmf",
        "LegEnded",  # rate change
        "LegStarted",
        "AudioChunk",
        "ProtocolViolation",  # second UUID
        "ProtocolViolation",  # error 0x02
        "LegEnded",
        "Close",
        "ProtocolViolation",  # hang-up after the end
    ]
    messages = [o.message for o in out if isinstance(o, ProtocolViolation)]
    for needle, text in zip(
        [
            "audio before the UUID",
            "UUID payload is 15 bytes",
            "unknown AudioSocket kind 0x02 (5 bytes)",
            "odd-length audio payload (3 bytes)",
            "DTMF payload b'12'",
            "DTMF payload b'x'",
            "second UUID",
            "error code 0x02 (frame forwarding error)",
            "after the session ended",
        ],
        messages,
        strict=True,
    ):
        assert needle in text
    fatal = [o.fatal for o in out if isinstance(o, ProtocolViolation)]
    assert fatal == [False] * 7 + [True, False]
    assert out[8] == Dtmf(call_id, "customer", "#", 160 / 8000)
    assert out[9] == LegEnded(call_id, "customer", "rate-change")
    restarted = out[10]
    assert isinstance(restarted, LegStarted)
    assert (restarted.call_id, restarted.sample_rate, restarted.t) == (call_id, 16000, 160 / 8000)
    chunk = out[11]
    assert isinstance(chunk, AudioChunk)
    assert (chunk.sample_rate, chunk.t, chunk.pcm.size) == (16000, 160 / 8000, 320)
    assert out[14:16] == [LegEnded(call_id, "customer", "error"), Close(reason="error")]


# Rates as listed at https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/
DOCUMENTED_RATES = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}


def test_rates_follow_the_asterisk_documentation() -> None:
    assert {int(k): v for k, v in KIND_RATES.items()} == DOCUMENTED_RATES
    for kind, rate in DOCUMENTED_RATES.items():
        s = AudioSocketSession(party="agent")
        out = s.receive_data(encode_message(Kind.UUID, bytes(16)) + encode_message(kind, bytes(4)))
        assert isinstance(out[0], LegStarted) and out[0].sample_rate == rate
        assert out[0].party == "agent"


def test_encode_message_layout_and_limits() -> None:
    u = uuid.uuid4()
    assert encode_message(Kind.UUID, u.bytes) == b"\x01\x00\x10" + u.bytes
    assert encode_message(Kind.HANGUP) == b"\x00\x00\x00"  # as the protocol spec shows
    assert encode_message(Kind.DTMF, b"7") == b"\x03\x00\x017"
    assert encode_message(0x10, bytes(320))[:3] == b"\x10\x01\x40"
    with pytest.raises(ProtocolError, match="256"):
        encode_message(256)
    with pytest.raises(ProtocolError, match="65536 bytes"):
        encode_message(Kind.SLIN, bytes(65536))


def test_disconnect_mid_message_and_before_audio() -> None:
    s = AudioSocketSession()
    s.receive_data(encode_message(Kind.UUID, bytes(16)) + encode_message(Kind.SLIN, bytes(8)))
    out = s.receive_data(encode_message(Kind.SLIN, bytes(320))[:100])
    assert out == []
    out = s.connection_lost()
    assert isinstance(out[0], ProtocolViolation) and "100 bytes unparsed" in out[0].message
    assert out[1:] == [
        LegEnded("00000000-0000-0000-0000-000000000000", "customer", "disconnect"),
        Close(reason="disconnect"),
    ]
    assert s.closed and s.connection_lost() == []

    s = AudioSocketSession()
    s.receive_data(encode_message(Kind.UUID, bytes(16)))
    assert s.connection_lost() == [Close(reason="disconnect")]  # no leg was ever started


def test_error_without_code() -> None:
    s = AudioSocketSession()
    out = s.receive_data(encode_message(Kind.ERROR))
    assert out == [
        ProtocolViolation("peer sent error (no code)", fatal=True),
        Close(reason="error"),
    ]


def test_random_bytes_never_raise() -> None:
    rng = random.Random(9)
    for _ in range(300):
        s = AudioSocketSession()
        for _ in range(rng.randrange(1, 20)):
            for o in s.receive_data(rng.randbytes(rng.randrange(0, 300))):
                assert isinstance(
                    o, AudioChunk | LegStarted | LegEnded | Dtmf | ProtocolViolation | Close
                )
        s.connection_lost()


def test_asyncio_adapter_over_loopback_tcp() -> None:
    import asyncio

    from emotion_engine.ingest.audiosocket import AudioSocketProtocol

    blob = (DATA / "call_slin8.bin").read_bytes()

    async def main() -> list[IngestOutput]:
        received: list[IngestOutput] = []
        closed = asyncio.Event()

        def on_output(out: list[IngestOutput]) -> None:
            received.extend(out)
            if any(isinstance(o, Close) for o in out):
                closed.set()

        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: AudioSocketProtocol(on_output), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for start in range(0, len(blob), 1000):  # arbitrary TCP segmentation
            writer.write(blob[start : start + 1000])
            await writer.drain()
        await asyncio.wait_for(closed.wait(), timeout=10)
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # server closed it
        writer.close()
        server.close()
        await server.wait_closed()
        return received

    out = asyncio.run(main())
    assert comparable(out) == comparable(replay(blob, []))
