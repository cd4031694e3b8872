"""The identifier, metadata and number limits every ingest core applies
(``ingest/base.py``), checked against a second path: ``json.dumps`` for the metadata
size, ``int`` for the numbers, ``str.isprintable`` for the characters."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from emotion_engine.config import (
    MAX_CALL_ID_CHARS,
    MAX_META_BYTES,
    MAX_META_DEPTH,
    MAX_META_TEXT_CHARS,
)
from emotion_engine.engine.service import violation_cause
from emotion_engine.ingest.base import bounded_info, call_id_problem, clip, wire_int


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = rng.integers(0, 7 if depth < 6 else 4)
    if kind == 0:
        return None if rng.random() < 0.5 else bool(rng.random() < 0.5)
    if kind == 1:
        return int(rng.integers(-(2**62), 2**62)) * (10**30 if rng.random() < 0.1 else 1)
    if kind == 2:
        return [float("nan"), float("inf"), float(rng.normal())][int(rng.integers(0, 3))]
    if kind == 3:
        n = int(rng.choice([0, 5, 300, 5000]))
        return "".join(chr(int(c)) for c in rng.integers(0, 0x2FF, n))
    if kind in (4, 5):
        return {
            f"k{i}" * int(rng.integers(1, 80)): random_json(rng, depth + 1)
            for i in range(int(rng.integers(0, 6)))
        }
    return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 6)))]


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value.keys(), *(s for v in value.values() for s in strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def test_bounded_info_keeps_every_limit_on_random_metadata() -> None:
    rng = np.random.default_rng(15)
    for _ in range(300):
        info = {f"key{i}": random_json(rng) for i in range(int(rng.integers(1, 8)))}
        kept, problems = bounded_info(info)
        text = json.dumps(kept, allow_nan=False, ensure_ascii=False)  # NaN/inf would raise
        assert len(text.encode("utf-8")) <= MAX_META_BYTES
        assert depth_of(kept) <= MAX_META_DEPTH + 1  # info itself is level 0
        assert all(len(s) <= MAX_META_TEXT_CHARS and s.isprintable() for s in strings_in(kept))
        if kept == info:
            assert problems == []
        else:
            assert problems  # every change is reported


def test_bounded_info_leaves_ordinary_metadata_alone() -> None:
    info = {
        "protocol": "twilio",
        "custom_parameters": {"agent": "Jo", "queue": "billing"},
        "tracks": ["inbound", "outbound"],
        "ssrc": 4_000_000_000,
        "ratio": 0.5,
        "missing": None,
    }
    assert bounded_info(info) == (info, [])


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("CA" + "a" * 32, True),
        ("x" * MAX_CALL_ID_CHARS, True),
        ("x" * (MAX_CALL_ID_CHARS + 1), False),
        ("", False),
        ("a\x00b", False),
        ("a\nb", False),
        ("ünïcode call", True),
        (12, False),
        (None, False),
    ],
)
def test_call_id_problem(value: object, ok: bool) -> None:
    problem = call_id_problem(value)
    assert (problem is None) == ok
    expected = (
        isinstance(value, str) and 0 < len(value) <= MAX_CALL_ID_CHARS and value.isprintable()
    )
    assert expected == ok  # the rule as stated, by a second path


def test_wire_int_agrees_with_int_on_ascii_digits_and_refuses_the_rest() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(0, 2**62)) >> int(rng.integers(0, 62))
        text = str(n)
        assert wire_int(text, lo=0, hi=2**62) == int(text)
        assert wire_int(text, lo=0, hi=n - 1) is None  # out of range
    for bad in ("²", "٣", "1e3", "", "-", "0x10", "9" * 21, "1 2", True, 1.0, None, b"\xb2"):
        assert wire_int(bad, lo=-(10**30), hi=10**30) is None, bad
    assert wire_int("-12", lo=-20, hi=0) == -12
    assert wire_int(b"42", lo=0, hi=100) == 42
    assert not math.isnan(float(wire_int("7", lo=0, hi=9) or 0))


def test_clip_and_violation_cause() -> None:
    assert len(clip("x" * 1_000_000)) < 100
    assert clip("short") == "'short'"
    a = violation_cause("SIP INVITE from udp:127.0.0.1:5070: unterminated <...> in '<sip:a@127'")
    b = violation_cause("SIP INVITE from udp:10.1.2.3:40000: unterminated <...> in '<sip:b@10.0'")
    assert a == b  # same cause, different peer and value
    assert a != violation_cause("SIP INVITE from udp:127.0.0.1:5070: malformed CSeq '² INVITE'")
