"""Every ingest parser under a fixed, deterministic fuzz run (``make fuzz`` runs them
for 10^6 coverage-guided inputs each under atheris), the fuzzers' past findings
replayed from ``tests/data/fuzz``, and each fix checked on its own input."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # benchmarks/ lives in the checkout, not the package

from benchmarks.fuzz.seeds import SDP_OFFER, seeds, sip_request  # noqa: E402
from benchmarks.fuzz.targets import (  # noqa: E402
    TARGETS,
    Broken,
    Target,
    decode_frames,
    encode_frames,
    mutations,
    unexpected,
)
from emotion_engine.errors import ProtocolError  # noqa: E402
from emotion_engine.frames import AudioChunk  # noqa: E402
from emotion_engine.ingest.audiohook import AudioHookSession, parse_duration  # noqa: E402
from emotion_engine.ingest.audiosocket import AudioSocketSession  # noqa: E402
from emotion_engine.ingest.base import LegStarted, ProtocolViolation, loads_json, parse_decimal  # noqa: E402
from emotion_engine.ingest.l16 import L16Session, parse_rate  # noqa: E402
from emotion_engine.ingest.rtp import RtpIngest, RtpPacket  # noqa: E402
from emotion_engine.ingest.sdp import answer_offer, parse_sdp  # noqa: E402
from emotion_engine.ingest.sip import (  # noqa: E402
    MediaStart,
    Peer,
    SipSend,
    SipStreamFramer,
    SipUas,
    parse_message,
)
from emotion_engine.ingest.siprec import parse_metadata  # noqa: E402
from emotion_engine.ingest.twilio import TwilioMediaSession  # noqa: E402

FINDINGS = Path(__file__).parent / "data" / "fuzz"
# Mutated inputs per parser: a few seconds each on a loaded 2-core machine.
N_MUTATIONS = {
    "rtp": 2000,
    "sip": 1500,
    "sdp": 5000,
    "siprec": 5000,
    "twilio": 3000,
    "audiohook": 3000,
    "l16": 5000,
    "audiosocket": 2000,
}
PEER = Peer("udp", "127.0.0.1", 5070)
LOCAL = ("127.0.0.1", 5060)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """The cores log every violation; thousands of lines would only slow the run."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_every_parser_has_a_target_with_seeds_and_a_mutation_budget() -> None:
    assert (
        set(TARGETS)
        == set(N_MUTATIONS)
        == {
            "rtp",
            "sip",
            "sdp",
            "siprec",
            "twilio",
            "audiohook",
            "l16",
            "audiosocket",
        }
    )
    for name in TARGETS:
        assert len(seeds(name)) >= 3, name


@pytest.mark.parametrize("name", list(N_MUTATIONS))
def test_parser_raises_nothing_unexpected_on_seeds_and_mutations(name: str) -> None:
    target = TARGETS[name]
    found: dict[str, tuple[BaseException, bytes]] = {}
    inputs = [*seeds(name), *mutations(seeds(name), N_MUTATIONS[name], seed=0)]
    for data in inputs:
        exc = unexpected(target, data)
        if exc is not None:
            found.setdefault(f"{type(exc).__name__}: {exc}"[:200], (exc, data))
    assert not found, "\n".join(f"{k}\n  input {d[:120]!r}" for k, (_, d) in found.items())


def test_the_fuzzers_past_findings_stay_fixed() -> None:
    files = sorted(FINDINGS.glob("*.bin"))
    assert {f.name.split("-")[0] for f in files} >= {"sip", "sdp", "siprec", "twilio", "l16"}
    for path in files:
        exc = unexpected(TARGETS[path.name.split("-")[0]], path.read_bytes())
        assert exc is None, f"{path.name}: {exc!r}"


def test_unexpected_reports_what_the_parser_may_not_raise() -> None:
    def boom(data: bytes) -> None:
        if data == b"broken":
            raise Broken("output the server cannot use")
        raise ProtocolError(data.decode())

    documented = Target("t", boom, (ProtocolError,), "boom")
    assert unexpected(documented, b"bad input") is None
    assert isinstance(unexpected(documented, b"broken"), Broken)
    assert isinstance(unexpected(Target("t", boom, (), "boom"), b"x"), ProtocolError)


def test_rtp_target_reads_datagrams_as_the_server_does() -> None:
    from benchmarks.fuzz.targets import RTP_MAX_DATAGRAM
    from emotion_engine.server import RTP_MAX_DATAGRAM as SERVER_MAX

    assert RTP_MAX_DATAGRAM == SERVER_MAX


def test_frame_format_round_trips() -> None:
    frames: list[str | bytes] = ['{"event":"start"}', b"\x00\n\xff#", "", b""]
    assert decode_frames(encode_frames(frames)) == frames


def test_seeds_reach_the_parsers_main_paths() -> None:
    """Stale seeds would fuzz only the first checks: each reaches audio (or a call)."""

    def audio(session: object, frames: list[str | bytes]) -> int:
        n = 0
        for frame in frames:
            if isinstance(frame, str):
                out = session.receive_text(frame)  # type: ignore[attr-defined]
            else:
                out = session.receive_bytes(frame)  # type: ignore[attr-defined]
            n += sum(isinstance(o, AudioChunk) for o in out)
        return n

    assert audio(TwilioMediaSession(), decode_frames(seeds("twilio")[0])) > 0
    assert audio(L16Session(), decode_frames(seeds("l16")[0])) > 0
    hook = AudioHookSession(api_key=None)
    assert audio(hook, decode_frames(seeds("audiohook")[0])) > 0
    socket_out = AudioSocketSession().receive_data(seeds("audiosocket")[0][1:])
    assert any(isinstance(o, AudioChunk) for o in socket_out)
    uas = SipUas(allocate_port=lambda: 40000)
    first = seeds("sip")[3].split(b"\r\n\x00--\x00\r\n")[0]
    assert any(isinstance(o, MediaStart) for o in uas.receive(first, PEER, 0.0, local=LOCAL))
    assert any(a.accepted for a in answer_offer(parse_sdp(seeds("sdp")[0])))


# -- each fix on its own input ---------------------------------------------------------------


def test_decimal_fields_take_ascii_digits_only_and_bounded() -> None:
    assert parse_decimal("0") == 0 and parse_decimal("65535", max_digits=5) == 65535
    for text in ("", "\u00b2", "\u0663", "-1", "1.0", " 1", "9" * 19, "9" * 5000):
        assert parse_decimal(text) is None, text


def test_peer_json_is_strict() -> None:
    assert loads_json('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for text in ("NaN", '{"a": Infinity}', "[-Infinity]", "1e999", "[" * 5000 + "]" * 5000):
        with pytest.raises(ValueError):
            loads_json(text)


def _sip(data: bytes) -> tuple[list[int], list[str]]:
    out = SipUas(allocate_port=lambda: 40000).receive(data, PEER, 0.0, local=LOCAL)
    statuses = [parse_message(o.data).status for o in out if isinstance(o, SipSend)]
    return statuses, [o.message for o in out if isinstance(o, ProtocolViolation)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # a Contact cut short: once an "internal error" with a traceback per datagram
        (
            sip_request("INVITE", body=SDP_OFFER).replace(
                b"<sip:caller@127.0.0.1:5070>", b"<sip:caller@127"
            ),
            "unterminated <...> in '<sip:caller@127'",
        ),
        (sip_request("OPTIONS").replace(b"CSeq: 1", "CSeq: \u00b2".encode()), "malformed CSeq"),
        (
            sip_request("OPTIONS").replace(b"5070;", "50\u00b2;".encode()),
            "bad port in 'SIP/2.0/UDP",
        ),
        (
            sip_request("OPTIONS").replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 5000),
            "malformed Content-Length '99999",
        ),
    ],
)
def test_malformed_sip_numbers_and_contact_get_400(data: bytes, message: str) -> None:
    statuses, violations = _sip(data)
    assert statuses == [400], violations
    assert any(message in v for v in violations), violations
    assert not any("internal error" in v for v in violations)


def test_sip_status_line_with_a_unicode_digit_is_dropped() -> None:
    response = "SIP/2.0 2\u00b20 OK\r\nCall-ID: x\r\n\r\n".encode()
    with pytest.raises(ProtocolError, match="bad status line"):
        parse_message(response)
    assert _sip(response) == ([], [f"SIP from {PEER}: bad status line 'SIP/2.0 2\u00b20 OK'"])
    framer = SipStreamFramer()
    with pytest.raises(ProtocolError, match="malformed Content-Length"):
        framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: " + b"9" * 5000 + b"\r\n\r\n")


@pytest.mark.parametrize("port", ["\u00b2", "9" * 5000, "\u0663"])
def test_sdp_port_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(ProtocolError, match="bad port"):
        parse_sdp(SDP_OFFER.replace(b"6000", port.encode()))


def test_sdp_format_that_is_no_ascii_number_is_skipped() -> None:
    offer = parse_sdp(SDP_OFFER.replace(b"RTP/AVP 0 8 101", "RTP/AVP \u00b2 0".encode()))
    [answer] = answer_offer(offer)
    assert answer.accepted and answer.codecs == (0,)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [("x-fuzz", "unknown encoding: x-fuzz"), ("shift_jis", "multi-byte encodings")],
)
def test_siprec_metadata_in_an_encoding_xml_cannot_read_is_a_protocol_error(
    encoding: str, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_metadata(f'<?xml version="1.0" encoding="{encoding}"?><recording/>'.encode())


def test_rtp_batch_opens_legs_in_arrival_order_whatever_junk_came_first() -> None:
    """A short datagram's "SSRC" bytes (zeros here, stale bytes in the server's reused
    rows) once put it in the group of the leg with that SSRC, which then opened at
    the junk's place in the batch: at max_legs the wrong leg won."""

    def packet(ssrc: int) -> bytes:
        return RtpPacket(payload_type=0, sequence=1, timestamp=0, ssrc=ssrc, payload=bytes(160))

    datagrams = [b"\x80", packet(5).serialize(), packet(0).serialize()]
    rows = np.zeros((3, 2048), np.uint8)
    for i, data in enumerate(datagrams):
        rows[i, : len(data)] = np.frombuffer(data, np.uint8)
    addrs = [("198.51.100.7", 4000)] * 3
    one, batch = RtpIngest(max_legs=1), RtpIngest(max_legs=1)
    started = [o for d in datagrams for o in one.receive_datagram(d, addrs[0], 0.0)]
    batched = batch.receive_batch(rows, [len(d) for d in datagrams], addrs, 0.0)
    [first] = [o.info["ssrc"] for o in started if isinstance(o, LegStarted)]
    assert first == 5
    assert [o.info["ssrc"] for o in batched if isinstance(o, LegStarted)] == [first]


def _twilio_with(media_timestamp: object) -> list[object]:
    lines = (Path(__file__).parent / "data" / "twilio" / "both_tracks.jsonl").read_text()
    first = lines.splitlines()[:4]
    msg = json.loads(first[3])
    msg["media"]["timestamp"] = media_timestamp
    session = TwilioMediaSession()
    out: list[object] = []
    for line in [*first[:3], json.dumps(msg)]:
        out += session.receive_text(line)
    return out


@pytest.mark.parametrize("timestamp", ["1e308", 1e308, 10**400, "9" * 400, str(2**31 + 1)])
def test_twilio_timestamp_out_of_range_is_a_violation(timestamp: object) -> None:
    out = _twilio_with(timestamp)  # was OverflowError -> close 1011 "internal error"
    [violation] = [o for o in out if isinstance(o, ProtocolViolation)]
    assert violation.message.startswith("twilio: bad media timestamp")
    assert sum(isinstance(o, AudioChunk) for o in out) == 2  # the audio is kept


def test_twilio_nan_in_custom_parameters_is_malformed_json() -> None:
    lines = (Path(__file__).parent / "data" / "twilio" / "both_tracks.jsonl").read_text()
    start = lines.splitlines()[1].replace('"tracks"', '"customParameters":{"x":NaN},"tracks"')
    [violation] = TwilioMediaSession().receive_text(start)
    assert (
        isinstance(violation, ProtocolViolation) and "NaN is not a JSON value" in violation.message
    )


@pytest.mark.parametrize("text", ["[" * 5000, '{"uuid": NaN}', '{"sampleRate": 1e999}'])
def test_websocket_json_that_events_cannot_carry_is_refused(text: str) -> None:
    for session in (TwilioMediaSession(), L16Session()):
        out = session.receive_text(text)
        assert [type(o) for o in out] == [ProtocolViolation], out
        assert "malformed JSON" in out[0].message  # type: ignore[union-attr]
    hook = AudioHookSession(api_key=None)
    out = hook.receive_text(text)
    assert any(isinstance(o, ProtocolViolation) and "not valid JSON" in o.message for o in out)
    assert not any(isinstance(o, LegStarted) for o in out)


@pytest.mark.parametrize("rate", ["\u00b2", "9" * 5000, "\u00b2k"])
def test_l16_rate_that_is_no_ascii_number_is_unsupported(rate: str) -> None:
    assert parse_rate(rate) is None
    out = L16Session().receive_text(json.dumps({"sampleRate": rate}))
    assert any(
        isinstance(o, ProtocolViolation) and "unsupported sample rate" in o.message for o in out
    )
    out = L16Session().receive_text(json.dumps({"content-type": f"audio/l16;rate={rate}"}))
    assert any(isinstance(o, ProtocolViolation) and "unsupported" in o.message for o in out)


def test_audiohook_duration_beyond_a_float_is_malformed() -> None:
    assert parse_duration("PT" + "9" * 400 + "S") is None
    assert parse_duration("P" + "9" * 400 + "D") is None
    assert parse_duration("PT1.5S") == 1.5
