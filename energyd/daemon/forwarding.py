"""Forwarding: one forwarder per configured sink, following its cursors in the store.

Each forwarder runs its loop in a thread of its own (influxdb-client's synchronous API and
SQLite both block), named `energyd[<sink>.forward]`. A transport that keeps the Date of the
server's last reply (`server_date`, the v1 API's) gives the clock watch a second opinion of
the time. Committed readings wake it, so data
reaches InfluxDB within a flush interval rather than a forwarding interval. Cancelling the
component stops the loop after the write in flight (at most the sink's timeout); a chunk cut
short is simply sent again next time, since the cursor moves only after the acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from energyd.alerts.episodes import SINK_REJECTED, EpisodeTracker
from energyd.daemon.context import Component, Context
from energyd.model import to_ms
from energyd.sinks.forwarder import Outcome
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)


def rejection_reporter(sink: str, store: Store, *, metrics: Any = None,
                       now_ms: Callable[[], int] | None = None,
                       tracker: EpisodeTracker | None = None) -> Callable[[Outcome], None]:
    """Where a forwarder's refused points go (its Outcome's `rejections`), in the daemon and
    in `energyd forward`: into the episode tracker (`tracker`, the daemon's one; a command
    makes its own), as one episode of rule `sink_rejected` per sink (device = the sink's
    name) that ends after an hour without a rejection."""
    episodes = tracker if tracker is not None else EpisodeTracker(store)
    clock = now_ms or (lambda: int(time.time() * 1000))

    def report(out: Outcome) -> None:
        for r in out.rejections:
            started = episodes.sink_rejected(sink, stream=r.stream, points=r.points,
                                             items=r.items, message=r.message, at_ms=clock())
            if started and metrics is not None:
                metrics.alerts.labels(SINK_REJECTED).inc()
        if not out.rejections:
            episodes.sink_quiet(sink, clock())

    return report


class ForwardingComponent:
    def __init__(self, ctx: Context, sink: Any):
        self.ctx = ctx
        self.sink = sink
        self.name = f"{sink.name}.forward"

    async def run(self) -> None:
        from energyd.sinks import for_sink

        ctx = self.ctx
        forwarder = for_sink(self.sink, ctx.config, ctx.store, metrics=ctx.metrics,
                             report=rejection_reporter(
                                 self.sink.name, ctx.store, metrics=ctx.metrics,
                                 now_ms=lambda: to_ms(ctx.clock.now()),
                                 tracker=ctx.episodes))

        def wake(count: int) -> None:
            forwarder.wake()

        thread = threading.Thread(target=forwarder.run, name=f"energyd[{self.name}]",
                                  daemon=True)
        ctx.commit_listeners.append(wake)
        ctx.health[f"sink:{self.sink.name}"] = forwarder.health
        thread.start()
        sink = self.sink.name
        try:
            seen = None
            while thread.is_alive():
                await asyncio.sleep(1.0)
                date = getattr(forwarder.transport, "server_date", None)
                if date is not None and date != seen and ctx.clock_watch is not None:
                    seen = date
                    with contextlib.suppress(TypeError, ValueError):
                        ctx.clock_watch.reference(email.utils.parsedate_to_datetime(date),
                                                  f"InfluxDB {self.sink.name!r}")
                # the forwarder logs its failure and recovery itself
                if forwarder.last_error:
                    ctx.degraded.set("sink_failing", forwarder.last_error, source=sink,
                                     quiet=True)
                else:
                    ctx.degraded.clear("sink_failing", source=sink, quiet=True)
            raise RuntimeError(f"{self.name}: the forwarding thread ended")
        finally:
            ctx.degraded.clear("sink_failing", source=sink, quiet=True)
            forwarder.stop()
            # the write in flight ends within the sink's timeout; wait off the event loop
            await asyncio.to_thread(thread.join, self.sink.timeout + 5)
            if thread.is_alive():
                # its next store call fails once the store is closed, and it ends there; the
                # chunk it holds is not acknowledged, so it is sent again after the restart
                log.warning("%s: the write in flight did not end within %.0f s",
                            self.name, self.sink.timeout + 5)
            await asyncio.to_thread(forwarder.close)
            if wake in ctx.commit_listeners:
                ctx.commit_listeners.remove(wake)
            ctx.health.pop(f"sink:{self.sink.name}", None)


def build(ctx: Context) -> list[Component]:
    return [ForwardingComponent(ctx, sink) for sink in ctx.config.all_sinks]
