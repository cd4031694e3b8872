"""Twilio Media Streams core: replay of a committed capture, a reordering network,
and every bad input the brief lists. Audio is checked against stdlib ``audioop``."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz import mutate

from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import (
    Close,
    Dtmf,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    Reply,
)
from emotion_engine.ingest.twilio import TwilioMediaSession

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the second G.711 codec (stdlib, deprecated)

CAPTURE = Path(__file__).parent / "data" / "twilio" / "both_tracks.jsonl"
CALL_SID = "CA7f3c2e1d0b9a8f7e6d5c4b3a2f1e0d9c"


def capture_lines() -> list[str]:
    return CAPTURE.read_text().splitlines()


def feed(session: TwilioMediaSession, lines: list[str]) -> list[IngestOutput]:
    out: list[IngestOutput] = []
    for line in lines:
        out += session.receive_text(line)
    return out


def chunks_of(out: list[IngestOutput], party: str) -> list[AudioChunk]:
    return [o for o in out if isinstance(o, AudioChunk) and o.party == party]


def expected_track(lines: list[str], track: str) -> np.ndarray:
    """The track decoded by audioop, with silence where the timestamps jump (> 2 ms)."""
    pieces: list[np.ndarray] = []
    end = 0
    for line in lines:
        msg = json.loads(line)
        if msg["event"] != "media" or msg["media"]["track"] != track:
            continue
        at = round(float(msg["media"]["timestamp"]) * 8)
        if at - end > 16:
            pieces.append(np.zeros(at - end, dtype=np.int16))
            end = at
        pcm = np.frombuffer(
            audioop.ulaw2lin(base64.b64decode(msg["media"]["payload"]), 2), dtype="<i2"
        )
        pieces.append(pcm)
        end += len(pcm)
    return np.concatenate(pieces)


def assert_contiguous(chunks: list[AudioChunk]) -> None:
    t = np.array([c.t for c in chunks])
    n = np.array([len(c.pcm) for c in chunks])
    np.testing.assert_allclose(t, np.concatenate([[0.0], np.cumsum(n)[:-1]]) / 8000, atol=1e-9)


def test_capture_gives_legs_audio_dtmf_and_end() -> None:
    lines = capture_lines()
    session = TwilioMediaSession()
    out = feed(session, lines)

    assert not [o for o in out if isinstance(o, ProtocolViolation | Reply)]
    started = [o for o in out if isinstance(o, LegStarted)]
    assert [(s.call_id, s.party, s.sample_rate, s.t) for s in started] == [
        (CALL_SID, "customer", 8000, 0.0),
        (CALL_SID, "agent", 8000, 0.0),
    ]
    assert started[0].info["custom_parameters"] == {"campaign": "retention"}
    assert out.index(started[1]) < out.index(next(o for o in out if isinstance(o, AudioChunk)))

    for party, track in (("customer", "inbound"), ("agent", "outbound")):
        chunks = chunks_of(out, party)
        assert all(c.sample_rate == 8000 and c.pcm.dtype == np.int16 for c in chunks)
        assert_contiguous(chunks)
        got = np.concatenate([c.pcm for c in chunks])
        np.testing.assert_array_equal(got, expected_track(lines, track))
    # The agent track skips 100 ms (chunks 31..35): filled with 800 samples of zeros.
    assert session.stats.silence_samples == 800
    assert len(np.concatenate([c.pcm for c in chunks_of(out, "agent")])) == 60 * 160

    (dtmf,) = [o for o in out if isinstance(o, Dtmf)]
    assert (dtmf.call_id, dtmf.party, dtmf.digit) == (CALL_SID, "customer", "5")
    assert dtmf.t == pytest.approx(21 * 160 / 8000)  # after the 21st inbound chunk

    assert out[-3:] == [
        LegEnded(CALL_SID, "customer", "hangup"),
        LegEnded(CALL_SID, "agent", "hangup"),
        Close(1000, "stream stopped"),
    ]
    assert (session.stats.duplicates, session.stats.missing, session.stats.late) == (0, 0, 0)


def shuffled_network(lines: list[str]) -> tuple[list[str], int, str]:
    """Reverse every block of 3 sequenced messages, send every 10th twice, lose one."""
    head, rest = lines[:1], lines[1:-1]
    lost = next(
        i
        for i, line in enumerate(rest)
        if '"track":"inbound","chunk":"50"' in line  # a mid-call customer chunk
    )
    lost_line = rest.pop(lost)
    out: list[str] = []
    duplicated = 0
    for i in range(0, len(rest), 3):
        for line in reversed(rest[i : i + 3]):
            out.append(line)
            if len(out) % 10 == 0:
                out.append(line)
                duplicated += 1
    return head + out + lines[-1:], duplicated, lost_line


def test_reordering_duplicates_and_loss() -> None:
    lines = capture_lines()
    network, duplicated, lost_line = shuffled_network(lines)
    session = TwilioMediaSession(reorder_window=4)
    out = feed(session, network)

    assert session.stats.duplicates == duplicated
    assert session.stats.missing == 1
    assert not [o for o in out if isinstance(o, ProtocolViolation)]
    # The lost chunk's 20 ms come back as silence, the rest in order.
    kept = [line for line in lines if line != lost_line]
    for party, track in (("customer", "inbound"), ("agent", "outbound")):
        chunks = chunks_of(out, party)
        assert_contiguous(chunks)
        np.testing.assert_array_equal(
            np.concatenate([c.pcm for c in chunks]), expected_track(kept, track)
        )
    customer = np.concatenate([c.pcm for c in chunks_of(out, "customer")])
    assert not customer[49 * 160 : 50 * 160].any()
    assert customer[48 * 160 : 49 * 160].any() and customer[50 * 160 : 51 * 160].any()
    assert [type(o) for o in out[-3:]] == [LegEnded, LegEnded, Close]


def test_late_message_after_window_is_dropped() -> None:
    lines = capture_lines()
    session = TwilioMediaSession(reorder_window=2)
    held = lines[5]
    out = feed(session, lines[:5] + lines[6:12] + [held])
    assert session.stats.missing == 1 and session.stats.late == 1
    assert "too late" in [o for o in out if isinstance(o, ProtocolViolation)][-1].message


def test_custom_call_id_parameter_wins() -> None:
    lines = capture_lines()
    start = json.loads(lines[1])
    start["start"]["customParameters"]["call_id"] = "crm-42"
    out = feed(TwilioMediaSession(), [lines[0], json.dumps(start), lines[2]])
    assert {o.call_id for o in out if isinstance(o, LegStarted | AudioChunk)} == {"crm-42"}


def test_connection_lost_ends_open_legs() -> None:
    lines = capture_lines()
    session = TwilioMediaSession()
    feed(session, lines[:20])
    assert session.connection_lost() == [
        LegEnded(CALL_SID, "customer", "disconnect"),
        LegEnded(CALL_SID, "agent", "disconnect"),
    ]
    assert session.connection_lost() == []


def test_alaw_stream_decodes_like_audioop() -> None:
    lines = capture_lines()
    start = json.loads(lines[1])
    start["start"]["mediaFormat"]["encoding"] = "audio/x-alaw"
    codes = bytes(range(256))
    media = {
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": start["streamSid"],
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(codes).decode(),
        },
    }
    out = feed(TwilioMediaSession(), [json.dumps(start), json.dumps(media)])
    (chunk,) = [o for o in out if isinstance(o, AudioChunk)]
    np.testing.assert_array_equal(chunk.pcm, np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))


def test_timestamp_jump_beyond_fill_limit_moves_timeline() -> None:
    lines = capture_lines()
    media = json.loads(lines[4])  # second inbound chunk, timestamp 20 ms
    media["media"]["timestamp"] = "60000"
    session = TwilioMediaSession(max_gap_fill_s=5.0)
    out = feed(session, [*lines[:4], json.dumps(media)])
    last = [o for o in out if isinstance(o, AudioChunk) and o.party == "customer"][-1]
    assert last.t == pytest.approx(60.0)
    assert any("jumps" in o.message for o in out if isinstance(o, ProtocolViolation))
    assert session.stats.silence_samples == 0


def _media(seq: int, payload: Any = "fn5+", timestamp: Any = "0") -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
            "media": {"track": "inbound", "chunk": "1", "timestamp": timestamp, "payload": payload},
        }
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"sequenceNumber": "2"}', "without a string 'event'"),
        ('{"event": "wobble", "sequenceNumber": "2"}', "unknown event"),
        ('{"event": "media", "sequenceNumber": "two"}', "bad sequenceNumber"),
        (_media(2, payload="@@not base64@@"), "bad base64"),
        (_media(2, payload=17), "payload is not a string"),
        (_media(2, timestamp="soon"), "bad media timestamp"),
        ('{"event": "dtmf", "sequenceNumber": "2", "dtmf": {}}', "without a digit"),
        ("x" * 70_000, "exceeds max_message_bytes"),
    ],
)
def test_bad_messages_after_start_are_violations(text: str, needle: str) -> None:
    lines = capture_lines()
    session = TwilioMediaSession(reorder_window=0)
    feed(session, lines[:2])
    out = session.receive_text(text)
    violations = [o for o in out if isinstance(o, ProtocolViolation)]
    assert violations and needle in violations[0].message
    assert not any(v.fatal for v in violations)


def test_media_before_start_is_a_violation() -> None:
    session = TwilioMediaSession(reorder_window=2)
    out = feed(session, [_media(seq) for seq in range(2, 6)])
    violations = [o for o in out if isinstance(o, ProtocolViolation)]
    assert violations and all("before 'start'" in v.message for v in violations)
    assert not [o for o in out if isinstance(o, AudioChunk)]
    unsequenced = json.loads(_media(9))
    del unsequenced["sequenceNumber"]
    out = TwilioMediaSession().receive_text(json.dumps(unsequenced))
    assert any("before 'start'" in o.message for o in out if isinstance(o, ProtocolViolation))


def test_binary_frame_is_a_violation() -> None:
    (out,) = TwilioMediaSession().receive_bytes(b"\x00\x01")
    assert isinstance(out, ProtocolViolation) and not out.fatal


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    ],
)
def test_unsupported_media_format_ends_session(media_format: dict[str, Any]) -> None:
    lines = capture_lines()
    start = json.loads(lines[1])
    start["start"]["mediaFormat"] = media_format
    session = TwilioMediaSession()
    out = session.receive_text(json.dumps(start))
    assert isinstance(out[0], ProtocolViolation) and out[0].fatal
    assert isinstance(out[-1], Close) and out[-1].code == 1003
    assert session.receive_text(lines[2]) == []  # the session is over


def test_wild_sequence_jump_is_dropped() -> None:
    lines = capture_lines()
    session = TwilioMediaSession(reorder_window=0)
    feed(session, lines[:3])
    out = session.receive_text(_media(10**9))
    assert any("jumps" in o.message for o in out if isinstance(o, ProtocolViolation))
    assert [o for o in session.receive_text(lines[3]) if isinstance(o, AudioChunk)]


def test_late_start_is_still_used() -> None:
    lines = capture_lines()
    session = TwilioMediaSession(reorder_window=0)
    out = feed(session, [lines[0], lines[3], lines[1], lines[4]])
    assert session.call_id == CALL_SID
    assert [o.party for o in out if isinstance(o, LegStarted)] == ["customer", "agent"]
    assert [o for o in out if isinstance(o, AudioChunk)]


def test_mutated_messages_never_raise() -> None:
    rng = np.random.default_rng(7)
    lines = capture_lines()[:40]
    for _ in range(200):
        session = TwilioMediaSession(reorder_window=int(rng.integers(0, 6)))
        for line in lines:
            msg = json.loads(line)
            out = session.receive_text(json.dumps(mutate(msg, rng) if rng.random() < 0.3 else msg))
            assert all(isinstance(o, IngestOutput) for o in out)
        session.connection_lost()
