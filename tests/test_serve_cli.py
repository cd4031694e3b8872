"""``emotion-engine serve`` as an operator runs it: a real process, real clients, signals.

Also the configuration precedence: defaults < TOML file < environment < command line.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.asyncio.client import connect

from emotion_engine.clients import subscribe
from emotion_engine.config import ServeParams, load_serve_params
from emotion_engine.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def start_server(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``serve`` on OS-chosen ports; returns the process and its printed URLs."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emotion_engine",
            "serve",
            "--port",
            "0",
            "--rtp-port",
            "0",
            "--audiosocket-port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})},
    )
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.match(r"\s+(\w+)\s+((?:ws|http|udp|tcp)s?://\S+)", line)
        if match:
            urls[match.group(1)] = match.group(2)
        if "audiosocket" in urls:
            return proc, urls
    proc.kill()
    raise AssertionError(f"server did not print its addresses: {proc.stdout.read()}")


def test_sigterm_ends_open_calls_with_a_summary_and_exits_0(
    call_pcm: NDArray[np.int16],
) -> None:
    proc, urls = start_server()
    try:

        async def scenario() -> list[dict[str, Any]]:
            async with subscribe(urls["events"]) as sub, connect(urls["l16"]) as media:
                await media.send(json.dumps({"callSid": "open-call", "sampleRate": 8000}))
                pcm = call_pcm[: 8000 * 6]
                for off in range(0, pcm.size, 1600):
                    await media.send(pcm[off : off + 1600].astype("<i2").tobytes())
                # the call is still open when the operator stops the server
                events: list[dict[str, Any]] = []
                async with asyncio.timeout(60):
                    while not any(e["type"] == "emotion.update" for e in events):
                        events.append(json.loads(await sub.recv()))
                    proc.send_signal(signal.SIGTERM)
                    while not any(e["type"] == "call.end" for e in events):
                        events.append(json.loads(await sub.recv()))
                return events

        events = asyncio.run(scenario())
        end = next(e for e in events if e["type"] == "call.end")
        assert end["call_id"] == "open-call" and end["reason"] == "shutdown"
        assert end["summary"]["duration_s"] > 0
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "shutting down: ending open calls" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "emotion_engine", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert result.returncode != 0
    assert str(port) in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "pick another port with --port (0 = any free port)" in result.stderr


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text("prot = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "emotion_engine", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "unknown key(s)" in result.stderr and "prot" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_precedence_file_env_command_line(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text('[serve]\nport = 9000\nrtp_port = 41000\nhost = "127.0.0.1"\n')
    env = {"EMOTION_ENGINE_RTP_PORT": "42000", "EMOTION_ENGINE_TICK_S": "0.2"}
    params = load_serve_params(
        config_file=str(config), env=env, overrides={"port": 0, "host": None}
    )
    assert params.port == 0  # command line beats the file
    assert params.rtp_port == 42000  # environment beats the file
    assert params.tick_s == 0.2 and params.host == "127.0.0.1"
    assert params.audiosocket_port == ServeParams().audiosocket_port  # default
    with pytest.raises(ConfigError, match="rtp_port"):
        load_serve_params(env={"EMOTION_ENGINE_RTP_PORT": "forty"})


def test_detector_overrides_parse_and_reject_clearly() -> None:
    from emotion_engine.config import DetectorParams, engine_params_with_detector

    params = engine_params_with_detector("on_threshold=0.75, spike_emotions=angry,sad,on_margin=0")
    assert params.detector == DetectorParams(
        on_threshold=0.75, spike_emotions=("angry", "sad"), on_margin=0.0
    )
    assert engine_params_with_detector("").detector == DetectorParams()
    assert engine_params_with_detector(["smoothing_windows=3"]).detector.smoothing_windows == 3
    with pytest.raises(ConfigError, match="unknown key 'threshold'"):
        engine_params_with_detector("threshold=0.7")
    with pytest.raises(ConfigError, match="not a valid float"):
        engine_params_with_detector("on_threshold=high")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        engine_params_with_detector("0.7")


def test_bad_detector_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text('detector = "off_threshold=0.9"\n')  # above on_threshold: no hysteresis
    result = subprocess.run(
        [sys.executable, "-m", "emotion_engine", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "off_threshold=0.9 must not exceed" in result.stderr
    assert "Traceback" not in result.stderr
