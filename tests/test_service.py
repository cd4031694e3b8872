"""EngineService's tick hook: sources taken once per tick (the RTP port's datagrams and
held audio). Real engine and model, no network."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import IngestOutput, LegEnded, LegStarted
from emotion_engine.model.runtime import EmotionModel


def test_sources_are_taken_every_tick_and_a_failing_one_harms_nothing(
    model: EmotionModel,
) -> None:
    rng = np.random.default_rng(0)
    # 3 s of audio in 1 s pieces, then the hang-up: one piece per take
    script: list[list[IngestOutput]] = [[LegStarted("c1", "customer", sample_rate=8000)]]
    for i in range(3):
        pcm = rng.integers(-3000, 3000, 8000).astype(np.int16)
        script.append([AudioChunk("c1", "customer", float(i), pcm, 8000)])
    script.append([LegEnded("c1", "customer", reason="hangup")])
    takes = {"good": 0, "broken": 0}

    def good() -> list[IngestOutput]:
        takes["good"] += 1
        return script.pop(0) if script else []

    def broken() -> list[IngestOutput]:
        takes["broken"] += 1
        raise RuntimeError("a bug in an ingest")

    async def main() -> list[dict[str, Any]]:
        service = EngineService(engine=Engine(model=model), tick_s=0.02)
        events: list[dict[str, Any]] = []
        ended = asyncio.Event()

        def listen(event: dict[str, Any]) -> None:
            events.append(event)
            if event["type"] == "call.end":
                ended.set()

        service.add_listener(listen)
        service.add_source(broken, source="broken")
        service.add_source(good, source="good")
        service.start()
        async with asyncio.timeout(30):
            await ended.wait()
        await service.stop()
        return events

    events = asyncio.run(main())
    types = [e["type"] for e in events]
    assert types[0] == "call.start" and types[-1] == "call.end"
    assert types.count("emotion.update") >= 4  # 3 s of audio: windows from 1 s on
    assert events[-1]["reason"] == "hangup"
    assert takes["broken"] == takes["good"] >= 5  # still taken after each failure
