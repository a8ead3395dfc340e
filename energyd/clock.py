"""One clock for the whole process.

Every timestamp and every wait goes through a Clock, so the demo can run a simulated plant
faster than real time and tests can step time by hand. It sits at the package's top level
because drivers stamp readings with it and the daemon schedules with it; neither owns it.

    RealClock()                         wall time
    AcceleratedClock(speed=360)         simulated time runs `speed` times faster
    ManualClock(start)                  time moves only when a test calls advance()

The real wall clock can be stepped under a running daemon (NTP after a boot without a
battery-backed clock, an operator's `date -s`): waits and schedules therefore run on the
monotonic clock, and a ClockWatch notices steps and says when a stamp cannot be trusted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    speed: float

    def now(self) -> datetime:
        """Current (possibly simulated) time, aware UTC."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""

    def real_seconds(self, seconds: float) -> float:
        """How many wall-clock seconds `seconds` of this clock's time take."""


class RealClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def real_seconds(self, seconds: float) -> float:
        return seconds


class AcceleratedClock:
    """Simulated time that starts at `start` and runs `speed` times faster than wall time."""

    def __init__(self, speed: float, start: datetime | None = None):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds / self.speed))

    def real_seconds(self, seconds: float) -> float:
        return seconds / self.speed


class ManualClock:
    """Time that moves only when told; sleeping advances it (tests stay deterministic)."""

    speed = 1.0

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def real_seconds(self, seconds: float) -> float:
        return 0.0


# --- trusting the wall clock ---------------------------------------------------------------

EARLIEST_PLAUSIBLE = datetime(2026, 1, 1, tzinfo=UTC)
"""No reading of this energyd can be taken before it was released: a wall clock that reads
earlier has not been set (a gateway without a battery-backed clock boots in 1970 or at its
image's build date, and NTP steps it later). Moved forward with each release."""

STEP_THRESHOLD = 1.0
"""Seconds by which the wall clock may drift from the monotonic clock between two looks
before it counts as stepped. NTP slews at most 0.5 ms a second; a step is what is left."""

STEPPED_FOR = 900.0
"""Monotonic seconds a step stays on show as a degraded state."""

JUMP = 3600.0
"""A forward step of more than this (seconds) jumped over hours that never were: the rollup
does not fill them (see energyd.daemon.rollups)."""


@dataclass(frozen=True, slots=True)
class Step:
    """The wall clock moved by `seconds` more (or less, if negative) than the monotonic one."""

    seconds: float
    before: datetime  # wall time the step started from (as extrapolated)
    after: datetime  # wall time it landed on

    def describe(self) -> str:
        way = "forward" if self.seconds > 0 else "back"
        return (f"the wall clock stepped {way} by {_span(abs(self.seconds))} "
                f"({self.before.isoformat(timespec='seconds')} -> "
                f"{self.after.isoformat(timespec='seconds')})")


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


class ClockWatch:
    """Watches the wall clock against the monotonic one, and says when it cannot be trusted.

    `look()` is called about once a second: it compares how far each clock moved since the
    last look, and returns a Step when the wall clock jumped. `suspect(when)` says why a
    time stamped from the wall clock is implausible (None when it is not): before
    EARLIEST_PLAUSIBLE, or further than `tolerance` from a server's time given through
    `reference()` (the Date of an HTTP reply, say). It keeps no clock of its own beyond the
    two functions given, so tests drive it with plain numbers.
    """

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 earliest: datetime = EARLIEST_PLAUSIBLE, tolerance: float = 300.0):
        self._wall, self._monotonic = wall, monotonic
        self.earliest_s = earliest.timestamp()
        self.tolerance = tolerance
        self.offset = self._wall() - self._monotonic()  # wall minus monotonic at the last look
        self.steps = 0
        self.last_step: Step | None = None
        self.stepped_at: float | None = None  # monotonic time of the last step
        self.jumps = 0  # forward steps of more than JUMP
        self.last_jump: Step | None = None
        # (a server's time minus the monotonic clock, the server): a step of the wall clock
        # after the server's reply leaves it right
        self._reference: tuple[float, str] | None = None

    def look(self) -> Step | None:
        wall, mono = self._wall(), self._monotonic()
        offset = wall - mono
        moved = offset - self.offset
        self.offset = offset
        if abs(moved) <= STEP_THRESHOLD:
            return None
        self.steps += 1
        self.stepped_at = mono
        self.last_step = Step(moved, _utc(wall - moved), _utc(wall))
        if moved > JUMP:
            self.jumps += 1
            self.last_jump = self.last_step
        return self.last_step

    def stepped_recently(self) -> bool:
        return (self.stepped_at is not None
                and self._monotonic() - self.stepped_at < STEPPED_FOR)

    def reference(self, server_time: datetime, source: str) -> None:
        """A server's idea of the time now (second resolution is enough)."""
        self._reference = (server_time.timestamp() - self._monotonic(), source)

    def suspect(self, when: datetime | float | None = None) -> str | None:
        """Why the wall clock's time `when` (default: now) cannot be trusted, or None."""
        t = self._wall() if when is None else (
            when.timestamp() if isinstance(when, datetime) else when)
        if t < self.earliest_s:
            return (f"the clock read {_utc(t).isoformat(timespec='seconds')}, before this "
                    f"energyd was released ({_utc(self.earliest_s).date().isoformat()})")
        if self._reference is not None:
            base, source = self._reference
            off = base + self._monotonic() - t  # the server's time now minus the stamp
            if abs(off) > self.tolerance:
                way = "behind" if off > 0 else "ahead of"
                return f"the clock is {_span(abs(off))} {way} {source}"
        return None


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)
