"""Published events: every generated event validates against the JSON Schema, the
schema rejects malformed ones, seq rises by 1, and to_json is compact and rounded."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest

from emotion_engine.detect.tracker import PartyTracker
from emotion_engine.errors import EventError
from emotion_engine.frames import EmotionScores
from emotion_engine.publish.events import (
    EVENT_TYPES,
    Event,
    EventSequencer,
    call_start,
    emotion_update,
    load_schema,
    spike,
    to_json,
)
from emotion_engine.publish.hub import EventHub

LABELS = ("neutral", "happy", "sad", "angry", "fearful")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def simulated_call() -> list[dict[str, Any]]:
    """Two parties, 40 s: customer gets angry 15-25 s and again at the very end, the
    agent goes silent for 5 s; every event stamped and round-tripped through JSON."""
    rng = np.random.default_rng(3)
    seq = EventSequencer()
    out: list[dict[str, Any]] = []

    def publish(events: list[Event]) -> None:
        out.extend(json.loads(to_json(seq.stamp(e))) for e in events)

    trackers = {
        p: PartyTracker(call_id="call-42", party=p, labels=LABELS) for p in ("customer", "agent")
    }
    for tr in trackers.values():
        publish(tr.start(t=0.0, info={"sample_rate": 8000, "source": "test"}))
    for k in range(1, 81):
        t = 0.5 * k
        for p, tr in trackers.items():
            angry = 0.85 if p == "customer" and (30 <= k <= 50 or k >= 76) else 0.05
            noise = rng.dirichlet(np.ones(4)) * (1.0 - angry)
            probs = dict(zip(("neutral", "happy", "sad", "fearful"), noise.tolist(), strict=True))
            probs["angry"] = angry
            speech = not (p == "agent" and 40 <= k < 50)
            publish(
                tr.update(EmotionScores("call-42", p, t, probs, float(rng.random()), 0.4, speech))
            )
    for tr in trackers.values():
        publish(tr.finish(t=40.2))
    return out


def test_every_generated_event_validates(validator: jsonschema.protocols.Validator) -> None:
    events = simulated_call()
    for e in events:
        validator.validate(e)
    assert {e["type"] for e in events} == set(EVENT_TYPES)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["v"] == 1 for e in events)
    assert len({e["epoch"] for e in events}) == 1  # one stream, one epoch
    spikes = [
        (e["phase"], e["t"], e["reason"] if e["phase"] == "end" else None)
        for e in events
        if e["type"] == "emotion.spike"
    ]
    # the shipped detector starts on one window: onsets at the first angry windows, k=30
    # (t=15.0) and k=76 (t=38.0). It ends on the mean of the spike's last three windows:
    # k=51 still averages 0.58, k=52 0.32 < 0.45 (t=26.0). The second spike is still open
    # at hang-up.
    assert spikes == [
        ("start", 15.0, None),
        ("end", 26.0, "score_fell"),
        ("start", 38.0, None),
        ("end", 40.2, "call_end"),
    ]
    ends = [e for e in events if e["type"] == "call.end"]
    assert [e["party"] for e in ends] == ["customer", "agent"]
    assert ends[0]["summary"]["n_spikes"] == 2
    assert ends[1]["summary"]["speech_s"] == pytest.approx(35.0)  # 70 speech windows


def test_party_that_never_spoke_validates(validator: jsonschema.protocols.Validator) -> None:
    tr = PartyTracker(call_id="c", party="agent", labels=LABELS)
    seq = EventSequencer()
    events = tr.start(t=0.0, info={})
    events += tr.update(EmotionScores("c", "agent", 0.5, {}, 0.0, 0.0, False))
    events += tr.finish(t=1.0, reason="timeout")
    for e in events:
        validator.validate(json.loads(to_json(seq.stamp(e))))


def valid_spike_end() -> dict[str, Any]:
    e = spike(
        call_id="c",
        party="customer",
        phase="end",
        t=12.0,
        emotion="angry",
        score=0.3,
        baseline=0.1,
        baseline_ready=True,
        detected_at=12.0,
        started_at=8.0,
        duration_s=4.0,
        peak_score=0.8,
        reason="score_fell",
    )
    return EventSequencer().stamp(e)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "emotion.spiked"),
        ("v", 2),
        ("seq", 0),
        ("party", "caller"),
        ("t", -1.0),
        ("score", 1.5),
        ("phase", "middle"),
        ("reason", "bored"),
        ("unknown_field", 1),
        ("epoch", ""),
        ("epoch", 7),
    ],
)
def test_schema_rejects_malformed_events(
    validator: jsonschema.protocols.Validator, field: str, value: Any
) -> None:
    good = valid_spike_end()
    validator.validate(good)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**good, field: value})


def test_schema_requires_end_fields_only_on_end(validator: jsonschema.protocols.Validator) -> None:
    good = valid_spike_end()
    for name in ("started_at", "duration_s", "peak_score", "reason"):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({k: v for k, v in good.items() if k != name})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**good, "phase": "start"})  # a start carrying end fields
    with pytest.raises(jsonschema.ValidationError):
        update = EventSequencer().stamp(
            emotion_update(EmotionScores("c", "agent", 2.0, {"angry": 1.0}, 0.5, 0.5, True))
        )
        validator.validate({k: v for k, v in update.items() if k != "window"})


def test_to_json_is_compact_and_rounded() -> None:
    d = EventSequencer().stamp(
        call_start(
            call_id="c",
            party="customer",
            t=1.234567891,
            labels=["angry"],
            info={"x": np.float32(0.1), "n": np.int64(3), "a": np.array([1.00004, -0.00001])},
        )
    )
    text = to_json(d)
    assert " " not in text
    back = json.loads(text)
    assert back["t"] == 1.2346
    assert back["info"] == {"x": 0.1, "n": 3, "a": [1.0, 0.0]}
    assert "-0.0" not in text
    assert list(back)[:7] == ["v", "epoch", "seq", "type", "call_id", "party", "t"]
    with pytest.raises(EventError, match="nan"):
        to_json({**d, "info": {"bad": math.nan}})


def _random_value(rng: np.random.Generator, depth: int = 0) -> Any:
    leaves: list[Any] = [
        float(rng.normal() * 10.0 ** int(rng.integers(-6, 4))),
        -1e-7,
        0.0,
        int(rng.integers(-(10**6), 10**6)),
        bool(rng.integers(2)),
        None,
        "ünï",
        np.float32(rng.normal()),
        np.float64(-3e-6),
        np.int64(rng.integers(100)),
        np.bool_(True),
        np.array([0.123456, -0.00001]),
    ]
    if depth < 3 and rng.random() < 0.5:
        n = int(rng.integers(0, 4))
        if rng.random() < 0.5:
            keys: list[Any] = ["a", "b", 3, "d"]
            return {keys[i]: _random_value(rng, depth + 1) for i in range(n)}
        items = [_random_value(rng, depth + 1) for _ in range(n)]
        return items if rng.random() < 0.5 else tuple(items)
    return leaves[int(rng.integers(len(leaves)))]


def test_plain_fast_path_gives_what_the_general_path_gives() -> None:
    """``_plain`` takes plain Python values by exact type; ``_plain_any`` is the general
    isinstance path: the JSON must be the same, numpy values and odd keys included."""
    from emotion_engine.publish.events import _plain, _plain_any

    rng = np.random.default_rng(5)
    for _ in range(500):
        value = {"v": _random_value(rng), "w": [_random_value(rng), _random_value(rng)]}
        fast = json.dumps(_plain(value), allow_nan=False)
        general = json.dumps(_plain_any(value), allow_nan=False)
        assert fast == general
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(EventError, match="non-finite"):
            _plain({"x": [bad]})
        with pytest.raises(EventError, match="non-finite"):
            _plain_any({"x": [bad]})


def test_sequencer_counts_from_one() -> None:
    seq = EventSequencer()
    e = call_start(call_id="c", party="agent", t=0.0, labels=["neutral"])
    assert [seq.stamp(e)["seq"] for _ in range(3)] == [1, 2, 3]
    before = seq.epoch
    seq.reset()
    again = seq.stamp(e)
    # seqs start again: under a new epoch, so a reader can tell
    assert again["seq"] == 1 and again["epoch"] == seq.epoch != before
    assert EventSequencer(epoch="run-1").stamp(e)["epoch"] == "run-1"


def test_stream_notices_validate_and_malformed_ones_do_not(
    validator: jsonschema.protocols.Validator,
) -> None:
    """What a subscriber gets besides events: events.lost (queue overflow, replay gap)
    and events.resync (since of another epoch, or beyond the head), as the hub makes
    them, through JSON."""
    hub = EventHub(replay_events=3, max_queue=2)
    e = call_start(call_id="c", party="customer", t=0.0, labels=["neutral"])
    hub.publish(e)
    slow = hub.subscribe()
    for _ in range(5):
        hub.publish(e)
    notices = [n for n in slow.drain() if "seq" not in n]
    notices += [n for n in hub.subscribe(since=40).drain() if "seq" not in n]
    notices += [n for n in hub.subscribe(since=2, epoch="old").drain() if "seq" not in n]
    assert [n["type"] for n in notices] == [
        "events.lost",
        "events.resync",
        "events.lost",
        "events.resync",
        "events.lost",
    ]
    for n in notices:
        validator.validate(json.loads(to_json(n)))
    lost = json.loads(to_json(notices[0]))
    resync = json.loads(to_json(notices[1]))
    for bad in (
        {**lost, "count": 0},
        {**lost, "seq": 3},
        {k: v for k, v in lost.items() if k != "epoch"},
        {**resync, "reason": "bored"},
        {k: v for k, v in resync.items() if k != "message"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_event_rejects_bad_envelope() -> None:
    with pytest.raises(EventError, match="'caller'"):
        call_start(call_id="c", party="caller", t=0.0, labels=["neutral"])
    with pytest.raises(EventError, match="'seq'"):
        Event("call.end", "c", "agent", 1.0, {"seq": 3})
    with pytest.raises(EventError, match="duration_s=None"):
        spike(
            call_id="c",
            party="agent",
            phase="end",
            t=1.0,
            emotion="angry",
            score=0.1,
            baseline=0.0,
            baseline_ready=False,
            detected_at=1.0,
        )
