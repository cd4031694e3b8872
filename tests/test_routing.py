"""Routing hints: rules validated at load, the sans-I/O rule engine against hand-made
event streams, webhook delivery against a real local HTTP server, and the whole path
through ``serve`` (hints on /v1/events and to the webhook; agent audio not analysed
unless switched on)."""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from numpy.typing import NDArray

from emotion_engine.clients import collect_until, stream_l16, subscribe
from emotion_engine.config import ServeParams, load_serve_params
from emotion_engine.engine.pipeline import Engine
from emotion_engine.engine.service import EngineService
from emotion_engine.errors import ConfigError
from emotion_engine.model.runtime import EmotionModel
from emotion_engine.publish.events import EventSequencer, load_schema, to_json
from emotion_engine.routing import (
    DEFAULT_RULES_TOML,
    HighArousalAtStart,
    RepeatedSpikes,
    Routing,
    RuleEngine,
    SpikeLasting,
    WebhookSender,
    add_arguments,
    load_rules,
    main,
    parse_rules,
)
from emotion_engine.server import EngineServer

LABELS = ("neutral", "happy", "sad", "angry")

# -- rules files -------------------------------------------------------------------------


def test_built_in_rules_load_and_cover_every_condition() -> None:
    rules = load_rules(None)
    assert [r.name for r in rules] == [
        "leave-script-on-anger",
        "listen-in-on-long-anger",
        "escalate-on-repeated-anger",
        "agitated-caller",
        "callback-after-upset-end",
    ]
    assert {r.when for r in rules} == {
        "spike_lasting",
        "repeated_spikes",
        "high_arousal_at_start",
        "ended_upset",
    }
    assert {r.action for r in rules} == {
        "leave_script",
        "supervisor_listen_in",
        "escalate",
        "offer_callback",
    }
    assert all(r.party == "customer" for r in rules)
    assert rules[0].condition == SpikeLasting(emotion="angry", min_duration_s=3.0)
    assert rules[3].condition == HighArousalAtStart(speech_s=6.0, min_arousal=0.75)
    assert "leave-script-on-anger: customer spike_lasting(" in rules[0].describe()


GOOD_RULE = {
    "name": "r",
    "when": "spike_lasting",
    "min_duration_s": 5.0,
    "action": "escalate",
    "skill": "empathy",
    "priority": 5,
    "reason": "angry for {duration_s:.0f} s",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"when": "anger"}, r"'when' must be one of spike_lasting, .*got 'anger'"),
        ({"action": "transfer"}, r"action must be one of escalate, .*got 'transfer'"),
        ({"priority": 11}, r"priority must lie in 1\.\.10 .*got 11"),
        ({"priority": 2.5}, r"priority must be an integer, got 2\.5"),
        ({"priority": True}, r"priority must be an integer, got True"),
        ({"min_duration_s": "long"}, r"min_duration_s must be a number, got 'long'"),
        ({"min_duration_s": -1.0}, r"min_duration_s must be >= 0 s, got -1\.0"),
        ({"party": "caller"}, r"party must be one of customer, agent; got 'caller'"),
        ({"skill": ""}, r"skill must be a non-empty string"),
        ({"within_s": 3.0}, r"unknown key\(s\) within_s for when = 'spike_lasting'"),
        (
            {"reason": "for {minutes} min"},
            r"reason 'for \{minutes\} min' cannot be filled.*\{duration_s\}",
        ),
        ({"reason": ""}, r"'reason' is required"),
        ({"name": ""}, r"'name' is required"),
        ({"enabled": "yes"}, r"enabled must be true or false"),
    ],
)
def test_bad_rule_is_refused_with_a_precise_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_rules({"version": 1, "rules": [{**GOOD_RULE, **change}]}, source="my.toml")
    assert str(info.value).startswith("my.toml: rule 1")


def rule_for(when: str, **extra: Any) -> dict[str, Any]:
    """A valid rule of another condition (plain reason), changed by ``extra``."""
    base = {k: v for k, v in GOOD_RULE.items() if k != "min_duration_s"}
    return {**base, "when": when, "reason": "x", **extra}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 2, "rules": []}, r"version must be 1, got 2"),
        ({"version": 1}, r"no \[\[rules\]\] tables"),
        ({"version": 1, "rule": []}, r"unknown top-level key\(s\) rule"),
        ({"rules": [GOOD_RULE, GOOD_RULE]}, r"rule 2: duplicate name 'r'"),
        (
            {"rules": [rule_for("repeated_spikes", min_duration_s=1.0)]},
            r"unknown key\(s\) min_duration_s for when = 'repeated_spikes'",
        ),
        ({"rules": [rule_for("repeated_spikes", count=1)]}, r"count must be >= 2, got 1"),
        (
            {"rules": [rule_for("repeated_spikes", count=2.0)]},
            r"count must be an integer, got 2\.0",
        ),
        (
            {"rules": [rule_for("high_arousal_at_start", min_arousal=1.5)]},
            r"min_arousal must lie in \[0, 1\], got 1\.5",
        ),
        (
            {"rules": [rule_for("ended_upset", max_end_valence=-2)]},
            r"max_end_valence must lie in \[-1, 1\], got -2",
        ),
        ({"rules": ["not a table"]}, r"a rule must be a table"),
    ],
)
def test_bad_rules_document_is_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules(doc, source="f.toml")


def test_rules_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules file not found: .*nope\.toml"):
        load_rules(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\nname = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML"):
        load_rules(bad)
    disabled = tmp_path / "disabled.toml"
    disabled.write_text(
        DEFAULT_RULES_TOML.replace(
            'name = "agitated-caller"', 'name = "agitated-caller"\nenabled = false'
        )
    )
    assert "agitated-caller" not in [r.name for r in load_rules(disabled)]


def test_rule_engine_checks_emotions_against_model_and_detector() -> None:
    rules = parse_rules({"rules": [{**GOOD_RULE, "emotion": "sad"}]})
    with pytest.raises(
        ConfigError,
        match=r"rule 'r' watches spikes of 'sad', but the detector only reports spikes of angry",
    ):
        RuleEngine(rules, labels=LABELS, spike_emotions=("angry",))
    with pytest.raises(ConfigError, match=r"emotion 'sad' is not a model label \(neutral, angry\)"):
        RuleEngine(rules, labels=("neutral", "angry"))


# -- the rule engine ----------------------------------------------------------------------


def start(call: str = "c", party: str = "customer") -> dict[str, Any]:
    return {
        "type": "call.start",
        "call_id": call,
        "party": party,
        "t": 0.0,
        "labels": list(LABELS),
        "info": {},
    }


def update(
    t: float, *, arousal: float = 0.4, speech: bool = True, call: str = "c", party: str = "customer"
) -> dict[str, Any]:
    probs = {"neutral": 0.7, "happy": 0.1, "sad": 0.1, "angry": 0.1}
    return {
        "type": "emotion.update",
        "call_id": call,
        "party": party,
        "t": t,
        "probabilities": probs,
        "arousal": arousal,
        "voiced_ratio": 0.5,
        "is_speech": speech,
        "window": [max(0.0, t - 2), t],
        "dominant": "neutral" if speech else None,
    }


def spike_start(
    t: float, *, delay: float = 0.5, call: str = "c", party: str = "customer"
) -> dict[str, Any]:
    return {
        "type": "emotion.spike",
        "call_id": call,
        "party": party,
        "t": t,
        "phase": "start",
        "emotion": "angry",
        "score": 0.8,
        "baseline": 0.1,
        "baseline_ready": True,
        "detected_at": t + delay,
    }


def spike_end(
    t: float, started_at: float, *, call: str = "c", party: str = "customer"
) -> dict[str, Any]:
    return {
        **spike_start(started_at, call=call, party=party),
        "t": t,
        "phase": "end",
        "detected_at": t,
        "started_at": started_at,
        "duration_s": t - started_at,
        "peak_score": 0.9,
        "reason": "score_fell",
    }


def end(
    t: float, end_valence: float | None, *, call: str = "c", party: str = "customer"
) -> dict[str, Any]:
    end_state = None if end_valence is None else {"emotion": "angry", "valence": end_valence}
    return {
        "type": "call.end",
        "call_id": call,
        "party": party,
        "t": t,
        "reason": "hangup",
        "summary": {
            "end_state": end_state,
            "peak_end_score": -0.5,
            "recovery": {"outcome": "not_recovered", "delta": 0.1},
        },
    }


TEST_RULES = """
version = 1
[[rules]]
name = "lasting"
when = "spike_lasting"
min_duration_s = 3.0
action = "leave_script"
priority = 3
reason = "{party} angry for {duration_s:.1f} s"
[[rules]]
name = "twice"
when = "repeated_spikes"
count = 2
within_s = 30.0
action = "escalate"
skill = "empathy"
priority = 8
reason = "{count} spikes in {within_s:.0f} s"
[[rules]]
name = "agitated"
when = "high_arousal_at_start"
speech_s = 2.0
min_arousal = 0.7
action = "escalate"
priority = 5
reason = "arousal {arousal:.2f}"
[[rules]]
name = "upset"
when = "ended_upset"
max_end_valence = -0.3
action = "offer_callback"
priority = 4
reason = "ended {end_emotion} ({end_valence:+.2f})"
"""


def feed(engine: RuleEngine, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event through the engine; the hints as published dicts (with their cause)."""
    out = []
    for e in events:
        for hint in engine.update(e):
            out.append({**hint.to_dict(), "cause": (e["type"], e["t"])})
    return out


def test_rule_engine_by_hand() -> None:
    import tomllib

    engine = RuleEngine(
        parse_rules(tomllib.loads(TEST_RULES)), labels=LABELS, spike_emotions=("angry",)
    )
    events = [start()]
    # first 2 s of speech (4 windows; the silent one and the low-confidence one do not
    # count): mean arousal 0.75
    synthetic = {**update(0.7, arousal=1.0), "low_confidence": True}
    events += [
        update(0.5, speech=False, arousal=1.0),
        synthetic,
        update(1.0, arousal=0.9),
        update(1.5, arousal=0.8),
        update(2.0, arousal=0.6),
        update(2.5, arousal=0.7),
        update(3.0, arousal=1.0),
    ]
    # spike 1: onset 10, confirmed 10.5, lasts to 15
    events += [update(t) for t in (9.5, 10.0)] + [spike_start(10.0)]
    events += [update(t) for t in np.arange(10.5, 15.01, 0.5)] + [spike_end(15.0, 10.0)]
    # spike 2 (20 s after the first): repeated; and lasting again
    events += [spike_start(30.0)] + [update(t) for t in np.arange(30.5, 34.01, 0.5)]
    events += [spike_end(34.0, 30.0)]
    # spike 3: "twice" fired already for this call
    events += [spike_start(50.0), spike_end(51.0, 50.0)]
    events += [end(60.0, -0.5)]
    hints = feed(engine, events)
    got = [(h["rule"], h["t"], h["cause"]) for h in hints]
    assert got == [
        ("agitated", 2.5, ("emotion.update", 2.5)),
        ("lasting", 13.0, ("emotion.update", 13.0)),
        ("twice", 30.5, ("emotion.spike", 30.0)),
        ("lasting", 33.0, ("emotion.update", 33.0)),
        ("upset", 60.0, ("call.end", 60.0)),
    ]
    assert hints[0]["evidence"] == {
        "arousal": pytest.approx(0.75),
        "speech_s": 2.0,
        "min_arousal": 0.7,
    }
    assert hints[0]["reason"] == "arousal 0.75"
    assert (
        hints[1]["evidence"]["duration_s"] == 3.0
        and hints[1]["reason"] == "customer angry for 3.0 s"
    )
    assert hints[2]["evidence"] == {
        "emotion": "angry",
        "count": 2,
        "within_s": 30.0,
        "first_at": 10.0,
    }
    assert (hints[2]["action"], hints[2]["skill"], hints[2]["priority"]) == (
        "escalate",
        "empathy",
        8,
    )
    assert hints[4]["reason"] == "ended angry (-0.50)"
    assert hints[4]["evidence"]["recovery"] == "not_recovered"
    assert engine.open_legs == 0 and engine.hints_total == 5


def test_repeated_spikes_count_episodes_not_fragments() -> None:
    """A spike back within min_gap_s of the last one's end (one episode split in two, as
    a detector without merging reports a dip) does not escalate; a new episode does."""
    engine = RuleEngine(load_rules(None), labels=LABELS)
    rule = next(r for r in engine.rules if r.name == "escalate-on-repeated-anger")
    assert isinstance(rule.condition, RepeatedSpikes) and rule.condition.min_gap_s == 10.0
    # the demo call over L16 before the detector merged episodes: 33.0-42.0, 47.0-56.5
    fragments = [start(), spike_start(33.0), spike_end(42.0, 33.0)]
    fragments += [spike_start(47.0), spike_end(56.5, 47.0)]
    assert [h["rule"] for h in feed(engine, fragments)] == []
    # a third spike 12 s after that episode ended is a second episode: escalate
    hints = feed(engine, [spike_start(68.5), spike_end(70.0, 68.5)])
    assert [h["rule"] for h in hints] == ["escalate-on-repeated-anger"]
    assert hints[0]["evidence"]["count"] == 2 and hints[0]["evidence"]["first_at"] == 33.0
    with pytest.raises(ConfigError, match="min_gap_s must be >= 0 s"):
        parse_rules({"rules": [rule_for("repeated_spikes", min_gap_s=-1.0)]})


def test_rule_engine_keeps_legs_and_parties_apart() -> None:
    import tomllib

    engine = RuleEngine(parse_rules(tomllib.loads(TEST_RULES)))
    calm = [
        start("a"),
        *[update(0.5 * k, arousal=0.5, call="a") for k in range(1, 8)],
        end(4.0, -0.1, call="a"),
    ]
    agent = [
        start("b", "agent"),
        *[update(0.5 * k, arousal=0.95, call="b", party="agent") for k in range(1, 8)],
        spike_start(1.0, delay=5.0, call="b", party="agent"),
        end(9.0, -0.9, call="b", party="agent"),
    ]
    # spikes of two calls interleaved: each counts alone (no "twice")
    mixed = [
        start("x"),
        start("y"),
        spike_start(5.0, call="x"),
        spike_start(6.0, call="y"),
        spike_end(7.0, 5.0, call="x"),
        spike_end(7.0, 6.0, call="y"),
    ]
    assert feed(engine, calm + agent + mixed) == []
    # no call.start seen (a rule engine attached mid-call): state starts lazily
    assert [h["rule"] for h in feed(engine, [spike_start(1.0, delay=4.0, call="late")])] == [
        "lasting"
    ]


def test_hints_validate_against_the_event_schema() -> None:
    import tomllib

    validator = jsonschema.Draft202012Validator(load_schema())
    engine = RuleEngine(parse_rules(tomllib.loads(TEST_RULES)))
    seq = EventSequencer()
    events = [
        start(),
        update(1.0, arousal=0.9),
        update(1.5, arousal=0.9),
        update(2.0, arousal=0.9),
        update(2.5, arousal=0.9),
        spike_start(3.0, delay=3.5),
        spike_start(9.0),
        end(12.0, -0.8),
    ]
    hints = [h for e in events for h in engine.update(e)]
    assert {h.payload["condition"] for h in hints} == {
        "high_arousal_at_start",
        "spike_lasting",
        "repeated_spikes",
        "ended_upset",
    }
    for h in hints:
        validator.validate(json.loads(to_json(seq.stamp(h))))
    bad = {**json.loads(to_json(seq.stamp(hints[0]))), "action": "panic"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


# -- webhook --------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []  # scripted answers, then 200
    received: ClassVar[list[tuple[dict[str, Any], str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.received.append((json.loads(body), self.headers.get("Authorization", "")))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"statuses": [], "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hints", handler
    finally:
        server.shutdown()
        server.server_close()


def hint_dict(n: int) -> dict[str, Any]:
    return {
        "v": 1,
        "seq": n,
        "type": "route.hint",
        "call_id": "c",
        "party": "customer",
        "t": float(n),
    }


def test_webhook_retries_until_delivered(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    handler.statuses[:] = [503, 429]  # two failures, then OK
    sender = WebhookSender(url, token="hook-secret", retries=3, backoff_s=0.01)
    sender.start()
    sender.offer(hint_dict(1))
    sender.offer(hint_dict(2))
    sender.stop(timeout_s=10)
    assert [body["seq"] for body, _ in handler.received] == [1, 2]
    assert {auth for _, auth in handler.received} == {"Bearer hook-secret"}
    assert (sender.delivered, sender.failed, sender.dropped) == (2, 0, 0)


def test_webhook_gives_up_on_client_errors_and_dead_servers(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    handler.statuses[:] = [400]
    sender = WebhookSender(url, retries=3, backoff_s=0.01)
    sender.start()
    sender.offer(hint_dict(1))  # 400: not retried
    sender.offer(hint_dict(2))
    sender.stop(timeout_s=10)
    assert [body["seq"] for body, _ in handler.received] == [2]
    assert (sender.delivered, sender.failed) == (1, 1)

    dead = WebhookSender(
        "http://127.0.0.1:9/nothing-listens", retries=2, backoff_s=0.01, timeout_s=1
    )
    dead.start()
    dead.offer(hint_dict(3))
    t0 = time.monotonic()
    dead.stop(timeout_s=10)
    assert (dead.delivered, dead.failed) == (0, 1)
    assert time.monotonic() - t0 < 5


def test_webhook_queue_is_bounded_and_drops_the_oldest(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    sender = WebhookSender(url, max_queue=3)  # not started: everything waits
    for n in range(1, 6):
        sender.offer(hint_dict(n))
    assert sender.dropped == 2 and sender.pending == 3
    sender.start()
    sender.stop(timeout_s=10)
    assert [body["seq"] for body, _ in handler.received] == [3, 4, 5]
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        WebhookSender("ftp://example.org/x")


# -- config and command line -----------------------------------------------------------------


def test_privacy_and_routing_settings_from_env_and_file(tmp_path: Path) -> None:
    assert ServeParams().analyze_agent is False
    assert load_serve_params(env={"EMOTION_ENGINE_ANALYZE_AGENT": "false"}).analyze_agent is False
    assert load_serve_params(env={"EMOTION_ENGINE_ANALYZE_AGENT": "true"}).analyze_agent is True
    config = tmp_path / "serve.toml"
    config.write_text(
        'analyze_agent = true\nrouting_rules = "off"\nroute_webhook_url = "http://h/x"\n'
    )
    params = load_serve_params(config_file=str(config), env={})
    assert (params.analyze_agent, params.routing_rules, params.route_webhook_url) == (
        True,
        "off",
        "http://h/x",
    )
    routing = Routing.from_params(params)
    assert routing.engine is None and routing.webhook is not None
    with pytest.raises(ConfigError, match="rules file not found"):
        Routing.from_params(replace(params, routing_rules=str(tmp_path / "missing.toml")))


def run_rules_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main(parser.parse_args(argv))


def test_rules_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_rules_cli(["--default"]) == 0
    assert capsys.readouterr().out == DEFAULT_RULES_TOML
    assert run_rules_cli([]) == 0
    assert "built-in rules: 5 rule(s) OK" in capsys.readouterr().out
    rules = tmp_path / "r.toml"
    rules.write_text(TEST_RULES)
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(json.dumps(e) for e in [start(), spike_start(1.0, delay=3.0), end(9.0, -0.9)])
    )
    assert run_rules_cli([str(rules), "--events", str(events)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rule"] for h in out] == ["lasting", "upset"]
    rules.write_text(TEST_RULES.replace('"escalate"', '"panic"', 1))
    assert run_rules_cli([str(rules)]) == 1
    assert "action must be one of" in capsys.readouterr().err


# -- through the server -------------------------------------------------------------------------

SERVE_RULES = """
version = 1
[[rules]]
name = "any-anger"
when = "spike_lasting"
min_duration_s = 0.0
action = "leave_script"
skill = "empathy"
priority = 2
reason = "{party} angry"
[[rules]]
name = "always-callback"
when = "ended_upset"
max_end_valence = 1.0
action = "offer_callback"
priority = 1
reason = "ended {end_emotion}"
"""


@pytest.mark.slow
def test_serve_publishes_hints_posts_them_and_skips_the_agent(
    model: EmotionModel,
    call_pcm: NDArray[np.int16],
    tmp_path: Path,
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    rules = tmp_path / "rules.toml"
    rules.write_text(SERVE_RULES)
    params = ServeParams(
        host="127.0.0.1",
        port=0,
        rtp_port=-1,
        audiosocket_port=-1,
        tick_s=0.05,
        routing_rules=str(rules),
        route_webhook_url=url,
    )
    stereo = np.stack([call_pcm, call_pcm[::-1].copy()])
    validator = jsonschema.Draft202012Validator(load_schema())

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        service = EngineService(engine=Engine(model=model), tick_s=params.tick_s)
        server = EngineServer(params=params, service=service)
        urls = (await server.start()).urls()
        try:
            async with subscribe(urls["events"]) as ws:
                await stream_l16(
                    urls["l16"], pcm=stereo, sample_rate=8000, call_id="hinted", speed=None
                )
                events = await collect_until(ws, count=1, timeout_s=60)
                events += await collect_until(ws, types=("route.hint",), count=1, timeout_s=10)
            metrics = service.metrics.render()
        finally:
            await server.stop()  # flushes the webhook
        return events, metrics

    events, metrics = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    # privacy default: the agent channel never reached the engine
    assert {e["party"] for e in events} == {"customer"}
    assert "emotion_engine_chunks_not_analysed_total" in metrics
    assert "emotion_engine_route_hints_total 2" in metrics.replace(".0", "")
    hints = [e for e in events if e["type"] == "route.hint"]
    assert [h["rule"] for h in hints] == ["any-anger", "always-callback"]
    by_seq = {e["seq"]: e for e in events}
    # each hint comes right after the event that caused it
    assert by_seq[hints[0]["seq"] - 1]["type"] == "emotion.spike"
    assert by_seq[hints[1]["seq"] - 1]["type"] == "call.end"
    for h in hints:
        validator.validate(h)
    assert [body for body, _ in handler.received] == [json.loads(to_json(h)) for h in hints]
