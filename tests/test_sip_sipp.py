"""The engine's SIP endpoint against sipp (Debian package sip-tester), over loopback.

Every scenario is sipp's own XML, written to ``tmp_path``; sipp is the UAC and the
engine the UAS, so everything sipp checks (response codes, tags, the order of
messages, the BYE the engine sends) is checked by an independent SIP stack.

- a plain call: sipp replays G.711 RTP from a pcap to the port the engine's SDP
  answer names (``play_pcap_audio`` aims at the *remote* SDP);
- a SIPREC session: multipart/mixed INVITE with two sendonly m-lines and RFC 7865
  metadata. sipp can replay a pcap to the first audio m-line only (its SDP parser
  keeps one audio port per call), so the second stream is sent from Python
  (``emotion_engine.clients.send_rtp``) to the port the engine bound for it;
- CANCEL before the answer (the engine rings for ``sip_answer_delay_s``): 200 + 487;
- BYE from the engine when it shuts down, which the sipp UAC must receive;
- digest authentication over TCP: 401, then an INVITE with credentials;
- an OPTIONS flood from a second sipp while the plain call streams.

sipp replays pcaps through a raw socket, so root or CAP_NET_RAW is needed.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from test_serve import LOOPBACK, assert_call, running
from test_sipp import first_of, free_udp_port, sipp, sipp_logs, write_pcap

from emotion_engine.clients import collect_until, rtp_packets, send_rtp, subscribe
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

PACKET_S = 0.02
# RTP legs time out after 5 s here: sipp sends its BYE some hundred ms after the last
# packet, and the call must end by that BYE, not by a timeout.
PARAMS = replace(LOOPBACK, sip="127.0.0.1:0", sip_rtp_ports="0", rtp_leg_timeout_s=5.0)
COMMON: tuple[str, ...] = ("-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin")
COMMON += ("-timeout", "80s", "-timeout_error", "-trace_err", "-trace_screen")

HEADERS = """\
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: "Carol Customer" <sip:+15550100@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:{user}@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:carol@[local_ip]:[local_port];transport=[transport]>{contact_params}
      Max-Forwards: 70"""


def headers(
    cseq: str,
    *,
    to_tag: bool = True,
    branch: str = "[branch]",
    user: str = "engine",
    contact_params: str = "",
) -> str:
    return HEADERS.format(
        cseq=cseq,
        to_tag="[peer_tag_param]" if to_tag else "",
        branch=branch,
        user=user,
        contact_params=contact_params,
    )


def scenario(name: str, body: str) -> str:
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
{body}
</scenario>
"""


def send(message: str, *, retrans: bool = True) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}>\n    <![CDATA[\n\n{message}\n\n    ]]>\n  </send>"


PLAIN_SDP = """\
      v=0
      o=carol 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 8 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=sendrecv"""


def invite(
    *, user: str = "engine", branch: str = "[branch]", cseq: int = 1, extra: str = ""
) -> str:
    return send(
        f"      INVITE sip:{user}@[remote_ip]:[remote_port] SIP/2.0\n"
        f"{headers(f'{cseq} INVITE', to_tag=False, branch=branch, user=user)}\n"
        f"{extra}"
        "      Content-Type: application/sdp\n"
        "      Content-Length: [len]\n\n"
        f"{PLAIN_SDP}"
    )


def ack(cseq: int = 1, *, branch: str = "[branch]", user: str = "engine") -> str:
    return send(
        f"      ACK sip:{user}@[remote_ip]:[remote_port] SIP/2.0\n"
        f"{headers(f'{cseq} ACK', branch=branch, user=user)}\n"
        "      Content-Length: 0",
        retrans=False,
    )


def bye(cseq: int = 2, *, user: str = "engine") -> str:
    return (
        send(
            f"      BYE sip:{user}@[remote_ip]:[remote_port] SIP/2.0\n"
            f"{headers(f'{cseq} BYE', user=user)}\n"
            "      Content-Length: 0"
        )
        + '\n  <recv response="200" crlf="true"/>'
    )


ANSWERED = """\
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>"""


def play(pcap: Path, seconds: float) -> str:
    # play_pcap_audio returns at once (the replay runs on a thread): pause for its length
    ms = round(seconds * 1000) + 300
    return (
        f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
        f'  <pause milliseconds="{ms}"/>'
    )


def pcap_of(path: Path, pcm: NDArray[np.int16], *, ssrc: int) -> float:
    """Write ``pcm`` as a PCMU pcap; returns its duration in seconds."""
    packets = rtp_packets(pcm=pcm, ssrc=ssrc)
    write_pcap(path, packets, interval_s=PACKET_S)
    return len(packets) * PACKET_S


async def finish(
    procs: dict[str, asyncio.subprocess.Process], *, timeout_s: float = 60
) -> list[tuple[str, int, str]]:
    results = []
    for name, proc in procs.items():
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
        results.append((name, proc.returncode or 0, err.decode(errors="replace")))
    return results


def check(results: list[tuple[str, int, str]], tmp_path: Path) -> None:
    for name, rc, err in results:
        assert rc == 0, f"sipp {name} exited {rc}: {err}\n{sipp_logs(tmp_path)}"


async def call_with_events(
    server: EngineServer,
    tmp_path: Path,
    xml: str,
    *,
    n_ends: int = 1,
    extra_args: tuple[str, ...] = (),
    also: Any = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
    """Run the UAC scenario ``xml`` against ``server``; collect events until ``n_ends``
    call.end. ``also(server)`` runs alongside (e.g. a second RTP stream)."""
    addr = server.addresses
    assert addr is not None and addr.sip_port is not None
    (tmp_path / "uac.xml").write_text(xml)
    async with subscribe(addr.urls()["events"]) as ws:
        uac = await sipp(
            f"127.0.0.1:{addr.sip_port}", "-sf", "uac.xml", "-m", "1",
            "-p", str(free_udp_port()), "-mp", str(free_udp_port(also_plus_2=True)),
            *COMMON, *extra_args, cwd=tmp_path,
        )  # fmt: skip
        side = asyncio.create_task(also(server)) if also else None
        collecting = asyncio.create_task(collect_until(ws, count=n_ends, timeout_s=80))
        heard = await first_of(collecting, failing=(uac,))
        if heard is None and uac.returncode is None:
            uac.kill()
        results = await finish({"uac": uac})
        if side is not None:
            await side
    return heard or [], results


# -- the tests ---------------------------------------------------------------------------


def test_plain_call_rtp_from_pcap(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    seconds = pcap_of(tmp_path / "call.pcap", call_pcm, ssrc=0x5EED)
    xml = scenario(
        "plain call to the engine",
        "\n".join(
            [
                invite(user="customer"),
                ANSWERED,
                ack(user="customer"),
                play(tmp_path / "call.pcap", seconds),
                bye(user="customer"),
            ]
        ),
    )

    async def run() -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
        async with running(model, PARAMS) as server:
            return await call_with_events(server, tmp_path, xml)

    events, results = asyncio.run(asyncio.wait_for(run(), timeout=100))
    check(results, tmp_path)
    call_id = events[0]["call_id"]
    assert re.fullmatch(r"1-\d+@127\.0\.0\.1", call_id), call_id  # sipp's Call-ID
    assert_call(events, call_id=call_id, party="customer")
    info = events[0]["info"]
    assert info["source"] == "sip" and info["codec"] == "PCMU"
    assert info["from"] == {
        "uri": info["from"]["uri"],
        "name": "Carol Customer",
        "number": "+15550100",
    }
    assert events[-1]["reason"] == "hangup"  # ended by sipp's BYE


SIPREC_BODY = """\
      --uniqueBoundary
      Content-Type: application/sdp

      v=0
      o=SRC 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=label:agent-stream
      a=sendonly
      m=audio 9 RTP/AVP 0 8
      a=rtpmap:0 PCMU/8000
      a=label:caller-stream
      a=sendonly
      --uniqueBoundary
      Content-Type: application/rs-metadata+xml
      Content-Disposition: recording-session

      <?xml version="1.0" encoding="UTF-8"?>
      <recording xmlns="urn:ietf:params:xml:ns:recording:1">
      <datamode>complete</datamode>
      <session session_id="c2Vzc2lvbg=="><sipSessionID>orig-[call_id]</sipSessionID></session>
      <participant participant_id="cGFydC1j"><nameID aor="sip:+15550100@carrier.example"><name>Carol Customer</name></nameID></participant>
      <participant participant_id="cGFydC1h"><nameID aor="sip:adam@cc.example"><name>Adam Agent</name></nameID></participant>
      <stream stream_id="c3RyLWE=" session_id="c2Vzc2lvbg=="><label>agent-stream</label></stream>
      <stream stream_id="c3RyLWM=" session_id="c2Vzc2lvbg=="><label>caller-stream</label></stream>
      <participantstreamassoc participant_id="cGFydC1j"><send>c3RyLWM=</send><recv>c3RyLWE=</recv></participantstreamassoc>
      <participantstreamassoc participant_id="cGFydC1h"><send>c3RyLWE=</send><recv>c3RyLWM=</recv></participantstreamassoc>
      </recording>
      --uniqueBoundary--"""


def test_siprec_session_two_streams_mapped_by_metadata(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    """The agent's stream is the *first* m-line and the caller's the second, while the
    metadata lists the caller first: the parties must follow the metadata."""
    seconds = pcap_of(tmp_path / "agent.pcap", call_pcm, ssrc=0xA6E7)
    siprec_invite = send(
        "      INVITE sip:srs@[remote_ip]:[remote_port] SIP/2.0\n"
        f"{headers('1 INVITE', to_tag=False, user='srs', contact_params=';+sip.src')}\n"
        "      Require: siprec\n"
        "      Content-Type: multipart/mixed;boundary=uniqueBoundary\n"
        "      Content-Length: [len]\n\n"
        f"{SIPREC_BODY}"
    )
    xml = scenario(
        "SIPREC recording session",
        "\n".join(
            [
                siprec_invite,
                ANSWERED,
                ack(user="srs"),
                play(tmp_path / "agent.pcap", seconds),
                bye(user="srs"),
            ]
        ),
    )
    sent_from: list[tuple[str, int]] = []

    async def customer_stream(server: EngineServer) -> None:
        assert server.sip is not None
        for _ in range(200):  # until the engine answered and bound both ports
            calls = server.sip.core.calls()
            if calls and calls[0]["confirmed"]:
                break
            await asyncio.sleep(0.05)
        ports = {party: port for party, port, _ in calls[0]["streams"]}
        sent_from.append(await send_rtp("127.0.0.1", ports["customer"], pcm=call_pcm, ssrc=0xC0DE))

    async def run() -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
        # the agent's voice is analysed only when switched on (privacy default: off)
        async with running(model, replace(PARAMS, analyze_agent=True)) as server:
            return await call_with_events(server, tmp_path, xml, n_ends=2, also=customer_stream)

    events, results = asyncio.run(asyncio.wait_for(run(), timeout=100))
    check(results, tmp_path)
    starts = {e["party"]: e for e in events if e["type"] == "call.start"}
    assert set(starts) == {"customer", "agent"}
    call_id = starts["customer"]["call_id"]
    assert starts["agent"]["call_id"] == call_id  # one call, two parties
    for party in ("customer", "agent"):
        assert_call(events, call_id=call_id, party=party)
    customer, agent = starts["customer"]["info"], starts["agent"]["info"]
    assert customer["siprec"] is True
    assert customer["participant"] == {
        "id": "cGFydC1j",
        "name": "Carol Customer",
        "aor": "sip:+15550100@carrier.example",
        "number": "+15550100",
    }
    assert agent["participant"]["name"] == "Adam Agent"
    assert [p["name"] for p in agent["participants"]] == ["Carol Customer", "Adam Agent"]
    assert customer["recorded_call_ids"] == [f"orig-{call_id}"]
    # sipp's pcap (first m-line) landed on the agent leg, Python's stream on the customer's
    assert customer["remote"] == f"{sent_from[0][0]}:{sent_from[0][1]}"
    assert agent["remote"] != customer["remote"]
    assert {e["reason"] for e in events if e["type"] == "call.end"} == {"hangup"}


def test_cancel_before_answer(model: EmotionModel, tmp_path: Path) -> None:
    # CANCEL and the ACK for the 487 carry the INVITE's branch (RFC 3261 §9.1, §17.1.1.3)
    branch = "z9hG4bK-inv-[call_number]"
    cancel = send(
        "      CANCEL sip:engine@[remote_ip]:[remote_port] SIP/2.0\n"
        f"{headers('1 CANCEL', to_tag=False, branch=branch)}\n"
        "      Content-Length: 0"
    )
    xml = scenario(
        "cancel while ringing",
        "\n".join(
            [
                invite(branch=branch),
                '  <recv response="100" optional="true"/>',
                '  <recv response="180"/>',
                cancel,
                '  <recv response="200"/>',
                '  <recv response="487"/>',
                ack(branch=branch),
                '  <pause milliseconds="300"/>',
            ]
        ),
    )

    async def run() -> tuple[list[tuple[str, int, str]], int, int, list[Any]]:
        async with running(model, replace(PARAMS, sip_answer_delay_s=10.0)) as server:
            addr = server.addresses
            assert addr is not None and server.sip is not None
            (tmp_path / "uac.xml").write_text(xml)
            async with subscribe(addr.urls()["events"]) as ws:
                uac = await sipp(
                    f"127.0.0.1:{addr.sip_port}", "-sf", "uac.xml", "-m", "1",
                    "-p", str(free_udp_port()), *COMMON, cwd=tmp_path,
                )  # fmt: skip
                results = await finish({"uac": uac}, timeout_s=30)
                await asyncio.sleep(0.7)  # the engine's 487 retransmission timer must not fire
                try:
                    events = [await asyncio.wait_for(ws.recv(), 0.5)]
                except TimeoutError:
                    events = []
            return results, server.sip.core.n_calls, len(server.sip._media), events

    results, n_calls, n_ports, events = asyncio.run(asyncio.wait_for(run(), timeout=60))
    check(results, tmp_path)
    assert (n_calls, n_ports) == (0, 0)  # the dialog is gone and its RTP port closed
    assert events == []  # no RTP ever flowed: no leg, no event


def test_engine_sends_bye_at_shutdown(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    pcap_of(tmp_path / "short.pcap", call_pcm[: 8000 * 6], ssrc=0xB1E)
    xml = scenario(
        "the engine hangs up",
        "\n".join(
            [
                invite(),
                ANSWERED,
                ack(),
                f'  <nop><action><exec play_pcap_audio="{tmp_path / "short.pcap"}"/></action></nop>',
                '  <recv request="BYE"/>',
                send(
                    "      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n      [last_To:]\n"
                    "      [last_Call-ID:]\n      [last_CSeq:]\n      Content-Length: 0",
                    retrans=False,
                ),
                '  <pause milliseconds="200"/>',
            ]
        ),
    )

    async def run() -> tuple[list[dict[str, Any]], list[tuple[str, int, str]], int]:
        service = EngineService(engine=Engine(model=model), tick_s=PARAMS.tick_s)
        server = EngineServer(params=PARAMS, service=service)
        addr = await server.start()
        assert addr.sip_port is not None and server.sip is not None
        (tmp_path / "uac.xml").write_text(xml)
        async with subscribe(addr.urls()["events"]) as ws:
            uac = await sipp(
                f"127.0.0.1:{addr.sip_port}", "-sf", "uac.xml", "-m", "1",
                "-p", str(free_udp_port()), "-mp", str(free_udp_port(also_plus_2=True)),
                *COMMON, cwd=tmp_path,
            )  # fmt: skip
            first = await collect_until(ws, types=("emotion.update",), timeout_s=30)
            collecting = asyncio.create_task(collect_until(ws, timeout_s=30))
            await asyncio.sleep(0.5)
            pending_before = server.sip.core.n_calls
            await server.stop()  # BYE to sipp, call.end reason shutdown
            events = first + await collecting
        results = await finish({"uac": uac}, timeout_s=30)
        return events, results, pending_before

    events, results, pending_before = asyncio.run(asyncio.wait_for(run(), timeout=90))
    check(results, tmp_path)  # sipp received the BYE and answered it
    assert pending_before == 1
    assert events[0]["type"] == "call.start" and events[-1]["type"] == "call.end"
    assert events[-1]["reason"] == "shutdown"


def test_digest_auth_over_tcp(model: EmotionModel, tmp_path: Path) -> None:
    branch = "z9hG4bK-auth-[call_number]"  # the ACK for the 401 reuses the INVITE's branch
    xml = scenario(
        "digest over tcp",
        "\n".join(
            [
                invite(branch=branch),
                '  <recv response="100" optional="true"/>',
                '  <recv response="401" auth="true"/>',
                ack(branch=branch),
                invite(cseq=2, extra="      [authentication]\n"),
                ANSWERED,
                ack(2),
                '  <pause milliseconds="500"/>',
                bye(3),
            ]
        ),
    )
    params = replace(PARAMS, sip_auth_user="engine", sip_auth_password="s3cret")

    async def run(password: str) -> list[tuple[str, int, str]]:
        async with running(model, params) as server:
            addr = server.addresses
            assert addr is not None
            (tmp_path / "uac.xml").write_text(xml)
            uac = await sipp(
                f"127.0.0.1:{addr.sip_port}", "-sf", "uac.xml", "-m", "1", "-t", "t1",
                "-p", str(free_udp_port()), "-au", "engine", "-ap", password,
                *COMMON, "-recv_timeout", "4000", cwd=tmp_path,
            )  # fmt: skip
            return await finish({"uac": uac}, timeout_s=30)

    check(asyncio.run(asyncio.wait_for(run("s3cret"), timeout=60)), tmp_path)
    # a wrong password gets a second 401 where sipp expects 200: the call fails
    [(_, rc, _)] = asyncio.run(asyncio.wait_for(run("wrong"), timeout=60))
    assert rc != 0


def test_options_flood_while_a_call_streams(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    seconds = pcap_of(tmp_path / "call.pcap", call_pcm, ssrc=0xF100D)
    call_xml = scenario(
        "call under load",
        "\n".join([invite(), ANSWERED, ack(), play(tmp_path / "call.pcap", seconds), bye()]),
    )
    flood_xml = scenario(
        "options flood",
        "\n".join(
            [
                send(
                    "      OPTIONS sip:engine@[remote_ip]:[remote_port] SIP/2.0\n"
                    f"{headers('1 OPTIONS', to_tag=False)}\n"
                    "      Content-Length: 0"
                ),
                '  <recv response="200"/>',
            ]
        ),
    )
    (tmp_path / "flood.xml").write_text(flood_xml)
    n_options = 3000

    async def flood(server: EngineServer) -> list[tuple[str, int, str]]:
        addr = server.addresses
        assert addr is not None
        await asyncio.sleep(2.0)  # the call is up and streaming
        proc = await sipp(
            f"127.0.0.1:{addr.sip_port}", "-sf", "flood.xml", "-m", str(n_options),
            "-r", "300", "-l", "300", "-p", str(free_udp_port()), "-recv_timeout", "5000",
            *COMMON, cwd=tmp_path,
        )  # fmt: skip
        return await finish({"flood": proc}, timeout_s=60)

    flood_results: list[list[tuple[str, int, str]]] = []

    async def run() -> tuple[list[dict[str, Any]], list[tuple[str, int, str]]]:
        async with running(model, PARAMS) as server:

            async def side(srv: EngineServer) -> None:
                flood_results.append(await flood(srv))

            return await call_with_events(server, tmp_path, call_xml, also=side)

    events, results = asyncio.run(asyncio.wait_for(run(), timeout=110))
    check(results + flood_results[0], tmp_path)
    call_id = events[0]["call_id"]
    assert_call(events, call_id=call_id, party="customer")
    assert events[-1]["reason"] == "hangup"
