"""RTP from a real SIP peer: sipp places a call and replays G.711 RTP pcaps at the engine.

Two sipp processes talk SIP over loopback. The UAS answers the INVITE with an SDP
whose media address is the engine's RTP port (sipp's ``play_pcap_audio`` sends to
the media address of the *remote* SDP, so the answer is what aims the audio). The UAC
sends INVITE, receives 200 OK, ACKs and replays, one after the other, in real time:

1. ``call.pcap``, written here: the labelled test call every serve test streams
   (neutral/calm, then angry), PCMU in 20 ms packets;
2. the committed ``tests/data/rtp/pcmu_8k_angry.pcap`` (sequence number and
   timestamp wrap inside it).

The committed capture alone is 4 s of one angry clip with no calm speech before it to
set the call's baseline, and draws no anger spike; hence the lead-in.
``call.pcap`` carries the committed capture's SSRC and ends on the sequence number and
timestamp just before the capture's first, so both files are one continuous stream:
one leg, no loss. Then the UAC hangs up with BYE; the engine ends the leg after
``rtp_leg_timeout_s`` without packets.

sipp replays a pcap through a raw socket (rewriting the UDP ports), which needs root
or CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from test_serve import LOOPBACK, assert_call, running

from emotion_engine.audio.g711 import ulaw_encode
from emotion_engine.clients import collect_until, subscribe
from emotion_engine.ingest.rtp import RtpPacket
from emotion_engine.model.runtime import EmotionModel

pytestmark = pytest.mark.slow

SIPP = shutil.which("sipp")
CAPTURE = Path(__file__).resolve().parent / "data" / "rtp" / "pcmu_8k_angry.pcap"
PACKET_SAMPLES = 160  # 20 ms at 8 kHz
PCAP_GLOBAL_HEADER = 24
PCAP_RECORD_HEADER = 16
ETHERNET_HEADER = 14


def _raw_sockets_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except PermissionError:
        return False
    return True


if SIPP is None:
    pytest.skip(
        "sipp is not installed (Debian package sip-tester; `make system-deps` installs it)",
        allow_module_level=True,
    )
if not _raw_sockets_allowed():
    pytest.skip(
        "sipp's play_pcap_audio sends through a raw socket: run as root or "
        "`setcap cap_net_raw+ep $(readlink -f $(command -v sipp))`",
        allow_module_level=True,
    )


# -- pcap ------------------------------------------------------------------------------


def read_pcap_rtp(path: Path) -> list[RtpPacket]:
    """The RTP packets of a classic little-endian Ethernet/IPv4/UDP pcap, in file order."""
    data = path.read_bytes()
    packets: list[RtpPacket] = []
    off = PCAP_GLOBAL_HEADER
    while off < len(data):
        incl_len = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + PCAP_RECORD_HEADER : off + PCAP_RECORD_HEADER + incl_len]
        ip_header = (frame[ETHERNET_HEADER] & 0x0F) * 4
        packets.append(RtpPacket.parse(frame[ETHERNET_HEADER + ip_header + 8 :]))
        off += PCAP_RECORD_HEADER + incl_len
    return packets


def _ip_checksum(header: bytes) -> int:
    total = int(sum(struct.unpack(f"!{len(header) // 2}H", header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def write_pcap(path: Path, payloads: list[bytes], *, interval_s: float) -> None:
    """A classic pcap of UDP datagrams 10.0.0.1:40000 -> 10.0.0.2:4000, one every
    ``interval_s``. sipp keeps only the payload and the timing; it rewrites addresses,
    ports and the UDP checksum (sent here as 0: none), so those are placeholders."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # LINKTYPE_ETHERNET
    for i, payload in enumerate(payloads):
        udp = struct.pack("!HHHH", 40000, 4000, 8 + len(payload), 0) + payload
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            i & 0xFFFF,
            0,
            64,
            socket.IPPROTO_UDP,
            0,
            bytes((10, 0, 0, 1)),
            bytes((10, 0, 0, 2)),
        )
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        frame = bytes(12) + struct.pack("!H", 0x0800) + ip + udp
        sec, usec = divmod(round(i * interval_s * 1_000_000), 1_000_000)
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def lead_in_packets(pcm: NDArray[np.int16], follower: RtpPacket) -> list[bytes]:
    """PCMU packets of ``pcm`` that end exactly where ``follower`` begins (same SSRC,
    consecutive sequence numbers and timestamps), so the two replays are one stream."""
    n = -(-pcm.size // PACKET_SAMPLES)
    padded = np.zeros(n * PACKET_SAMPLES, dtype=np.int16)
    padded[: pcm.size] = pcm
    return [
        RtpPacket(
            payload_type=0,
            sequence=(follower.sequence - n + i) & 0xFFFF,
            timestamp=(follower.timestamp - (n - i) * PACKET_SAMPLES) & 0xFFFFFFFF,
            ssrc=follower.ssrc,
            payload=ulaw_encode(frame).tobytes(),
            marker=i == 0,
        ).serialize()
        for i, frame in enumerate(padded.reshape(n, PACKET_SAMPLES))
    ]


# -- sipp scenarios --------------------------------------------------------------------

# The SDP answer names the engine, not the UAS: whatever sipp's UAC plays goes there.
UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="answer with the engine as media address">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:engine@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=engine 1 1 IN IP4 {engine_ip}
      s=-
      c=IN IP4 {engine_ip}
      t=0 0
      m=audio {engine_rtp_port} RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""

_UAC_HEADERS = """\
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:customer@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:engine@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:customer@[local_ip]:[local_port]>
      Max-Forwards: 70"""

UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="customer call replaying RTP">
  <send retrans="500">
    <![CDATA[

      INVITE sip:engine@[remote_ip]:[remote_port] SIP/2.0
{invite_headers}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=customer 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[

      ACK sip:engine@[remote_ip]:[remote_port] SIP/2.0
{ack_headers}
      Content-Length: 0

    ]]>
  </send>
  <nop><action><exec play_pcap_audio="{first_pcap}"/></action></nop>
  <pause milliseconds="{first_ms}"/>
  <nop><action><exec play_pcap_audio="{second_pcap}"/></action></nop>
  <pause milliseconds="{second_ms}"/>
  <send retrans="500">
    <![CDATA[

      BYE sip:engine@[remote_ip]:[remote_port] SIP/2.0
{bye_headers}
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def uac_xml(*, first_pcap: Path, first_s: float, second_pcap: Path, second_s: float) -> str:
    def headers(cseq: str, to_tag: str = "[peer_tag_param]") -> str:
        return _UAC_HEADERS.format(cseq=cseq, to_tag=to_tag)

    return UAC_XML.format(
        invite_headers=headers("1 INVITE", to_tag=""),
        ack_headers=headers("1 ACK"),
        bye_headers=headers("2 BYE"),
        first_pcap=first_pcap,
        # play_pcap_audio returns at once (the replay runs on a thread): pausing for
        # the file's length starts the next replay right after the last packet. A
        # little more keeps the two threads from overlapping when one runs late; a
        # gap in arrival time costs nothing (the jitter buffer orders by sequence
        # number and timestamp, not by the clock).
        first_ms=round(first_s * 1000) + 60,
        second_pcap=second_pcap,
        # sipp ends a call's replay thread when the call ends (200 OK to BYE)
        second_ms=round(second_s * 1000) + 500,
    )


# -- ports -----------------------------------------------------------------------------


def free_udp_port(*, also_plus_2: bool = False) -> int:
    """A loopback UDP port that is free now (and port + 2, where sipp binds its video
    socket next to the audio one)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if not also_plus_2:
                return port
            if port + 2 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as video:
                try:
                    video.bind(("127.0.0.1", port + 2))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP port pair on loopback")


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def sipp(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    assert SIPP is not None
    return await asyncio.create_subprocess_exec(
        SIPP,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,  # the live screen; -trace_screen keeps the last
        stderr=asyncio.subprocess.PIPE,
    )


def sipp_logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(tmp_path.glob("*.log"))
    )


async def first_of(
    collecting: asyncio.Task[list[dict[str, Any]]],
    *,
    failing: tuple[asyncio.subprocess.Process, ...],
) -> list[dict[str, Any]] | None:
    """The events ``collecting`` gathers, or None as soon as one of the processes exits
    non-zero first: a sipp that fails (a port taken, a bad scenario) fails the test at
    once, with its messages, not after the wait for call.end."""
    exits = {asyncio.create_task(proc.wait()) for proc in failing}
    pending: set[asyncio.Task[Any]] = {collecting, *exits}
    try:
        while not collecting.done():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(task in exits and task.result() != 0 for task in done):
                collecting.cancel()
                return None
        return collecting.result()
    finally:
        for task in exits:
            task.cancel()


# -- the test --------------------------------------------------------------------------


def test_sipp_call_rtp_reaches_engine(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    capture = read_pcap_rtp(CAPTURE)
    lead_in = lead_in_packets(call_pcm, capture[0])
    call_pcap = tmp_path / "call.pcap"
    write_pcap(call_pcap, lead_in, interval_s=PACKET_SAMPLES / 8000)
    n_packets = len(lead_in) + len(capture)

    uas_port = free_udp_port()
    uas_media = free_udp_port(also_plus_2=True)
    uac_media = free_udp_port(also_plus_2=True)
    (tmp_path / "uac.xml").write_text(
        uac_xml(
            first_pcap=call_pcap,
            first_s=len(lead_in) * PACKET_SAMPLES / 8000,
            second_pcap=CAPTURE,
            second_s=len(capture) * PACKET_SAMPLES / 8000,
        )
    )
    common: tuple[str, ...] = ("-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-nostdin")
    common += ("-timeout", "80s", "-timeout_error", "-trace_err", "-trace_screen")

    async def scenario() -> tuple[list[dict[str, Any]], str, Any, list[tuple[str, int, str]]]:
        async with running(model, LOOPBACK) as server:
            addr = server.addresses
            assert addr is not None and addr.rtp_port is not None
            (tmp_path / "uas.xml").write_text(
                UAS_XML.format(engine_ip="127.0.0.1", engine_rtp_port=addr.rtp_port)
            )
            async with subscribe(addr.urls()["events"]) as ws:
                uas = await sipp(
                    "-sf", "uas.xml", "-p", str(uas_port), "-mp", str(uas_media), *common,
                    cwd=tmp_path,
                )  # fmt: skip
                # An INVITE sent before the UAS binds is lost and only retransmitted
                # 500 ms later: start the UAC once the UAS holds its port.
                for _ in range(100):
                    if udp_port_taken(uas_port) or uas.returncode is not None:
                        break
                    await asyncio.sleep(0.05)
                uac = await sipp(
                    f"127.0.0.1:{uas_port}", "-sf", "uac.xml", "-mp", str(uac_media), *common,
                    cwd=tmp_path,
                )  # fmt: skip
                collecting = asyncio.create_task(collect_until(ws, count=1, timeout_s=80))
                try:
                    heard = await first_of(collecting, failing=(uac, uas))
                    if heard is None:  # the other sipp would wait for its timeout
                        for proc in (uac, uas):
                            if proc.returncode is None:
                                proc.kill()
                    results = []
                    for name, proc in (("uac", uac), ("uas", uas)):
                        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
                        results.append((name, proc.returncode or 0, err.decode(errors="replace")))
                finally:
                    for proc in (uac, uas):
                        if proc.returncode is None:
                            proc.kill()
                            await proc.wait()
                if heard is None:
                    return [], "", None, results
            base = f"http://127.0.0.1:{addr.port}"
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "/metrics").read().decode()
            )
            return heard, metrics, server.rtp.leg_stats(heard[-1]["call_id"]), results

    events, metrics, stats, results = asyncio.run(asyncio.wait_for(scenario(), timeout=110))

    for name, rc, err in results:
        assert rc == 0, f"sipp {name} exited {rc}: {err}\n{sipp_logs(tmp_path)}"
    # The engine names an unannounced leg after its source address and SSRC: the
    # source is sipp's media port, so the leg is the one sipp's SDP offer announced.
    call_id = f"rtp-127.0.0.1-{uac_media}-{capture[0].ssrc:08x}"
    assert_call(events, call_id=call_id, party="customer")
    assert events[-1]["reason"] == "timeout"
    # every packet of both files arrived, once, in order, nothing concealed
    assert stats is not None
    assert (stats.received, stats.lost, stats.late, stats.duplicates) == (n_packets, 0, 0, 0)
    lost = re.search(r"^emotion_engine_rtp_packets_lost_total(?:\{\})? (\S+)$", metrics, re.M)
    assert lost is not None, metrics
    assert float(lost.group(1)) == 0.0
