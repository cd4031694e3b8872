"""serve's RTP socket reader (``server._RtpReader``) over real loopback UDP: it drains
in batches, pauses between wake-ups, survives bad input and its own bugs, and closes.

No engine: a stand-in service records what the reader submits.
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
    """What the reader uses of EngineService: ``submit``, ``metrics`` and
    ``add_step_listener`` (``step(running)`` plays the engine's step notices)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.batches: list[tuple[float, list[IngestOutput]]] = []
        self.changed = asyncio.Event()
        self.step_listeners: list[Callable[[bool], None]] = []

    def add_step_listener(self, listener: Callable[[bool], None]) -> None:
        self.step_listeners.append(listener)

    def step(self, running: bool) -> None:
        for listener in self.step_listeners:
            listener(running)

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


def start(core: RtpIngest) -> tuple[server._RtpReader, FakeService, socket.socket, int]:
    service = FakeService()
    sock = server._rtp_socket("127.0.0.1", 0)
    reader = server._RtpReader(core, cast(EngineService, service), sock)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    return reader, service, client, sock.getsockname()[1]


def test_drains_many_datagrams_per_wake_up_in_order() -> None:
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


def test_does_not_read_while_the_engine_runs_a_step() -> None:
    stream, other = packets(5, 20), packets(6, 1)

    async def main() -> tuple[int, int, int, int]:
        reader, service, client, port = start(RtpIngest(jitter_depth_packets=0))
        client.sendto(stream[0], ("127.0.0.1", port))
        await service.until(lambda: len(service.outputs()) == 2)  # LegStarted + chunk
        service.step(True)
        for datagram in stream[1:]:
            client.sendto(datagram, ("127.0.0.1", port))
        await asyncio.sleep(0.2)  # 40 pauses' worth: the reader would have run by now
        during_step = len(service.outputs())
        service.step(False)
        await service.until(lambda: len(service.outputs()) == 21)
        after = len(service.outputs())
        # A step that starts while the reader pauses between wake-ups: the pause's
        # timer fires during the step and must not start reading either.
        service.step(True)
        client.sendto(other[0], ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        during_second_step = len(service.outputs())
        service.step(False)
        await service.until(lambda: len(service.outputs()) == 23)
        reader.close()
        client.close()
        return during_step, after, during_second_step, len(service.outputs())

    during_step, after, during_second_step, final = asyncio.run(main())
    assert during_step == 2  # the 19 datagrams waited in the kernel
    assert after == 21  # and were all read once the step ended
    assert during_second_step == 21
    assert final == 23  # the new leg's LegStarted and chunk, read after the step


def test_reads_during_steps_when_the_kernel_caps_the_receive_buffer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # more than any net.core.rmem_max here grants: the buffer cannot hold a step's packets
    monkeypatch.setattr(server, "RTP_RCVBUF_BYTES", 1 << 30)
    stream = packets(9, 5)

    async def main() -> tuple[bool, int]:
        reader, service, client, port = start(RtpIngest(jitter_depth_packets=0))
        service.step(True)  # a step that never ends: the datagrams are read anyway
        for datagram in stream:
            client.sendto(datagram, ("127.0.0.1", port))
        await service.until(lambda: len(service.outputs()) == 6)  # LegStarted + 5 chunks
        reader.close()
        client.close()
        return reader.pauses_during_steps, len(service.step_listeners)

    pauses, listeners = asyncio.run(main())
    assert not pauses and listeners == 0
    assert "net.core.rmem_max" in caplog.text


def test_pauses_between_wake_ups(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_a_bug_in_the_core_costs_one_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_close_stops_reading_and_closes_the_socket() -> None:
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


def test_keeps_reading_after_a_failed_wake_up() -> None:
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
