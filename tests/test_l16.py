"""L16 websocket core (jambonz listen, mod_audio_fork, Vonage): metadata, buffering,
frame splitting and bad inputs. Audio is compared with the arrays it was made from,
packed by ``struct`` (a second path to the little-endian layout)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
)
from emotion_engine.ingest.l16 import L16Session, parse_rate

CALL_SID = "b7a1c3e2-5f2a-4d8e-9b1c-6a3f2e1d0c9b"
JAMBONZ_META: dict[str, object] = {
    "callSid": CALL_SID,
    "direction": "inbound",
    "from": "+15083084809",
    "to": "+15083728299",
    "callId": "a1b2c3@10.0.0.1",
    "sampleRate": 16000,
    "mixType": "stereo",
}


def signal(n: int, seed: int) -> np.ndarray:
    """Full-scale-ish test audio, including the int16 extremes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, size=n, dtype=np.int32).astype(np.int16)
    x[:2] = (-32768, 32767)
    return x


def pack(*channels: np.ndarray) -> bytes:
    interleaved = [int(v) for frame in zip(*channels, strict=True) for v in frame]
    return struct.pack(f"<{len(interleaved)}h", *interleaved)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``data`` into frames of the given sizes (cycled), many of them odd."""
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


def audio_of(out: list[IngestOutput], party: str) -> tuple[np.ndarray, list[AudioChunk]]:
    chunks = [o for o in out if isinstance(o, AudioChunk) and o.party == party]
    return np.concatenate([c.pcm for c in chunks]), chunks


def test_jambonz_stereo_with_split_samples() -> None:
    caller, callee = signal(4000, 1), signal(4000, 2)
    session = L16Session()
    out = session.receive_text(json.dumps(JAMBONZ_META))
    for frame in split(pack(caller, callee), [641, 3, 1, 1280, 7]):
        out += session.receive_bytes(frame)
    out += session.connection_lost()

    started = [o for o in out if isinstance(o, LegStarted)]
    assert [(s.call_id, s.party, s.sample_rate) for s in started] == [
        (CALL_SID, "customer", 16000),
        (CALL_SID, "agent", 16000),
    ]
    assert started[0].info["metadata"]["from"] == "+15083084809"
    for party, expected in (("customer", caller), ("agent", callee)):
        got, chunks = audio_of(out, party)
        np.testing.assert_array_equal(got, expected)
        n = np.array([len(c.pcm) for c in chunks])
        np.testing.assert_allclose(
            [c.t for c in chunks], np.concatenate([[0], np.cumsum(n)[:-1]]) / 16000
        )
        assert all(c.sample_rate == 16000 for c in chunks)
    assert out[-2:] == [
        LegEnded(CALL_SID, "customer", "disconnect"),
        LegEnded(CALL_SID, "agent", "disconnect"),
    ]
    assert not [o for o in out if isinstance(o, ProtocolViolation)]


def test_audio_before_metadata_is_held_then_released() -> None:
    x = signal(1600, 3)
    session = L16Session(max_pending_bytes=4000)
    frames = split(pack(x), [321, 319, 640])
    out: list[IngestOutput] = []
    for frame in frames[:3]:
        out += session.receive_bytes(frame)
    assert out == []
    out += session.receive_text(json.dumps({**JAMBONZ_META, "mixType": "mono", "sampleRate": 8000}))
    for frame in frames[3:]:
        out += session.receive_bytes(frame)
    assert isinstance(out[0], LegStarted) and out[0].party == "customer"
    got, _ = audio_of(out, "customer")
    np.testing.assert_array_equal(got, x)


def test_metadata_bound_exceeded() -> None:
    session = L16Session(max_pending_bytes=1000)
    assert session.receive_bytes(b"\x00" * 800) == []
    out = session.receive_bytes(b"\x00" * 800)
    assert isinstance(out[0], ProtocolViolation) and out[0].fatal
    assert isinstance(out[-1], Close) and out[-1].code == 1008
    assert session.receive_text(json.dumps(JAMBONZ_META)) == []  # over

    lenient = L16Session(max_pending_bytes=1000, require_metadata=False, call_id="c-1")
    lenient.receive_bytes(b"\x01\x00" * 400)
    out = lenient.receive_bytes(b"\x02\x00" * 400)
    assert isinstance(out[0], ProtocolViolation) and not out[0].fatal
    assert [(o.call_id, o.sample_rate) for o in out if isinstance(o, LegStarted)] == [("c-1", 8000)]
    got, _ = audio_of(out, "customer")
    np.testing.assert_array_equal(got, [1] * 400 + [2] * 400)


def test_vonage_content_type_and_dtmf() -> None:
    session = L16Session(call_id="vonage-call")
    out = session.receive_text(
        json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})
    )
    (leg,) = [o for o in out if isinstance(o, LegStarted)]
    assert (leg.call_id, leg.sample_rate, leg.party) == ("vonage-call", 16000, "customer")
    session.receive_bytes(b"\x00\x00" * 320)
    (dtmf,) = session.receive_text(json.dumps({"event": "websocket:dtmf", "digit": "7"}))
    assert dtmf == Dtmf("vonage-call", "customer", "7", 0.02)


def test_mod_audio_fork_metadata_without_format_uses_defaults() -> None:
    session = L16Session(default_sample_rate=16000, default_mix_type="mixed")
    out = session.receive_text(json.dumps({"uuid": "fs-uuid-1", "to": "6173333456"}))
    (leg,) = [o for o in out if isinstance(o, LegStarted)]
    assert (leg.call_id, leg.sample_rate, leg.party) == ("fs-uuid-1", 16000, "customer")
    assert leg.info["mix_type"] == "mixed"


@pytest.mark.parametrize(
    ("raw", "hz"), [(8000, 8000), ("16000", 16000), ("16k", 16000), ("8K", 8000), (24000.0, 24000)]
)
def test_parse_rate(raw: object, hz: int) -> None:
    assert parse_rate(raw) == hz


@pytest.mark.parametrize("raw", [True, "fast", "k", 8000.5, None])
def test_parse_rate_rejects(raw: object) -> None:
    assert parse_rate(raw) is None


def test_jambonz_dtmf_on_the_caller_leg() -> None:
    session = L16Session()
    session.receive_text(json.dumps(JAMBONZ_META))
    session.receive_bytes(pack(signal(160, 4), signal(160, 5)))
    (dtmf,) = session.receive_text(json.dumps({"event": "dtmf", "dtmf": "#", "duration": "1600"}))
    assert dtmf == Dtmf(CALL_SID, "customer", "#", 0.01)


def test_metadata_update_keeps_unknown_keys_and_refuses_format_change() -> None:
    session = L16Session()
    session.receive_text(json.dumps(JAMBONZ_META))
    assert session.receive_text(json.dumps({"customerTier": "gold"})) == []
    assert session.metadata["customerTier"] == "gold"
    (violation,) = session.receive_text(json.dumps({"sampleRate": 8000}))
    assert isinstance(violation, ProtocolViolation) and "refused" in violation.message
    assert session.sample_rate == 16000


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"sampleRate": 7000}, "unsupported sample rate"),
        ({"mixType": "quad"}, "unsupported mixType"),
        ({"content-type": "audio/pcmu;rate=8000"}, "unsupported content-type"),
    ],
)
def test_unsupported_format_ends_session(meta: dict[str, object], needle: str) -> None:
    session = L16Session()
    out = session.receive_text(json.dumps(meta))
    assert isinstance(out[0], ProtocolViolation) and out[0].fatal and needle in out[0].message
    assert isinstance(out[-1], Close) and out[-1].code == 1003


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{nope", "malformed JSON"),
        ('"just a string"', "not a JSON object"),
        ('{"event": "dtmf"}', "without a digit"),
    ],
)
def test_bad_text_frames_are_violations(text: str, needle: str) -> None:
    session = L16Session()
    (violation,) = session.receive_text(text)
    assert isinstance(violation, ProtocolViolation) and needle in violation.message
    assert not violation.fatal
    assert not session.started  # still waiting for real metadata


def test_oversized_frames_are_dropped() -> None:
    session = L16Session(max_message_bytes=1000)
    (v1,) = session.receive_text(json.dumps({"pad": "x" * 2000}))
    (v2,) = session.receive_bytes(b"\x00" * 2000)
    assert isinstance(v1, ProtocolViolation) and "too large" in v1.message
    assert isinstance(v2, ProtocolViolation) and "too large" in v2.message


def test_trailing_half_sample_is_reported_on_close() -> None:
    session = L16Session()
    session.receive_text(json.dumps({**JAMBONZ_META, "mixType": "mono"}))
    out = session.receive_bytes(b"\x01\x00\x02")
    assert [o.pcm.tolist() for o in out if isinstance(o, AudioChunk)] == [[1]]
    out = session.connection_lost()
    assert isinstance(out[0], ProtocolViolation) and "1 trailing bytes" in out[0].message
    assert out[1] == LegEnded(CALL_SID, "customer", "disconnect")


def test_random_frames_never_raise() -> None:
    rng = np.random.default_rng(5)
    weird: list[object] = [None, True, -1, 10**30, 1.5, "", "16k", [], {}, "stereo", "mono"]
    for _ in range(300):
        session = L16Session(max_pending_bytes=int(rng.integers(0, 200)))
        meta = {k: v for k, v in JAMBONZ_META.items() if rng.random() > 0.2}
        for key in ("sampleRate", "mixType", "content-type"):
            if rng.random() < 0.3:
                meta[key] = weird[rng.integers(len(weird))]
        frames: list[bytes | str] = [
            rng.bytes(int(rng.integers(0, 80))) for _ in range(int(rng.integers(0, 6)))
        ]
        frames.insert(int(rng.integers(len(frames) + 1)), json.dumps(meta))
        frames.append(json.dumps({"event": "dtmf", "dtmf": weird[rng.integers(len(weird))]}))
        for frame in frames:
            if isinstance(frame, str):
                out = session.receive_text(frame)
            else:
                out = session.receive_bytes(frame)
            assert all(isinstance(o, IngestOutput) for o in out)
        session.connection_lost()
