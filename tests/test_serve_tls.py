"""TLS: with a certificate and key the server speaks only WSS/HTTPS; a bad key file is a
clear error. The certificate is made by the real ``openssl`` command for each run."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.asyncio.client import connect

from emotion_engine.clients import stream_l16
from emotion_engine.config import ServeParams
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ServeError
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(crt),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


def params(crt: Path, key: Path) -> ServeParams:
    return ServeParams(
        host="127.0.0.1",
        port=0,
        rtp_port=-1,
        audiosocket_port=-1,
        tls_cert=str(crt),
        tls_key=str(key),
        tick_s=0.05,
    )


def test_wss_carries_media_and_events_and_plain_ws_is_refused(
    model: EmotionModel, cert: tuple[Path, Path], call_pcm: NDArray[np.int16]
) -> None:
    crt, key = cert
    client_ctx = ssl.create_default_context(cafile=str(crt))

    async def scenario() -> tuple[list[str], bytes]:
        service = EngineService(engine=Engine(model=model), tick_s=0.05)
        server = EngineServer(params=params(crt, key), service=service)
        addresses = await server.start()
        urls = addresses.urls()
        try:
            assert urls["events"].startswith("wss://")
            types: list[str] = []
            async with connect(urls["events"], ssl=client_ctx) as sub:
                # stream_l16 has no TLS option: send the same frames by hand over WSS
                async with connect(urls["l16"], ssl=client_ctx) as media:
                    await media.send('{"callId": "tls-call", "sampleRate": 8000}')
                    pcm = call_pcm[: 8000 * 3]
                    for off in range(0, pcm.size, 1600):
                        await media.send(pcm[off : off + 1600].astype("<i2").tobytes())
                async with asyncio.timeout(60):
                    while "call.end" not in types:
                        types.append(json.loads(await sub.recv())["type"])
            with pytest.raises(Exception):  # noqa: B017 - any failure: TLS port, plain client
                await stream_l16(
                    urls["l16"].replace("wss://", "ws://"),
                    pcm=call_pcm[:800],
                    sample_rate=8000,
                    call_id="plain",
                    speed=None,
                )
            health = await asyncio.to_thread(
                lambda: urllib.request.urlopen(
                    urls["health"], context=client_ctx, timeout=10
                ).read()
            )
            return types, health
        finally:
            await server.stop()

    types, health = asyncio.run(scenario())
    assert types[0] == "call.start" and types[-1] == "call.end"
    assert b"ok" in health.lower()


def test_unusable_key_is_a_clear_serve_error(
    model: EmotionModel, cert: tuple[Path, Path], tmp_path: Path
) -> None:
    crt, _ = cert
    bad_key = tmp_path / "key.pem"
    bad_key.write_text("not a key\n")

    async def scenario() -> None:
        service = EngineService(engine=Engine(model=model), tick_s=0.05)
        await EngineServer(params=params(crt, bad_key), service=service).start()

    with pytest.raises(ServeError, match="cannot load TLS certificate"):
        asyncio.run(scenario())
