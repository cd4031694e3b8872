"""serve's RTP socket reader (``server._RtpReader``) over real loopback UDP, in both of
its modes: reading at engine ticks (the kernel granted the receive buffer) and reading
as datagrams arrive (it did not: drains in batches, pauses between wake-ups). Either
way it survives bad input and its own bugs, and closes.

No engine: a stand-in service records what the reader submits; the tests call
``read_for_tick`` where the service would, at a tick.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest

from emotion_engine import server
from emotion_engine.audio.g711 import ulaw_decode
from emotion_engine.engine.service import EngineService
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import IngestOutput, LegStarted, ProtocolViolation
from emotion_engine.ingest.rtp import RtpIngest, RtpPacket
from emotion_engine.publish.metrics import Metrics


class FakeService:
    """What the reader uses of EngineService: ``submit`` and ``metrics``."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.batches: list[tuple[float, list[IngestOutput]]] = []
        self.changed = asyncio.Event()

    def submit(self, outputs: list[IngestOutput], *, source: str) -> None:
        assert source == "rtp"
        self.batches.append((time.monotonic(), list(outputs)))
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    def outputs(self) -> list[IngestOutput]:
        return [o for _, batch in self.batches for o in batch]


def packets(ssrc: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(ssrc)
    return [
        RtpPacket(
            payload_type=0,
            sequence=i,
            timestamp=160 * i,
            ssrc=ssrc,
            payload=rng.integers(0, 256, 160, dtype=np.uint8).tobytes(),
        ).serialize()
        for i in range(n)
    ]


@pytest.fixture
def per_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """More than any net.core.rmem_max here grants: the reader reads as datagrams
    arrive, not at ticks."""
    monkeypatch.setattr(server, "RTP_RCVBUF_BYTES", 1 << 30)


def start(core: RtpIngest) -> tuple[server._RtpReader, FakeService, socket.socket, int]:
    service = FakeService()
    sock = server._rtp_socket("127.0.0.1", 0)
    reader = server._RtpReader(core, cast(EngineService, service), sock)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    return reader, service, client, sock.getsockname()[1]


def test_drains_many_datagrams_per_wake_up_in_order(per_wake_up: None) -> None:
    legs = {ssrc: packets(ssrc, 400) for ssrc in (1, 2, 3)}
    junk = [b"", b"\x80", bytes(range(40))]

    async def main() -> tuple[FakeService, int]:
        reader, service, client, port = start(RtpIngest())
        for i in range(400):  # 1,203 datagrams queued before the reader runs
            for ssrc in legs:
                client.sendto(legs[ssrc][i], ("127.0.0.1", port))
            if i in (10, 200, 300):
                client.sendto(junk.pop(), ("127.0.0.1", port))
        await service.until(
            lambda: sum(isinstance(o, AudioChunk) for o in service.outputs()) == 3 * 397
        )
        reader.close()
        client_port: int = client.getsockname()[1]
        client.close()
        return service, client_port

    service, client_port = asyncio.run(main())
    # more than RTP_DRAIN_MAX were queued: a few full batches, not one per datagram
    assert 3 <= len(service.batches) <= 10
    out = service.outputs()
    assert [o.call_id for o in out if isinstance(o, LegStarted)] == [
        f"rtp-127.0.0.1-{client_port}-{ssrc:08x}" for ssrc in (1, 2, 3)
    ]
    assert sum(isinstance(o, ProtocolViolation) for o in out) == 3
    for ssrc, sent in legs.items():
        chunks = [o for o in out if isinstance(o, AudioChunk) and o.call_id.endswith(f"{ssrc:08x}")]
        assert [c.t for c in chunks] == pytest.approx([i * 0.02 for i in range(397)])
        want = ulaw_decode(np.frombuffer(b"".join(p[12:] for p in sent[:397]), np.uint8))
        np.testing.assert_array_equal(np.concatenate([c.pcm for c in chunks]), want)


def test_pauses_between_wake_ups(per_wake_up: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "RTP_BATCH_S", 0.3)
    stream = packets(7, 10)

    async def main() -> list[float]:
        reader, service, client, port = start(RtpIngest(jitter_depth_packets=0))
        client.sendto(stream[0], ("127.0.0.1", port))
        await service.until(lambda: len(service.batches) == 1)
        first = service.batches[0][0]
        client.sendto(stream[1], ("127.0.0.1", port))  # waits in the kernel
        await service.until(lambda: len(service.batches) == 2)
        reader.close()
        client.close()
        return [first, service.batches[1][0]]

    first, second = asyncio.run(main())
    assert second - first >= 0.25  # not read before the pause ended


def test_a_bug_in_the_core_costs_one_datagram(
    per_wake_up: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = RtpIngest(jitter_depth_packets=0)
    stream = packets(9, 20)
    real = core.receive_datagram

    def flaky(data: bytes, addr: Any, now: float) -> list[IngestOutput]:
        if data == stream[5]:
            raise RuntimeError("bug")
        return real(data, addr, now)

    monkeypatch.setattr(core, "receive_datagram", flaky)

    async def main() -> FakeService:
        reader, service, client, port = start(core)
        for p in stream:
            client.sendto(p, ("127.0.0.1", port))
        await service.until(lambda: sum(isinstance(o, AudioChunk) for o in service.outputs()) == 19)
        reader.close()
        client.close()
        return service

    service = asyncio.run(main())
    assert service.metrics.protocol_errors_total == {"rtp": 1}


def test_close_stops_reading_and_closes_the_socket(per_wake_up: None) -> None:
    async def main() -> None:
        reader, service, client, port = start(RtpIngest())
        client.sendto(packets(1, 1)[0], ("127.0.0.1", port))
        await service.until(lambda: len(service.batches) == 1)
        reader.close()
        reader.close()  # twice is fine
        assert reader.sock.fileno() == -1
        await asyncio.sleep(2 * server.RTP_BATCH_S)  # the pending resume does nothing
        client.close()

    asyncio.run(main())


def test_keeps_reading_after_a_failed_wake_up(per_wake_up: None) -> None:
    stream = packets(5, 4)

    async def main() -> FakeService:
        reader, service, client, port = start(RtpIngest(jitter_depth_packets=0))
        real = service.submit
        calls = 0

        def fail_once(outputs: list[IngestOutput], *, source: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug")
            real(outputs, source=source)

        service.submit = fail_once  # type: ignore[method-assign]
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
        client.sendto(stream[0], ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        for p in stream[1:]:
            client.sendto(p, ("127.0.0.1", port))
        await service.until(lambda: sum(isinstance(o, AudioChunk) for o in service.outputs()) == 3)
        reader.close()
        client.close()
        return service

    asyncio.run(main())


def test_reads_as_datagrams_arrive_when_the_kernel_caps_the_receive_buffer(
    per_wake_up: None, caplog: pytest.LogCaptureFixture
) -> None:
    stream = packets(9, 5)

    async def main() -> tuple[server._RtpReader, list[IngestOutput]]:
        reader, service, client, port = start(RtpIngest(jitter_depth_packets=0))
        for datagram in stream:
            client.sendto(datagram, ("127.0.0.1", port))
        await service.until(lambda: len(service.outputs()) == 6)  # LegStarted + 5 chunks
        at_tick = reader.read_for_tick()
        reader.close()
        client.close()
        return reader, at_tick

    reader, at_tick = asyncio.run(main())
    assert not reader.reads_at_ticks and at_tick == []
    assert "net.core.rmem_max" in caplog.text


# -- reading at engine ticks ---------------------------------------------------------------


def test_reads_only_at_ticks_everything_queued_in_order() -> None:
    """Nothing is read between ticks; a tick reads all 1,203 queued datagrams, in
    rounds of RTP_TICK_READ_ROWS, and the held audio is exactly what was sent."""
    legs = {ssrc: packets(ssrc, 400) for ssrc in (1, 2, 3)}
    junk = [b"", b"\x80", bytes(range(40))]

    async def main() -> tuple[server._RtpReader, FakeService, list[IngestOutput], int]:
        core = RtpIngest(coalesce_audio=True)
        reader, service, client, port = start(core)
        for i in range(400):
            for ssrc in legs:
                client.sendto(legs[ssrc][i], ("127.0.0.1", port))
            if i in (10, 200, 300):
                client.sendto(junk.pop(), ("127.0.0.1", port))
        await asyncio.sleep(0.1)  # the reader does not watch the socket
        out = reader.read_for_tick() + core.take_audio()
        out += reader.read_for_tick() + core.take_audio()  # nothing left
        reader.close()
        client_port: int = client.getsockname()[1]
        client.close()
        return reader, service, out, client_port

    reader, service, out, client_port = asyncio.run(main())
    assert reader.reads_at_ticks and service.batches == []
    assert [o.call_id for o in out if isinstance(o, LegStarted)] == [
        f"rtp-127.0.0.1-{client_port}-{ssrc:08x}" for ssrc in (1, 2, 3)
    ]
    assert sum(isinstance(o, ProtocolViolation) for o in out) == 3
    for ssrc, sent in legs.items():
        (chunk,) = [
            o for o in out if isinstance(o, AudioChunk) and o.call_id.endswith(f"{ssrc:08x}")
        ]
        assert chunk.t == 0.0
        want = ulaw_decode(np.frombuffer(b"".join(p[12:] for p in sent[:397]), np.uint8))
        np.testing.assert_array_equal(chunk.pcm, want)  # all but the 3 the jitter buffer holds


def test_a_tick_reads_a_bounded_number_of_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood is read over several ticks (RTP_TICK_READ_MAX_ROUNDS buffers a tick),
    so one tick cannot take forever; nothing is lost on the way."""
    monkeypatch.setattr(server, "RTP_TICK_READ_ROWS", 16)
    monkeypatch.setattr(server, "RTP_TICK_READ_MAX_ROUNDS", 2)
    stream = packets(4, 70)

    async def main() -> list[int]:
        core = RtpIngest(jitter_depth_packets=0, coalesce_audio=True)
        reader, _, client, port = start(core)
        for datagram in stream:
            client.sendto(datagram, ("127.0.0.1", port))
        await asyncio.sleep(0.05)
        samples = []
        for _ in range(4):
            reader.read_for_tick()
            samples.append(sum(c.pcm.size for c in core.take_audio() if isinstance(c, AudioChunk)))
        reader.close()
        client.close()
        return samples

    assert asyncio.run(main()) == [32 * 160, 32 * 160, 6 * 160, 0]


def test_a_bug_in_the_core_costs_one_tick_of_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    core = RtpIngest(jitter_depth_packets=0, coalesce_audio=True)
    real = core.receive_batch
    calls = 0

    def flaky(*args: Any) -> list[IngestOutput]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return real(*args)

    monkeypatch.setattr(core, "receive_batch", flaky)
    stream = packets(8, 10)

    async def main() -> tuple[FakeService, list[IngestOutput]]:
        reader, service, client, port = start(core)
        for datagram in stream[:5]:
            client.sendto(datagram, ("127.0.0.1", port))
        await asyncio.sleep(0.05)
        first = reader.read_for_tick()  # the bug: those 5 datagrams are gone
        for datagram in stream[5:]:
            client.sendto(datagram, ("127.0.0.1", port))
        await asyncio.sleep(0.05)
        out = first + reader.read_for_tick() + core.take_audio()
        reader.close()
        client.close()
        return service, out

    service, out = asyncio.run(main())
    assert service.metrics.protocol_errors_total == {"rtp": 1}
    (chunk,) = [o for o in out if isinstance(o, AudioChunk)]
    assert chunk.pcm.size == 5 * 160  # the next tick's datagrams arrived whole


def test_a_closed_reader_reads_nothing_at_ticks() -> None:
    async def main() -> list[IngestOutput]:
        reader, _, client, port = start(RtpIngest())
        client.sendto(packets(1, 1)[0], ("127.0.0.1", port))
        reader.close()
        reader.close()  # twice is fine
        assert reader.sock.fileno() == -1
        client.close()
        return reader.read_for_tick()

    assert asyncio.run(main()) == []


def test_a_socket_error_that_stays_ends_the_tick_read(caplog: pytest.LogCaptureFixture) -> None:
    """An error the socket raises on every read (it cannot on a healthy socket, but a
    reader must not spin on one) ends this tick's read with a warning."""

    class Failing:
        calls = 0

        def recvfrom_into(self, *args: Any) -> Any:
            Failing.calls += 1
            raise ConnectionRefusedError("refused")

    async def main() -> list[IngestOutput]:
        reader, _, client, _ = start(RtpIngest())
        real = reader.sock
        reader.sock = cast(socket.socket, Failing())
        try:
            return reader.read_for_tick()
        finally:
            reader.sock = real
            reader.close()
            client.close()

    assert asyncio.run(main()) == []
    assert Failing.calls == 1
    assert "rtp socket error" in caplog.text
