"""The store's own upkeep: disk quota, retention of raw readings, and the gauges about it.

Retention measures age on the wall clock, so it waits while that clock cannot be trusted or
has just stepped (a clock set years ahead would make every reading look expired); readings
stamped under a suspect clock are never expired (the store keeps them for review).
"""

from __future__ import annotations

import asyncio
import logging

from energyd.accounting.service import META_POSITION
from energyd.daemon.context import Component, Context
from energyd.model import to_ms
from energyd.sinks import backlog as sink_backlog
from energyd.store.sqlite import STREAMS

log = logging.getLogger(__name__)


class Housekeeping:
    name = "housekeeping"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._dropped = {"shed": 0, "thinned": 0}

    async def run(self) -> None:
        self.ctx.scheduler.every(15, self.refresh_gauges, name="store.gauges", jitter=False,
                                 first_delay=0.1)
        self.ctx.scheduler.every(300, self.upkeep, name="store.upkeep")
        await asyncio.Event().wait()

    async def refresh_gauges(self) -> None:
        await asyncio.to_thread(self._refresh_gauges)

    def _refresh_gauges(self) -> None:
        ctx = self.ctx
        writer = ctx.writer
        ctx.metrics.pending.set(writer.pending)
        for how, total in (("shed", writer.shed), ("thinned", writer.thinned)):
            if total > self._dropped[how]:
                ctx.metrics.pending_dropped.labels(how).inc(total - self._dropped[how])
                self._dropped[how] = total
        states = ctx.degraded.snapshot()
        for name in ("disk_full", "store_failing", "store_corrupt", "sink_failing", *states):
            ctx.metrics.degraded.labels(name).set(1 if name in states else 0)
        ctx.metrics.store_bytes.set(ctx.store.size_bytes())
        now = to_ms(ctx.clock.now())
        for sink in ctx.config.all_sinks:
            for stream in STREAMS:
                backlog = sink_backlog(ctx.store, sink.name, stream)
                ctx.metrics.backlog.labels(sink.name, stream).set(backlog.count)
                age = (now - backlog.oldest_ms) / 1000 if backlog.oldest_ms is not None else 0
                ctx.metrics.backlog_age.labels(sink.name, stream).set(max(0.0, age))

    async def upkeep(self) -> None:
        await asyncio.to_thread(self._upkeep)

    def _upkeep(self) -> None:
        try:
            self._shed_and_expire()
        except Exception:
            # on a full disk even deleting needs room for its journal; the writer has said
            # the disk is full already, and it is tried again at the next upkeep
            if self.ctx.degraded.active("disk_full"):
                log.debug("store upkeep skipped: the disk is full", exc_info=True)
                return
            raise

    def _shed_and_expire(self) -> None:
        ctx = self.ctx
        shed = ctx.store.enforce_quota(sinks=[s.name for s in ctx.config.all_sinks],
                                       positions=[META_POSITION])
        if shed:
            ctx.metrics.store_shed.inc(shed)
            log.warning("store over its quota: shed %d instantaneous readings "
                        "(energy counters are kept)", shed)
        watch = ctx.clock_watch
        if watch is not None and (watch.stepped_recently() or watch.suspect() is not None):
            return
        gone = ctx.store.apply_retention(
            to_ms(ctx.clock.now()), int(ctx.config.storage.retention * 1000),
            [s.name for s in ctx.config.all_sinks])
        if gone:
            log.info("retention: removed %d raw readings older than %.0f days",
                     gone, ctx.config.storage.retention / 86400)


def build(ctx: Context) -> list[Component]:
    return [Housekeeping(ctx)]
