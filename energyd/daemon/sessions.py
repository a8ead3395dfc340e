"""Owned acquisition: one component per enabled device of a driver whose devices each keep a
connection of their own (an OPC UA session; `owned` in energyd/drivers/contracts.py).

The driver's DeviceSession connects, reads and reconnects; this component gives it what
the contract lists and nothing more: the store writer (with readings stamped on receipt
under a suspect clock flagged, as the other acquisitions do), the device's status, the
plugin's metrics (registered once, kept across reloads) and its entry in /health, named
`<device>.<driver>`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from energyd.clock import Clock
from energyd.daemon.context import Component, Context
from energyd.daemon.metrics import Metrics
from energyd.drivers.contracts import DeviceSession, DriverPlugin, MetricSeries, Owned
from energyd.drivers.registry import plugins
from energyd.model import Quality, Reading, to_ms

# The daemon keeps one Metrics across reloads: each driver's metrics are registered once in it.
_METRICS: weakref.WeakKeyDictionary[Metrics, dict[str, Any]] = weakref.WeakKeyDictionary()


def _registered(metrics: Metrics, owned: Owned) -> dict[str, Any]:
    known = _METRICS.setdefault(metrics, {})
    for m in owned.metrics:
        if m.name not in known:
            kind = Counter if m.kind == "counter" else Gauge
            known[m.name] = kind(m.name, m.help, ["device", *m.labels],
                                 registry=metrics.registry)
    return known


def build(ctx: Context) -> list[Component]:
    components: list[Component] = []
    for plugin in plugins():
        if plugin.owned is None:
            continue
        devices = [d for d in ctx.config.devices if d.driver == plugin.name and d.enabled]
        if devices:
            metrics = _registered(ctx.metrics, plugin.owned)
            components += [SessionComponent(ctx, plugin, d, metrics) for d in devices]
    return components


class Services:
    """SessionServices for one device (energyd/drivers/contracts.py)."""

    def __init__(self, ctx: Context, device: str, health_name: str, metrics: dict[str, Any]):
        self._ctx = ctx
        self._device = device
        self._health_name = health_name
        self._metrics = metrics

    @property
    def clock(self) -> Clock:
        return self._ctx.clock

    def clock_suspect(self, when: datetime) -> str | None:
        watch = self._ctx.clock_watch
        return None if watch is None else watch.suspect(when)

    def submit(self, readings: list[Reading]) -> None:
        stamped = [r for r in readings if r.quality == Quality.RECEIVED]
        if stamped and self.clock_suspect(stamped[0].time) is not None:
            # a device's own time stands as it is; a receipt time from a suspect clock is held
            self._ctx.metrics.readings_clock_suspect.inc(len(stamped))
            readings = [r._replace(quality=Quality.CLOCK_SUSPECT)
                        if r.quality == Quality.RECEIVED else r for r in readings]
        self._ctx.writer.submit(readings)

    def record_poll(self, error: str | None) -> None:
        self._ctx.writer.record_poll(self._device, to_ms(self._ctx.clock.now()), error)

    def metric(self, name: str, **labels: str) -> MetricSeries:
        series: MetricSeries = self._metrics[name].labels(device=self._device, **labels)
        return series

    def show(self, health: Callable[[], dict[str, Any]]) -> None:
        self._ctx.health[self._health_name] = health

    def hide(self) -> None:
        self._ctx.health.pop(self._health_name, None)


class SessionComponent:
    """Runs one device's DeviceSession until the generation ends."""

    def __init__(self, ctx: Context, plugin: DriverPlugin, device: Any,
                 metrics: dict[str, Any]):
        assert plugin.owned is not None
        self.name = f"{device.name}.{plugin.name}"
        self.session: DeviceSession = plugin.owned.open_session(device)
        self.services = Services(ctx, device.name, self.name, metrics)

    async def run(self) -> None:
        try:
            await self.session.run(self.services)
        finally:
            self.services.hide()
