"""The agent-assist page, for real: the engine serves it at ``/``, headless Chromium
(Debian's ``chromium``, driven by Playwright) loads it, and audio streamed into the
engine must show up on it.

- A stereo call (customer: one actor's neutral then angry speech; agent channel
  silent and, with the default privacy setting, not analysed) streams in over the L16
  websocket at ``SPEED`` x real time: the cue "Customer frustration rising" must
  appear within ``CUE_BOUND_S`` of the engine having the confirming audio, then clear
  when the spike ends, and the summary must show after hang-up. Screenshots go to the
  test's temp dir.
- Reconnects: the server drops the page's websocket; the page comes back with
  ``since=`` and gets exactly what it missed (no loss notice, with a replay buffer too
  small for a full replay), and when the buffer cannot cover the gap the page says so
  and rebuilds the cue from the detector state in later updates.
- Restarts: a new engine on the same port numbers its events from 1 again under a new
  epoch; the page notices, ends the calls the old run left open and shows the new ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from playwright.async_api import Browser, Page, async_playwright
from test_serve import running

from emotion_engine.clients import stream_l16
from emotion_engine.config import ServeParams
from emotion_engine.detect.tracker import PartyTracker
from emotion_engine.frames import EmotionScores
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import Event
from emotion_engine.publish.hub import EventHub
from emotion_engine.server import EngineServer

pytestmark = pytest.mark.slow

LOOPBACK = ServeParams(
    host="127.0.0.1", port=0, rtp_port=-1, audiosocket_port=-1, tick_s=0.05, routing_rules=""
)
SPEED = 2.0
"""Audio is streamed at twice real time: the cue must still be on screen long enough
to be seen (the spike lasts a few seconds of call audio)."""
CUE_BOUND_S = 3.0
"""Wall seconds from the moment the engine had the audio that confirmed the spike
(stream start + detected_at / SPEED) to the cue on screen: one engine tick, one
websocket hop and one page render, with room for a loaded 2-core CI machine."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$EMOTION_ENGINE_CHROMIUM``, else the first Chromium on PATH."""
    env = os.environ.get("EMOTION_ENGINE_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        env = os.environ.get("EMOTION_ENGINE_CHROMIUM")
        pytest.skip(
            f"no Chromium binary: EMOTION_ENGINE_CHROMIUM={env} does not exist"
            if env
            else "no Chromium binary: EMOTION_ENGINE_CHROMIUM unset and none of "
            f"{', '.join(CHROMIUM_NAMES)} on PATH (Debian: apt-get install chromium)"
        )
    return path


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=150))  # type: ignore[arg-type]


@asynccontextmanager
async def browser_page(chromium: str, errors: list[str]) -> AsyncIterator[Page]:
    async with async_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser: Browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
            )
            yield page
        finally:
            await browser.close()


def party(page: Page, name: str, selector: str = "") -> Any:
    return page.locator(f'section.party[data-party="{name}"] {selector}'.strip())


async def last_seq(page: Page) -> int:
    return int(await page.evaluate("document.body.dataset.lastSeq || '0'"))


# -- served files ----------------------------------------------------------------------


def test_page_is_served_with_safe_headers(model: EmotionModel) -> None:
    async def scenario() -> dict[str, tuple[int, str, str]]:
        out = {}
        async with running(model, replace(LOOPBACK, token="s3cret")) as server:
            base = server.addresses.urls()["agent_assist"]  # type: ignore[union-attr]
            for path in ("", "app.js", "app.css"):

                def get(url: str = base + path) -> tuple[int, str, str, str]:
                    with urllib.request.urlopen(url) as r:
                        return (
                            r.status,
                            r.headers["Content-Type"],
                            r.headers["Referrer-Policy"],
                            r.read().decode(),
                        )

                status, ctype, referrer, body = await asyncio.to_thread(get)
                out[path] = (status, ctype, body)
                assert referrer == "no-referrer"  # the URL may carry ?token=
        return out

    served = run(scenario())
    # the page is public (it holds no data) even when a token guards the events
    assert served[""][0] == 200 and served[""][1].startswith("text/html")
    assert '<script src="app.js"' in served[""][2]
    assert served["app.js"][1].startswith("text/javascript")
    assert "/v1/events" in served["app.js"][2]
    assert served["app.css"][1].startswith("text/css")


# -- the live call -----------------------------------------------------------------------


def test_cue_appears_clears_and_summary_shows(
    model: EmotionModel, call_pcm: NDArray[np.int16], chromium: str, tmp_path: Path
) -> None:
    customer = np.concatenate([call_pcm, np.zeros(8000 * 4, dtype=np.int16)])
    stereo = np.stack([customer, np.zeros_like(customer)])  # agent: silent line
    published: list[tuple[float, dict[str, Any]]] = []
    errors: list[str] = []

    async def scenario() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        async with (
            running(model, LOOPBACK) as server,
            browser_page(chromium, errors) as page,
        ):
            server.service.add_listener(lambda e: published.append((time.monotonic(), e)))
            urls = server.addresses.urls()  # type: ignore[union-attr]
            await page.goto(urls["agent_assist"])
            await page.locator('#status[data-state="live"]').wait_for(timeout=10_000)

            started = time.monotonic()
            sender = asyncio.create_task(
                stream_l16(
                    urls["l16"], pcm=stereo, sample_rate=8000, call_id="browser-call", speed=SPEED
                )
            )
            cue = party(page, "customer", '.cue[data-active="true"]')
            await cue.wait_for(state="visible", timeout=60_000)
            facts["cue_seen"] = time.monotonic()
            facts["started"] = started
            facts["cue_text"] = await cue.inner_text()
            facts["row_alert"] = await page.locator(
                'tr[data-call-id="browser-call"] td.alert'
            ).inner_text()
            await page.screenshot(path=str(tmp_path / "agent_assist_cue.png"), full_page=True)

            await party(page, "customer", ".cue").wait_for(state="hidden", timeout=30_000)
            facts["eased"] = await party(page, "customer", ".eased").inner_text()
            await sender
            summary = party(page, "customer", '.summary[data-ready="true"]')
            await summary.wait_for(state="visible", timeout=30_000)
            facts["summary"] = await summary.inner_text()
            facts["row"] = await page.locator('tr[data-call-id="browser-call"]').inner_text()
            facts["meta"] = await page.locator("#detail-meta").inner_text()
            # a hint raised by call.end itself comes right after it: wait for all
            n_hints = sum(1 for _, e in published if e["type"] == "route.hint")
            await page.wait_for_function(
                f"document.querySelectorAll('#hints li').length >= {n_hints}", timeout=10_000
            )
            facts["hints"] = await page.locator("#hints").inner_text()
            facts["agent_sections"] = await party(page, "agent").count()
            await page.screenshot(path=str(tmp_path / "agent_assist_summary.png"), full_page=True)
        return facts

    facts = run(scenario())
    assert not errors, errors

    # the cue, within the bound from the engine having the confirming audio
    start = next(e for _, e in published if e["type"] == "emotion.spike" and e["phase"] == "start")
    audio_in = facts["started"] + start["detected_at"] / SPEED
    print(f"cue on screen {facts['cue_seen'] - audio_in:.2f} s after the engine had the audio")
    assert facts["cue_seen"] - audio_in < CUE_BOUND_S, (facts["cue_seen"] - audio_in, start)
    assert "Customer frustration rising" in facts["cue_text"]
    assert re.search(r"for \d+ s", facts["cue_text"]), facts["cue_text"]
    assert "Customer frustration rising" in facts["row_alert"]

    # cleared by the spike's end, with how long it lasted
    end = next(e for _, e in published if e["type"] == "emotion.spike" and e["phase"] == "end")
    assert f"Frustration eased after {round(end['duration_s'])} s" in facts["eased"]

    # the summary after hang-up, as the engine computed it
    call_end = next(e for _, e in published if e["type"] == "call.end" and e["party"] == "customer")
    s = call_end["summary"]
    for words in ("Worst moment (peak)", "Peak-end score", "Recovery", "End"):
        assert words in facts["summary"]
    minus = "\u2212" if s["peak_end_score"] < 0 else "+"
    assert f"{minus}{abs(s['peak_end_score']):.2f}" in facts["summary"]
    assert f"Ended ({call_end['reason']})" in facts["row"]

    # privacy default: the agent channel was dropped before the engine
    assert facts["agent_sections"] == 0
    assert not any(e.get("party") == "agent" for _, e in published)
    assert "agent's voice not analysed" in facts["meta"]

    # every routing hint the built-in rules raised is listed with its reason
    for hint in (e for _, e in published if e["type"] == "route.hint"):
        assert hint["reason"] in facts["hints"], (hint, facts["hints"])
    for name in ("agent_assist_cue.png", "agent_assist_summary.png"):
        assert (tmp_path / name).stat().st_size > 10_000


# -- reconnecting ------------------------------------------------------------------------


def synthetic_events() -> list[Event]:
    """One customer leg: 8 s calm, then anger from 8 s (a spike), unstamped."""
    tracker = PartyTracker(
        call_id="replay-call", party="customer", labels=("neutral", "happy", "sad", "angry")
    )
    events = tracker.start(t=0.0, info={"agent": "agent-7", "protocol": "test"})
    for k in range(1, 61):
        angry = 0.9 if k > 16 else 0.05
        probs = {"neutral": 0.9 - angry + 0.05, "happy": 0.03, "sad": 0.02, "angry": angry}
        events += tracker.update(
            EmotionScores("replay-call", "customer", 0.5 * k, probs, 0.4 + angry / 2, 0.6, True)
        )
    return events


async def drop_subscribers(server: EngineServer) -> None:
    """Close every /v1/events connection from the server side (a restart, a proxy
    timeout): the page must notice and reconnect."""
    ws_server = server._ws
    assert ws_server is not None
    for conn in list(ws_server.connections):
        if conn.request is not None and conn.request.path.startswith("/v1/events"):
            await conn.close(1012, "restart")


def test_reconnect_uses_since_and_reports_lost_events(
    model: EmotionModel, chromium: str, tmp_path: Path
) -> None:
    events = synthetic_events()
    spike_at = next(i for i, e in enumerate(events) if e.type == "emotion.spike")
    hub = EventHub(replay_events=8)
    errors: list[str] = []

    async def until_seq(page: Page, seq: int) -> None:
        for _ in range(200):
            if await last_seq(page) >= seq:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"page stuck at seq {await last_seq(page)}, expected {seq}")

    async def scenario() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        params = replace(LOOPBACK, token="s3cret")
        async with (
            running(model, params, hub=hub) as server,
            browser_page(chromium, errors) as page,
        ):
            await page.goto(server.addresses.urls()["agent_assist"] + "?token=s3cret")  # type: ignore[union-attr]
            await page.locator('#status[data-state="live"]').wait_for(timeout=10_000)
            facts["url"] = page.url  # the token is taken out of the address bar

            # 6 events live, then 6 while the page is away: more than the replay
            # buffer holds since seq 0, but covered since the page's last seq
            for e in events[:6]:
                hub.publish(e)
            await until_seq(page, hub.last_seq)
            await drop_subscribers(server)
            for e in events[6:12]:
                hub.publish(e)
            await until_seq(page, hub.last_seq)
            await page.locator('#status[data-state="live"]').wait_for(timeout=10_000)
            facts["notice_after_covered_gap"] = await page.locator("#notice").is_visible()

            # away again while the spike starts, and long enough that the buffer
            # cannot cover the gap: the page says so and the cue still shows
            await drop_subscribers(server)
            for e in events[12 : spike_at + 12]:
                hub.publish(e)
            await until_seq(page, hub.last_seq)
            facts["notice"] = await page.locator("#notice").inner_text()
            cue = party(page, "customer", '.cue[data-active="true"]')
            await cue.wait_for(state="visible", timeout=5_000)
            facts["cue"] = await cue.inner_text()
            facts["agent"] = await page.locator('tr[data-call-id="replay-call"]').inner_text()
            await page.screenshot(path=str(tmp_path / "agent_assist_reconnect.png"), full_page=True)
        return facts

    facts = run(scenario())
    assert not errors, errors
    assert "token" not in facts["url"]
    assert facts["notice_after_covered_gap"] is False
    assert re.search(r"\d+ events were missed while disconnected", facts["notice"]), facts
    assert "Customer frustration rising" in facts["cue"]
    assert "agent agent-7" in facts["agent"]
    assert json.dumps(facts)  # plain data only


def test_engine_restart_is_detected_and_the_page_follows_the_new_run(
    model: EmotionModel, chromium: str, tmp_path: Path
) -> None:
    """The engine stops without the page seeing its calls end (as after a crash) and a
    new one starts on the same port: seqs begin again at 1 under a new epoch. The page
    must show the new run's calls (it used to drop every seq at or below the last one
    it saw) and end the calls the old run left open."""
    events = synthetic_events()
    errors: list[str] = []

    async def until_seq(page: Page, seq: int) -> None:
        for _ in range(400):
            if await last_seq(page) == seq:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"page stuck at seq {await last_seq(page)}, expected {seq}")

    def later_call(call_id: str) -> list[Event]:
        tracker = PartyTracker(call_id=call_id, party="customer", labels=("neutral", "angry"))
        out = tracker.start(t=0.0, info={"protocol": "test"})
        for k in range(1, 4):
            probs = {"neutral": 0.9, "angry": 0.1}
            out += tracker.update(
                EmotionScores(call_id, "customer", 0.5 * k, probs, 0.3, 0.6, True)
            )
        return out

    async def scenario() -> dict[str, Any]:
        facts: dict[str, Any] = {}
        first, second = EventHub(), EventHub()
        async with browser_page(chromium, errors) as page:
            async with running(model, LOOPBACK, hub=first) as server:
                port = server.addresses.port  # type: ignore[union-attr]
                await page.goto(server.addresses.urls()["agent_assist"])  # type: ignore[union-attr]
                await page.locator('#status[data-state="live"]').wait_for(timeout=10_000)
                for e in events[:30]:  # a call in progress, seq 1..30
                    first.publish(e)
                await until_seq(page, first.last_seq)
                facts["old_epoch"] = await page.evaluate("document.body.dataset.epoch")
            async with running(model, replace(LOOPBACK, port=port), hub=second):
                for e in later_call("before-reconnect"):  # replayed after the resync
                    second.publish(e)
                await page.locator('tr[data-call-id="before-reconnect"]').wait_for(timeout=20_000)
                await page.locator('#status[data-state="live"]').wait_for(timeout=10_000)
                for e in later_call("after-reconnect"):  # live
                    second.publish(e)
                await until_seq(page, second.last_seq)
                await page.locator('tr[data-call-id="after-reconnect"]').wait_for(timeout=20_000)
                facts["epoch"] = await page.evaluate("document.body.dataset.epoch")
                facts["old_row"] = await page.locator('tr[data-call-id="replay-call"]').inner_text()
                facts["new_row"] = await page.locator(
                    'tr[data-call-id="after-reconnect"]'
                ).inner_text()
                facts["notice"] = await page.locator("#notice").inner_text()
                await page.screenshot(
                    path=str(tmp_path / "agent_assist_restart.png"), full_page=True
                )
        facts["epochs"] = (first.epoch, second.epoch, second.last_seq, first.last_seq)
        return facts

    facts = run(scenario())
    assert not errors, errors
    old, new, new_last, old_last = facts["epochs"]
    assert new_last < old_last  # the new run's seqs are all below what the page had seen
    assert facts["old_epoch"] == old and facts["epoch"] == new
    assert "Ended (engine restarted)" in facts["old_row"], facts["old_row"]
    assert "Active" in facts["new_row"], facts["new_row"]
    assert "The engine restarted; 1 call open before it is shown as ended" in facts["notice"]
