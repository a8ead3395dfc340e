"""Scheduling on APScheduler's AsyncIOScheduler, in the clock's time.

Intervals are given in the clock's (possibly accelerated) seconds and converted to wall
seconds. APScheduler's defaults are tuned away: a late run is still run (grace of a whole
interval, coalesced), never twice at once, and errors and misses are logged, not swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from energyd.clock import Clock

log = logging.getLogger(__name__)


class _DropCancelled(logging.Filter):
    """A job cancelled because the daemon stops is not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


logging.getLogger("apscheduler.executors.default").addFilter(_DropCancelled())

Job = Callable[[], Awaitable[None]]


class Scheduler:
    def __init__(self, clock: Clock):
        self.clock = clock
        self._aps = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self._aps.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)

    def start(self) -> None:
        """Start inside the running event loop."""
        self._aps.start()

    def shutdown(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def every(self, seconds: float, job: Job, *, name: str, jitter: bool = True,
              first_delay: float | None = None) -> None:
        """Run `job` every `seconds` of clock time; the first run is jittered within one
        interval unless `first_delay` is given, so owners do not all fire together."""
        wall = max(self.clock.real_seconds(seconds), 0.001)
        if first_delay is None:
            first_delay = random.uniform(0, min(wall, 1.0)) if jitter else 0.0
        start = datetime.now(UTC) + timedelta(seconds=first_delay)
        self._aps.add_job(job, IntervalTrigger(seconds=wall, start_date=start, timezone=UTC),
                          id=name, name=name, replace_existing=True,
                          misfire_grace_time=max(1, int(wall * 2)), next_run_time=start)

    def hourly(self, job: Job, *, name: str, delay: float = 300.0) -> None:
        """Run `job` `delay` clock-seconds after every full hour (UTC).

        On a real clock that is a cron trigger; on an accelerated one a simulated hour is a
        few wall seconds, so it becomes an interval. The job itself works out which hours are
        complete from the clock, so either trigger gives the same result.
        """
        if self.clock.speed == 1.0:
            minute, second = divmod(int(delay) % 3600, 60)
            self._aps.add_job(job, CronTrigger(minute=minute, second=second, timezone=UTC),
                              id=name, name=name, replace_existing=True,
                              misfire_grace_time=1800)
        else:
            self.every(3600, job, name=name, jitter=False,
                       first_delay=self.clock.real_seconds(delay))

    def _on_event(self, event: JobExecutionEvent) -> None:
        if isinstance(event.exception, asyncio.CancelledError):
            return
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
        elif event.exception is not None:
            log.error("job %s failed: %s", event.job_id, event.exception,
                      exc_info=(type(event.exception), event.exception, event.traceback))
