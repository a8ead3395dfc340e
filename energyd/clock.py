"""One clock for the whole process.

Every timestamp and every wait goes through a Clock, so the demo can run a simulated plant
faster than real time and tests can step time by hand. It sits at the package's top level
because drivers stamp readings with it and the daemon schedules with it; neither owns it.

    RealClock()                         wall time
    AcceleratedClock(speed=360)         simulated time runs `speed` times faster
    ManualClock(start)                  time moves only when a test calls advance()
"""

from __future__ import annotations

import asyncio
import time
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
