"""A real softphone calls the engine: baresip plays a WAV file as its microphone.

baresip (Debian package ``baresip-core``, or ``baresip`` which adds the GTK front
end) runs with a private config directory: only the g711 codec, the ``aufile``
audio source (the labelled test call as an 8 kHz WAV), the ``account`` and ``menu``
modules (``-e "/dial ..."`` is a menu command) and nothing that needs a sound card.
It dials ``sip:customer@`` the engine, negotiates PCMU/PCMA by SDP, streams the
file as RTP and, at the end of the file, hangs up with BYE (aufile reports end of
file, baresip ends the call). The subscriber sees the whole call; ``call.end``
comes from that BYE.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray
from test_serve import LOOPBACK, assert_call, running
from test_sipp import free_udp_port

from emotion_engine.clients import collect_until, subscribe
from emotion_engine.model.runtime import EmotionModel

pytestmark = pytest.mark.slow

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")

if BARESIP is None:
    pytest.skip(
        "baresip is not installed (Debian package baresip-core; `make system-deps`)",
        allow_module_level=True,
    )


def _module_dir() -> Path:
    for candidate in (MODULES, Path("/usr/local/lib/baresip/modules")):
        if (candidate / "aufile.so").exists():
            return candidate
    pytest.skip(f"baresip's aufile module not found in {MODULES} (package baresip-core)")


def baresip_config(home: Path, *, wav: Path, sip_port: int) -> Path:
    conf = home / ".baresip"
    conf.mkdir(parents=True)
    (conf / "config").write_text(
        "\n".join(
            [
                "poll_method\tepoll",
                f"sip_listen\t127.0.0.1:{sip_port}",
                "net_interface\t127.0.0.1",  # SDP and RTP on loopback, whatever else the host has
                f"audio_source\taufile,{wav}",
                "audio_player\taufile,/dev/null",  # the engine sends nothing to play
                "audio_alert\taufile,/dev/null",
                f"module_path\t{_module_dir()}",
                "module\tg711.so",
                "module\taufile.so",
                "module_app\taccount.so",
                "module_app\tmenu.so",
                "",
            ]
        )
    )
    (conf / "accounts").write_text('"Baresip Tester" <sip:tester@127.0.0.1>;regint=0\n')
    return conf


def test_baresip_calls_the_engine_and_hangs_up(
    model: EmotionModel, call_pcm: NDArray[np.int16], tmp_path: Path
) -> None:
    wav = tmp_path / "mic.wav"
    sf.write(wav, call_pcm, 8000, subtype="PCM_16")
    conf = baresip_config(tmp_path, wav=wav, sip_port=free_udp_port())
    params = replace(LOOPBACK, sip="127.0.0.1:0", sip_rtp_ports="0", rtp_leg_timeout_s=5.0)

    async def scenario() -> tuple[list[dict[str, Any]], int | None, str]:
        async with running(model, params) as server:
            addr = server.addresses
            assert addr is not None and addr.sip_port is not None
            async with subscribe(addr.urls()["events"]) as ws:
                assert BARESIP is not None
                proc = await asyncio.create_subprocess_exec(
                    BARESIP, "-f", str(conf), "-e", f"/dial sip:customer@127.0.0.1:{addr.sip_port}",
                    cwd=tmp_path,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                try:
                    # baresip keeps running after a call: exiting first means it failed
                    collecting = asyncio.create_task(collect_until(ws, count=1, timeout_s=70))
                    exited = asyncio.create_task(proc.wait())
                    await asyncio.wait({collecting, exited}, return_when=asyncio.FIRST_COMPLETED)
                    exited.cancel()
                    if not collecting.done():
                        collecting.cancel()
                        out, _ = await proc.communicate()
                        pytest.fail(f"baresip exited {proc.returncode}:\n{out.decode()[-3000:]}")
                    events = collecting.result()
                    calls_left = server.sip.core.n_calls if server.sip else None
                finally:
                    if proc.returncode is None:
                        proc.terminate()  # baresip keeps running after the call
                    out, _ = await asyncio.wait_for(proc.communicate(), 10)
            return events, calls_left, out.decode(errors="replace")

    events, calls_left, log = asyncio.run(asyncio.wait_for(scenario(), timeout=100))
    call_id = events[0]["call_id"]
    assert_call(events, call_id=call_id, party="customer")
    info = events[0]["info"]
    assert info["user_agent"].startswith("baresip"), info
    assert info["from"]["name"] == "Baresip Tester"
    assert info["codec"] in ("PCMU", "PCMA")
    assert events[-1]["reason"] == "hangup", log[-2000:]  # baresip's BYE, not a timeout
    assert calls_left == 0
    assert "Call established" in log and "terminated" in log
