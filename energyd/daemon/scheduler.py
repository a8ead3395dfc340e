"""Scheduling on the monotonic clock, in the clock's time.

Intervals are given in the clock's (possibly accelerated) seconds and converted to wall
seconds, then kept on the event loop's clock, which is monotonic: a step of the wall clock
(NTP setting a gateway that booted in 2000, an operator's `date -s`) neither replays the slots
it jumped over nor stalls the schedule until the old time comes back. APScheduler 3, which
this replaces, keeps its next run times in wall time: a forward step of years made it list
every missed one-second slot (gigabytes), a backward step of minutes stopped every poll.

A job runs as a task of its own, never twice at once: a slot that comes while the previous
run still works, or that a stalled event loop let pass, is skipped and counted, never made
up (the poll owners count their own). A job's error is logged with its traceback and the
schedule goes on.

The hourly jobs are the exception that needs the wall clock: they run `delay` after each full
hour of UTC, so they look at the wall clock at least once a minute (on the monotonic clock),
and at once when told the clock stepped (`clock_stepped`), and run once when it has passed
the mark, however far it jumped; after a step back they wait for the next mark of the new
time, not of the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable

from energyd.clock import Clock

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]

HOURLY_NAP = 60.0  # wall seconds an hourly job sleeps at most before looking at the clock


class Scheduler:
    def __init__(self, clock: Clock):
        self.clock = clock
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._pending: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._started = False
        self.missed: dict[str, int] = {}  # job name -> slots skipped
        self._look_again: set[asyncio.Event] = set()  # one per hourly job

    def start(self) -> None:
        """Start inside the running event loop."""
        self._started = True
        pending, self._pending = self._pending, []
        for name, loop in pending:
            self._spawn(name, loop)

    def shutdown(self) -> None:
        """Stop scheduling and cancel the runs under way (work a job hands to a thread, such
        as a rollup's transaction, still ends there)."""
        self._started = False
        for task in [*self._loops.values(), *self._running.values()]:
            task.cancel()
        self._loops.clear()
        self._running.clear()
        self._pending.clear()

    def clock_stepped(self) -> None:
        """The wall clock stepped: hourly jobs look at it now rather than after their nap."""
        for event in self._look_again:
            event.set()

    @property
    def jobs(self) -> list[str]:
        return sorted(self._loops)

    def every(self, seconds: float, job: Job, *, name: str, jitter: bool = True,
              first_delay: float | None = None) -> None:
        """Run `job` every `seconds` of clock time; the first run is jittered within one
        interval unless `first_delay` is given, so owners do not all fire together."""
        wall = max(self.clock.real_seconds(seconds), 0.001)
        if first_delay is None:
            first_delay = random.uniform(0, min(wall, 1.0)) if jitter else 0.0
        self._add(name, lambda: self._interval(name, job, wall, first_delay))

    def hourly(self, job: Job, *, name: str, delay: float = 300.0) -> None:
        """Run `job` `delay` clock-seconds after every full hour (UTC).

        On a real clock the hour is the wall clock's; on an accelerated one a simulated hour
        is a few wall seconds, so it becomes an interval. The job itself works out which
        hours are complete from the clock, so either way gives the same result.
        """
        if self.clock.speed == 1.0:
            self._add(name, lambda: self._hourly(name, job, delay % 3600))
        else:
            self.every(3600, job, name=name, jitter=False,
                       first_delay=self.clock.real_seconds(delay))

    # --- the loops --------------------------------------------------------------------------

    def _add(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        old = self._loops.pop(name, None)
        if old is not None:  # the same name again replaces the job, as before
            old.cancel()
        if self._started:
            self._spawn(name, loop)
        else:
            self._pending = [(n, f) for n, f in self._pending if n != name]
            self._pending.append((name, loop))

    def _spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        self._loops[name] = asyncio.get_running_loop().create_task(
            loop(), name=f"energyd[scheduler].{name}")  # type: ignore[arg-type]

    async def _interval(self, name: str, job: Job, interval: float, first_delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + first_delay
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self._launch(name, job)
            due += interval
            late = loop.time() - due
            if late >= 0:  # the loop stalled past whole slots: skip them, never make up
                skipped = math.floor(late / interval) + 1
                due += skipped * interval
                self._skipped(name, skipped, "the event loop was busy")

    async def _hourly(self, name: str, job: Job, delay: float) -> None:
        def mark_after(t: float) -> float:
            mark = t - t % 3600 + delay
            return mark if mark > t else mark + 3600

        look_again = asyncio.Event()
        self._look_again.add(look_again)
        now = self.clock.now().timestamp()
        mark = mark_after(now)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(look_again.wait(),
                                           min(max(0.0, mark - now), HOURLY_NAP))
                look_again.clear()
                now = self.clock.now().timestamp()
                if now >= mark:  # once, however many marks a forward step passed
                    self._launch(name, job)
                mark = mark_after(now)  # after a step back: the new time's next mark
        finally:
            self._look_again.discard(look_again)

    def _launch(self, name: str, job: Job) -> None:
        running = self._running.get(name)
        if running is not None and not running.done():
            self._skipped(name, 1, "its previous run has not ended")
            return
        task = asyncio.get_running_loop().create_task(job(), name=f"energyd[job].{name}")
        self._running[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._running.get(name) is task:
            del self._running[name]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            log.error("job %s failed: %s", name, exc, exc_info=(type(exc), exc, exc.__traceback__))

    def _skipped(self, name: str, count: int, why: str) -> None:
        first = name not in self.missed
        self.missed[name] = self.missed.get(name, 0) + count
        # polls count their own misses; a job that keeps missing says so once, not per slot
        if first:
            log.warning("job %s skipped %d run(s): %s (counted from now on, not logged)",
                        name, count, why)
