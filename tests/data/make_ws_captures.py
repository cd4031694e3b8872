"""Write the websocket message captures under tests/data/{twilio,audiohook}/.

Each capture is JSON lines, one websocket frame per line, shaped after the platforms'
documentation (see the module docstrings of emotion_engine.ingest.twilio and
.audiohook). The audio is 1.2 s of two RAVDESS clips from the shared corpora (an
angry one for the customer, a neutral one for the agent), mu-law coded with stdlib
``audioop`` so the tests can check the engine's decoder against a second codec.

Run from the repository root (deterministic; needs the shared corpora):

    .venv/bin/python tests/data/make_ws_captures.py
"""

from __future__ import annotations

import audioop
import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DATA = Path(os.environ.get("EMOTION_ENGINE_DATA", REPO.parent / "shared" / "data"))
CUSTOMER_CLIP = "ravdess/03-01-05-02-01-01-01.flac"  # angry, strong intensity
AGENT_CLIP = "ravdess/03-01-01-01-01-01-01.flac"  # neutral
RATE = 8000
SEGMENT = (1.0, 2.2)  # seconds of each clip: speech, no leading silence

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
CALL_SID = "CA7f3c2e1d0b9a8f7e6d5c4b3a2f1e0d9c"
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"

SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION_ID = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"  # the sample key of the AudioHook docs


def load_segment(name: str) -> np.ndarray:
    samples, rate = sf.read(DATA / name, dtype="int16", always_2d=False)
    assert rate == RATE, (name, rate)
    start, stop = (round(s * RATE) for s in SEGMENT)
    return np.ascontiguousarray(samples[start:stop])


def ulaw(pcm: np.ndarray) -> bytes:
    return audioop.lin2ulaw(pcm.astype("<i2").tobytes(), 2)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dumps(line) + "\n" for line in lines))
    print(f"{path.relative_to(REPO)}: {len(lines)} lines, {path.stat().st_size} bytes")


def twilio_capture(customer: np.ndarray, agent: np.ndarray) -> list[dict[str, Any]]:
    """A <Start><Stream track="both_tracks"> session with DTMF, a mark and an agent gap."""
    chunk = 160  # 20 ms
    n_chunks = len(customer) // chunk
    agent_gap = range(30, 35)  # the agent track sends nothing for 100 ms
    lines: list[dict[str, Any]] = [{"event": "connected", "protocol": "Call", "version": "1.0.0"}]
    seq = 1

    def add(msg: dict[str, Any]) -> None:
        nonlocal seq
        lines.append({"event": msg.pop("event"), "sequenceNumber": str(seq), **msg})
        seq += 1

    add(
        {
            "event": "start",
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": STREAM_SID,
                "callSid": CALL_SID,
                "tracks": ["inbound", "outbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"campaign": "retention"},
            },
            "streamSid": STREAM_SID,
        }
    )
    chunks = {"inbound": 0, "outbound": 0}
    for k in range(n_chunks):
        # Real timestamps wobble by a millisecond now and then.
        ts = 20 * k + (1 if k % 7 == 3 else 0)
        for track, pcm in (("inbound", customer), ("outbound", agent)):
            if track == "outbound" and k in agent_gap:
                continue
            chunks[track] += 1
            payload = base64.b64encode(ulaw(pcm[k * chunk : (k + 1) * chunk])).decode()
            add(
                {
                    "event": "media",
                    "media": {
                        "track": track,
                        "chunk": str(chunks[track]),
                        "timestamp": str(ts),
                        "payload": payload,
                    },
                    "streamSid": STREAM_SID,
                }
            )
        if k == 20:
            add(
                {
                    "event": "dtmf",
                    "streamSid": STREAM_SID,
                    "dtmf": {"track": "inbound_track", "digit": "5"},
                }
            )
        if k == 40:
            add({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "greeting-done"}})
    add(
        {
            "event": "stop",
            "streamSid": STREAM_SID,
            "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
        }
    )
    return lines


class _AudioHookScript:
    """Writes client frames and the server answers the protocol demands, in order."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.lines: list[dict[str, Any]] = [{"session": config}]
        self.seq = 0  # client seq
        self.serverseq = 0
        self.position = 0  # samples of stream position (sent + discarded)

    def client(self, mtype: str, parameters: dict[str, Any]) -> None:
        self.seq += 1
        msg = {
            "version": "2",
            "id": SESSION_ID,
            "type": mtype,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": f"PT{self.position / RATE:g}S",
            "parameters": parameters,
        }
        self.lines.append({"client": dumps(msg)})

    def server(self, mtype: str, parameters: dict[str, Any]) -> None:
        self.serverseq += 1
        msg = {
            "version": "2",
            "type": mtype,
            "seq": self.serverseq,
            "clientseq": self.seq,
            "id": SESSION_ID,
            "parameters": parameters,
        }
        self.lines.append({"server": dumps(msg)})

    def audio(self, data: bytes, n_samples: int) -> None:
        self.lines.append({"client_binary": base64.b64encode(data).decode()})
        self.position += n_samples


def _open_parameters(media: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "organizationId": ORG_ID,
        "conversationId": CONVERSATION_ID,
        "participant": {
            "id": "883efee8-3d6c-4537-b500-6d7ca4b92fa0",
            "ani": "+1-555-555-1234",
            "aniName": "John Doe",
            "dnis": "+1-800-555-6789",
        },
        "media": media,
        "language": "en-US",
        "customConfig": {},
    }


def _headers() -> dict[str, str]:
    return {
        "Audiohook-Organization-Id": ORG_ID,
        "Audiohook-Correlation-Id": "e160e428-53e2-487c-977d-96989bf5c99d",
        "Audiohook-Session-Id": SESSION_ID,
        "X-API-KEY": API_KEY,
    }


def audiohook_stereo(customer: np.ndarray, agent: np.ndarray) -> list[dict[str, Any]]:
    """Stereo PCMU with ping, pause/resume (with discarded audio), a discard and update."""
    script = _AudioHookScript({"api_key": API_KEY, "headers": _headers()})
    offers = [
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
        {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
        {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000},
    ]
    script.client("open", _open_parameters(offers))
    script.server("opened", {"media": [offers[0]], "startPaused": False})
    frame = 800  # 100 ms per binary frame
    stereo = np.stack([customer, agent], axis=1).reshape(-1)  # external, internal
    n_frames = len(customer) // frame
    for k in range(n_frames):
        lo, hi = k * frame, (k + 1) * frame
        script.audio(ulaw(stereo[2 * lo : 2 * hi]), frame)
        if k == 2:
            script.client("ping", {})
            script.server("pong", {})
        if k == 4:
            # Paused for 300 ms: the client position keeps running, no audio is sent.
            script.client("paused", {})
            start = script.position
            script.position += 2400
            script.client("resumed", {"start": f"PT{start / RATE:g}S", "discarded": "PT0.3S"})
        if k == 7:
            # 200 ms dropped by the client (back-pressure), reported after the fact.
            start = script.position
            script.position += 1600
            script.client("discarded", {"start": f"PT{start / RATE:g}S", "discarded": "PT0.2S"})
        if k == 9:
            script.client("update", {"language": "es-US"})
    script.client("close", {"reason": "end"})
    script.server("closed", {})
    return script.lines


def audiohook_mono_l16(agent: np.ndarray) -> list[dict[str, Any]]:
    """A server that takes L16 only: the client's mono L16 internal offer wins."""
    script = _AudioHookScript(
        {"api_key": None, "supported_formats": ["L16"], "headers": _headers()}
    )
    offers = [
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
        {"type": "audio", "format": "L16", "channels": ["internal"], "rate": 8000},
    ]
    script.client("open", _open_parameters(offers))
    script.server("opened", {"media": [offers[1]], "startPaused": False})
    frame = 800
    for k in range(len(agent) // frame):
        script.audio(agent[k * frame : (k + 1) * frame].astype("<i2").tobytes(), frame)
    script.client("close", {"reason": "end"})
    script.server("closed", {})
    return script.lines


def main() -> None:
    customer = load_segment(CUSTOMER_CLIP)
    agent = load_segment(AGENT_CLIP)
    write_lines(HERE / "twilio" / "both_tracks.jsonl", twilio_capture(customer, agent))
    write_lines(HERE / "audiohook" / "stereo_pcmu.jsonl", audiohook_stereo(customer, agent))
    write_lines(HERE / "audiohook" / "mono_l16.jsonl", audiohook_mono_l16(agent))


if __name__ == "__main__":
    main()
