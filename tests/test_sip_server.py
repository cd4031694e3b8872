"""``serve --sip`` for real, driven by a hand-written SIP client over loopback UDP/TCP.

Real SIP software (sipp, baresip) is in test_sip_sipp.py and test_sip_baresip.py;
here Python sockets send exactly the bytes a test needs: a call over TCP, an RTP
timeout that makes the engine hang up, malformed and truncated requests.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from test_serve import LOOPBACK, assert_call, running

from emotion_engine.clients import collect_until, rtp_packets, subscribe
from emotion_engine.config import ServeParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError
from emotion_engine.ingest.sdp import parse_sdp
from emotion_engine.ingest.sip import SipMessage, SipStreamFramer, parse_message, parse_name_addr
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

SIP = replace(LOOPBACK, sip="127.0.0.1:0", sip_rtp_ports="0")


def offer(port: int) -> bytes:
    return (
        "v=0\r\no=test 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        "a=sendrecv\r\n"
    ).encode()


def request(
    method: str,
    *,
    transport: str,
    local: tuple[str, int],
    call_id: str,
    cseq: int,
    to_tag: str | None = None,
    body: bytes = b"",
    branch: str | None = None,
) -> bytes:
    host, port = local
    to = "<sip:engine@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:engine@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch={branch or 'z9hG4bK' + method + str(cseq)}\r\n"
        f'From: "Test Caller" <sip:+4930123456@{host}>;tag=caller-1\r\nTo: {to}\r\n'
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@{host}:{port};transport={transport.lower()}>\r\n"
        "Max-Forwards: 70\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_rtp_burst(pcm: NDArray[np.int16], port: int, *, ssrc: int) -> None:
    """~20x real time: the jitter buffer orders by sequence number, not arrival."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i, packet in enumerate(rtp_packets(pcm=pcm, ssrc=ssrc)):
            sock.sendto(packet, ("127.0.0.1", port))
            if i % 10 == 9:
                await asyncio.sleep(0.01)
    finally:
        sock.close()


def test_call_over_tcp_rtp_then_bye(model: EmotionModel, call_pcm: NDArray[np.int16]) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], SipMessage, SipMessage]:
        # this call ends by our BYE: a media timeout longer than a loaded machine's
        # pause between the last RTP packet and the BYE keeps the server from hanging up first
        async with running(model, replace(SIP, rtp_leg_timeout_s=10.0)) as server:
            addr = server.addresses
            assert addr is not None and addr.sip_port is not None
            async with subscribe(addr.urls()["events"]) as ws:
                reader, writer = await asyncio.open_connection("127.0.0.1", addr.sip_port)
                local = writer.get_extra_info("sockname")[:2]
                framer = SipStreamFramer()

                async def next_message() -> SipMessage:
                    while True:
                        for raw in framer.feed(await reader.read(65536)):
                            if raw:
                                return parse_message(raw, stream=True)

                writer.write(
                    request(
                        "INVITE",
                        transport="TCP",
                        local=local,
                        call_id="tcp-call",
                        cseq=1,
                        body=offer(9),
                    )
                )
                ok = await asyncio.wait_for(next_message(), 5)
                tag = parse_name_addr(ok.get("to") or "").tag
                rtp_port = parse_sdp(ok.body).media[0].port
                writer.write(
                    request(
                        "ACK", transport="TCP", local=local, call_id="tcp-call", cseq=1, to_tag=tag
                    )
                )
                await send_rtp_burst(call_pcm, rtp_port, ssrc=0xC0FFEE)
                await asyncio.sleep(0.3)  # let the jitter buffer's last packets arrive
                writer.write(
                    request(
                        "BYE", transport="TCP", local=local, call_id="tcp-call", cseq=2, to_tag=tag
                    )
                )
                bye_ok = await asyncio.wait_for(next_message(), 5)
                events = await collect_until(ws, count=1, timeout_s=60)
                writer.close()
                return events, ok, bye_ok

    events, ok, bye_ok = asyncio.run(asyncio.wait_for(scenario(), timeout=90))
    assert ok.status == 200 and (ok.get("contact") or "").endswith("transport=tcp>")
    assert bye_ok.status == 200 and bye_ok.get("cseq") == "2 BYE"
    assert_call(events, call_id="tcp-call", party="customer")
    start = events[0]
    assert start["info"]["source"] == "sip" and start["info"]["sip_call_id"] == "tcp-call"
    assert start["info"]["from"]["number"] == "+4930123456"
    assert start["info"]["codec"] == "PCMU"
    assert events[-1]["reason"] == "hangup"


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[SipMessage] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.inbox.put_nowait(parse_message(data))


def test_rtp_timeout_ends_the_leg_and_the_engine_hangs_up(
    model: EmotionModel, call_pcm: NDArray[np.int16]
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], SipMessage, int]:
        async with running(model, SIP) as server:
            addr = server.addresses
            assert addr is not None and addr.sip_port is not None
            loop = asyncio.get_running_loop()
            transport, peer = await loop.create_datagram_endpoint(
                UdpPeer, local_addr=("127.0.0.1", 0)
            )
            local = transport.get_extra_info("sockname")[:2]
            engine = ("127.0.0.1", addr.sip_port)
            async with subscribe(addr.urls()["events"]) as ws:
                transport.sendto(
                    request(
                        "INVITE",
                        transport="UDP",
                        local=local,
                        call_id="quiet",
                        cseq=1,
                        body=offer(9),
                    ),
                    engine,
                )
                ok = await asyncio.wait_for(peer.inbox.get(), 5)
                tag = parse_name_addr(ok.get("to") or "").tag
                transport.sendto(
                    request(
                        "ACK", transport="UDP", local=local, call_id="quiet", cseq=1, to_tag=tag
                    ),
                    engine,
                )
                await send_rtp_burst(call_pcm[: 8000 * 3], parse_sdp(ok.body).media[0].port, ssrc=7)
                events = await collect_until(ws, count=1, timeout_s=20)
                bye = await asyncio.wait_for(peer.inbox.get(), 10)
                answer = SipMessage(status=200, reason="OK")
                answer.headers = [
                    (k, v) for k, v in bye.headers if k in ("via", "from", "to", "call-id", "cseq")
                ]
                transport.sendto(answer.to_bytes(), engine)
                await asyncio.sleep(0.2)
                assert server.sip is not None
                pending = server.sip.core.pending_requests + server.sip.core.n_calls
                transport.close()
                return events, bye, pending

    events, bye, pending = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert events[0]["type"] == "call.start" and events[-1]["type"] == "call.end"
    assert events[-1]["reason"] == "timeout"
    assert bye.method == "BYE" and bye.get("reason") == 'SIP;cause=200;text="rtp_timeout"'
    assert parse_name_addr(bye.get("to") or "").tag == "caller-1"
    assert pending == 0  # the BYE was answered, the dialog is gone


def test_malformed_requests_never_hurt_the_server(model: EmotionModel) -> None:
    async def scenario() -> tuple[list[SipMessage], bytes, SipMessage, str]:
        async with running(model, SIP) as server:
            addr = server.addresses
            assert addr is not None and addr.sip_port is not None
            engine = ("127.0.0.1", addr.sip_port)
            loop = asyncio.get_running_loop()
            transport, peer = await loop.create_datagram_endpoint(
                UdpPeer, local_addr=("127.0.0.1", 0)
            )
            local = transport.get_extra_info("sockname")[:2]
            invite = request(
                "INVITE", transport="UDP", local=local, call_id="bad", cseq=1, body=offer(9)
            )
            junk = [
                b"",
                b"\x00\x01\x02",
                bytes(range(256)) * 4,
                b"INVITE sip:x SIP/2.0\r\n\r\n",  # no headers at all: nowhere to answer
                invite[: len(invite) - 20],  # truncated body -> 400
                invite.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"),  # -> 400
                invite.replace(b"INVITE sip:", b"FROB sip:", 1).replace(
                    b"1 INVITE", b"1 FROB"
                ),  # 501
                invite.replace(b"INVITE sip:", b"REGISTER sip:", 1).replace(
                    b"1 INVITE", b"1 REGISTER"
                ),
                b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n",  # a stray response
                b"X" * 70_000,
            ]
            for data in junk:
                transport.sendto(data, engine)
            replies = []
            with_reply = 4  # truncated, CSeq mismatch, FROB, REGISTER
            for _ in range(with_reply):
                replies.append(await asyncio.wait_for(peer.inbox.get(), 5))
            # TCP: a message whose Content-Length cannot frame it closes the connection
            reader, writer = await asyncio.open_connection(*engine)
            writer.write(b"OPTIONS sip:engine@127.0.0.1 SIP/2.0\r\nContent-Length: lots\r\n\r\n")
            closed = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            # ... and the server still answers
            transport.sendto(
                request("OPTIONS", transport="UDP", local=local, call_id="alive", cseq=1), engine
            )
            alive = await asyncio.wait_for(peer.inbox.get(), 5)
            transport.close()
            return replies, closed, alive, server.service.metrics.render()

    replies, closed, alive, metrics = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    by_status = sorted((m.status, m.reason) for m in replies)
    assert [s for s, _ in by_status] == [400, 400, 405, 501]
    assert any("truncated" in r for _, r in by_status)
    assert any("CSeq method BYE" in r for _, r in by_status)
    assert closed == b""
    assert alive.status == 200 and alive.get("call-id") == "alive"
    assert 'emotion_engine_protocol_errors_total{protocol="sip"}' in metrics


def test_sip_config_is_checked(model: EmotionModel) -> None:
    service = EngineService(engine=Engine(model=model))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"sip": "0.0.0.0:5060"}, "without --sip-allow or --sip-auth-user"),
        ({"sip": "5060"}, "not HOST:PORT"),
        ({"sip": "127.0.0.1:5060", "sip_rtp_ports": "5000"}, "LOW-HIGH"),
        ({"sip": "127.0.0.1:5060", "sip_rtp_ports": "9-3"}, "within 1024-65535"),
        ({"sip": "127.0.0.1:5060", "sip_party": "boss"}, "not one of"),
        ({"sip": "127.0.0.1:5060", "sip_allow": "10.0.0.0/99"}, "not an address"),
    ]
    for fields, match in bad:
        with pytest.raises(ConfigError, match=match):
            EngineServer(params=replace(ServeParams(), **fields), service=service)
    # an allow-list (or digest credentials) makes a public SIP address acceptable
    EngineServer(
        params=replace(ServeParams(), sip="0.0.0.0:5060", sip_allow="10.0.0.0/8"), service=service
    )


def test_hold_suspends_the_timeout_and_resume_continues_the_leg(
    model: EmotionModel, call_pcm: NDArray[np.int16]
) -> None:
    """re-INVITE a=inactive, then nothing for 3 x the RTP timeout: the call stays up and
    its leg open; re-INVITE a=sendrecv, more RTP with the same SSRC, BYE: one leg, one
    call.start, one call.end (hangup)."""

    async def scenario() -> tuple[list[dict[str, Any]], list[int], int]:
        async with running(model, SIP) as server:
            addr = server.addresses
            assert addr is not None and addr.sip_port is not None and server.sip is not None
            loop = asyncio.get_running_loop()
            transport, peer = await loop.create_datagram_endpoint(
                UdpPeer, local_addr=("127.0.0.1", 0)
            )
            local = transport.get_extra_info("sockname")[:2]
            engine = ("127.0.0.1", addr.sip_port)
            statuses: list[int] = []

            async def invite(cseq: int, body: bytes, to_tag: str | None) -> SipMessage:
                transport.sendto(
                    request(
                        "INVITE",
                        transport="UDP",
                        local=local,
                        call_id="held",
                        cseq=cseq,
                        to_tag=to_tag,
                        body=body,
                    ),
                    engine,
                )
                ok = await asyncio.wait_for(peer.inbox.get(), 5)
                statuses.append(ok.status)
                tag = parse_name_addr(ok.get("to") or "").tag
                transport.sendto(
                    request(
                        "ACK", transport="UDP", local=local, call_id="held", cseq=cseq, to_tag=tag
                    ),
                    engine,
                )
                return ok

            async with subscribe(addr.urls()["events"]) as ws:
                ok = await invite(1, offer(9), None)
                tag = parse_name_addr(ok.get("to") or "").tag
                port = parse_sdp(ok.body).media[0].port
                packets = rtp_packets(pcm=call_pcm[: 8000 * 8], ssrc=0x401D)
                rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i, packet in enumerate(packets[:200]):
                    rtp.sendto(packet, ("127.0.0.1", port))
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)
                await invite(2, offer(9).replace(b"a=sendrecv", b"a=inactive"), tag)
                await asyncio.sleep(3 * SIP.rtp_leg_timeout_s + 0.6)
                calls_while_held = server.sip.core.n_calls
                await invite(3, offer(9), tag)
                for i, packet in enumerate(packets[200:]):
                    rtp.sendto(packet, ("127.0.0.1", port))
                    if i % 10 == 9:
                        await asyncio.sleep(0.01)
                rtp.close()
                await asyncio.sleep(0.3)
                transport.sendto(
                    request(
                        "BYE", transport="UDP", local=local, call_id="held", cseq=4, to_tag=tag
                    ),
                    engine,
                )
                statuses.append((await asyncio.wait_for(peer.inbox.get(), 5)).status)
                events = await collect_until(ws, count=1, timeout_s=20)
            transport.close()
            return events, statuses, calls_while_held

    events, statuses, calls_while_held = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert statuses == [200, 200, 200, 200]
    assert calls_while_held == 1
    types = [e["type"] for e in events]
    assert types.count("call.start") == 1 and types.count("call.end") == 1
    assert events[-1]["reason"] == "hangup"
    # the leg carries all 8 s of audio, the hold did not cut it
    assert events[-1]["t"] >= 7.9
