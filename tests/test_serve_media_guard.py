"""``serve`` as an attacker and a load tester meet it: the media listeners that cannot
authenticate (the RTP port and AudioSocket), descriptor pressure, an SSRC flood and
a stalled engine. Every test runs a real ``serve`` on loopback ports chosen by the OS
and talks to it with real sockets.

What each bad input gets:

- a source outside ``--media-allow``: an AudioSocket connection is closed at once, an
  RTP datagram is dropped; both counted in ``emotion_engine_media_dropped_total``;
- a public ``--media-host`` without ``--media-allow``: ``serve`` exits with one line;
- idle AudioSocket connections: closed after ``audiosocket_idle_timeout_s`` (their
  leg, if any, ends ``timeout``); beyond the descriptor reserve or the per-source
  limit: closed at once; half-open HTTP connections: closed by the handshake timeout;
- 1,200 spoofed SSRCs from one socket: no ``call.start`` (new legs per source are
  rate-limited and a leg is announced only after 0.5 s of audio in step);
- an engine step that blocks for seconds, or a process stopped for seconds, while RTP
  keeps coming: no leg times out (silence is judged after reading the socket).

The engine-stall and silent-AudioSocket tests run ``EngineServer`` in this process (to
block its engine step, or to set a short idle timeout); the others run the
``emotion-engine serve`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.audio.io import read_audio
from emotion_engine.audio.pcm import float32_to_int16
from emotion_engine.clients import rtp_packets, subscribe
from emotion_engine.config import ServeParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.ingest.audiosocket import Kind, encode_message
from emotion_engine.ingest.rtp import RtpPacket
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.server import EngineServer

REPO = Path(__file__).resolve().parent.parent
DEMO_CALL = REPO / "emotion_engine" / "data" / "demo_call.flac"
SERVE = (sys.executable, "-m", "emotion_engine", "serve")
# ``python -m emotion_engine`` with RLIMIT_NOFILE lowered first
LIMITED = (
    "import resource, runpy; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
    "runpy.run_module('emotion_engine', run_name='__main__', alter_sys=True)"
)
pytestmark = pytest.mark.slow


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    urls: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def port(self, name: str) -> int:
        return int(self.urls[name].rsplit(":", 1)[1].split("/")[0])

    def get(self, name: str, timeout: float = 30.0) -> str:
        with urllib.request.urlopen(self.urls[name], timeout=timeout) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """A series of /metrics (0 when absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
        want = want if labels else name
        for line in self.get("metrics").splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def log_lines(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, nofile: int | None = None
) -> Iterator[Serve]:
    """``serve`` on OS-chosen loopback ports; its output is collected line by line
    (``Serve.lines``). ``nofile``: the process's RLIMIT_NOFILE."""

    command = [*SERVE, "--quiet", "--port", "0", "--rtp-port", "0", "--audiosocket-port", "0"]
    if nofile is not None:  # set in the child itself (preexec_fn is unsafe with threads)
        command[1:3] = ["-c", LIMITED.format(nofile=nofile)]
    proc = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.stdout is not None
    server = Serve(proc, {})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "audiosocket" not in server.urls:
        line = proc.stdout.readline()
        if not line:
            break
        server.lines.append(line)
        match = re.match(r"\s+(\w+)\s+((?:ws|http|udp|tcp)s?://\S+)", line)
        if match:
            server.urls[match.group(1)] = match.group(2)
    if "audiosocket" not in server.urls:
        proc.kill()
        raise AssertionError("serve did not start: " + "".join(server.lines) + proc.stdout.read())
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: server.lines.extend(iter(stdout.readline, "")))
    reader.start()
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)


def demo_pcm(seconds: float, offset_s: float = 20.0) -> NDArray[np.int16]:
    """The bundled demo call's customer channel (8 kHz), a stretch with speech."""
    samples, rate = read_audio(DEMO_CALL)
    assert rate == 8000
    start = int(offset_s * rate)
    return float32_to_int16(samples[0, start : start + int(seconds * rate)])


async def collect(
    url: str, clients: Callable[[], Awaitable[Any]], done: Callable[[list[Any]], bool]
) -> list[dict[str, Any]]:
    """Subscribe to ``url``, then run ``clients()`` while collecting events until
    ``done(events)`` (a failing client fails the test at once)."""
    events: list[dict[str, Any]] = []
    async with subscribe(url) as sub, asyncio.timeout(120), asyncio.TaskGroup() as group:
        group.create_task(clients())
        while not done(events):
            events.append(json.loads(await sub.recv()))
    return events


def starts(events: list[dict[str, Any]]) -> list[str]:
    return [e["call_id"] for e in events if e["type"] == "call.start"]


def ends(events: list[dict[str, Any]]) -> list[str]:
    return [e["call_id"] for e in events if e["type"] == "call.end"]


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


async def send_paced(
    sock: socket.socket, packets: list[bytes], port: int, *, speed: float = 1.0
) -> None:
    """RTP at ``speed`` times real time (20 ms packets), from ``sock``."""
    start = time.monotonic()
    for i, data in enumerate(packets):
        sock.sendto(data, ("127.0.0.1", port))
        delay = start + (i + 1) * 0.02 / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def audiosocket_call(call_uuid: uuid.UUID, pcm: NDArray[np.int16]) -> bytes:
    """A whole AudioSocket call as Asterisk sends it: UUID, 20 ms of slin a message, hang-up."""
    out = [encode_message(Kind.UUID, call_uuid.bytes)]
    data = pcm.astype("<i2").tobytes()
    out += [encode_message(Kind.SLIN, data[i : i + 320]) for i in range(0, len(data), 320)]
    return b"".join([*out, encode_message(Kind.HANGUP)])


def external_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# -- finding 1: media listeners that cannot authenticate -----------------------------


def test_media_listeners_stay_on_loopback_without_an_allow_list() -> None:
    """``--host 0.0.0.0 --token`` opens HTTP to the network, but RTP and AudioSocket
    (no authentication) stay on loopback and say so; asking for a public media
    address without an allow-list stops ``serve`` with one line."""
    with serving("--host", "0.0.0.0", "--token", "s3cret") as server:
        assert server.urls["health"].startswith("http://0.0.0.0:")
        assert server.urls["rtp"].startswith("udp://127.0.0.1:")
        assert server.urls["audiosocket"].startswith("tcp://127.0.0.1:")
        assert server.log_lines("--media-allow to listen on 0.0.0.0")
        address = external_address()
        if address is not None:  # the AudioSocket port is not reachable from outside
            with pytest.raises(OSError):
                socket.create_connection((address, server.port("audiosocket")), timeout=5)
    result = subprocess.run(
        [
            *SERVE,
            "--port",
            "0",
            "--host",
            "0.0.0.0",
            "--token",
            "s3cret",
            "--media-host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: refusing to listen for RTP and AudioSocket on 0.0.0.0 without --media-allow: "
        "they cannot authenticate, so anyone who reaches them could start calls; list the "
        "sources allowed to send (e.g. --media-allow 10.0.0.0/8) or use 127.0.0.1"
    ]


def test_sources_outside_media_allow_are_dropped_and_counted() -> None:
    """Allow-list 127.0.0.2/32: AudioSocket and RTP from 127.0.0.1 start nothing and
    are counted; the same from 127.0.0.2 are calls."""
    pcm = demo_pcm(3.0)
    with serving("--media-allow", "127.0.0.2/32", "--rtp-leg-timeout-s", "1") as server:
        as_port, rtp_port = server.port("audiosocket"), server.port("rtp")
        refused_call, allowed_call = uuid.uuid4(), uuid.uuid4()

        async def audiosocket_from(host: str, call_uuid: uuid.UUID) -> bytes:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", as_port, local_addr=(host, 0)
            )
            try:
                writer.write(audiosocket_call(call_uuid, pcm))
                await writer.drain()
                return await reader.read()  # the server closes: at once, or after hang-up
            except ConnectionResetError:
                return b""
            finally:
                writer.close()

        async def scenario() -> list[dict[str, Any]]:
            async def clients() -> None:
                await audiosocket_from("127.0.0.1", refused_call)
                outside, inside = udp_socket("127.0.0.1"), udp_socket("127.0.0.2")
                await send_paced(outside, rtp_packets(pcm=pcm, ssrc=0xBAD), rtp_port, speed=4)
                await send_paced(inside, rtp_packets(pcm=pcm, ssrc=0x600D), rtp_port, speed=4)
                await audiosocket_from("127.0.0.2", allowed_call)

            events = await collect(server.urls["events"], clients, lambda ev: len(ends(ev)) >= 2)
            return events

        events = asyncio.run(scenario())
        assert sorted(starts(events)) == sorted(ends(events))
        assert len(starts(events)) == 2
        assert str(allowed_call) in starts(events)
        assert any(c.startswith("rtp-127.0.0.2-") for c in starts(events))
        assert not any(
            str(refused_call) == c or c.startswith("rtp-127.0.0.1-") for c in starts(events)
        )
        dropped = "emotion_engine_media_dropped_total"
        assert server.metric(dropped, reason="audiosocket_source_not_allowed") == 1
        assert server.metric(dropped, reason="rtp_source_not_allowed") == len(
            rtp_packets(pcm=pcm, ssrc=0xBAD)
        )
        # one log line per cause, however many datagrams were dropped
        assert 1 <= len(server.log_lines("source not in the allow-list")) <= 2


# -- finding 3: idle and half-open connections, descriptor pressure ------------------


def wait_closed_by_server(socks: list[socket.socket], limit_s: float = 60.0) -> int:
    """Wait until the server has closed every socket (EOF or reset); returns how many
    it closed (all of them, unless ``limit_s`` ran out)."""
    import selectors

    closed = 0
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + limit_s
        while closed < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    sel.unregister(sock)
                    closed += 1
    return closed


def open_idle(host: str, port: int, n: int) -> list[socket.socket]:
    """Up to ``n`` TCP connections from ``host`` that send nothing, one after the
    other; stops early when a connect takes 5 s (the server no longer accepts)."""
    out = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.settimeout(5.0)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            break
        sock.setblocking(False)
        out.append(sock)
    return out


def test_idle_connections_time_out_and_cannot_starve_http() -> None:
    """With RLIMIT_NOFILE 256, 400 idle AudioSocket connections (80 from 127.0.0.1,
    then 40 from each of 127.0.0.3-10; at most 60 per source): /healthz and websocket
    handshakes still answer; those over the per-source limit or the descriptor
    reserve (128) are closed at once, the rest after the idle timeout (10 s);
    refusals are counted and logged one line per cause. Then 300 half-open HTTP
    connections (nothing sent) run the process out of descriptors: the listeners
    back off (about one failed accept a second), the errors are counted and logged
    one line per 10 s, and the handshake timeout closes the connections, after which
    HTTP answers again."""
    env = {"EMOTION_ENGINE_AUDIOSOCKET_MAX_PER_SOURCE": "60"}
    with serving(env=env, nofile=256) as server:
        port = server.port("audiosocket")
        # 80 from one source: the per-source limit refuses 20 (the reserve is far off)
        idle = open_idle("127.0.0.1", port, 80)
        # 40 from each of 8 more: under the per-source limit, so only the reserve
        # refuses (a few hundred descriptors would be needed to take them all)
        for last in range(3, 11):
            idle += open_idle(f"127.0.0.{last}", port, 40)
        try:
            assert len(idle) == 400  # the server kept accepting (and closing) them
            health = json.loads(server.get("health", timeout=20))
            assert health["status"] == "ok"

            async def handshake() -> None:
                async with subscribe(server.urls["events"]):
                    pass

            asyncio.run(asyncio.wait_for(handshake(), 20))
            assert wait_closed_by_server(idle) == len(idle)
        finally:
            for sock in idle:
                sock.close()
        dropped = "emotion_engine_media_dropped_total"
        per_source = server.metric(dropped, reason="audiosocket_per_source_limit")
        reserve = server.metric(dropped, reason="audiosocket_descriptor_reserve")
        timed_out = server.metric("emotion_engine_audiosocket_idle_closed_total")
        assert per_source == 80 - 60 and reserve >= 1 and timed_out >= 60
        assert per_source + reserve + timed_out == len(idle)
        # one line per cause and 10 s (a second one says how many it left out)
        assert 1 <= len(server.log_lines("connections from 127.0.0.")) <= 2
        assert 1 <= len(server.log_lines("file descriptors left of")) <= 2

        started = time.monotonic()
        half_open = open_idle("127.0.0.1", server.port("health"), 300)
        try:
            assert wait_closed_by_server(half_open) == len(half_open)
        finally:
            for sock in half_open:
                sock.close()
        took_s = time.monotonic() - started
        assert json.loads(server.get("health", timeout=20))["status"] == "ok"
        # out of descriptors, a listener backs off: about one failed accept a second
        # each (not up to 100 a second, each logged with a traceback)
        errors = server.metric("emotion_engine_accept_errors_total")
        assert 1 <= errors <= 2 * (took_s + 2), (errors, took_s)
        # ... and logs one line per 10 s about it
        assert 1 <= len(server.log_lines("cannot accept connections")) <= took_s / 10 + 2
        assert not server.log_lines("Traceback")


# -- finding 4: an SSRC flood ---------------------------------------------------------


def test_an_ssrc_flood_announces_no_calls_and_a_real_leg_still_starts() -> None:
    """1,200 spoofed SSRCs from one socket, one packet each: subscribers see no
    call.start; then a real leg from the same host starts and is analysed."""
    pcm = demo_pcm(6.0)
    with serving("--rtp-leg-timeout-s", "1") as server:
        port = server.port("rtp")

        async def scenario() -> tuple[list[dict[str, Any]], int]:
            real = udp_socket()

            async def clients() -> None:
                flood = udp_socket()
                for i in range(1200):
                    packet = RtpPacket(
                        payload_type=0,
                        sequence=7,
                        timestamp=1234,
                        ssrc=0x10000 + i,
                        payload=bytes(160),
                    )
                    flood.sendto(packet.serialize(), ("127.0.0.1", port))
                    if i % 100 == 99:
                        await asyncio.sleep(0.005)
                await send_paced(real, rtp_packets(pcm=pcm, ssrc=0xCAFE), port, speed=4)

            events = await collect(server.urls["events"], clients, lambda ev: bool(ends(ev)))
            return events, int(real.getsockname()[1])

        events, real_port = asyncio.run(scenario())
        real_id = f"rtp-127.0.0.1-{real_port}-0000cafe"
        assert starts(events) == [real_id] and ends(events) == [real_id]
        assert any(e["type"] == "emotion.update" and e["call_id"] == real_id for e in events)
        end = next(e for e in events if e["type"] == "call.end")
        # its audio from its first accepted packet: the first may wait up to 0.25 s (1 s
        # of audio at 4x) for a token of its host and for a flood leg to make room
        assert 4.0 <= end["t"] <= 6.0, end
        dropped = "emotion_engine_media_dropped_total"
        rate = server.metric(dropped, reason="rtp_new_leg_rate")
        full = server.metric(dropped, reason="rtp_probation_full")
        unproven = server.metric("emotion_engine_rtp_legs_unproven_total")
        # 1,000 new legs at once (the burst, and the probation table's size): the
        # flood's other SSRCs are refused, and the legs it did start are forgotten on
        # probation, never announced
        assert unproven >= 1000 and rate + full + unproven >= 1200
        # one line per cause and 10 s (a second one says how many it left out), not
        # one per datagram
        assert 1 <= len(server.log_lines(": ssrc 0x")) <= 4


# -- finding 8: a stalled process ------------------------------------------------------


def test_rtp_legs_survive_a_stopped_process() -> None:
    """Two RTP legs in real time; the server is stopped (SIGSTOP) for 4 s, longer
    than the 1.5 s leg timeout, while the senders go on. Each leg still has exactly
    one call.start and one call.end, its updates keep rising in t, and it ends where
    its audio ends."""
    seconds = 10.0
    pcm = demo_pcm(seconds)
    with serving("--rtp-leg-timeout-s", "1.5") as server:
        port = server.port("rtp")

        async def scenario() -> list[dict[str, Any]]:
            sent = asyncio.Event()

            async def stall() -> None:
                await asyncio.sleep(3.0)
                server.proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(4.0)
                server.proc.send_signal(signal.SIGCONT)

            async def clients() -> None:
                await asyncio.gather(
                    stall(),
                    *(
                        send_paced(udp_socket(), rtp_packets(pcm=pcm, ssrc=0x100 + i), port)
                        for i in range(2)
                    ),
                )
                sent.set()

            events = await collect(
                server.urls["events"],
                clients,
                lambda ev: sent.is_set() and len(ends(ev)) >= len(starts(ev)) >= 2,
            )
            return events

        events = asyncio.run(scenario())
    assert_one_continuous_leg_each(events, n_legs=2, seconds=seconds)


def assert_one_continuous_leg_each(
    events: list[dict[str, Any]], *, n_legs: int, seconds: float
) -> None:
    """Each leg: one call.start, one call.end (timeout, at the end of its audio), and
    emotion.update times that only rise (no second timeline from 0)."""
    assert len(starts(events)) == n_legs and sorted(starts(events)) == sorted(ends(events))
    for call_id in starts(events):
        mine = [e for e in events if e["call_id"] == call_id]
        t = [e["t"] for e in mine if e["type"] == "emotion.update"]
        assert t and t == sorted(t) and len(set(t)) == len(t)
        end = mine[-1]
        assert end["type"] == "call.end" and end["reason"] == "timeout"
        assert seconds - 0.5 <= end["t"] <= seconds, end


def test_rtp_legs_survive_an_engine_stall(model: EmotionModel) -> None:
    """The same two legs against a ``serve`` (in this process) whose engine step
    blocks for 4 s once: the event loop runs on, but no tick reads the RTP socket
    while the step runs. No leg times out; each has one call.start and call.end."""
    seconds = 10.0
    pcm = demo_pcm(seconds)

    class StallingEngine(Engine):
        stall = threading.Event()

        def process(self) -> Any:
            if self.stall.is_set():
                self.stall.clear()
                time.sleep(4.0)
            return super().process()

    params = ServeParams(
        host="127.0.0.1", port=0, rtp_port=0, audiosocket_port=-1, rtp_leg_timeout_s=1.5
    )

    async def scenario() -> list[dict[str, Any]]:
        engine = StallingEngine(model=model)
        server = EngineServer(params=params, service=EngineService(engine=engine))
        addresses = await server.start()
        assert addresses.rtp_port is not None
        port = addresses.rtp_port
        sent = asyncio.Event()

        async def stall() -> None:
            await asyncio.sleep(3.0)
            engine.stall.set()

        async def clients() -> None:
            await asyncio.gather(
                stall(),
                *(
                    send_paced(udp_socket(), rtp_packets(pcm=pcm, ssrc=0x200 + i), port)
                    for i in range(2)
                ),
            )
            sent.set()

        try:
            return await collect(
                addresses.urls()["events"],
                clients,
                lambda ev: sent.is_set() and len(ends(ev)) >= len(starts(ev)) >= 2,
            )
        finally:
            await server.stop()

    events = asyncio.run(scenario())
    assert_one_continuous_leg_each(events, n_legs=2, seconds=seconds)


def test_a_silent_audiosocket_call_ends_with_timeout(model: EmotionModel) -> None:
    """An AudioSocket peer that sends 1 s of audio and then nothing, its socket left
    open (a half-open connection looks the same): after the idle timeout its leg ends
    with reason ``timeout`` where its audio ended, and the server closes the socket."""
    params = ServeParams(
        host="127.0.0.1", port=0, rtp_port=-1, audiosocket_port=0, audiosocket_idle_timeout_s=1.0
    )
    call_uuid = uuid.uuid4()

    async def scenario() -> tuple[list[dict[str, Any]], bytes]:
        server = EngineServer(params=params, service=EngineService(engine=Engine(model=model)))
        addresses = await server.start()
        assert addresses.audiosocket_port is not None
        closed_by_server = asyncio.get_running_loop().create_future()

        async def client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", addresses.audiosocket_port)
            call = audiosocket_call(call_uuid, demo_pcm(1.0))
            writer.write(call[: -len(encode_message(Kind.HANGUP))])  # no hang-up
            await writer.drain()
            closed_by_server.set_result(await reader.read())
            writer.close()

        try:
            events = await collect(addresses.urls()["events"], client, lambda ev: bool(ends(ev)))
            return events, await asyncio.wait_for(closed_by_server, 30)
        finally:
            await server.stop()

    events, rest = asyncio.run(scenario())
    assert rest == b""  # EOF: the server closed the connection
    assert starts(events) == [str(call_uuid)] == ends(events)
    end = events[-1]
    assert end["reason"] == "timeout" and 0.9 <= end["t"] <= 1.0, end
