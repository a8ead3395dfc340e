"""How energyd waits before trying again: one backoff policy and one Retry-After parser.

    backoff_delay(attempt, cap, base)   exponential, "equal jitter" (or none when asked)
    Backoff                             the same, counting its own attempts
    retry_after(header)                 seconds a server asked to wait, from either form
                                        the header takes (delta-seconds or an HTTP date)

Every retrying loop (sink writes, webhook deliveries, bus owners, restarted components)
uses these, so a change of policy is made once.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from datetime import UTC

__all__ = ["Backoff", "backoff_delay", "retry_after"]


def backoff_delay(attempt: int, cap: float, base: float = 1.0, *, jitter: bool = True,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """min(cap, base * 2**attempt), and with `jitter` somewhere between half of it and all
    of it ("equal jitter"): retries of many gateways after one outage spread out, yet none
    comes back sooner than half the plain delay."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 30))
    return rng(ceiling / 2, ceiling) if jitter else ceiling


class Backoff:
    """The delays of one retrying loop: `next()` after each failure, `reset()` on success.

    `next(at_least=...)` honours a server's Retry-After: the wait is the longer of the
    two, so a throttled server is never asked again sooner than it said."""

    def __init__(self, *, base: float = 1.0, cap: float = 300.0, jitter: bool = True,
                 rng: Callable[[float, float], float] = random.uniform):
        if base <= 0 or cap <= 0:
            raise ValueError("backoff base and cap must be positive")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rng = rng
        self.attempt = 0

    def next(self, at_least: float | None = None) -> float:
        delay = backoff_delay(self.attempt, self.cap, self.base, jitter=self.jitter,
                              rng=self._rng)
        self.attempt += 1
        return max(delay, at_least or 0.0)

    def reset(self) -> None:
        self.attempt = 0


def retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header: delta-seconds ("120") or an HTTP date ("Wed, 21
    Oct 2026 07:28:00 GMT"); None when absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT, whether it says so or not
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())
