"""SIP, SDP and SIPREC cores with bytes alone: wire captures, transactions, timers.

The UAS is driven with a fake clock (``now`` is passed in) and a port counter in place
of socket binding; every response is parsed back with the module's own parser *and*
checked field by field against RFC 3261's rules.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from emotion_engine.errors import ConfigError, ProtocolError
from emotion_engine.ingest.base import ProtocolViolation
from emotion_engine.ingest.sdp import answer_offer, build_answer, parse_sdp
from emotion_engine.ingest.sip import (
    BadMessage,
    DigestAuth,
    MediaStart,
    MediaStop,
    MediaUpdate,
    Peer,
    SipMessage,
    SipOutput,
    SipParams,
    SipSend,
    SipStreamFramer,
    SipUas,
    digest_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    validate_request,
)
from emotion_engine.ingest.siprec import (
    assign_parties,
    parse_metadata,
    split_multipart,
)

DATA = Path(__file__).resolve().parent / "data" / "sip"
PEER = Peer("udp", "127.0.0.1", 5070)
LOCAL = ("127.0.0.1", 5060)


def capture(name: str) -> bytes:
    return (DATA / name).read_bytes()


# -- message codec ---------------------------------------------------------------------


def test_baresip_invite_capture_parses() -> None:
    msg = parse_message(capture("baresip_invite.sip"))
    assert (msg.method, msg.uri) == ("INVITE", "sip:engine@127.0.0.1:5099")
    assert msg.cseq() == (60639, "INVITE")
    assert msg.get("CALL-ID") == msg.get("i") == "c2e814de22b22da4"
    assert len(msg.body) == 337 and msg.body.startswith(b"v=0\r\n")
    assert msg.get_all("allow")[:2] == ["INVITE", "ACK"]  # list header split on commas
    assert msg.get_all("supported") == []  # "Supported:" with nothing in it
    assert validate_request(msg) is None


def test_compact_forms_multiple_via_folding_and_quoted_display_name() -> None:
    msg = parse_message(capture("compact_invite.sip"))
    vias = [parse_via(v) for v in msg.get_all("Via")]
    # two Vias joined by a comma in one compact header, then a third on its own line
    assert [v.host for v in vias] == ["proxy2.example.com", "proxy1.example.com", "pbx.example.com"]
    assert [v.transport for v in vias] == ["UDP", "UDP", "TCP"]
    assert vias[0].branch == "z9hG4bK-p2-77" and vias[1].port is None
    assert msg.get_all("record-route") == [
        "<sip:proxy2.example.com;lr>",
        "<sip:proxy1.example.com;lr>",
    ]
    assert msg.get("subject") == "folded across two lines"
    assert msg.get("max-forwards") == "68"
    caller = parse_name_addr(msg.get("f") or "")
    assert caller.display == 'Bob, the "caller"'  # comma and escaped quotes inside quotes
    assert (caller.uri, caller.tag) == ("sip:+44207946000@pbx.example.com", "bob-7")
    callee = parse_name_addr(msg.get("t") or "")  # addr-spec without <>
    assert (callee.uri, callee.tag) == ("sip:agent@engine.example.com", None)
    assert msg.get_all("supported") == ["timer", "replaces"]
    assert msg.cseq() == (8, "INVITE")  # "cSeQ" is CSeq


def test_serialise_round_trip_uses_canonical_names() -> None:
    msg = parse_message(capture("compact_invite.sip"))
    wire = msg.to_bytes()
    assert b"\r\nCall-ID: 4711@pbx.example.com\r\n" in wire
    assert b"\r\nCSeq: 8 INVITE\r\n" in wire
    assert re.search(rb"\r\nContent-Length: 132\r\n\r\nv=0", wire)
    again = parse_message(wire)
    assert again.headers == msg.headers and again.body == msg.body


def _invite(body: bytes = b"", *, extra: str = "", length: int | None = None) -> bytes:
    head = (
        "INVITE sip:engine@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-x1\r\n"
        "From: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:engine@127.0.0.1>\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\n"
        f"{extra}Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


def test_content_length_truncation_and_trailing_bytes() -> None:
    with pytest.raises(BadMessage, match="truncated: Content-Length 50 but 10") as info:
        parse_message(_invite(b"0123456789", length=50))
    assert info.value.status == 400 and info.value.partial.get("call-id") == "c1"
    # RFC 3261 §18.3: bytes past Content-Length in a datagram are discarded
    assert parse_message(_invite(b"0123456789", length=4)).body == b"0123"
    with pytest.raises(BadMessage, match="malformed Content-Length"):
        parse_message(_invite(b"", length=-1))
    with pytest.raises(BadMessage, match="conflicting Content-Length"):
        parse_message(_invite(b"abc", extra="l: 2\r\n"))


def test_bad_start_lines_and_versions() -> None:
    for junk in (
        b"",
        b"\x00\xff\xfe",
        b"hello world",
        b"GET / HTTP/1.1\r\n\r\n",
        b"SIP/2.0 OK\r\n",
    ):
        with pytest.raises(ProtocolError):
            parse_message(junk)
    with pytest.raises(BadMessage) as info:
        parse_message(_invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert info.value.status == 505
    lf_only = _invite(b"v=0\n").replace(b"\r\n", b"\n")
    assert parse_message(lf_only).get("call-id") == "c1"  # bare LF tolerated


def test_validate_request_names_the_problem() -> None:
    base = parse_message(_invite())
    for header, expected in (("call-id", "missing Call-ID"), ("cseq", "missing CSeq")):
        msg = SipMessage(
            method="INVITE", uri=base.uri, headers=[h for h in base.headers if h[0] != header]
        )
        assert validate_request(msg) == expected
    msg = parse_message(_invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))
    assert validate_request(msg) == "CSeq method BYE does not match request method INVITE"
    msg = parse_message(_invite().replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"))
    assert validate_request(msg) == "malformed CSeq 'x INVITE'"
    msg = parse_message(_invite().replace(b"SIP/2.0/UDP 127", b"SIP/2.0/UDP"))
    assert "malformed Via" in (validate_request(msg) or "")


def test_uri_and_via_parsing_ipv6_and_params() -> None:
    uri = parse_uri("<sip:agent:secret@[2001:db8::1]:5080;transport=tcp?subject=x>")
    assert (uri.user, uri.host, uri.port, uri.params) == (
        "agent",
        "2001:db8::1",
        5080,
        {"transport": "tcp"},
    )
    assert parse_uri("sips:host.example").host_port() == ("host.example", 5060)
    with pytest.raises(ProtocolError):
        parse_uri("http://x")
    via = parse_via("SIP/2.0/TCP [::1]:5061;branch=z9hG4bKa;rport")
    assert (via.transport, via.host, via.port, via.params["rport"]) == ("TCP", "::1", 5061, "")


def test_stream_framer_cuts_on_content_length() -> None:
    one = _invite(b"v=0\r\n")
    two = capture("baresip_invite.sip")
    framer = SipStreamFramer()
    assert framer.feed(b"\r\n\r\n" + one + two[:100]) == [b"", one]  # ping, then a message
    out: list[bytes] = []
    for i in range(100, len(two)):  # the rest one byte at a time
        out += framer.feed(two[i : i + 1])
    assert out == [two]
    with pytest.raises(ProtocolError, match="malformed Content-Length"):
        SipStreamFramer().feed(b"OPTIONS sip:x SIP/2.0\r\nl: abc\r\n\r\n")
    with pytest.raises(ProtocolError, match="over 200 bytes"):
        SipStreamFramer(max_message_bytes=200).feed(b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 60)


# -- SDP --------------------------------------------------------------------------------


def test_sdp_answer_takes_g711_and_telephone_event() -> None:
    offer = parse_sdp(parse_message(capture("baresip_invite.sip")).body)
    [stream] = answer_offer(offer)
    assert stream.accepted and stream.codecs == (0, 8) and stream.dtmf_pt == 101
    assert stream.label == "1" and stream.peer_sends
    sdp = build_answer([stream], [40100], address="192.0.2.9", session_id=7, version=1).decode()
    assert "m=audio 40100 RTP/AVP 0 8 101\r\n" in sdp
    assert "c=IN IP4 192.0.2.9\r\n" in sdp and "a=fmtp:101 0-15\r\n" in sdp
    assert sdp.endswith("a=recvonly\r\n")  # the engine never sends


def test_sdp_refusals_keep_m_line_order() -> None:
    offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\n"
        "m=audio 5002 RTP/SAVP 0\r\n"
        "m=audio 5004 RTP/AVP 18 9\r\na=rtpmap:18 G729/8000\r\n"
        "m=audio 0 RTP/AVP 0\r\n"
        "m=audio 5006 RTP/AVP 96 8\r\na=rtpmap:96 PCMU/8000\r\na=inactive\r\n"
    )
    streams = answer_offer(offer)
    assert [s.accepted for s in streams] == [False, False, False, False, True]
    assert "not audio" in streams[0].why and "RTP/SAVP" in streams[1].why
    assert "no PCMU/PCMA" in streams[2].why and "port 0" in streams[3].why
    assert streams[4].codecs == (8,) and not streams[4].peer_sends  # dynamic PCMU ignored
    sdp = build_answer(
        streams, [None, None, None, None, 40102], address="::1", session_id=1, version=2
    )
    lines = sdp.decode().split("\r\n")
    assert [ln for ln in lines if ln.startswith("m=")] == [
        "m=video 0 RTP/AVP 96",
        "m=audio 0 RTP/SAVP 0",
        "m=audio 0 RTP/AVP 18",
        "m=audio 0 RTP/AVP 0",
        "m=audio 40102 RTP/AVP 8",
    ]
    assert "c=IN IP6 ::1" in lines and "a=inactive" in lines
    # RFC 2543 hold: connection address 0.0.0.0
    held = parse_sdp("v=0\nc=IN IP4 0.0.0.0\nm=audio 5000 RTP/AVP 0\n")
    assert not answer_offer(held)[0].peer_sends
    with pytest.raises(ProtocolError, match="must start with v=0"):
        parse_sdp(b"m=audio 1 RTP/AVP 0")
    with pytest.raises(ProtocolError, match="bad port"):
        parse_sdp(b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n")


# -- SIPREC -----------------------------------------------------------------------------


def test_siprec_multipart_and_rfc7865_metadata() -> None:
    msg = parse_message(capture("siprec_invite.sip"))
    parts = split_multipart(msg.body, msg.get("content-type") or "")
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[1].headers["content-disposition"] == "recording-session"
    meta = parse_metadata(parts[1].body)
    assert [p.name for p in meta.participants] == ["Bob Caller", "Alice Agent"]
    assert meta.participants[0].number == "+15551234567"
    assert meta.sip_session_ids[0].startswith("ab30317f")
    sdp = parse_sdp(parts[0].body)
    labels = [m.label for m in sdp.media]
    assigned = assign_parties(labels, meta, ("customer", "agent"))
    assert [(a.party, a.participant.name) for a in assigned if a and a.participant] == [
        ("customer", "Bob Caller"),
        ("agent", "Alice Agent"),
    ]
    # the metadata's participant order decides, not the m-line order
    swapped = assign_parties(list(reversed(labels)), meta, ("customer", "agent"))
    assert [a.party for a in swapped if a] == ["agent", "customer"]
    # configured order flips the mapping
    flipped = assign_parties(labels, meta, ("agent", "customer"))
    assert [a.party for a in flipped if a] == ["agent", "customer"]


def test_siprec_draft_metadata_and_fallbacks() -> None:
    meta = parse_metadata(capture("siprec_metadata_draft.xml"))
    assert [(p.participant_id, p.sends, p.number) for p in meta.participants] == [
        ("p-caller", ("st-1",), "+498912345678"),
        ("p-agent", ("st-2",), "4001"),
    ]
    assigned = assign_parties(["2", "1"], meta, ("customer", "agent"))
    assert [(a.party, a.participant.participant_id) for a in assigned if a and a.participant] == [
        ("agent", "p-agent"),
        ("customer", "p-caller"),
    ]
    # no metadata: m-line order; a third stream gets no party
    plain = assign_parties(["a", "b", "c"], None, ("customer", "agent"))
    assert [a.party if a else None for a in plain] == ["customer", "agent", None]
    for bad, match in (
        (b"<not xml", "not well-formed"),
        (b"<other/>", "not <recording>"),
        (b'<!DOCTYPE r [<!ENTITY e "x">]><recording/>', "DOCTYPE"),
    ):
        with pytest.raises(ProtocolError, match=match):
            parse_metadata(bad)
    with pytest.raises(ProtocolError, match="without boundary"):
        split_multipart(b"x", "multipart/mixed")


# -- digest -----------------------------------------------------------------------------


def test_digest_response_matches_rfc2617_example() -> None:
    # RFC 2617 §3.5, the one worked example of the algorithm
    assert (
        digest_response(
            user="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def _authorization(challenge: str, *, user: str, password: str, uri: str, qop: bool = True) -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    nonce, realm = fields["nonce"], fields["realm"]
    response = digest_response(
        user=user,
        realm=realm,
        password=password,
        method="INVITE",
        uri=uri,
        nonce=nonce,
        qop="auth" if qop else None,
        nc="00000001",
        cnonce="abc",
    )
    extra = ', qop=auth, nc=00000001, cnonce="abc"' if qop else ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5{extra}'
    )


def test_digest_nonces_expire_and_are_signed() -> None:
    auth = DigestAuth(user="u", password="p", realm="r", secret=b"k", nonce_ttl_s=10)
    challenge = auth.challenge(100.0)
    good = _authorization(challenge, user="u", password="p", uri="sip:e")
    assert auth.check(good, "INVITE", 105.0) == (True, False)
    assert auth.check(
        _authorization(challenge, user="u", password="p", uri="sip:e", qop=False), "INVITE", 105.0
    ) == (True, False)
    assert auth.check(good, "INVITE", 111.0) == (False, True)  # stale: retry silently
    assert auth.check(
        _authorization(challenge, user="u", password="x", uri="sip:e"), "INVITE", 105.0
    ) == (False, False)
    forged = good.replace(challenge.split('nonce="')[1].split('"')[0], "1.deadbeef")
    assert auth.check(forged, "INVITE", 105.0) == (False, False)
    assert auth.check(None, "INVITE", 105.0) == (False, False)


# -- the UAS ----------------------------------------------------------------------------


class Ports:
    """Stands in for socket binding: hands out even ports, records releases."""

    def __init__(self, n: int = 100) -> None:
        self.free = list(range(40000, 40000 + 2 * n, 2))
        self.taken: list[int] = []

    def __call__(self) -> int | None:
        if not self.free:
            return None
        port = self.free.pop(0)
        self.taken.append(port)
        return port


def sent(outputs: list[SipOutput]) -> list[SipMessage]:
    return [parse_message(o.data) for o in outputs if isinstance(o, SipSend)]


def statuses(outputs: list[SipOutput]) -> list[int]:
    return [m.status for m in sent(outputs)]


def of(outputs: list[SipOutput], kind: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


SDP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def request(
    method: str,
    *,
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
    to_tag: str | None = None,
    body: bytes = b"",
    call_id: str = "call-1",
    uri: str = "sip:engine@127.0.0.1",
    extra: str = "",
    content_type: str = "application/sdp",
) -> bytes:
    to = "<sip:engine@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    ctype = f"Content-Type: {content_type}\r\n" if body else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        f'From: "Caller" <sip:+15550001@127.0.0.1>;tag=from-1\r\nTo: {to}\r\n'
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n{extra}{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_invite_answered_with_sdp_and_2xx_retransmitted_until_ack() -> None:
    ports = Ports()
    uas = SipUas(allocate_port=ports)
    out = uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL)
    [ok] = sent(out)
    assert ok.status == 200
    # RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied; To gains a tag
    assert (
        ok.get("via") == "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;received=127.0.0.1;rport=5070"
    )
    assert ok.get("from") == '"Caller" <sip:+15550001@127.0.0.1>;tag=from-1'
    to_tag = parse_name_addr(ok.get("to") or "").tag
    assert to_tag and ok.get("call-id") == "call-1" and ok.get("cseq") == "1 INVITE"
    assert ok.get("contact") == "<sip:engine@127.0.0.1:5060;transport=udp>"
    answer = parse_sdp(ok.body)
    assert answer.media[0].port == 40000 and answer.media[0].formats == ("0", "101")
    [start] = of(out, MediaStart)
    assert (start.port, start.call_id, start.party, start.dtmf_pt) == (
        40000,
        "call-1",
        "customer",
        101,
    )
    assert start.info["from"] == {
        "uri": "sip:+15550001@127.0.0.1",
        "name": "Caller",
        "number": "+15550001",
    }
    # Timer: 2xx again at T1, then 2 T1, 4 T1 ... (0.5, 1.5, 3.5 s) until the ACK
    times = []
    t = 0.0
    while t < 4.0:
        t = uas.next_deadline() or 99.0
        if t >= 4.0:
            break
        resent = sent(uas.poll(t))
        if resent:
            assert resent[0].to_bytes() == ok.to_bytes()
            times.append(t)
    assert times == [0.5, 1.5, 3.5]
    ack = request("ACK", branch="z9hG4bK-ack", to_tag=to_tag)
    assert uas.receive(ack, PEER, 4.0, local=LOCAL) == []
    assert sent(uas.poll(40.0)) == []  # no more 2xx, no BYE: the ACK came
    assert uas.calls()[0]["streams"] == [("customer", 40000, True)]
    # a retransmitted INVITE within the transaction gets the same 200
    assert statuses(uas.receive(request("INVITE", body=SDP_OFFER), PEER, 5.0, local=LOCAL)) == [200]


def test_retransmitted_invite_gets_the_same_answer() -> None:
    uas = SipUas(allocate_port=Ports())
    first = sent(uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL))
    again = sent(uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.2, local=LOCAL))
    assert [m.to_bytes() for m in again] == [m.to_bytes() for m in first]
    assert len(uas.calls()) == 1


def test_no_ack_hangs_up_with_bye_after_64_t1() -> None:
    uas = SipUas(allocate_port=Ports())
    uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL)
    out = uas.poll(32.0)
    bye = [m for m in sent(out) if m.method == "BYE"]
    assert len(bye) == 1 and bye[0].uri == "sip:caller@127.0.0.1:5070"
    assert [s.reason for s in of(out, MediaStop)] == ["no_ack"]
    assert any("no ACK" in v.message for v in of(out, ProtocolViolation))
    assert uas.calls() == []


def test_cancel_before_answer_gives_487_and_releases_ports() -> None:
    ports = Ports()
    uas = SipUas(params=SipParams(answer_delay_s=5.0), allocate_port=ports)
    out = uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL)
    assert statuses(out) == [100, 180]
    ringing = sent(out)[1]
    assert parse_name_addr(ringing.get("to") or "").tag and ringing.get("contact")
    cancel = request("CANCEL", body=b"")
    out = uas.receive(cancel, PEER, 1.0, local=LOCAL)
    assert statuses(out) == [200, 487]
    ok, terminated = sent(out)
    assert ok.get("cseq") == "1 CANCEL" and terminated.get("cseq") == "1 INVITE"
    assert parse_name_addr(ok.get("to") or "").tag == parse_name_addr(ringing.get("to") or "").tag
    assert [(s.port, s.reason) for s in of(out, MediaStop)] == [(40000, "cancelled")]
    # the 487 is retransmitted (Timer G) until the ACK, which carries the INVITE's branch
    assert statuses(uas.poll(1.5)) == [487]
    assert (
        uas.receive(
            request("ACK", to_tag=parse_name_addr(terminated.get("to") or "").tag),
            PEER,
            1.6,
            local=LOCAL,
        )
        == []
    )
    assert statuses(uas.poll(10.0)) == []
    assert uas.calls() == [] and of(uas.poll(10.0), MediaStart) == []  # the answer never comes
    # CANCEL for nothing
    unknown = request("CANCEL", branch="z9hG4bK-none", call_id="nope")
    assert statuses(uas.receive(unknown, PEER, 11.0, local=LOCAL)) == [481]


def test_bye_ends_the_call_and_unknown_dialogs_get_481() -> None:
    uas = SipUas(allocate_port=Ports())
    out = uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL)
    tag = parse_name_addr(sent(out)[0].get("to") or "").tag
    uas.receive(request("ACK", branch="z9hG4bK-a", to_tag=tag), PEER, 0.1, local=LOCAL)
    out = uas.receive(
        request("BYE", branch="z9hG4bK-b", cseq=2, to_tag=tag), PEER, 1.0, local=LOCAL
    )
    assert statuses(out) == [200] and [s.reason for s in of(out, MediaStop)] == ["hangup"]
    out = uas.receive(
        request("BYE", branch="z9hG4bK-c", cseq=3, to_tag=tag), PEER, 2.0, local=LOCAL
    )
    assert statuses(out) == [481]
    assert statuses(uas.receive(request("BYE", branch="z9hG4bK-d"), PEER, 2.0, local=LOCAL)) == [
        481
    ]


def test_options_and_unsupported_methods() -> None:
    uas = SipUas(allocate_port=Ports())
    [ok] = sent(uas.receive(request("OPTIONS"), PEER, 0.0, local=LOCAL))
    assert ok.status == 200 and "INVITE" in ok.get_all("allow")
    assert parse_name_addr(ok.get("to") or "").tag  # a final response always tags To
    [reg] = sent(uas.receive(request("REGISTER", branch="z9hG4bK-r"), PEER, 0.0, local=LOCAL))
    assert reg.status == 405 and "BYE" in reg.get_all("allow")
    [foo] = sent(uas.receive(request("FOO", branch="z9hG4bK-f"), PEER, 0.0, local=LOCAL))
    assert foo.status == 501
    # methods are case-sensitive (RFC 3261 §7.1): "invite" is not INVITE
    [low] = sent(uas.receive(request("invite", branch="z9hG4bK-l"), PEER, 0.0, local=LOCAL))
    assert low.status == 501
    [req] = sent(
        uas.receive(
            request("INVITE", branch="z9hG4bK-q", extra="Require: 100rel\r\n", body=SDP_OFFER),
            PEER,
            0.0,
            local=LOCAL,
        )
    )
    assert (req.status, req.get("unsupported")) == (420, "100rel")
    [scheme] = sent(
        uas.receive(request("OPTIONS", branch="z9hG4bK-s", uri="http://x"), PEER, 0.0, local=LOCAL)
    )
    assert scheme.status == 416


def test_no_usable_codec_488_and_port_exhaustion_503() -> None:
    ports = Ports(n=1)
    uas = SipUas(allocate_port=ports)
    g729 = SDP_OFFER.replace(b"RTP/AVP 0 101", b"RTP/AVP 18")
    [nope] = sent(uas.receive(request("INVITE", body=g729), PEER, 0.0, local=LOCAL))
    assert nope.status == 488 and "no PCMU/PCMA" in (nope.get("warning") or "")
    assert ports.taken == []  # decided before binding anything
    uas.receive(
        request("INVITE", body=SDP_OFFER, branch="z9hG4bK-2", call_id="c2"), PEER, 0.0, local=LOCAL
    )
    [busy] = sent(
        uas.receive(
            request("INVITE", body=SDP_OFFER, branch="z9hG4bK-3", call_id="c3"),
            PEER,
            0.0,
            local=LOCAL,
        )
    )
    assert busy.status == 503 and busy.get("retry-after") == "5"


def test_malformed_requests_get_400_garbage_is_dropped() -> None:
    uas = SipUas(allocate_port=Ports())
    good = request("INVITE", body=SDP_OFFER)
    cases = {
        good.replace(b"Call-ID: call-1\r\n", b""): "missing Call-ID",
        good.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"): "malformed CSeq",
        good.replace(b"Content-Length: %d" % len(SDP_OFFER), b"Content-Length: 900"): "truncated",
        good.replace(b'From: "Caller"', b'From : "Caller'): "unterminated",
        good[:-30]: "truncated",
    }
    for data, why in cases.items():
        out = uas.receive(data, PEER, 0.0, local=LOCAL)
        [reply] = sent(out)
        assert reply.status == 400 and why in reply.reason, (why, reply.reason)
        assert of(out, ProtocolViolation)
    no_via = b"\r\n".join(ln for ln in good.split(b"\r\n") if not ln.startswith(b"Via"))
    out = uas.receive(no_via, PEER, 0.0, local=LOCAL)
    assert sent(out) == [] and of(out, ProtocolViolation)  # nowhere to send a response
    for junk in (b"\x16\x03\x01\x00", b"\r\n\r\n", b"\x00" * 4, bytes(range(256))):
        assert sent(uas.receive(junk, PEER, 0.0, local=LOCAL)) == []
    assert uas.calls() == []


def test_never_raises_on_mutated_captures() -> None:
    """Every prefix of the captures, and random byte flips: no exception escapes."""
    rng = random.Random(7)
    uas = SipUas(allocate_port=Ports(n=5000))
    n = 0
    for name in ("baresip_invite.sip", "compact_invite.sip", "siprec_invite.sip"):
        data = capture(name)
        for cut in range(0, len(data), 7):
            uas.receive(data[:cut], PEER, float(n), local=LOCAL)
            n += 1
        for _ in range(300):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            out = uas.receive(bytes(mutated), PEER, float(n), local=LOCAL)
            assert all(
                isinstance(o, SipSend | MediaStart | ProtocolViolation | MediaStop) for o in out
            )
            n += 1
    uas.poll(1e9)


def test_merged_request_482_and_in_dialog_cseq_order() -> None:
    uas = SipUas(allocate_port=Ports())
    out = uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL)
    tag = parse_name_addr(sent(out)[0].get("to") or "").tag
    # the same INVITE forked back through another proxy: another branch (§8.2.2.2)
    [loop] = sent(
        uas.receive(
            request("INVITE", body=SDP_OFFER, branch="z9hG4bK-other"), PEER, 0.1, local=LOCAL
        )
    )
    assert loop.status == 482
    uas.receive(request("ACK", branch="z9hG4bK-a", to_tag=tag), PEER, 0.2, local=LOCAL)
    [late] = sent(
        uas.receive(request("INFO", branch="z9hG4bK-i", cseq=1, to_tag=tag), PEER, 1.0, local=LOCAL)
    )
    assert late.status == 500 and "out of order" in late.reason


def _established(uas: SipUas, body: bytes = SDP_OFFER) -> str:
    out = uas.receive(request("INVITE", body=body), PEER, 0.0, local=LOCAL)
    tag = parse_name_addr(sent(out)[0].get("to") or "").tag
    assert tag
    uas.receive(request("ACK", branch="z9hG4bK-a", to_tag=tag), PEER, 0.1, local=LOCAL)
    return tag


def test_reinvite_hold_and_resume() -> None:
    uas = SipUas(allocate_port=Ports())
    tag = _established(uas)
    hold = SDP_OFFER.replace(b"a=sendrecv", b"a=sendonly")
    out = uas.receive(
        request("INVITE", body=hold, branch="z9hG4bK-h", cseq=2, to_tag=tag), PEER, 5.0, local=LOCAL
    )
    [ok] = sent(out)
    assert ok.status == 200 and parse_sdp(ok.body).media[0].port == 40000  # same port
    # the answer to sendonly is recvonly, as before: an unchanged SDP keeps its o= version
    assert "a=recvonly" in ok.body.decode() and " 1 IN IP4" in ok.body.decode()
    assert of(out, MediaUpdate) == [MediaUpdate(f"call-1;{tag}", 40000, False)]
    uas.receive(request("ACK", branch="z9hG4bK-ha", cseq=2, to_tag=tag), PEER, 5.1, local=LOCAL)
    out = uas.receive(
        request("INVITE", body=SDP_OFFER, branch="z9hG4bK-r", cseq=3, to_tag=tag),
        PEER,
        9.0,
        local=LOCAL,
    )
    assert of(out, MediaUpdate) == [MediaUpdate(f"call-1;{tag}", 40000, True)]
    # UPDATE without a body: a session refresh
    assert statuses(
        uas.receive(
            request("UPDATE", branch="z9hG4bK-u", cseq=4, to_tag=tag), PEER, 9.5, local=LOCAL
        )
    ) == [200]
    # re-INVITE without SDP: the engine offers its current SDP again
    [offer] = sent(
        uas.receive(
            request("INVITE", branch="z9hG4bK-n", cseq=5, to_tag=tag), PEER, 10.0, local=LOCAL
        )
    )
    assert offer.status == 200 and parse_sdp(offer.body).media[0].port == 40000


def test_late_offer_engine_offers_in_200() -> None:
    uas = SipUas(allocate_port=Ports())
    out = uas.receive(request("INVITE"), PEER, 0.0, local=LOCAL)
    [ok] = sent(out)
    media = parse_sdp(ok.body).media[0]
    assert (media.port, media.formats) == (40000, ("0", "8", "101"))
    assert of(out, MediaStart)[0].party == "customer"
    tag = parse_name_addr(ok.get("to") or "").tag
    answer = SDP_OFFER.replace(b"a=sendrecv", b"a=sendonly")
    ack = request("ACK", branch="z9hG4bK-a", to_tag=tag, body=answer)
    assert uas.receive(ack, PEER, 0.1, local=LOCAL) == []
    assert statuses(uas.poll(2.0)) == []


def test_request_uri_user_and_header_pick_party_and_call_id() -> None:
    uas = SipUas(allocate_port=Ports())
    out = uas.receive(
        request(
            "INVITE",
            body=SDP_OFFER,
            uri="sip:agent@127.0.0.1",
            extra="X-Emotion-Call-Id: pbx-42\r\n",
        ),
        PEER,
        0.0,
        local=LOCAL,
    )
    [start] = of(out, MediaStart)
    assert (start.call_id, start.party, start.info["sip_call_id"]) == ("pbx-42", "agent", "call-1")


def test_siprec_invite_maps_streams_to_parties() -> None:
    uas = SipUas(allocate_port=Ports())
    out = uas.receive(capture("siprec_invite.sip"), PEER, 0.0, local=LOCAL)
    [ok] = sent(out)
    assert ok.status == 200 and (ok.get("contact") or "").endswith(";+sip.srs")
    answer = parse_sdp(ok.body)
    assert [(m.port, m.direction(), m.label) for m in answer.media] == [
        (40000, "recvonly", "96"),
        (40002, "recvonly", "97"),
    ]
    starts = of(out, MediaStart)
    assert [(s.port, s.party, s.info["participant"]["name"]) for s in starts] == [
        (40000, "customer", "Bob Caller"),
        (40002, "agent", "Alice Agent"),
    ]
    assert starts[0].info["siprec"] is True
    assert starts[1].info["participant"]["aor"] == "sip:alice@contact-centre.example.com"
    assert [p["number"] for p in starts[0].info["participants"]] == ["+15551234567", "alice"]
    assert all(s.peer_sends for s in starts)  # sendonly from the start is not a hold


def test_digest_challenge_then_accept() -> None:
    params = SipParams(auth_user="engine", auth_password="s3cret")
    uas = SipUas(params=params, allocate_port=Ports(), secret=b"k")
    [challenge] = sent(uas.receive(request("INVITE", body=SDP_OFFER), PEER, 0.0, local=LOCAL))
    assert challenge.status == 401
    header = challenge.get("www-authenticate") or ""
    assert header.startswith('Digest realm="emotion-engine"') and 'qop="auth"' in header
    # OPTIONS (keep-alive) needs no credentials
    assert statuses(
        uas.receive(request("OPTIONS", branch="z9hG4bK-o"), PEER, 0.1, local=LOCAL)
    ) == [200]
    wrong = _authorization(header, user="engine", password="nope", uri="sip:engine@127.0.0.1")
    out = uas.receive(
        request(
            "INVITE",
            body=SDP_OFFER,
            branch="z9hG4bK-2",
            cseq=2,
            extra=f"Authorization: {wrong}\r\n",
        ),
        PEER,
        1.0,
        local=LOCAL,
    )
    assert statuses(out) == [401]
    right = _authorization(header, user="engine", password="s3cret", uri="sip:engine@127.0.0.1")
    out = uas.receive(
        request(
            "INVITE",
            body=SDP_OFFER,
            branch="z9hG4bK-3",
            cseq=3,
            extra=f"Authorization: {right}\r\n",
        ),
        PEER,
        2.0,
        local=LOCAL,
    )
    assert statuses(out) == [200] and of(out, MediaStart)


def test_allow_list_drops_silently_and_logs_once() -> None:
    uas = SipUas(params=SipParams(allow=("10.0.0.0/8",)), allocate_port=Ports())
    stranger = Peer("udp", "192.0.2.1", 5060)
    first = uas.receive(request("INVITE", body=SDP_OFFER), stranger, 0.0, local=LOCAL)
    assert sent(first) == [] and len(of(first, ProtocolViolation)) == 1
    assert uas.receive(request("OPTIONS"), stranger, 0.1, local=LOCAL) == []
    friend = Peer("udp", "10.1.2.3", 5060)
    assert statuses(
        uas.receive(request("OPTIONS", branch="z9hG4bK-9"), friend, 0.2, local=LOCAL)
    ) == [200]
    assert uas.allowed("::ffff:10.0.0.7") and not uas.allowed("not-an-ip")
    with pytest.raises(ConfigError, match="not an address"):
        SipParams(allow=("10.0.0.0/33",))
    with pytest.raises(ConfigError, match="both"):
        SipParams(auth_user="x")
    with pytest.raises(ConfigError, match="party"):
        SipParams(siprec_order=("customer", "boss"))


def test_engine_bye_is_retransmitted_until_answered() -> None:
    uas = SipUas(allocate_port=Ports())
    _established(uas)
    out = uas.hangup_all(1.0)
    [bye] = sent(out)
    assert bye.method == "BYE" and bye.cseq() == (1, "BYE")
    assert parse_name_addr(bye.get("to") or "").tag == "from-1"  # their From is our To
    assert bye.get("reason") == 'SIP;cause=200;text="shutdown"'
    assert [s.reason for s in of(out, MediaStop)] == ["shutdown"]
    assert uas.pending_requests == 1
    assert [m.method for m in sent(uas.poll(1.5))] == ["BYE"]  # Timer E
    answer = SipMessage(
        status=200,
        reason="OK",
        headers=[(k, v) for k, v in bye.headers if k in ("via", "from", "to", "call-id", "cseq")],
    )
    assert uas.receive(answer.to_bytes(), PEER, 1.6, local=LOCAL) == []
    assert uas.pending_requests == 0 and sent(uas.poll(10.0)) == []


def test_tcp_needs_no_retransmission() -> None:
    uas = SipUas(allocate_port=Ports())
    tcp = Peer("tcp", "127.0.0.1", 40123, conn=7)
    out = uas.receive(
        request("INVITE", body=SDP_OFFER).replace(b"UDP", b"TCP"), tcp, 0.0, local=LOCAL
    )
    [ok] = sent(out)
    assert ok.get("contact") == "<sip:engine@127.0.0.1:5060;transport=tcp>"
    assert all(o.peer == tcp for o in out if isinstance(o, SipSend))
    assert sent(uas.poll(10.0)) == []  # no 2xx retransmission over TCP
