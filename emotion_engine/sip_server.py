"""``serve --sip HOST:PORT``: the thin asyncio adapter around :class:`~emotion_engine.ingest.sip.SipUas`.

One UDP endpoint and one TCP listener on the same SIP port feed the sans-I/O core;
its outputs are carried out here and nowhere else:

- ``SipSend``: UDP ``sendto``, or a write on the TCP connection the request came on
  (a new connection when that one is gone).
- RTP ports: the core asks for one per answered audio stream (``allocate_port``); a
  UDP socket is bound there from ``sip_rtp_ports`` and read at every engine tick
  (:meth:`SipServer._take_audio`) into an :class:`~emotion_engine.ingest.rtp.RtpIngest`
  for that port alone. Every
  packet on the port therefore belongs to the call and party the SDP/metadata named, so
  the leg is named before its first packet (``RtpIngest.name_leg`` for each new source)
  and its ``call.start`` info carries the SIP facts (From/To, SIPREC participant).
- ``MediaStop``: the port's legs end (``call.end`` with the reason: hangup, cancelled,
  shutdown ...) and the socket closes. ``MediaUpdate``: hold stops timeouts and drops
  what arrives (music on hold is not the caller); resume starts them again.
- RTP timeouts: each port's ingest is polled every ``RTP_POLL_S``; a leg silent for
  ``rtp_leg_timeout_s`` ends with reason ``timeout``, and a call whose every stream is
  silent (and not on hold) is hung up with BYE.

``stop()`` sends BYE on every call (answering ringing ones with 503), waits briefly for
the answers, then closes everything; the legs end with reason ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from emotion_engine.config import ServeParams
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError, ProtocolError
from emotion_engine.ingest.base import IngestOutput, LegStarted, ProtocolViolation
from emotion_engine.ingest.rtp import RtpIngest, is_rtcp
from emotion_engine.ingest.sip import (
    MediaStart,
    MediaStop,
    MediaUpdate,
    Peer,
    SipOutput,
    SipParams,
    SipSend,
    SipStreamFramer,
    SipUas,
)
from emotion_engine.udp import read_into_rows

log = logging.getLogger(__name__)

RTP_POLL_S = 0.5
RTP_RCVBUF_BYTES = 1 << 20
RTP_MAX_DATAGRAM = 2048
SIP_TICK_READ_ROWS = 256  # datagrams read from one call's socket per batch (5 s of 20 ms)
# A second RTP source on a call's port takes over only after the first fell silent
# this long (symmetric-RTP latching: a stray or spoofed stream cannot cut into a call).
LATCH_S = 0.5
SHUTDOWN_WAIT_S = 2.0  # for the answers to the BYEs sent at shutdown
SOURCE = "sip"


def parse_host_port(text: str, *, option: str = "--sip") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ConfigError naming ``option``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{option}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:5060)")
    return host, int(port)


def parse_port_range(text: str) -> range | None:
    """``LOW-HIGH`` -> the even ports of it (RTP convention, RFC 3550 §11), ``0`` ->
    None (any port the OS gives)."""
    text = text.strip()
    if text in ("", "0"):
        return None
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ConfigError(f"sip_rtp_ports: {text!r} is not LOW-HIGH (e.g. 40100-40999) or 0")
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"sip_rtp_ports: {text!r} must lie within 1024-65535, low <= high")
    ports = range(lo + (lo % 2), hi + 1, 2)
    if not ports:
        raise ConfigError(f"sip_rtp_ports: {text!r} holds no even port")
    return ports


def sip_params(params: ServeParams) -> SipParams:
    """The core's settings from ``serve``'s."""
    from emotion_engine import __version__

    return SipParams(
        party=params.sip_party,
        siprec_order=tuple(p.strip() for p in params.sip_siprec_order.split(",") if p.strip()),
        answer_delay_s=params.sip_answer_delay_s,
        auth_user=params.sip_auth_user,
        auth_password=params.sip_auth_password,
        allow=tuple(a.strip() for a in params.sip_allow.split(",") if a.strip()),
        advertise=params.sip_advertise,
        user_agent=f"emotion-engine/{__version__}",
    )


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class _MediaPort:
    """One engine RTP port: the socket, its ingest, and the stream it carries."""

    port: int
    sock: socket.socket
    ingest: RtpIngest | None = None
    dialog: str = ""
    call_id: str = ""
    party: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    peer_sends: bool = True
    last_packet: float = 0.0
    current: tuple[tuple[str, int], int] | None = None  # latched (source, SSRC)
    named: set[tuple[str, int]] = field(default_factory=set)
    held_dropped: int = 0
    closed: bool = False


def _with_call_info(media: _MediaPort, outputs: list[IngestOutput]) -> list[IngestOutput]:
    """``outputs`` of the port's ingest, each ``LegStarted`` given the SIP facts of its
    call (From/To, SIPREC participant) for its ``call.start``."""
    return [
        replace(o, info={**o.info, **media.info}) if isinstance(o, LegStarted) else o
        for o in outputs
    ]


class _SipDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server._receive(data, Peer("udp", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp socket error: %s", exc)


class _SipStreamProtocol(asyncio.Protocol):
    """One SIP-over-TCP connection (accepted, or opened to send a BYE)."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.framer = SipStreamFramer()
        self.transport: asyncio.Transport | None = None
        self.conn = next(server._conn_ids)
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("tcp", str(host), int(port), self.conn)
        self.server._conns[self.conn] = self

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        try:
            messages = self.framer.feed(data)
        except ProtocolError as exc:
            # no way to find the next message boundary: the connection is done
            self.server.service.submit(
                [ProtocolViolation(f"SIP over {self.peer}: {exc}; closing")], source=SOURCE
            )
            self.transport.close()
            return
        for message in messages:
            if message == b"":
                self.transport.write(b"\r\n")  # RFC 5626 pong
            else:
                self.server._receive(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.pop(self.conn, None)


class SipServer:
    """SIP over UDP and TCP on one port, RTP on per-stream ports, into ``service``."""

    def __init__(self, *, params: ServeParams, service: EngineService) -> None:
        self.params = params
        self.service = service
        self.host, self.port = parse_host_port(params.sip)
        self.rtp_ports = parse_port_range(params.sip_rtp_ports)
        core_params = sip_params(params)
        if not _is_loopback(self.host) and not (core_params.allow or core_params.auth_user):
            raise ConfigError(
                f"refusing SIP on {self.host} without --sip-allow or --sip-auth-user: anyone "
                "could stream calls in (use a loopback address, or set one of them)"
            )
        self.core = SipUas(params=core_params, allocate_port=self._allocate)
        self._media: dict[int, _MediaPort] = {}
        # one receive buffer for all calls' sockets, read one after another at ticks
        self._rx = np.zeros((SIP_TICK_READ_ROWS, RTP_MAX_DATAGRAM), dtype=np.uint8)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._conns: dict[int, _SipStreamProtocol] = {}
        self._conn_ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_port = 0
        self._local_cache: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bugs_logged: set[str] = set()
        self._answered = asyncio.Event()  # set while no BYE of the engine awaits its answer
        # each stream's audio is held per leg and handed over once per engine tick
        service.add_source(self._take_audio, source=SOURCE)
        service.metrics.gauge(
            "emotion_engine_sip_calls_active",
            "SIP calls (dialogs) open, ringing or answered.",
            lambda: float(self.core.n_calls),
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> int:
        """Bind UDP and TCP on the SIP port; returns it (the OS's choice for port 0)."""
        loop = self._loop = asyncio.get_running_loop()
        for _ in range(20):  # port 0: UDP picks, TCP must get the same number
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _SipDatagramProtocol(self), local_addr=(self.host, self.port)
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await loop.create_server(
                    lambda: _SipStreamProtocol(self), self.host, port
                )
            except OSError:
                udp.close()
                if self.port != 0:
                    raise
                continue
            self._udp = udp
            break
        else:
            raise OSError(f"no port free for both UDP and TCP on {self.host}")
        self.port = port
        self._poller = loop.create_task(self._poll_media(), name="sip-rtp-timeouts")
        log.info("SIP listening on %s:%d (UDP and TCP)", self.host, port)
        return port

    async def stop(self) -> None:
        """BYE every call, wait up to ``SHUTDOWN_WAIT_S`` for the answers, close."""
        loop = asyncio.get_running_loop()
        self._handle(self.core.hangup_all(loop.time(), "shutdown"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), SHUTDOWN_WAIT_S)
        if self._poller is not None:
            self._poller.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for media in list(self._media.values()):
            self._stop_media(media, "shutdown")
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self._tasks):
            task.cancel()

    # -- SIP in and out -----------------------------------------------------------------

    def _receive(self, data: bytes, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            outputs = self.core.receive(data, peer, loop.time(), local=self._local_for(peer))
        except Exception as exc:  # the core answers 500 itself; this is the last line of defence
            if exc.__class__.__name__ not in self._bugs_logged:  # one traceback per kind
                self._bugs_logged.add(exc.__class__.__name__)
                log.exception("sip: message from %s could not be handled", peer)
            self.service.violation(SOURCE, f"message from {peer} could not be handled: {exc!r}")
            return
        self._handle(outputs)

    def _local_for(self, peer: Peer) -> tuple[str, int]:
        """The engine's address as ``peer`` reaches it: the bound host, or, on a
        wildcard bind, the source address the kernel routes to that peer with."""
        if self.host not in ("0.0.0.0", "::", ""):
            return self.host, self.port
        local = self._local_cache.get(peer.host)
        if local is None:
            family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((peer.host, peer.port or 5060))  # no packet is sent
                    local = str(probe.getsockname()[0])
                except OSError:
                    local = "127.0.0.1"
            if len(self._local_cache) > 4096:
                self._local_cache.clear()
            self._local_cache[peer.host] = local
        return local, self.port

    def _handle(self, outputs: list[SipOutput]) -> None:
        for out in outputs:
            try:
                if isinstance(out, SipSend):
                    self._send(out)
                elif isinstance(out, MediaStart):
                    self._start_media(out)
                elif isinstance(out, MediaUpdate):
                    self._update_media(out)
                elif isinstance(out, MediaStop):
                    media = self._media.get(out.port)
                    if media is not None:
                        self._stop_media(media, out.reason)
                elif isinstance(out, ProtocolViolation):
                    self.service.submit([out], source=SOURCE)
            except Exception:
                log.exception("sip: output %r could not be carried out", type(out).__name__)
        if self.core.pending_requests:
            self._answered.clear()
        else:
            self._answered.set()
        self._arm()

    def _send(self, out: SipSend) -> None:
        peer = out.peer
        if peer.transport == "udp":
            if self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(out.data, (peer.host, peer.port))
            return
        conn = self._conns.get(peer.conn) if peer.conn is not None else None
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(out.data)
            return
        self._spawn(self._send_new_connection(peer, out.data))

    async def _send_new_connection(self, peer: Peer, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _SipStreamProtocol(self), peer.host, peer.port),
                timeout=5,
            )
        except (OSError, TimeoutError) as exc:
            log.warning("sip: cannot reach %s over TCP: %s", peer, exc)
            return
        transport.write(data)

    def _arm(self) -> None:
        """Wake the core at its next timer (retransmissions, delayed answers)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is not None and self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        self._handle(self.core.poll(self._loop.time()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- RTP ports ----------------------------------------------------------------------

    def _allocate(self) -> int | None:
        """Bind the next free RTP port of the range (round robin, so a port just freed
        is not handed straight to the next call while stray packets may still come)."""
        candidates: list[int]
        if self.rtp_ports is None:
            candidates = [0]
        else:
            n = len(self.rtp_ports)
            candidates = [self.rtp_ports[(self._next_port + i) % n] for i in range(n)]
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for i, candidate in enumerate(candidates):
            if candidate in self._media:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RTP_RCVBUF_BYTES)
                sock.bind((self.host, candidate))
                sock.setblocking(False)
            except OSError:
                sock.close()
                continue
            port = int(sock.getsockname()[1])
            if self.rtp_ports is not None:
                self._next_port = (self._next_port + i + 1) % len(self.rtp_ports)
            self._media[port] = _MediaPort(port=port, sock=sock)
            return port
        log.warning("sip: no free RTP port in %s", self.params.sip_rtp_ports)
        return None

    def _start_media(self, out: MediaStart) -> None:
        media = self._media.get(out.port)
        if media is None:
            return
        media.dialog, media.call_id, media.party = out.dialog, out.call_id, out.party
        media.info = dict(out.info)
        media.peer_sends = out.peer_sends
        media.ingest = RtpIngest(
            leg_timeout_s=self.params.rtp_leg_timeout_s,
            party=out.party,
            dtmf_payload_type=out.dtmf_pt,
            coalesce_audio=True,
        )
        assert self._loop is not None
        media.last_packet = self._loop.time()

    def _update_media(self, out: MediaUpdate) -> None:
        media = self._media.get(out.port)
        if media is None:
            return
        if out.peer_sends and not media.peer_sends:
            assert self._loop is not None
            media.last_packet = self._loop.time()  # the silence of the hold does not count
        media.peer_sends = out.peer_sends
        log.info(
            "sip: call %s %s %s",
            media.call_id,
            media.party,
            "resumed" if out.peer_sends else "held",
        )

    def _stop_media(self, media: _MediaPort, reason: str) -> None:
        if media.closed:
            return
        if media.ingest is not None and self._loop is not None:
            # the audio since the last tick (up to 100 ms) is still in the socket
            try:
                self.service.submit(self._read_media(media, self._loop.time()), source=SOURCE)
            except Exception:
                log.exception("sip rtp: packets on port %d could not be handled", media.port)
        media.closed = True
        self._media.pop(media.port, None)
        if media.ingest is not None:
            self.service.submit(media.ingest.close(reason), source=SOURCE)
        media.sock.close()

    def _media_datagram(
        self, media: _MediaPort, data: bytes, addr: tuple[str, int], now: float
    ) -> None:
        ingest = media.ingest
        if ingest is None or media.closed or not self.core.allowed(addr[0]):
            return  # not answered yet, or a source the allow-list refuses
        if not media.peer_sends:
            media.held_dropped += 1
            return
        out: list[IngestOutput] = []
        if len(data) >= 12 and not is_rtcp(data):
            key = (addr, int.from_bytes(data[8:12], "big"))
            if media.current is None:
                media.current = key
            elif key != media.current:
                if now - media.last_packet < LATCH_S:
                    return
                # the old source fell silent and a new one speaks: e.g. a re-INVITE
                # moved the media; its leg ends and the new one starts
                out += ingest.end_leg(media.current[0], media.current[1], "media_change")
                media.current = key
            media.last_packet = now
        if addr not in media.named:
            media.named.add(addr)
            out += ingest.name_leg(addr, None, media.call_id, media.party)
        out += _with_call_info(media, ingest.receive_datagram(data, addr, now))
        if out:
            self.service.submit(out, source=SOURCE)

    def _take_audio(self) -> list[IngestOutput]:
        """At each engine tick (``EngineService`` source): read every call's RTP
        socket, then hand over every open stream's held audio.

        The sockets are read only here, as ``serve``'s RTP port is
        (``server._RtpReader``): audio reaches the engine only at a tick, and reading
        each datagram as it arrived cost a wake-up, a Python call chain and, during a
        step, a GIL hand-over per packet. A call's ~5 packets of a tick wait in its
        socket's buffer (``RTP_RCVBUF_BYTES``, seconds of one call)."""
        out = self._read_all_media()
        for media in self._media.values():
            if media.ingest is not None and not media.closed:
                out += media.ingest.take_audio()
        return out

    def _read_all_media(self) -> list[IngestOutput]:
        """Read every call's RTP socket (at ticks, and before checking for silence)."""
        assert self._loop is not None
        now = self._loop.time()
        out: list[IngestOutput] = []
        for media in list(self._media.values()):
            if not media.closed:
                try:
                    out += self._read_media(media, now)
                except Exception:  # a bug, not bad input: the other calls go on
                    log.exception("sip rtp: packets on port %d could not be handled", media.port)
                    self.service.metrics.protocol_error(SOURCE)
        return out

    def _read_media(self, media: _MediaPort, now: float) -> list[IngestOutput]:
        """Read what one call's RTP socket holds. The usual batch (every datagram from
        the latched source and SSRC, already named, the call not on hold) goes to
        ``RtpIngest.receive_batch`` at once; any other goes datagram by datagram
        through :meth:`_media_datagram` (latching, naming, hold, allow-list)."""
        out: list[IngestOutput] = []
        buf = self._rx
        while True:
            # an error (ICMP says nothing about the media coming in) just ends this read
            sizes, raw, _ = read_into_rows(media.sock, buf)
            if not sizes:
                return out
            addrs = [a if len(a) == 2 else (str(a[0]), int(a[1])) for a in raw]
            current, ingest = media.current, media.ingest
            head = buf[: len(sizes)]
            usual = (
                ingest is not None
                and media.peer_sends
                and current is not None
                and current[0] in media.named
                and min(sizes) >= 12
                and all(addr == current[0] for addr in addrs)
                and bool(
                    (np.ascontiguousarray(head[:, 8:12]).view(">u4")[:, 0] == current[1]).all()
                )
                and not bool(((head[:, 1] >= 192) & (head[:, 1] <= 223)).any())  # RTCP
                and self.core.allowed(current[0][0])
            )
            if usual:
                assert ingest is not None
                media.last_packet = now
                out += _with_call_info(media, ingest.receive_batch(buf, sizes, addrs, now))
            else:
                for i, (size, addr) in enumerate(zip(sizes, addrs, strict=True)):
                    self._media_datagram(media, bytes(buf[i, :size]), addr, now)
            if len(sizes) < buf.shape[0]:
                return out

    async def _poll_media(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.params.rtp_leg_timeout_s
        while True:
            await asyncio.sleep(RTP_POLL_S)
            # Silence on the stream's own clock: what waits in the sockets (seconds of
            # it after an engine stall or a stopped process) is read first.
            self.service.submit(self._read_all_media(), source=SOURCE)
            now = loop.time()
            calls: dict[str, list[_MediaPort]] = {}
            for media in list(self._media.values()):
                if media.ingest is None or media.closed:
                    continue
                calls.setdefault(media.dialog, []).append(media)
                if media.peer_sends:  # a held stream keeps its leg open, silent
                    outputs = media.ingest.poll(now)
                    if outputs:
                        self.service.submit(outputs, source=SOURCE)
            for dialog, ports in calls.items():
                # hung up only when nothing is held and every stream fell silent
                if all(m.peer_sends and now - m.last_packet >= timeout for m in ports):
                    log.info("sip: no RTP for %.1f s on %s: hanging up", timeout, dialog)
                    self._handle(self.core.hangup(dialog, now, "rtp_timeout"))


__all__ = ["SipServer", "parse_host_port", "parse_port_range", "sip_params"]
