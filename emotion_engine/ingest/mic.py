"""Microphone ingest through sounddevice (PortAudio).

PortAudio calls :func:`_callback` on its own thread with each block; the block is
copied and handed to the event loop with ``loop.call_soon_threadsafe`` (never touch
asyncio objects from that thread), then goes to the :class:`EngineService` like any
other ingest path's audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from emotion_engine.errors import EngineError
from emotion_engine.frames import AudioChunk
from emotion_engine.ingest.base import LegEnded, LegStarted

log = logging.getLogger(__name__)


class MicError(EngineError):
    """No PortAudio, no input device, or the device refused the settings."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel loads libportaudio at import
        raise MicError(
            f"PortAudio is not available ({exc}); install it with 'apt-get install libportaudio2' "
            "(make setup does this)"
        ) from exc
    return sounddevice


def list_input_devices() -> list[tuple[int, str, int, float]]:
    """(index, name, input channels, default rate) of every capture device."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except Exception as exc:
        raise MicError(f"cannot list audio devices: {exc}") from exc
    return [
        (i, str(d["name"]), int(d["max_input_channels"]), float(d["default_samplerate"]))
        for i, d in enumerate(devices)
        if int(d["max_input_channels"]) > 0
    ]


def _resolve_device(device: str | None) -> int | str | None:
    if device is None:
        return None
    return int(device) if device.isdigit() else device


async def run_mic(args: argparse.Namespace) -> int:
    """Capture from the microphone until Ctrl-C or ``--duration``; cues on stdout."""
    from emotion_engine.engine.pipeline import Engine
    from emotion_engine.engine.service import EngineService
    from emotion_engine.model.runtime import DEFAULT_MODEL_DIR, EmotionModel
    from emotion_engine.publish.console import CueFormatter
    from emotion_engine.publish.events import to_json

    sd = _sounddevice()
    if not list_input_devices():
        raise MicError(
            "no audio input device found (is a microphone connected, or PulseAudio running?)"
        )
    model = EmotionModel.load(Path(args.model) if args.model else DEFAULT_MODEL_DIR)
    service = EngineService(engine=Engine(model=model))
    cues = CueFormatter()
    out: TextIO | None = None

    def show(event: dict[str, Any]) -> None:
        line = cues.format(event)
        if line:
            print(line, flush=True)
        if out is not None:
            out.write(to_json(event) + "\n")

    service.add_listener(show)
    loop = asyncio.get_running_loop()
    call_id = f"mic-{uuid.uuid4().hex[:8]}"
    rate = int(args.sample_rate)
    received = 0
    stop = asyncio.Event()

    def on_block(block: NDArray[np.int16]) -> None:  # runs on the loop
        nonlocal received
        service.submit(
            [AudioChunk(call_id, args.party, received / rate, block, rate)], source="mic"
        )
        received += block.size
        if args.duration is not None and received >= args.duration * rate:
            stop.set()

    def _callback(indata: NDArray[np.int16], frames: int, time_info: Any, status: Any) -> None:
        if status:
            log.warning("microphone: %s", status)
        loop.call_soon_threadsafe(on_block, indata[:, 0].copy())

    # Open (not yet start) the device before the call begins: a bad --device is then
    # one error line, not a call.start/call.end pair for audio that never existed.
    try:
        stream = sd.InputStream(
            device=_resolve_device(args.device),
            channels=1,
            samplerate=rate,
            dtype="int16",
            blocksize=int(rate * 0.02),
            callback=_callback,
        )
    except Exception as exc:
        raise MicError(
            f"cannot open input device {args.device or 'default'} at {rate} Hz: {exc}"
        ) from exc
    out = args.out.open("w", encoding="utf-8") if args.out else None
    service.start()
    service.submit(
        [LegStarted(call_id, args.party, rate, info={"device": str(args.device or "default")})],
        source="mic",
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(
        f"listening on {args.device or 'the default input'} as {args.party} (call {call_id}); Ctrl-C stops",
        file=sys.stderr,
    )
    with stream:
        await stop.wait()
    service.submit([LegEnded(call_id, args.party, reason="hangup")], source="mic")
    await service.stop()
    if out is not None:
        out.close()
    print(json.dumps({"call_id": call_id, "seconds": round(received / rate, 2)}), file=sys.stderr)
    return 0
