"""Counters, gauges and a histogram rendered in the Prometheus text format (0.0.4).

Kept dependency-free on purpose: a handful of series does not justify a client
library, and the text format is small and stable.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

PROCESSING_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
)


class Histogram:
    """Cumulative-bucket histogram (thread-safe: observed from the engine worker)."""

    def __init__(self, buckets: Sequence[float] = PROCESSING_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        with self._lock:
            running = 0
            for bound, n in zip(self.buckets, self.counts, strict=False):
                running += n
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"{name}_sum {self.sum:.6f}")
            lines.append(f"{name}_count {self.count}")
        return lines


class Metrics:
    """What ``GET /metrics`` reports. Gauges are read through callbacks at render time."""

    def __init__(self) -> None:
        self.chunks_total = 0
        self.audio_seconds_total = 0.0
        self.events_published_total = 0
        self.events_sent_total = 0
        self.legs_started_total = 0
        self.legs_failed_total = 0
        self.protocol_errors_total: dict[str, int] = {}
        self.rejected_connections_total: dict[str, int] = {}
        self.subscriber_disconnects_total: dict[str, int] = {}
        self.processing_seconds = Histogram()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters_fn: dict[str, tuple[str, Callable[[], float]]] = {}
        self.labelled_fns: dict[str, tuple[str, str, Callable[[], dict[str, int]]]] = {}

    def protocol_error(self, protocol: str) -> None:
        self.protocol_errors_total[protocol] = self.protocol_errors_total.get(protocol, 0) + 1

    def rejected(self, reason: str) -> None:
        self.rejected_connections_total[reason] = self.rejected_connections_total.get(reason, 0) + 1

    def subscriber_disconnected(self, reason: str) -> None:
        """Count one /v1/events connection ended, by why (``client_closed``, ``stalled``,
        ``shutdown``, ``error``)."""
        totals = self.subscriber_disconnects_total
        totals[reason] = totals.get(reason, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def counter_fn(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.counters_fn[name] = (help_text, read)

    def labelled_counter_fn(
        self, name: str, help_text: str, label: str, read: Callable[[], dict[str, int]]
    ) -> None:
        """A counter with one label, read at render time (``{label value: count}``)."""
        self.labelled_fns[name] = (help_text, label, read)

    def render(self) -> str:
        lines: list[str] = []

        def counter(name: str, help_text: str, value: float) -> None:
            lines.extend(
                [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value:g}"]
            )

        def labelled(name: str, help_text: str, label: str, values: dict[str, int]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} counter"])
            lines.extend(f'{name}{{{label}="{k}"}} {v}' for k, v in sorted(values.items()))

        for name, (help_text, read) in sorted(self.gauges.items()):
            lines.extend(
                [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
            )
        counter(
            "emotion_engine_chunks_total",
            "Audio chunks received from all ingest paths.",
            self.chunks_total,
        )
        counter(
            "emotion_engine_audio_seconds_total",
            "Seconds of call audio received (all legs).",
            self.audio_seconds_total,
        )
        counter("emotion_engine_legs_started_total", "Call legs started.", self.legs_started_total)
        counter(
            "emotion_engine_legs_failed_total",
            "Call legs ended by an error.",
            self.legs_failed_total,
        )
        counter(
            "emotion_engine_events_published_total",
            "Events produced by the engine.",
            self.events_published_total,
        )
        counter(
            "emotion_engine_events_sent_total",
            "Events sent to websocket subscribers.",
            self.events_sent_total,
        )
        for name, (help_text, read) in sorted(self.counters_fn.items()):
            counter(name, help_text, read())
        for name, (help_text, label, read_all) in sorted(self.labelled_fns.items()):
            labelled(name, help_text, label, read_all())
        labelled(
            "emotion_engine_protocol_errors_total",
            "Malformed or unexpected ingest input, by protocol.",
            "protocol",
            self.protocol_errors_total,
        )
        labelled(
            "emotion_engine_rejected_connections_total",
            "Connections refused, by reason.",
            "reason",
            self.rejected_connections_total,
        )
        labelled(
            "emotion_engine_subscriber_disconnects_total",
            "Event subscribers disconnected, by reason.",
            "reason",
            self.subscriber_disconnects_total,
        )
        lines.extend(
            self.processing_seconds.render(
                "emotion_engine_processing_seconds",
                "Wall time of one engine step (features, model, detection for every leg due).",
            )
        )
        return "\n".join(lines) + "\n"
