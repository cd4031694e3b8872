"""AudioHook v2 server core: replay of committed session transcripts (the server's
answers are in the transcript), authentication, sequence checks and bad inputs."""

from __future__ import annotations

import base64
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz import mutate

from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.audiohook import AudioHookSession, parse_duration
from emotion_engine.ingest.base import (
    Close,
    IngestOutput,
    LegEnded,
    LegStarted,
    ProtocolViolation,
    Reply,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the second G.711 codec (stdlib, deprecated)

DATA = Path(__file__).parent / "data" / "audiohook"
SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION_ID = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def session_for(config: dict[str, Any]) -> AudioHookSession:
    formats = tuple(config.get("supported_formats", ("PCMU", "L16")))
    return AudioHookSession(api_key=config["api_key"], supported_formats=formats)


def replay(lines: list[dict[str, Any]]) -> tuple[AudioHookSession, list[IngestOutput]]:
    session = session_for(lines[0]["session"])
    assert session.authenticate(lines[0]["session"]["headers"]) == []
    out: list[IngestOutput] = []
    for line in lines[1:]:
        if "client" in line:
            out += session.receive_text(line["client"])
        elif "client_binary" in line:
            out += session.receive_bytes(base64.b64decode(line["client_binary"]))
    return session, out


def frame_positions(lines: list[dict[str, Any]]) -> list[float]:
    """Stream position (s) of each binary frame, from the client's own ``position``
    fields: the session never reads those, so this is an independent timeline."""
    positions: list[float] = []
    pos = 0.0
    for line in lines[1:]:
        if "client" in line:
            pos = parse_duration(json.loads(line["client"])["position"]) or 0.0
        elif "client_binary" in line:
            positions.append(pos)
            pos += len(base64.b64decode(line["client_binary"])) / frame_bytes(lines) / 8000
    return positions


def frame_bytes(lines: list[dict[str, Any]]) -> int:
    opened = next(json.loads(x["server"]) for x in lines if "server" in x)
    (media,) = opened["parameters"]["media"]
    return len(media["channels"]) * (1 if media["format"] == "PCMU" else 2)


def test_stereo_pcmu_session_replay() -> None:
    lines = load("stereo_pcmu.jsonl")
    session, out = replay(lines)

    replies = [json.loads(o.data) for o in out if isinstance(o, Reply)]
    assert replies == [json.loads(x["server"]) for x in lines if "server" in x]
    assert not [o for o in out if isinstance(o, ProtocolViolation)]

    started = [o for o in out if isinstance(o, LegStarted)]
    assert [(s.call_id, s.party, s.sample_rate) for s in started] == [
        (CONVERSATION_ID, "customer", 8000),
        (CONVERSATION_ID, "agent", 8000),
    ]
    assert started[0].info["participant"]["ani"] == "+1-555-555-1234"

    raw = b"".join(base64.b64decode(x["client_binary"]) for x in lines if "client_binary" in x)
    positions = frame_positions(lines)
    for offset, party in ((0, "customer"), (1, "agent")):
        chunks = [o for o in out if isinstance(o, AudioChunk) and o.party == party]
        expected = np.frombuffer(audioop.ulaw2lin(raw[offset::2], 2), dtype="<i2")
        np.testing.assert_array_equal(np.concatenate([c.pcm for c in chunks]), expected)
        np.testing.assert_allclose([c.t for c in chunks], positions, atol=1e-9)
    # Pause (0.3 s) and discard (0.2 s) put the last frame 0.5 s past its byte count.
    assert positions[-1] == pytest.approx(1.1 + 0.5)

    assert out[-3:] == [
        LegEnded(CONVERSATION_ID, "customer", "hangup"),
        LegEnded(CONVERSATION_ID, "agent", "hangup"),
        Close(1000, "closed"),
    ]
    assert session.language == "es-US"
    assert session.state == "closed"


def test_mono_l16_session_replay() -> None:
    lines = load("mono_l16.jsonl")
    _, out = replay(lines)
    replies = [json.loads(o.data) for o in out if isinstance(o, Reply)]
    assert replies == [json.loads(x["server"]) for x in lines if "server" in x]
    assert [(o.party, o.info["format"]) for o in out if isinstance(o, LegStarted)] == [
        ("agent", "L16")
    ]
    raw = b"".join(base64.b64decode(x["client_binary"]) for x in lines if "client_binary" in x)
    chunks = [o for o in out if isinstance(o, AudioChunk)]
    assert {c.party for c in chunks} == {"agent"}
    expected = struct.unpack(f"<{len(raw) // 2}h", raw)
    np.testing.assert_array_equal(np.concatenate([c.pcm for c in chunks]), expected)
    np.testing.assert_allclose([c.t for c in chunks], frame_positions(lines), atol=1e-9)


# --------------------------------------------------------------------- helpers


class Client:
    """A scripted AudioHook client with correct sequence numbers unless told otherwise."""

    def __init__(self, session: AudioHookSession) -> None:
        self.session = session
        self.seq = 0
        self.serverseq = 0

    def send(self, mtype: str, parameters: dict[str, Any], **override: Any) -> list[IngestOutput]:
        self.seq += 1
        msg = {
            "version": "2",
            "id": SESSION_ID,
            "type": mtype,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": "PT0S",
            "parameters": parameters,
        }
        msg.update(override)
        out = self.session.receive_text(json.dumps(msg))
        for o in out:
            if isinstance(o, Reply):
                self.serverseq = json.loads(o.data)["seq"]
        return out

    def open(self, media: list[dict[str, Any]] | None = None, **params: Any) -> list[IngestOutput]:
        return self.send(
            "open",
            {
                "organizationId": ORG_ID,
                "conversationId": CONVERSATION_ID,
                "participant": {"id": "p", "ani": "", "aniName": "", "dnis": ""},
                "media": [STEREO] if media is None else media,
                **params,
            },
        )


def replies(out: list[IngestOutput]) -> list[dict[str, Any]]:
    return [json.loads(o.data) for o in out if isinstance(o, Reply)]


def opened_session(**kwargs: Any) -> tuple[AudioHookSession, Client]:
    session = AudioHookSession(api_key=None, **kwargs)
    client = Client(session)
    client.open()
    return session, client


def assert_disconnect(out: list[IngestOutput], reason: str, needle: str) -> dict[str, Any]:
    (violation,) = [o for o in out if isinstance(o, ProtocolViolation)]
    assert violation.fatal and needle in violation.message
    (reply,) = replies(out)
    assert reply["type"] == "disconnect" and reply["parameters"]["reason"] == reason
    assert needle in reply["parameters"]["info"]
    assert not [o for o in out if isinstance(o, Close)]  # the client runs the close
    return reply


# ---------------------------------------------------------------- authentication


def test_authenticate_checks_api_key() -> None:
    headers = {"x-api-key": API_KEY, "Audiohook-Session-Id": SESSION_ID}
    assert AudioHookSession(api_key=API_KEY).authenticate(headers) == []
    assert AudioHookSession(api_key=None).authenticate({}) == []
    for bad in ({}, {"X-API-KEY": "wrong"}):
        out = AudioHookSession(api_key=API_KEY).authenticate(bad)
        assert isinstance(out[0], ProtocolViolation) and out[0].fatal
        assert out[-1] == Close(1008, "unauthorized")


def test_open_after_failed_authentication_is_unauthorized() -> None:
    session = AudioHookSession(api_key=API_KEY)
    session.authenticate({"X-API-KEY": "nope"})
    out = Client(session).open()
    assert_disconnect(out, "unauthorized", "X-API-KEY")
    assert not [o for o in out if isinstance(o, LegStarted)]


def test_organization_mismatch_is_unauthorized() -> None:
    session = AudioHookSession(api_key=None)
    session.authenticate({"Audiohook-Organization-Id": "11111111-2222-3333-4444-555555555555"})
    assert_disconnect(Client(session).open(), "unauthorized", "organizationId")


# ------------------------------------------------------------------- sequencing


def test_seq_gap_is_an_error_and_close_still_works() -> None:
    session, client = opened_session()
    client.seq += 1  # skip one
    reply = assert_disconnect(client.send("ping", {}), "error", "Invalid seq value 3")
    assert (reply["seq"], reply["clientseq"]) == (2, 1)
    assert session.receive_bytes(b"\xff\xff") == []  # audio in flight is ignored
    client.seq = 1
    out = client.send("close", {"reason": "error"})
    assert replies(out)[0]["type"] == "closed" and replies(out)[0]["seq"] == 3
    assert [o.reason for o in out if isinstance(o, LegEnded)] == ["error", "error"]
    assert out[-1] == Close(1000, "closed")


def test_serverseq_ahead_is_an_error() -> None:
    _, client = opened_session()
    assert_disconnect(client.send("ping", {}, serverseq=5), "error", "Invalid serverseq value 5")


def test_session_id_mismatch_is_an_error() -> None:
    _, client = opened_session()
    assert_disconnect(client.send("ping", {}, id="other"), "error", "Session identifier mismatch")


def test_ping_pong_and_header_session_id() -> None:
    session = AudioHookSession(api_key=None)
    session.authenticate({"audiohook-session-id": SESSION_ID})
    client = Client(session)
    client.open()
    (pong,) = replies(client.send("ping", {"rtt": "PT0.05S"}))
    assert pong == {
        "version": "2",
        "type": "pong",
        "seq": 2,
        "clientseq": 2,
        "id": SESSION_ID,
        "parameters": {},
    }


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{oops", "not valid JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"version": "1", "id": SESSION_ID}), "version '1'"),
        ('{"version": "2", "id": "x", "type": "ping", "seq": "1"}', "position"),
        ("x" * (64 * 1024 + 1), "too large"),
    ],
)
def test_malformed_text_is_a_client_error(text: str, needle: str) -> None:
    session = AudioHookSession(api_key=None)
    assert_disconnect(session.receive_text(text), "error", needle)


def test_unknown_type_and_bad_open_parameters() -> None:
    assert_disconnect(
        Client(AudioHookSession(api_key=None)).send("dance", {}), "error", "'dance' is not"
    )
    client = Client(AudioHookSession(api_key=None))
    assert_disconnect(client.send("open", {"media": []}), "error", "'open' parameters")


def test_binary_before_opened_is_an_error() -> None:
    session = AudioHookSession(api_key=None)
    assert_disconnect(session.receive_bytes(b"\xff" * 160), "error", "state preparing")


@pytest.mark.parametrize(("media", "size"), [(STEREO, 161), ({**STEREO, "format": "L16"}, 6)])
def test_partial_sample_frame_is_an_error(media: dict[str, Any], size: int) -> None:
    session = AudioHookSession(api_key=None)
    Client(session).open([media])
    assert_disconnect(session.receive_bytes(b"\x00" * size), "error", f"{size} bytes")


def test_no_supported_offer_opens_without_media() -> None:
    session = AudioHookSession(api_key=None, supported_formats=("L16",))
    out = Client(session).open([STEREO, {**STEREO, "rate": 16000, "format": "L16"}])
    (opened,) = replies(out)
    assert opened["type"] == "opened" and opened["parameters"]["media"] == []
    assert not [o for o in out if isinstance(o, LegStarted)]
    assert_disconnect(session.receive_bytes(b"\x00\x00"), "error", "No media selected")


def test_audio_while_paused_is_an_error() -> None:
    session, client = opened_session()
    assert client.send("paused", {}) == []
    assert_disconnect(session.receive_bytes(b"\xff\xff"), "error", "state paused")


def test_client_error_message_is_reported() -> None:
    _, client = opened_session()
    (violation,) = client.send("error", {"code": 408, "message": "Close transaction timeout"})
    assert isinstance(violation, ProtocolViolation) and not violation.fatal
    assert "408" in violation.message


def test_connection_probe_starts_no_legs() -> None:
    session = AudioHookSession(api_key=None)
    client = Client(session)
    params = {"conversationId": "00000000-0000-0000-0000-000000000000"}
    out = client.send(
        "open",
        {"organizationId": ORG_ID, "participant": {}, "media": [STEREO], **params},
    )
    assert replies(out)[0]["type"] == "opened"
    assert not [o for o in out if isinstance(o, LegStarted)]
    assert session.receive_bytes(b"\xff" * 320) == []
    assert session.position_samples == 160


def test_connection_lost_ends_legs() -> None:
    session, _ = opened_session()
    assert session.connection_lost() == [
        LegEnded(CONVERSATION_ID, "customer", "disconnect"),
        LegEnded(CONVERSATION_ID, "agent", "disconnect"),
    ]
    assert session.connection_lost() == []


def test_internal_first_channel_order_is_respected() -> None:
    session = AudioHookSession(api_key=None)
    Client(session).open([{**STEREO, "channels": ["internal", "external"]}])
    codes = bytes([0x00, 0xFF] * 80)  # internal loud, external silent
    out = session.receive_bytes(codes)
    by_party = {o.party: o.pcm for o in out if isinstance(o, AudioChunk)}
    assert not by_party["customer"].any()
    assert by_party["agent"][0] == struct.unpack("<h", audioop.ulaw2lin(b"\x00", 2))[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT0S", 0.0), ("PT1.23S", 1.23), ("PT2M3.5S", 123.5), ("PT1H", 3600.0), ("P1DT1S", 86401.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1.2S", "PT", "P", "PTS", "PT-1S", "PT1.S", ""])
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_mutated_messages_and_frames_never_raise() -> None:
    rng = np.random.default_rng(11)
    lines = load("stereo_pcmu.jsonl")
    for _ in range(200):
        session = AudioHookSession(api_key=None)
        for line in lines[1:]:
            if "client" in line:
                msg = json.loads(line["client"])
                out = session.receive_text(json.dumps(mutate(msg, rng)))
            elif "client_binary" in line:
                data = base64.b64decode(line["client_binary"])
                out = session.receive_bytes(data[: int(rng.integers(len(data) + 1))])
            else:
                continue
            assert all(isinstance(o, IngestOutput) for o in out)
        session.connection_lost()
