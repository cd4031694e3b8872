"""Timeline plot: a real PNG of the documented size, read back independently of matplotlib."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emotion_engine.detect.tracker import PartyTracker
from emotion_engine.errors import EventError
from emotion_engine.frames import EmotionScores
from emotion_engine.plots import plot_timeline
from emotion_engine.publish.events import EventSequencer, to_json

LABELS = ("neutral", "happy", "sad", "angry")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk, checking its CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(kind + body)
    width, height = struct.unpack(">II", body[:8])
    return width, height


def call_events(parties: tuple[str, ...]) -> list[dict[str, Any]]:
    seq = EventSequencer()
    out: list[dict[str, Any]] = []
    trackers = [PartyTracker(call_id="c", party=p, labels=LABELS) for p in parties]
    for tr in trackers:
        out += [json.loads(to_json(seq.stamp(e))) for e in tr.start(t=0.0, info={})]
    for k in range(1, 61):
        for tr in trackers:
            a = 0.9 if tr.party == "customer" and 30 <= k <= 45 else 0.05
            probs = {"neutral": 0.9 - a, "happy": 0.05, "sad": 0.05, "angry": a}
            s = EmotionScores("c", tr.party, 0.5 * k, probs, 0.3 + 0.5 * a, 0.5, k % 13 != 0)
            out += [json.loads(to_json(seq.stamp(e))) for e in tr.update(s)]
    for tr in trackers:
        out += [json.loads(to_json(seq.stamp(e))) for e in tr.finish(t=30.0)]
    return out


@pytest.mark.parametrize("parties", [("customer", "agent"), ("agent",)])
def test_timeline_png_has_the_expected_size(tmp_path: Path, parties: tuple[str, ...]) -> None:
    events = call_events(parties)
    assert any(e["type"] == "emotion.spike" for e in events) == ("customer" in parties)
    out = plot_timeline(events=events, out_path=tmp_path / "sub" / "t.png", title="demo call")
    assert out.stat().st_size > 10_000  # lines, bands and text, not a blank canvas
    assert png_size(out) == (1200, 300 * len(parties))


def test_timeline_is_not_blank(tmp_path: Path) -> None:
    import matplotlib.image

    out = plot_timeline(events=call_events(("customer",)), out_path=tmp_path / "t.png")
    img = matplotlib.image.imread(out)
    # the orange-red of "angry" (#D55E00) must appear: its line and its spike band
    rgb = img[..., :3]
    angry = np.all(np.abs(rgb - np.array([0xD5, 0x5E, 0x00]) / 255) < 0.02, axis=-1)
    assert angry.sum() > 100


def test_no_events_raises(tmp_path: Path) -> None:
    with pytest.raises(EventError, match="0 events"):
        plot_timeline(events=[], out_path=tmp_path / "t.png")
