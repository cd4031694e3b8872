"""Guards for listeners that cannot authenticate their peers (RTP, AudioSocket).

Plain state, no I/O and no clock of their own (the caller passes ``now``):

- :class:`SourceAllowList`: source networks allowed to send (``media_allow``);
- :class:`SourceRateLimit`: a token bucket per source address (new RTP legs per
  second), bounded however many sources a spoofed flood invents;
- :class:`RateLimitedLog`: one log line per cause per interval, with a count of what
  was left out, so a flood of bad packets cannot flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Iterable

from emotion_engine.errors import ConfigError

__all__ = ["RateLimitedLog", "SourceAllowList", "SourceRateLimit", "parse_networks"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str, *, setting: str) -> tuple[_Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7"`` -> networks; a bad item raises ConfigError naming
    ``setting`` and the item."""
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{setting}: {item!r} is not an address or network") from exc
    return tuple(out)


class SourceAllowList:
    """Which source hosts may send. An empty list allows every source.

    Answers are cached per host string (a few thousand at most), so checking every
    datagram costs one dict lookup, not an address parse."""

    CACHE_HOSTS = 4096

    def __init__(self, networks: Iterable[_Network] = ()) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allowed(self, host: str) -> bool:
        """Whether ``host`` (an IP address as text, IPv6 scope allowed) may send."""
        if not self.networks:
            return True
        hit = self._cache.get(host)
        if hit is not None:
            return hit
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            ok = False
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            ok = any(address in net for net in self.networks)
        if len(self._cache) >= self.CACHE_HOSTS:
            self._cache.clear()
        self._cache[host] = ok
        return ok


class SourceRateLimit:
    """A token bucket per source: ``burst`` at once, then ``rate_per_s`` sustained.

    At most ``max_sources`` buckets are kept; when more sources show up the one used
    longest ago is forgotten (it had refilled or it will be treated as a newcomer,
    which is what it would be after refilling anyway)."""

    def __init__(self, *, rate_per_s: float, burst: int, max_sources: int = 4096) -> None:
        if rate_per_s <= 0:
            raise ConfigError(f"new-leg rate must be > 0 per second, got {rate_per_s}")
        if burst < 1:
            raise ConfigError(f"new-leg burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time

    def take(self, source: str, now: float) -> bool:
        """Spend one token of ``source`` at ``now`` (seconds); False when none is left."""
        tokens, then = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate_per_s)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitedLog:
    """Logs at most one line per cause per ``interval_s``.

    The first occurrence of a cause is logged at once; later ones within the interval
    are only counted, and the next line logged for that cause says how many were left
    out (``"... (and 1099 more like it in the last 10 s)"``). :meth:`flush` logs the
    counts still pending (call it now and then, e.g. from a timer)."""

    def __init__(
        self, logger: logging.Logger, *, interval_s: float = 10.0, level: int = logging.WARNING
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.level = level
        self.lines_logged = 0
        # cause -> (time of the last line, occurrences not logged since, last message)
        self._state: dict[str, tuple[float, int, str]] = {}

    def log(self, cause: str, message: str, now: float) -> None:
        state = self._state.get(cause)
        if state is None or now - state[0] >= self.interval_s:
            skipped = state[1] if state is not None else 0
            self._emit(message, skipped)
            self._state[cause] = (now, 0, message)
            if len(self._state) > 1024:  # causes are few; a bug must not make this grow
                self._state.pop(next(iter(self._state)))
        else:
            self._state[cause] = (state[0], state[1] + 1, message)

    def flush(self, now: float) -> None:
        """Log every cause whose interval is over and that has occurrences not logged."""
        for cause, (then, skipped, message) in list(self._state.items()):
            if skipped and now - then >= self.interval_s:
                self._emit(message, skipped - 1, latest=True)
                self._state[cause] = (now, 0, message)

    def _emit(self, message: str, skipped: int, *, latest: bool = False) -> None:
        self.lines_logged += 1
        if skipped:
            self.logger.log(
                self.level,
                "%s (and %d more like it in the last %g s)",
                message,
                skipped,
                self.interval_s,
            )
        else:
            self.logger.log(self.level, "%s", message)
