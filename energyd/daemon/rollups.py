"""Accounting jobs: the hourly rollup, and recomputation of recent hours at start-up.

At start the last `accounting.recompute_hours` hours are recomputed (with whatever arrived
while energyd was down); then the job runs `accounting.rollup_delay` after every hour and
recomputes what is due (see `Accountant.run`): the hour just completed, hours touched by late
readings, hours a changed factor or certificate applies to. After each run every callback in
`ctx.rollup_listeners` is awaited with (start_ms, end_ms) of each span of hours (re)computed.

While the wall clock cannot be trusted (see energyd.clock.ClockWatch) no run is made: "now"
would put the completed hours in the wrong year. The first run once it is trusted again
does what was left, the start-up recomputation included. The hours a forward step of the
wall clock jumped over never passed for the meters: the first run after such a step starts
at the hour it landed in, instead of filling years of hours between a counter's last value
before the step and its first after it (`energyd rollup --from --to` recomputes them, should
the readings before the step prove right).

The emission-factor table is loaded when the component is built, so a broken table stops the
daemon at start-up with the file and line, instead of failing an hour later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from energyd.accounting.factors import load_factors
from energyd.accounting.rollup import iso
from energyd.accounting.service import Accountant, RecomputeResult, floor_hour
from energyd.config.schema import Config
from energyd.daemon.context import Component, Context
from energyd.daemon.reconciliation import record_reconciliation
from energyd.model import to_ms
from energyd.store.sqlite import RECOVER_HINT, corrupt
from energyd.store.writer import disk_full

log = logging.getLogger(__name__)


class Rollups:
    name = "rollups"

    def __init__(self, ctx: Context, accountant: Accountant):
        self.ctx = ctx
        self.accountant = accountant
        self._lock = asyncio.Lock()
        self._failing = False
        self._last: dict[str, object] = {}
        self._startup_due = True
        self._waiting_for_clock = False
        self._jumps_seen = ctx.clock_watch.jumps if ctx.clock_watch is not None else 0
        ctx.health["rollups"] = lambda: dict(self._last)

    async def run(self) -> None:
        # a failure is logged once and tried again at the next hour, not by restarting the
        # component (which would fail again at once, and again: a crash loop)
        with contextlib.suppress(Exception):
            await self.recompute(startup=True)
        self.ctx.scheduler.hourly(self.job, name="accounting.rollup",
                                  delay=self.ctx.config.accounting.rollup_delay)
        await asyncio.Event().wait()

    async def job(self) -> None:
        with contextlib.suppress(Exception):  # logged once by recompute()
            await self.recompute(startup=False)

    def _clock_suspect(self) -> str | None:
        watch = self.ctx.clock_watch
        reason = watch.suspect() if watch is not None else None
        if reason is not None and not self._waiting_for_clock:
            log.warning("hourly rollup waits for a trusted clock: %s", reason)
        self._waiting_for_clock = reason is not None
        return reason

    def _landed(self) -> int | None:
        """The hour (ms) the wall clock's last forward jump landed in, if it jumped since the
        last run."""
        watch = self.ctx.clock_watch
        if watch is None or watch.jumps == self._jumps_seen or watch.last_jump is None:
            return None
        self._jumps_seen = watch.jumps
        jump = watch.last_jump
        log.warning("hourly rollup: the hours from %s to %s, which the wall clock jumped "
                    "over, are not rolled up", jump.before.isoformat(timespec="seconds"),
                    jump.after.isoformat(timespec="seconds"))
        return floor_hour(to_ms(jump.after))

    async def recompute(self, *, startup: bool) -> RecomputeResult:
        if self._clock_suspect() is not None:
            self._last = {"waiting_for_clock": True}
            return RecomputeResult()
        startup, self._startup_due = startup or self._startup_due, False
        hours = self.ctx.config.accounting.recompute_hours if startup else 0
        not_before = self._landed()
        async with self._lock:
            now = to_ms(self.ctx.clock.now())
            try:
                result = await asyncio.to_thread(self._run, now, hours, not_before)
            except Exception as exc:
                if not self._failing:
                    # a full disk or a damaged file is said in a line; anything else is a
                    # fault worth its traceback
                    log.error("hourly rollup failed (%s); it is tried again next hour", exc,
                              exc_info=not (corrupt(exc) or disk_full(exc)))
                self._failing = True
                if corrupt(exc):
                    self.ctx.degraded.set("store_corrupt", f"the hourly rollup cannot read "
                                          f"the store: {exc}; {RECOVER_HINT}", quiet=True)
                raise
            if self._failing:
                log.info("hourly rollup works again")
                self._failing = False
                self.ctx.degraded.clear("store_corrupt", quiet=True)
            self._last = {"run": iso(now), "hours": [[iso(a), iso(b)] for a, b in result.ranges],
                          "changed": result.written,
                          "reconciliation_findings": len(result.findings)}
        for start, end in result.ranges:
            for listener in list(self.ctx.rollup_listeners):
                try:
                    await listener(start, end)
                except Exception:
                    log.exception("a rollup listener failed for %d..%d", start, end)
        return result


    def _run(self, now: int, hours: int, not_before: int | None) -> RecomputeResult:
        result = self.accountant.run(now, recompute_hours=hours, not_before=not_before)
        record_reconciliation(self.ctx.store, self.ctx.config, result, now,
                              tracker=self.ctx.episodes)
        return result


def preflight(config: Config) -> None:
    """Load the factor table the config names; raises ConfigError with its file and line."""
    load_factors(config.accounting.emission_factors)


def build(ctx: Context) -> list[Component]:
    return [Rollups(ctx, Accountant(ctx.store, ctx.config))]
