"""``emotion-engine serve``: thin asyncio adapters around the sans-I/O cores.

One HTTP/websocket listener (``--port``) carries:

- ``/v1/events``: subscribers (filters ``call_id``, ``party``, ``type``; ``since=SEQ``)
- ``/v1/media/twilio``, ``/v1/media/audiohook``, ``/v1/media/l16``: media websockets
- ``/v1/control``: JSON commands, e.g. naming an RTP leg before or after its first packet
- ``GET /healthz`` and ``GET /metrics`` (Prometheus)
- ``GET /``: the agent-assist page (static files from ``emotion_engine/web``; it holds
  no data and needs no token: the page passes ``?token=`` on to ``/v1/events``)

plus RTP on UDP ``--rtp-port``, Asterisk AudioSocket on TCP ``--audiosocket-port``
and, when configured, SIP calls and SIPREC sessions on ``--sip`` (:mod:`emotion_engine.sip_server`).
Every adapter feeds bytes to its protocol core and hands the outputs to
:class:`EngineService`; replies go back to the peer; nothing here parses audio.

Privacy: only the customer's audio is analysed unless ``ServeParams.analyze_agent``
is on; routing rules (``emotion_engine.routing``) add ``route.hint`` events.

Authentication: with a token configured, websockets need ``Authorization: Bearer
TOKEN`` (or ``?token=TOKEN`` for browsers, which cannot set headers); AudioHook
presents ``X-API-KEY``. Without a token the server refuses any non-loopback host.
``/v1/control`` (which names and ends RTP legs) takes only ``control_token``: with a
token set and no control token it is closed (403), so a media or subscriber token
cannot end anybody's call.

Call ids belong to the session that opened them (:meth:`EngineService.submit`): a
second session opening a call id that is open is refused with its protocol's error
(websocket close 1008, AudioHook ``disconnect``, AudioSocket hang-up), and the open
call is untouched.

RTP and AudioSocket cannot authenticate: they listen on loopback unless
``media_allow`` lists the sources allowed to send (:func:`media_host`). RTP legs are
rate-limited per source and announced after probation (:class:`RtpIngest`);
AudioSocket connections are admitted by :class:`_AudioSocketGuard` (allow-list, per
source, a descriptor reserve for HTTP) and closed when idle; listeners back off when
out of descriptors (:class:`_BackoffSocket`); refusals are counted in
``emotion_engine_media_dropped_total`` and logged one line per cause per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import http
import ipaddress
import json
import logging
import os
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from emotion_engine import __version__, web
from emotion_engine.config import PARTIES, ServeParams
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError, ServeError
from emotion_engine.ingest.audiohook import AudioHookSession
from emotion_engine.ingest.audiosocket import AudioSocketSession
from emotion_engine.ingest.base import (
    Close,
    IngestOutput,
    ProtocolViolation,
    Reply,
    call_id_problem,
    clip,
    wire_int,
)
from emotion_engine.ingest.guard import (
    RateLimitedLog,
    SourceAllowList,
    SourceRateLimit,
    parse_networks,
)
from emotion_engine.ingest.l16 import L16Session
from emotion_engine.ingest.rtp import RtpIngest
from emotion_engine.ingest.twilio import TwilioMediaSession
from emotion_engine.publish.events import to_json
from emotion_engine.publish.hub import EventFilter
from emotion_engine.routing import Routing
from emotion_engine.udp import read_into_rows

if TYPE_CHECKING:
    from emotion_engine.sip_server import SipServer

log = logging.getLogger(__name__)

RTP_POLL_S = 0.5
RTP_DRAIN_MAX = 512  # datagrams per wake-up, so other sockets still get their turn
RTP_BATCH_S = 0.005  # pause between RTP wake-ups, so each one handles a batch (_RtpReader)
RTP_MAX_DATAGRAM = 2048
# At engine ticks, datagrams are read into a (rows, RTP_MAX_DATAGRAM) buffer (8 MiB,
# touched only as far as used): 4,096 rows hold one tick of 800 legs, so a leg's
# packets of a tick are handled together; rounds bound the work per tick in a flood.
RTP_TICK_READ_ROWS = 4096
RTP_TICK_READ_MAX_ROUNDS = 8
# A connection that has not finished its HTTP/websocket handshake in this time is
# closed (half-open ones too); open websockets are pinged (ws_ping_interval_s).
WS_OPEN_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 100  # as asyncio's create_server; the descriptor reserve must exceed it
ACCEPT_BACKOFF_S = 0.5  # after running out of descriptors (asyncio then pauses 1 s)
MEDIA_LOG_INTERVAL_S = 10.0  # refused media sources, accept errors: one line per cause and interval
JSON_CACHE_EVENTS = 4096  # events whose JSON text is kept for the next subscriber
# ~0.2 s of 1,000 legs: what arrives between two reads at engine ticks waits here (_RtpReader)
RTP_RCVBUF_BYTES = 4 << 20


class _BackoffSocket(socket.socket):
    """A listening TCP socket that stops accepting for a while once the process is
    out of descriptors (or memory).

    asyncio (3.11) goes on calling ``accept()`` up to 100 times in the same
    wake-up after such an error, reporting each one with a traceback, then pauses
    the listener 1 s: a few hundred failed accepts and log entries a second per
    listener. Refusing (``BlockingIOError``) for ``ACCEPT_BACKOFF_S`` after the
    first error ends that wake-up at once; asyncio's own 1 s pause follows."""

    paused_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self.paused_until:
            raise BlockingIOError(errno.EAGAIN, "accepting paused: out of resources")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.paused_until = time.monotonic() + ACCEPT_BACKOFF_S
            raise


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking :class:`_BackoffSocket` (as
    ``loop.create_server`` would make it for one address)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = _BackoffSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _rtp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket with a large receive buffer (the kernel caps it at
    net.core.rmem_max; the 208 KiB default holds only ~100 datagrams on loopback)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RTP_RCVBUF_BYTES)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _MediaSession(Protocol):
    def receive_text(self, text: str) -> list[IngestOutput]: ...
    def receive_bytes(self, data: bytes) -> list[IngestOutput]: ...
    def connection_lost(self) -> list[IngestOutput]: ...
    def refuse(self, reason: str) -> list[IngestOutput]: ...
    def __hash__(self) -> int: ...  # the session owns its call id (EngineService.submit)


def refusal_reason(service: EngineService, refused: list[str]) -> str:
    """What a refused session is told (a close reason: short, no peer text)."""
    if any(service.owner_source(call_id) is not None for call_id in refused):
        return "call id already open in another session"
    return "call id refused (see the identifier limits)"


def close_reason(text: str) -> str:
    """``text`` cut to what a websocket close frame carries (123 bytes of UTF-8)."""
    data = text.encode("utf-8")
    return text if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."


def media_host(params: ServeParams) -> str:
    """Where the RTP port and AudioSocket listen. They cannot authenticate their
    peers, so: ``media_host`` when set (a public one needs ``media_allow``), else
    ``host`` when ``media_allow`` lists the sources allowed to send, else loopback."""
    if params.media_host:
        if not is_loopback(params.media_host) and not params.media_allow.strip():
            raise ConfigError(
                f"refusing to listen for RTP and AudioSocket on {params.media_host} without "
                "--media-allow: they cannot authenticate, so anyone who reaches them could "
                "start calls; list the sources allowed to send (e.g. --media-allow "
                "10.0.0.0/8) or use 127.0.0.1"
            )
        return params.media_host
    if params.media_allow.strip() or is_loopback(params.host):
        return params.host
    return "::1" if ":" in params.host else "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where the server actually listens (ports chosen by the OS when 0 was asked)."""

    host: str
    port: int
    rtp_port: int | None
    audiosocket_port: int | None
    scheme: str
    sip_port: int | None = None  # SIP over UDP and TCP (issue 7)
    sip_host: str = ""  # where SIP listens, when not on ``host``
    media_host: str = ""  # where RTP and AudioSocket listen, when not on ``host``

    def urls(self) -> dict[str, str]:
        ws = "wss" if self.scheme == "https" else "ws"
        base = f"{self.host}:{self.port}"
        out = {
            "events": f"{ws}://{base}/v1/events",
            "twilio": f"{ws}://{base}/v1/media/twilio",
            "audiohook": f"{ws}://{base}/v1/media/audiohook",
            "l16": f"{ws}://{base}/v1/media/l16",
            "control": f"{ws}://{base}/v1/control",
            "health": f"{self.scheme}://{base}/healthz",
            "metrics": f"{self.scheme}://{base}/metrics",
            "agent_assist": f"{self.scheme}://{base}/",
        }
        media = self.media_host or self.host
        if self.rtp_port is not None:
            out["rtp"] = f"udp://{media}:{self.rtp_port}"
        if self.audiosocket_port is not None:
            out["audiosocket"] = f"tcp://{media}:{self.audiosocket_port}"
        if self.sip_port is not None:
            out["sip"] = f"sip:engine@{self.sip_host or self.host}:{self.sip_port}"
        return out


class _RtpReader:
    """Reads RTP datagrams from a non-blocking UDP socket in batches.

    **At engine ticks** (when the kernel granted the receive buffer asked for,
    ``RTP_RCVBUF_BYTES``): the socket is not watched at all. At every engine tick,
    just before the step, :meth:`read_for_tick` reads everything queued into one
    preallocated buffer (``recvfrom_into``: no bytes object per datagram) and hands
    it to :meth:`RtpIngest.receive_batch`, which parses the headers with numpy and
    gives each leg's ~5 packets of the tick to its jitter buffer as one run. Audio
    only reaches the engine at a tick anyway, so reading earlier bought no latency;
    reading per wake-up cost a Python call chain per datagram (~9 us of ~33 us a packet
    cost end to end at 500 legs on one core, py-spy) and, while a step ran, one GIL
    hand-over per datagram (each ``recvfrom`` releases the GIL to the busy engine
    thread: ~7 us a packet at 300 legs). The packets wait in the kernel instead: one
    tick plus one step of them, ~0.2 s of 1,000 legs.

    **Per wake-up** (where net.core.rmem_max caps the buffer below that; Linux's
    default, 208 KiB, holds ~100 datagrams, fewer than 500 legs send in one tick):
    each wake-up drains what is queued (up to ``RTP_DRAIN_MAX``) through
    :meth:`RtpIngest.receive_datagram`, then the reader stops watching for
    ``RTP_BATCH_S`` so the next wake-up finds a batch again, and it reads during
    steps too. It says so once, with the sysctl that lifts the cap.
    """

    def __init__(
        self,
        core: RtpIngest,
        service: EngineService,
        sock: socket.socket,
        errors_log: RateLimitedLog | None = None,
    ) -> None:
        self.errors_log = errors_log or RateLimitedLog(log)
        self.core = core
        self.service = service
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._watching = False
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.reads_at_ticks = granted >= RTP_RCVBUF_BYTES  # Linux reports double
        rows = RTP_TICK_READ_ROWS if self.reads_at_ticks else 0
        self._datagrams = np.zeros((rows, RTP_MAX_DATAGRAM), np.uint8)
        if self.reads_at_ticks:
            return
        log.warning(
            "rtp: the socket's receive buffer is %d KiB, not the %d KiB asked for "
            "(net.core.rmem_max caps it), too small to hold the packets of one engine "
            "tick; RTP is read as it arrives, which costs more CPU per packet. For full "
            "capacity: sysctl -w net.core.rmem_max=%d",
            granted // 1024,
            RTP_RCVBUF_BYTES // 1024,
            RTP_RCVBUF_BYTES,
        )
        self._watch()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._unwatch()
        self.sock.close()

    # -- at engine ticks --------------------------------------------------------------

    def read_for_tick(self) -> list[IngestOutput]:
        """Read and handle everything queued on the socket (at most
        ``RTP_TICK_READ_MAX_ROUNDS`` buffers full; the rest waits for the next tick).
        Returns what the core produced (legs started, violations); the audio stays
        held in the core until :meth:`RtpIngest.take_audio`."""
        if self._closed or not self.reads_at_ticks:
            return []
        outputs: list[IngestOutput] = []
        for _ in range(RTP_TICK_READ_MAX_ROUNDS):
            sizes, addrs, error = read_into_rows(self.sock, self._datagrams)
            if error is not None:  # e.g. an ICMP error queued on the socket
                self.errors_log.log("rtp_socket", f"rtp socket error: {error}", time.monotonic())
            if sizes:
                try:
                    outputs += self.core.receive_batch(
                        self._datagrams, sizes, addrs, self._loop.time()
                    )
                except Exception:  # a bug, not bad input (the core reports that)
                    log.exception("rtp: a batch of %d datagrams could not be handled", len(sizes))
                    self.service.metrics.protocol_error("rtp")
            if len(sizes) < self._datagrams.shape[0]:  # the queue is empty (or erred)
                break
        return outputs

    def read_now(self) -> list[IngestOutput]:
        """Read everything queued now, whichever way this reader reads (before RTP
        legs are checked for silence)."""
        if self.reads_at_ticks:
            return self.read_for_tick()
        for _ in range(RTP_TICK_READ_MAX_ROUNDS):
            if self._closed or self._drain() < RTP_DRAIN_MAX:
                break
        return []

    # -- per wake-up ------------------------------------------------------------------

    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False

    def _ready(self) -> None:
        self._unwatch()
        n = 0
        try:
            n = self._drain()
        finally:  # whatever happened, RTP must not stop being read
            # A full batch means more is queued: come back at once, not after the pause.
            delay = 0.0 if n == RTP_DRAIN_MAX else RTP_BATCH_S
            self._timer = self._loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self._timer = None
        self._watch()

    def _drain(self) -> int:
        """Read and handle up to ``RTP_DRAIN_MAX`` datagrams; returns how many."""
        now = self._loop.time()
        recvfrom, receive = self.sock.recvfrom, self.core.receive_datagram
        outputs: list[IngestOutput] = []
        n = 0
        while n < RTP_DRAIN_MAX:
            try:
                data, addr = recvfrom(RTP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                self.errors_log.log("rtp_socket", f"rtp socket error: {exc}", time.monotonic())
                break
            n += 1
            try:
                outputs += receive(data, addr, now)
            except Exception:  # a bug, not bad input (the core reports that): keep serving
                log.exception("rtp: packet from %s:%s could not be handled", addr[0], addr[1])
                self.service.metrics.protocol_error("rtp")
        if outputs:
            self.service.submit(outputs, source="rtp")
        return n


def _open_descriptors() -> int | None:
    """File descriptors this process has open (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return None


class _AudioSocketGuard:
    """Admission for AudioSocket connections, which cannot authenticate: the source
    must be in ``media_allow``, have fewer than ``audiosocket_max_per_source`` open,
    and accepting must leave ``fd_reserve`` descriptors free for the HTTP/websocket
    listener. Refused connections are closed at once and counted by reason."""

    def __init__(self, params: ServeParams, allow: SourceAllowList, media_log: RateLimitedLog):
        self.allow = allow
        self.max_per_source = params.audiosocket_max_per_source
        self.idle_timeout_s = params.audiosocket_idle_timeout_s
        self.reserve = params.fd_reserve
        self.log = media_log
        self.open_per_source: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.idle_closed = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.fd_limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
        self._fds = _open_descriptors()
        self._fds_baseline = self._fds if self._fds is not None else 64
        self._fds_checked = -1.0
        self._admitted_since_count = 0
        self.n_open = 0

    def admit(self, host: str, now: float) -> bool:
        reason = None
        if not self.allow.allowed(host):
            reason, why = "source_not_allowed", "source not in media_allow"
        elif self.open_per_source.get(host, 0) >= self.max_per_source:
            reason = "per_source_limit"
            why = f"{self.max_per_source} connections from {host} already open"
        elif (left := self._descriptors_left(now)) < self.reserve:
            reason = "descriptor_reserve"
            why = (
                f"{left} file descriptors left of {self.fd_limit}, fewer than the "
                f"{self.reserve} kept for HTTP/websockets"
            )
        if reason is None:
            self.open_per_source[host] = self.open_per_source.get(host, 0) + 1
            self.n_open += 1
            self._admitted_since_count += 1
            return True
        key = f"audiosocket_{reason}"
        self.refused[key] = self.refused.get(key, 0) + 1
        self.log.log(key, f"audiosocket: connection from {host} refused: {why}", now)
        return False

    def release(self, host: str) -> None:
        left = self.open_per_source.get(host, 0) - 1
        if left > 0:
            self.open_per_source[host] = left
        else:
            self.open_per_source.pop(host, None)
        self.n_open -= 1

    def _descriptors_left(self, now: float) -> int:
        """Descriptors left (the connection in hand counted as open). Counting
        /proc/self/fd costs ~0.1 ms per 1,000 descriptors, so it is counted every
        50 ms or 32 admissions; what is accepted in between (at most a listen
        backlog, 100, at once) is covered by the reserve."""
        if self._fds is None:
            return self.fd_limit - self._fds_baseline - self.n_open - 1
        if now - self._fds_checked >= 0.05 or self._admitted_since_count >= 32:
            counted = _open_descriptors()
            if counted is not None:
                self._fds, self._fds_checked = counted, now
                self._admitted_since_count = 0
        return self.fd_limit - self._fds


class _AudioSocketProtocol(asyncio.Protocol):
    """One AudioSocket connection: admission (:class:`_AudioSocketGuard`), the core,
    and an idle timeout (a peer silent for ``audiosocket_idle_timeout_s``, e.g. a
    half-open connection, ends its leg with reason ``timeout`` and is closed)."""

    def __init__(self, service: EngineService, party: str, guard: _AudioSocketGuard) -> None:
        self.service = service
        self.guard = guard
        self.core = AudioSocketSession(party=party)
        self.transport: asyncio.Transport | None = None
        self._host: str | None = None  # set once admitted
        self._loop = asyncio.get_running_loop()
        self._last_data = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not self.guard.admit(host, self._loop.time()):
            transport.abort()
            return
        self.transport = transport
        self._host = host
        self._idle = self._loop.call_later(self.guard.idle_timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        # Measured from the last data handled, not from when this timer was set: after
        # a stall, data that waited in the socket is handled before timers run.
        silent = self._loop.time() - self._last_data
        if silent < self.guard.idle_timeout_s:
            self._idle = self._loop.call_later(self.guard.idle_timeout_s - silent, self._check_idle)
            return
        self._idle = None
        self.guard.idle_closed += 1
        self.guard.log.log(
            "audiosocket_idle",
            f"audiosocket: connection from {self._host} sent nothing for "
            f"{self.guard.idle_timeout_s:g} s: closed",
            self._loop.time(),
        )
        self.service.submit(self.core.timed_out(), source="audiosocket", owner=self.core)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._host is None:
            return  # refused: closing
        self._last_data = self._loop.time()
        try:
            outputs = self.core.receive_data(data)
        except Exception:
            log.exception("audiosocket: input could not be handled; closing")
            self.service.metrics.protocol_error("audiosocket")
            outputs = [*self.core.connection_lost(), Close(1011, "internal error")]
        refused = self.service.submit(outputs, source="audiosocket", owner=self.core)
        if refused:  # another session holds the call id: hang up on this one
            outputs = self.core.refuse(refusal_reason(self.service, refused))
        if self.transport is None:
            return
        for out in outputs:
            if isinstance(out, Reply) and isinstance(out.data, bytes):
                self.transport.write(out.data)
        if any(isinstance(o, Close) for o in outputs):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._host is None:
            return  # refused at once: no leg, nothing counted as open
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.guard.release(self._host)
        self._host = None
        self.service.submit(self.core.connection_lost(), source="audiosocket", owner=self.core)
        self.service.release(self.core)


class EngineServer:
    """All listeners of one ``serve`` process around one :class:`EngineService`."""

    def __init__(self, *, params: ServeParams, service: EngineService) -> None:
        if not params.token and not is_loopback(params.host):
            raise ConfigError(
                f"refusing to listen on {params.host} without a token: set --token, "
                "EMOTION_ENGINE_TOKEN or 'token' in the config file (or use 127.0.0.1)"
            )
        if params.control_token and hmac.compare_digest(params.control_token, params.token):
            raise ConfigError("--control-token must differ from --token (it scopes /v1/control)")
        if bool(params.tls_cert) != bool(params.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        self.params = params
        self.service = service
        # --- media listeners that cannot authenticate (RTP port, AudioSocket) ---
        self.media_allow = SourceAllowList(
            parse_networks(params.media_allow, setting="media_allow")
        )
        self.media_host = media_host(params)
        for name in ("audiosocket_idle_timeout_s", "rtp_new_legs_per_s"):
            if getattr(params, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(params, name)}")
        for name in ("audiosocket_max_per_source", "rtp_new_legs_burst"):
            if getattr(params, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(params, name)}")
        if params.fd_reserve < 0 or params.rtp_probation_s < 0:
            raise ConfigError("fd_reserve and rtp_probation_s must be >= 0")
        self.media_log = RateLimitedLog(log, interval_s=MEDIA_LOG_INTERVAL_S)
        self.accept_errors = 0
        self._as_guard: _AudioSocketGuard | None = None
        # --- end media listeners ---
        # Audio is held per leg and handed to the engine once per tick (take_audio).
        self.rtp = RtpIngest(
            leg_timeout_s=params.rtp_leg_timeout_s,
            party=params.rtp_party,
            coalesce_audio=True,
            allow=self.media_allow,
            new_legs=SourceRateLimit(
                rate_per_s=params.rtp_new_legs_per_s, burst=params.rtp_new_legs_burst
            ),
            probation_s=params.rtp_probation_s,
        )
        self.service.add_source(self._take_rtp, source="rtp")
        self._ws: WsServer | None = None
        self._udp: _RtpReader | None = None
        self._tcp: asyncio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._subscriber_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # subscribers disconnected now count as "shutdown"
        # id -> (event, its JSON): every subscriber is sent the same text, encoded once
        # (the event is kept in the entry, so its id cannot be reused while cached)
        self._json_cache: OrderedDict[int, tuple[dict[str, Any], str]] = OrderedDict()
        self.addresses: Addresses | None = None
        # --- privacy and routing (issue 6) ---
        service.parties = frozenset(PARTIES if params.analyze_agent else ("customer",))
        if params.rtp_party == "agent" and not params.analyze_agent:
            log.warning("rtp_party is 'agent' but analyze_agent is off: RTP legs are not analysed")
        self.routing = Routing.from_params(
            params,
            labels=service.engine.model.labels,
            spike_emotions=service.engine.params.detector.spike_emotions,
        )
        self.routing.attach(service)
        # --- end privacy and routing ---
        # --- SIP (issue 7): calls and SIPREC sessions on --sip HOST:PORT ---
        self.sip: SipServer | None = None
        if params.sip:
            from emotion_engine.sip_server import SipServer

            self.sip = SipServer(params=params, service=service)
        # --- end SIP ---
        service.metrics.counter_fn(
            "emotion_engine_rtp_packets_lost_total",
            "RTP packets missing at playout (concealed), all legs.",
            self._rtp_lost,
        )

        service.metrics.labelled_counter_fn(
            "emotion_engine_media_dropped_total",
            "RTP datagrams and AudioSocket connections refused by the media guards "
            "(media_allow, new RTP legs per source, probation, max legs, AudioSocket "
            "connections per source, the descriptor reserve), by reason.",
            "reason",
            self._media_dropped,
        )
        service.metrics.counter_fn(
            "emotion_engine_rtp_legs_unproven_total",
            "New RTP legs forgotten on probation: too little audio in step (sequence "
            "numbers and timestamps) before they fell silent.",
            lambda: float(self.rtp.legs_unproven),
        )
        service.metrics.counter_fn(
            "emotion_engine_audiosocket_idle_closed_total",
            "AudioSocket connections closed after audiosocket_idle_timeout_s without data.",
            lambda: float(self._as_guard.idle_closed if self._as_guard else 0),
        )
        service.metrics.counter_fn(
            "emotion_engine_accept_errors_total",
            "Connections the kernel could not hand over (e.g. out of file descriptors); "
            "the listener pauses for a second each time.",
            lambda: float(self.accept_errors),
        )

    def _media_dropped(self) -> dict[str, int]:
        out = {f"rtp_{k}": v for k, v in self.rtp.dropped.items()}
        if self._as_guard is not None:
            out.update(self._as_guard.refused)
        return out

    def _rtp_lost(self) -> float:
        return float(self.rtp.packets_lost_total())

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> Addresses:
        p = self.params
        loop = asyncio.get_running_loop()
        ssl_ctx = None
        if p.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_ctx.load_cert_chain(p.tls_cert, p.tls_key or None)
            except (OSError, ssl.SSLError) as exc:
                raise ServeError(
                    f"cannot load TLS certificate {p.tls_cert} / key {p.tls_key}: {exc}"
                ) from exc
        try:
            self._ws = await serve(
                self._handle,
                sock=_listening_socket(p.host, p.port),
                process_request=self._process_request,
                ssl=ssl_ctx,
                max_size=p.max_message_bytes,
                compression="deflate" if p.ws_compression else None,
                server_header=f"emotion-engine/{__version__}",
                open_timeout=WS_OPEN_TIMEOUT_S,
                ping_interval=p.ws_ping_interval_s or None,
                ping_timeout=p.ws_ping_timeout_s or None,
            )
        except OSError as exc:
            raise _bind_error("HTTP/websocket", p.host, p.port, "--port", exc) from exc
        self.service.start()
        self.routing.start()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(self._loop_exception)
        port = self._ws.sockets[0].getsockname()[1]
        mhost = self.media_host
        rtp_port = None
        if p.rtp_port >= 0:
            try:
                sock = _rtp_socket(mhost, p.rtp_port)
            except OSError as exc:
                await self.stop()
                raise _bind_error("RTP (UDP)", mhost, p.rtp_port, "--rtp-port", exc) from exc
            self._udp = _RtpReader(self.rtp, self.service, sock, self.media_log)
            rtp_port = sock.getsockname()[1]
        self._poller = loop.create_task(self._poll(), name="rtp-timeouts")
        as_port = None
        if p.audiosocket_port >= 0:
            guard = self._as_guard = _AudioSocketGuard(p, self.media_allow, self.media_log)
            try:
                self._tcp = await loop.create_server(
                    lambda: _AudioSocketProtocol(self.service, "customer", guard),
                    sock=_listening_socket(mhost, p.audiosocket_port),
                )
            except OSError as exc:
                await self.stop()
                raise _bind_error(
                    "AudioSocket (TCP)", mhost, p.audiosocket_port, "--audiosocket-port", exc
                ) from exc
            as_port = self._tcp.sockets[0].getsockname()[1]
        if (rtp_port or as_port) and mhost != p.host and not p.media_host:
            log.warning(
                "RTP and AudioSocket listen on %s only: they cannot authenticate their "
                "peers; list the sources allowed to send with --media-allow to listen on %s",
                mhost,
                p.host,
            )
        # --- SIP (issue 7) ---
        sip_port = None
        if self.sip is not None:
            try:
                sip_port = await self.sip.start()
            except OSError as exc:
                await self.stop()
                raise _bind_error(
                    "SIP (UDP and TCP)", self.sip.host, self.sip.port, "--sip", exc
                ) from exc
        # --- end SIP ---
        self.addresses = Addresses(
            host=p.host,
            port=port,
            rtp_port=rtp_port,
            audiosocket_port=as_port,
            scheme="https" if ssl_ctx else "http",
            sip_port=sip_port,
            sip_host=self.sip.host if self.sip is not None else "",
            media_host=mhost if mhost != p.host else "",
        )
        if not p.token:
            log.warning(
                "no token configured: listening on loopback %s only, without authentication", p.host
            )
        return self.addresses

    async def stop(self) -> None:
        """Stop accepting, end every open leg (call.end reason shutdown), deliver those
        events to connected subscribers, then close."""
        self._stopping = True
        if self.sip is not None:  # BYE to every SIP call first: its legs end "shutdown"
            await self.sip.stop()
        if self._poller is not None:
            self._poller.cancel()
        if self._udp is not None:
            # what the socket still holds (up to a tick of audio) is analysed too
            self.service.submit(self._udp.read_for_tick(), source="rtp")
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        self.service.submit(self.rtp.close("shutdown"), source="rtp")
        await self.service.stop()
        await asyncio.to_thread(self.routing.stop)  # webhook: deliver the last hints
        await asyncio.sleep(0.2)  # let subscriber tasks flush the final events
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()

    def _take_rtp(self) -> list[IngestOutput]:
        """At each engine tick: what the RTP socket holds (when the reader reads at
        ticks), then every leg's held audio (legs started come before their audio)."""
        outputs = self._udp.read_for_tick() if self._udp is not None else []
        outputs += self.rtp.take_audio()
        return outputs

    async def _poll(self) -> None:
        """Every ``RTP_POLL_S``: RTP legs silent for their timeout end, and the
        rate-limited logs say what they left out."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RTP_POLL_S)
            if self._udp is not None:
                # Silence is judged on the stream's own clock: first read what waits in
                # the socket (after an engine stall or a stopped process, seconds of
                # packets), so only a peer that really sent nothing times out.
                self.service.submit(self._udp.read_now(), source="rtp")
                self.service.submit(self.rtp.poll(loop.time()), source="rtp")
            now = time.monotonic()
            self.media_log.flush(now)
            self.service.violations_log.flush(now)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio reports a failed accept (e.g. EMFILE: out of descriptors) once per
        listener and second, with a traceback; one line per interval is enough."""
        if "out of system resource" in str(context.get("message", "")):
            self.accept_errors += 1
            self.media_log.log(
                "accept",
                f"cannot accept connections: {context.get('exception')} (the listener "
                "pauses 1 s and retries)",
                time.monotonic(),
            )
            return
        loop.default_exception_handler(context)

    # -- HTTP and auth --------------------------------------------------------------

    def _authorized(self, request: Request, *, control: bool = False) -> bool:
        token = self.params.control_token if control else self.params.token
        if control and not token:
            return not self.params.token  # no tokens at all: loopback only, open
        if not token:
            return True
        header = request.headers.get("Authorization", "")
        query = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        presented = header[7:] if header.lower().startswith("bearer ") else query
        return bool(presented) and hmac.compare_digest(presented.encode(), token.encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            hub = self.service.hub
            body = json.dumps(
                {
                    "status": "ok",
                    "version": __version__,
                    "legs_active": self.service.active_legs,
                    "epoch": hub.epoch,
                    "last_seq": hub.last_seq,
                }
            )
            return _response(connection, http.HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            if not self._authorized(request):
                return self._reject(
                    connection, http.HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token"
                )
            return _response(
                connection,
                http.HTTPStatus.OK,
                self.service.metrics.render(),
                "text/plain; version=0.0.4",
            )
        asset = web.asset(path)
        if asset is not None:
            return _static(connection, *asset)
        if path not in _ROUTES:
            return self._reject(connection, http.HTTPStatus.NOT_FOUND, f"no such path {path}")
        if path == "/v1/media/audiohook" and self._audiohook_key():
            return None  # AudioHook authenticates with X-API-KEY in its own core
        if path == "/v1/control" and not self._authorized(request, control=True):
            why = (
                "missing or wrong control token"
                if self.params.control_token
                else "control is off: start serve with --control-token to use /v1/control"
            )
            return self._reject(connection, http.HTTPStatus.FORBIDDEN, why)
        if path != "/v1/control" and not self._authorized(request):
            return self._reject(
                connection, http.HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token"
            )
        if path == "/v1/events":
            try:
                _since(parse_qs(urlsplit(request.path).query))
            except ValueError as exc:
                return self._reject(connection, http.HTTPStatus.BAD_REQUEST, str(exc))
        return None

    def _reject(self, connection: ServerConnection, status: http.HTTPStatus, why: str) -> Response:
        self.service.metrics.rejected(status.phrase.lower().replace(" ", "_"))
        log.warning("rejected %s: %s", connection.remote_address, why)
        return _response(connection, status, json.dumps({"error": why}), "application/json")

    def _audiohook_key(self) -> str | None:
        return self.params.audiohook_api_key or self.params.token or None

    # -- websockets -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = urlsplit(ws.request.path).path
        handler = _ROUTES[path]
        try:
            await handler(self, ws)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: connection failed", path)
            await ws.close(1011, "internal error")

    async def _events(self, ws: ServerConnection) -> None:
        """One subscriber: a sender loop drains its hub queue into the websocket.

        The sender waits on the queue's wake-up directly, so when the publisher yields
        between slices of a step (``EngineService._publish``) every sender that is not
        blocked by its client runs and empties its queue first. A client that reads
        slowly blocks only its own sender (its queue then overflows into
        ``events.lost``); websockets' ping timeout is off here, since a slow reader
        answers pings only after the events queued before them: :meth:`_watch` closes
        a subscriber only when it took nothing for ``subscriber_stall_s``.
        """
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        since = _since(query)  # checked before the upgrade (_process_request)
        epoch = query.get("epoch", [None])[0] or None
        if ws.keepalive_task is not None:
            ws.keepalive_task.cancel()  # pings come from _watch, without a timeout
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        sub = self.service.hub.subscribe(
            event_filter=EventFilter.from_query(query), since=since, epoch=epoch, wake=wake.set
        )
        live = _Liveness(loop.time())
        reader = loop.create_task(_discard_incoming(ws))
        watchdog = loop.create_task(self._watch(ws, live))
        for task in (reader, watchdog):
            task.add_done_callback(lambda _: wake.set())
        sent = 0
        failed = False
        try:
            while not reader.done() and not watchdog.done():
                await wake.wait()
                wake.clear()
                batch = sub.drain()
                live.mark(loop.time())  # events wait from now
                live.busy = True
                for event in batch:
                    await ws.send(self._encode(event))
                    live.mark(loop.time())
                    sent += 1
                    self.service.metrics.events_sent_total += 1
                live.busy = False
        except ConnectionClosed:
            pass
        except Exception:
            failed = True
            raise
        finally:
            self.service.hub.unsubscribe(sub)
            reader.cancel()
            watchdog.cancel()
            if live.stalled:
                reason = "stalled"
                detail = (
                    f"took no event and answered no ping for {self.params.subscriber_stall_s:g} s"
                )
            elif failed:
                reason, detail = "error", "internal error"
            elif self._stopping:
                reason, detail = "shutdown", "server stopping"
            else:
                reason = "client_closed"
                code = ws.close_code
                detail = f"close code {code}" if code is not None else "connection lost"
            self.service.metrics.subscriber_disconnected(reason)
            log.log(
                logging.WARNING if reason in ("stalled", "error") else logging.INFO,
                "subscriber %s disconnected: %s (%s); %d events sent, %d dropped in %d overflows",
                _peer(ws),
                reason.replace("_", " "),
                detail,
                sent,
                sub.dropped,
                sub.overflows,
            )

    async def _watch(self, ws: ServerConnection, live: _Liveness) -> None:
        """Ping a subscriber every ``ws_ping_interval_s`` (a pong counts as progress,
        however late); close it once it made no progress (took no event, answered no
        ping) for ``subscriber_stall_s``. Pings are sent from their own task: a ping waits
        behind the events already written, as long as the client does not read."""
        p = self.params
        loop = asyncio.get_running_loop()
        checks = [x for x in (p.ws_ping_interval_s, p.subscriber_stall_s / 4) if x > 0]
        if not checks:
            await loop.create_future()  # neither pings nor a stall limit: wait forever
        pinging: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(min(checks))
                now = loop.time()
                # idle and without pings, there is nothing to judge it by
                judged = live.busy or p.ws_ping_interval_s > 0
                if judged and p.subscriber_stall_s > 0 and now - live.last >= p.subscriber_stall_s:
                    live.stalled = True
                    # a close frame would wait behind what the client did not read (and
                    # websockets' close() waits for that without a timeout): cut it
                    ws.transport.abort()
                    return
                due = p.ws_ping_interval_s > 0 and now - live.pinged >= p.ws_ping_interval_s
                if due and (pinging is None or pinging.done()):
                    live.pinged = now
                    pinging = loop.create_task(_ping(ws, live))
        finally:
            if pinging is not None:
                pinging.cancel()

    def _encode(self, event: dict[str, Any]) -> str:
        """The event's JSON text, encoded once however many subscribers it goes to."""
        key = id(event)
        cached = self._json_cache.get(key)
        if cached is not None and cached[0] is event:
            return cached[1]
        text = to_json(event)
        self._json_cache[key] = (event, text)
        if len(self._json_cache) > JSON_CACHE_EVENTS:
            self._json_cache.popitem(last=False)
        return text

    async def _media(self, ws: ServerConnection, session: _MediaSession, source: str) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    outputs = session.receive_text(message)
                else:
                    outputs = session.receive_bytes(message)
                if await self._deliver(ws, outputs, source, session):
                    return
        finally:
            self.service.submit(session.connection_lost(), source=source, owner=session)
            self.service.release(session)

    async def _deliver(
        self,
        ws: ServerConnection,
        outputs: list[IngestOutput],
        source: str,
        session: _MediaSession,
    ) -> bool:
        """Submit outputs; send replies; returns True when the session must close.
        A session whose call id the engine refuses gets its protocol's refusal."""
        refused = self.service.submit(outputs, source=source, owner=session)
        if refused:
            replies = [o for o in outputs if isinstance(o, Reply | Close)]
            outputs = replies + session.refuse(refusal_reason(self.service, refused))
        for out in outputs:
            if isinstance(out, Reply):
                await ws.send(out.data)
            elif isinstance(out, Close):
                await ws.close(out.code, close_reason(out.reason))
                return True
        return False

    async def _twilio(self, ws: ServerConnection) -> None:
        await self._media(
            ws, TwilioMediaSession(max_message_bytes=self.params.max_message_bytes), "twilio"
        )

    async def _l16(self, ws: ServerConnection) -> None:
        await self._media(ws, L16Session(max_message_bytes=self.params.max_message_bytes), "l16")

    async def _audiohook(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        session = AudioHookSession(api_key=self._audiohook_key())
        headers = {k: v for k, v in ws.request.headers.raw_items()}
        if await self._deliver(ws, session.authenticate(headers), "audiohook", session):
            return
        await self._media(ws, session, "audiohook")

    async def _control(self, ws: ServerConnection) -> None:
        """JSON commands. ``{"action": "name_rtp_leg", "remote": "HOST:PORT", "ssrc": N,
        "call_id": "...", "party": "customer"}`` names an RTP leg (before or after its
        first packet); ``{"action": "end_rtp_leg", "remote": ..., "ssrc": N}`` ends it.
        Each gets ``{"ok": true, "error": null}`` or ``{"ok": false, "status": CODE,
        "error": "..."}``: 400 for a bad command, 404 for a leg that is not open, 409
        for a call id another session holds."""
        async for message in ws:
            try:
                outputs = self._control_command(message)
            except _ControlError as exc:
                self.service.metrics.protocol_error("control")
                await ws.send(json.dumps({"ok": False, "status": exc.status, "error": str(exc)}))
                continue
            refused = self.service.submit(outputs, source="rtp")
            errors = [o.message for o in outputs if isinstance(o, ProtocolViolation)]
            if refused:
                errors.append(refusal_reason(self.service, refused))
            reply: dict[str, Any] = {"ok": not errors, "error": "; ".join(errors) or None}
            if errors:
                reply["status"] = 409 if refused else 400
            await ws.send(json.dumps(reply))

    def _control_command(self, message: str | bytes) -> list[IngestOutput]:
        """One control message -> what the RTP core made of it; _ControlError otherwise."""
        try:
            cmd = json.loads(message)
        except ValueError as exc:
            raise _ControlError(400, f"bad control message: not JSON ({exc})") from exc
        if not isinstance(cmd, dict):
            raise _ControlError(400, "bad control message: not a JSON object")
        action = cmd.get("action")
        if action not in ("name_rtp_leg", "end_rtp_leg"):
            raise _ControlError(
                400, f"unknown action {clip(action)} (known: name_rtp_leg, end_rtp_leg)"
            )
        host, _, port_text = str(cmd.get("remote", ""))[:64].rpartition(":")
        port = wire_int(port_text, lo=1, hi=65535)
        ssrc = wire_int(cmd.get("ssrc"), lo=0, hi=2**32 - 1)
        if not host or port is None:
            raise _ControlError(400, f"remote {clip(cmd.get('remote'))} is not HOST:PORT")
        if ssrc is None:
            raise _ControlError(400, f"ssrc {clip(cmd.get('ssrc'))} is not 0 to 2**32-1")
        addr = (host.strip("[]"), port)
        if action == "end_rtp_leg":
            reason = cmd.get("reason", "hangup")
            if call_id_problem(reason, what="reason") is not None or len(reason) > 32:
                raise _ControlError(400, f"reason {clip(reason)} is not a short word")
            outputs = self.rtp.end_leg(addr, ssrc, reason)
            if not outputs:
                raise _ControlError(404, f"no RTP leg open from {host}:{port} with ssrc {ssrc}")
            return outputs
        call_id = cmd.get("call_id")
        party = cmd.get("party", self.params.rtp_party)
        problem = call_id_problem(call_id)
        if problem is not None or not isinstance(call_id, str):
            raise _ControlError(400, problem or "call_id is not a string")
        if party not in PARTIES:
            raise _ControlError(400, f"party {clip(party)} is not one of {', '.join(PARTIES)}")
        holder = self.service.owner_source(call_id)
        if holder is not None and holder != "rtp":
            raise _ControlError(409, f"call id {clip(call_id)} is open from {holder}")
        return self.rtp.name_leg(addr, ssrc, call_id, party)


class _ControlError(Exception):
    """A control command that cannot be carried out; ``status`` is HTTP-like."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_PORT_CHOICES: dict[str, str] = {
    "--port": "0 = any free port",
    "--rtp-port": "0 = any free port, -1 = off",
    "--audiosocket-port": "0 = any free port, -1 = off",
    "--sip": "HOST:0 = any free port; leave it out for no SIP",
}
"""What each listening option accepts, for the hint in a bind error."""


def _bind_error(what: str, host: str, port: int, option: str, exc: OSError) -> ServeError:
    return ServeError(
        f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}; "
        f"pick another port with {option} ({_PORT_CHOICES[option]})"
    )


class _Liveness:
    """When a subscriber last made progress (took an event or answered a ping)."""

    __slots__ = ("busy", "last", "pinged", "stalled")

    def __init__(self, now: float) -> None:
        self.last = now
        self.pinged = now
        self.stalled = False
        self.busy = False  # events are being sent

    def mark(self, now: float) -> None:
        self.last = now


async def _ping(ws: ServerConnection, live: _Liveness) -> None:
    """One ping; its pong, whenever it comes, marks the subscriber alive."""
    with contextlib.suppress(ConnectionClosed):
        pong = await ws.ping()
        await pong
        live.mark(asyncio.get_running_loop().time())


def _since(query: dict[str, list[str]]) -> int | None:
    """``?since=`` of an /v1/events request; ValueError naming what is wrong."""
    if "since" not in query:
        return None
    raw = query["since"][0]
    try:
        since = int(raw)
    except ValueError:
        raise ValueError(f"since must be an integer seq, got {raw!r}") from None
    if since < 0:
        raise ValueError(f"since must be a seq >= 0 (0: everything held), got {since}")
    return since


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
    except (TypeError, ValueError):
        return "?"
    return f"{host}:{port}"


async def _discard_incoming(ws: ServerConnection) -> None:
    """Subscribers send nothing we need; reading keeps pings answered and sees the close."""
    async for _ in ws:
        pass


def _response(
    connection: ServerConnection, status: http.HTTPStatus, body: str, content_type: str
) -> Response:
    response = connection.respond(status, body)
    response.headers = Headers(
        [(k, v) for k, v in response.headers.raw_items() if k.lower() != "content-type"]
        + [("Content-Type", content_type)]
    )
    return response


def _static(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = _response(connection, http.HTTPStatus.OK, body, content_type)
    response.headers.update(web.HEADERS)
    return response


_Handler = Callable[[EngineServer, ServerConnection], Any]
_ROUTES: dict[str, _Handler] = {
    "/v1/events": EngineServer._events,
    "/v1/media/twilio": EngineServer._twilio,
    "/v1/media/l16": EngineServer._l16,
    "/v1/media/audiohook": EngineServer._audiohook,
    "/v1/control": EngineServer._control,
}
