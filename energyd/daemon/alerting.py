"""Alert evaluation and dispatch inside the daemon.

Three ways in, none of which waits on a channel:
- a rollup listener, awaited with (start_ms, end_ms) after every rollup run (the start-up
  recomputation included, which is how a spike that happened while the daemon was down is
  still reported, and one already reported is not reported again);
- a reading listener, called with each committed batch from the store writer's thread: it
  only queues the batch and wakes the component, which evaluates the live rules in a worker
  thread;
- periodic jobs on the scheduler, one per rule type that runs periodically (stale devices,
  sink backlogs).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import time
from collections.abc import Callable
from typing import Any

from energyd.alerts.dispatch import Channel, Dispatcher, LogChannel, MqttChannel, WebhookChannel
from energyd.alerts.engine import AlertEngine
from energyd.alerts.episodes import Event
from energyd.alerts.outbox import Outbox
from energyd.alerts.statements import statement_findings
from energyd.config.schema import AlertChannel, Config, Mqtt
from energyd.daemon.context import Component, Context
from energyd.model import Reading, to_ms
from energyd.sinks import backlog as sink_backlog
from energyd.store.sqlite import Store
from energyd.tls import client_context

log = logging.getLogger(__name__)


def _tls_context(broker: Mqtt) -> ssl.SSLContext | None:
    if broker.tls is None:
        return None
    tls = broker.tls
    return client_context(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                          insecure=tls.insecure)


def make_channel(spec: AlertChannel, config: Config, on_error: Any = None) -> Channel:
    if spec.type == "log":
        return LogChannel()
    if spec.type == "webhook":
        assert spec.endpoint is not None
        secret = spec.secret.get_secret_value() if spec.secret is not None else None
        return WebhookChannel(name=spec.label, url=spec.endpoint.get_secret_value(),
                              secret=secret,
                              timeout=spec.timeout, retries=spec.retries, backoff=spec.backoff,
                              backoff_max=spec.backoff_max, on_error=on_error)
    broker = spec.broker or config.mqtt or Mqtt()
    password = broker.password.get_secret_value() if broker.password is not None else None
    return MqttChannel(name=spec.label, host=broker.host, port=broker.port, topic=spec.topic,
                       client_id=f"{broker.client_id}-alerts", qos=spec.qos,
                       username=broker.username, password=password,
                       keepalive=broker.keepalive, tls_context=_tls_context(broker),
                       on_error=on_error)


def sink_backlogs(config: Config, store: Store) -> list[tuple[str, int, int | None]]:
    """Each sink's unsent readings and the oldest one's time, counted from its own cursors
    (the alerts may not import the sinks, so the daemon hands this over)."""
    out = []
    for s in config.all_sinks:
        b = sink_backlog(store, s.name)
        out.append((s.name, b.count, b.oldest_ms))
    return out


class AlertComponent:
    name = "alerts"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        config = ctx.config
        # silence measured on the monotonic clock where the wall clock can be stepped
        self.engine = AlertEngine(config, ctx.store, now_ms=lambda: to_ms(ctx.clock.now()),
                                  reconciliation=statement_findings(config, ctx.store),
                                  sink_backlogs=lambda: sink_backlogs(config, ctx.store),
                                  monotonic=time.monotonic if ctx.clock_watch else None,
                                  tracker=ctx.episodes)

        def failed(channel: str) -> None:
            ctx.metrics.alert_dispatch_failures.labels(channel).inc()

        self.dispatcher = Dispatcher([make_channel(c, config, failed)
                                      for c in config.alerts.channels], config.site.name,
                                     outbox=Outbox(ctx.store))
        self._inbox: queue.SimpleQueue[list[Reading]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        ctx.rollup_listeners.append(self.on_rollup)
        if self.engine.live_rules:
            ctx.reading_listeners.append(self.on_readings)
        ctx.health["alerts"] = self._health

    # --- ways in ---------------------------------------------------------------------

    def on_readings(self, batch: list[Reading]) -> None:
        """From the writer's thread: queue and wake, nothing more."""
        self._inbox.put(batch)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def on_rollup(self, start_ms: int, end_ms: int) -> None:
        await asyncio.to_thread(self._evaluate, self.engine.evaluate_hours, start_ms, end_ms)

    def _periodic(self, check: Callable[[], list[Event]]) -> Callable[[], Any]:
        async def job() -> None:
            await asyncio.to_thread(self._evaluate, check)
        return job

    async def _live(self, batch: list[Reading]) -> None:
        try:
            await asyncio.to_thread(self._evaluate, self.engine.on_readings, batch)
        except Exception:
            # the store refused the episode (disk full, locked): the live state moved on,
            # the next batch gives the verdict again
            if not self._failing:
                log.exception("live alert evaluation failed")
            self._failing = True
            return
        if self._failing:
            log.info("live alert evaluation works again")
            self._failing = False

    # --- running -----------------------------------------------------------------------

    def _evaluate(self, check: Callable[..., list[Event]], *args: Any) -> None:
        self._dispatch(check(*args))

    def _dispatch(self, events: list[Event]) -> None:
        """In a worker thread, as the evaluation: the outbox writes each event to the store."""
        for ev in events:
            if ev.kind == "start":
                self.ctx.metrics.alerts.labels(ev.episode.rule).inc()
        self.dispatcher.send_all([ev.payload(self.ctx.config.site.name) for ev in events])
        if events:
            self.ctx.metrics.alerts_active.set(len(self.engine.tracker.active))

    def _health(self) -> dict[str, Any]:
        active = self.engine.tracker.active
        return {"active": len(active),
                "episodes": [f"{e.rule}/{e.device}" for e in active[:20]]}

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.dispatcher.start)  # reads the outbox
        try:
            await asyncio.to_thread(self._evaluate, self.engine.retire_removed_rules)
            self.ctx.metrics.alerts_active.set(len(self.engine.tracker.active))
            for name, period, check in self.engine.periodic_jobs():
                self.ctx.scheduler.every(period, self._periodic(check), name=name)
            while True:
                if self._inbox.empty():
                    await self._wake.wait()
                self._wake.clear()
                batch: list[Reading] = []
                while not self._inbox.empty():
                    batch.extend(self._inbox.get_nowait())
                if batch:
                    await self._live(batch)
        finally:
            self._loop = None
            await asyncio.to_thread(self.dispatcher.close)


def build(ctx: Context) -> list[Component]:
    return [AlertComponent(ctx)]
