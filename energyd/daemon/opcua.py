"""OPC UA acquisition: one component per enabled `driver: opcua` device.

Each component owns its device's session (energyd/drivers/opcua/driver.py): it hands every
batch of readings to the store writer, keeps the device's status (a poll record per connect,
loss and poll), and shows its connection in /health and in the metrics below. A value stamped
on receipt while the gateway's clock cannot be trusted is flagged clock_suspect, as the
MQTT component does.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from prometheus_client import Counter, Gauge

from energyd.daemon.context import Component, Context
from energyd.daemon.metrics import Metrics
from energyd.drivers.opcua.driver import OpcuaSource
from energyd.model import Quality, Reading, to_ms


class OpcuaMetrics:
    def __init__(self, metrics: Metrics):
        r = metrics.registry
        self.connected = Gauge("energyd_opcua_connected",
                               "1 while the device's OPC UA session is up (and subscribed)",
                               ["device"], registry=r)
        self.losses = Counter("energyd_opcua_connection_losses",
                              "OPC UA connections lost (or not made at start)", ["device"],
                              registry=r)
        self.recoveries = Counter("energyd_opcua_reconnects",
                                  "OPC UA sessions and subscriptions re-created after a loss",
                                  ["device"], registry=r)
        self.changes = Counter("energyd_opcua_values", "OPC UA values received (data changes "
                               "or polled values)", ["device"], registry=r)
        self.refused = Counter("energyd_opcua_refused", "OPC UA values refused (bad status, "
                               "not a number)", ["device", "reason"], registry=r)


# The daemon keeps one Metrics across reloads: the OPC UA metrics are registered once in it.
_METRICS: weakref.WeakKeyDictionary[Metrics, OpcuaMetrics] = weakref.WeakKeyDictionary()


def build(ctx: Context) -> list[Component]:
    devices = [d for d in ctx.config.devices if d.driver == "opcua" and d.enabled]
    if not devices:
        return []
    metrics = _METRICS.get(ctx.metrics)
    if metrics is None:
        metrics = _METRICS[ctx.metrics] = OpcuaMetrics(ctx.metrics)
    return [OpcuaComponent(ctx, d.name, metrics) for d in devices]


class OpcuaComponent:
    def __init__(self, ctx: Context, device: str, metrics: OpcuaMetrics):
        self.ctx = ctx
        self.device = device
        self.name = f"{device}.opcua"
        self.metrics = metrics
        d = ctx.config.device(device)
        assert d.opcua is not None
        self.source = OpcuaSource(device, options=d.opcua, interval=d.interval,
                                  on_readings=self._readings, now=ctx.clock.now,
                                  on_poll=self._poll)
        self._counted = (0, 0, 0, {})
        self.interval = d.interval
        self._recorded = 0.0

    async def run(self) -> None:
        self.ctx.health[self.name] = self._health
        try:
            await self.source.run()
        finally:
            self.metrics.connected.labels(self.device).set(0)
            self.ctx.health.pop(self.name, None)

    def _readings(self, readings: list[Reading]) -> None:
        watch = self.ctx.clock_watch
        stamped = [r for r in readings if r.quality == Quality.RECEIVED]
        if stamped and watch is not None and watch.suspect(stamped[0].time) is not None:
            # a source time stands as it is; a receipt time from a suspect clock is held
            self.ctx.metrics.readings_clock_suspect.inc(len(stamped))
            readings = [r._replace(quality=Quality.CLOCK_SUSPECT)
                        if r.quality == Quality.RECEIVED else r for r in readings]
        self.ctx.writer.submit(readings)
        # a subscribed device is "polled" when its values come: recorded once per interval
        now = time.monotonic()
        if now - self._recorded >= self.interval:
            self._recorded = now
            self._poll(None)
        else:
            self._count()

    def _poll(self, error: str | None) -> None:
        self.ctx.writer.record_poll(self.device, to_ms(self.ctx.clock.now()), error)
        self._count()

    def _count(self) -> None:
        s = self.source
        losses, recoveries, changes, refused = self._counted
        m = self.metrics
        m.connected.labels(self.device).set(1 if s.connected else 0)
        if s.losses > losses:
            m.losses.labels(self.device).inc(s.losses - losses)
        if s.recoveries > recoveries:
            m.recoveries.labels(self.device).inc(s.recoveries - recoveries)
        if s.changes > changes:
            m.changes.labels(self.device).inc(s.changes - changes)
        for reason, n in s.refused.items():
            if n > refused.get(reason, 0):
                m.refused.labels(self.device, reason).inc(n - refused.get(reason, 0))
        self._counted = (s.losses, s.recoveries, s.changes, dict(s.refused))

    def _health(self) -> dict[str, Any]:
        s = self.source
        return {"endpoint": s.options.endpoint, "connected": s.connected,
                "last_error": s.last_error, "sessions": s.connects, "losses": s.losses,
                "reconnects": s.recoveries, "values": s.changes, "refused": dict(s.refused),
                "unknown_nodes": dict(s.unknown_nodes)}
