"""The OPC UA driver as energyd sees it (energyd/drivers/contracts.py): an owned driver, each
device keeping a session of its own, and a one-shot read for `energyd read`.

A device's session (OpcuaSession) runs its OpcuaSource (driver.py) and turns what the source
counts into the daemon's metrics, its status and its entry in /health. asyncua is loaded only
when a device is read.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from energyd.drivers.contracts import (
    DriverPlugin,
    OneRead,
    Owned,
    SessionMetric,
    SessionServices,
)
from energyd.drivers.opcua.options import OpcuaDevice
from energyd.model import Reading

if TYPE_CHECKING:
    from energyd.drivers.opcua.driver import OpcuaSource

CONNECTED = "energyd_opcua_connected"
LOSSES = "energyd_opcua_connection_losses"
RECONNECTS = "energyd_opcua_reconnects"
VALUES = "energyd_opcua_values"
REFUSED = "energyd_opcua_refused"

METRICS = (
    SessionMetric(CONNECTED, "gauge", "1 while the device's OPC UA session is up (and "
                  "subscribed)"),
    SessionMetric(LOSSES, "counter", "OPC UA connections lost (or not made at start)"),
    SessionMetric(RECONNECTS, "counter", "OPC UA sessions and subscriptions re-created after "
                  "a loss"),
    SessionMetric(VALUES, "counter", "OPC UA values received (data changes or polled values)"),
    SessionMetric(REFUSED, "counter", "OPC UA values refused (bad status, not a number)",
                  ("reason",)),
)


class OpcuaSession:
    """One device's session as the daemon runs it (a DeviceSession). `source` is the
    driver's owner of the connection; its counts reach the metrics as they move."""

    def __init__(self, device: OpcuaDevice):
        from energyd.drivers.opcua.driver import OpcuaSource

        assert device.opcua is not None
        self.device = device.name
        self.interval = device.interval
        self._services: SessionServices | None = None
        self.source: OpcuaSource = OpcuaSource(
            device.name, options=device.opcua, interval=device.interval,
            on_readings=self._readings, now=self._now, on_poll=self._poll)
        self._counted: tuple[int, int, int, dict[str, int]] = (0, 0, 0, {})
        self._recorded = 0.0
        self._failed = False  # the last poll recorded was an error

    async def run(self, services: SessionServices) -> None:
        self._services = services
        services.show(self.health)
        try:
            await self.source.run()
        finally:
            services.metric(CONNECTED).set(0)

    def _now(self) -> Any:
        assert self._services is not None
        return self._services.clock.now()

    def _readings(self, readings: list[Reading]) -> None:
        assert self._services is not None
        self._services.submit(readings)
        self._poll(None)

    def _poll(self, error: str | None) -> None:
        """A subscribed device is "polled" when its values come or the server answers the
        watchdog: a success is recorded once per interval (of the config's clock, which a
        demo runs faster than the wall's) and at once after an error, an error each time."""
        assert self._services is not None
        if error is None:
            now = time.monotonic()
            if not self._failed and (now - self._recorded
                                     < self._services.clock.real_seconds(self.interval)):
                self._count()
                return
            self._recorded = now
        self._failed = error is not None
        self._services.record_poll(error)
        self._count()

    def _count(self) -> None:
        services = self._services
        assert services is not None
        s = self.source
        losses, recoveries, changes, refused = self._counted
        services.metric(CONNECTED).set(1 if s.connected else 0)
        if s.losses > losses:
            services.metric(LOSSES).inc(s.losses - losses)
        if s.recoveries > recoveries:
            services.metric(RECONNECTS).inc(s.recoveries - recoveries)
        if s.changes > changes:
            services.metric(VALUES).inc(s.changes - changes)
        for reason, n in s.refused.items():
            if n > refused.get(reason, 0):
                services.metric(REFUSED, reason=reason).inc(n - refused.get(reason, 0))
        self._counted = (s.losses, s.recoveries, s.changes, dict(s.refused))

    def health(self) -> dict[str, Any]:
        s = self.source
        return {"endpoint": s.options.endpoint, "connected": s.connected,
                "last_error": s.last_error, "sessions": s.connects, "losses": s.losses,
                "reconnects": s.recoveries, "values": s.changes, "refused": dict(s.refused),
                "unknown_nodes": dict(s.unknown_nodes)}


async def read_once(device: OpcuaDevice) -> OneRead:
    """One read of every node: the values as readings would hold them, the quantities whose
    node has a bad status (named by it), and a connection that failed as the one failure."""
    from energyd.clock import RealClock
    from energyd.drivers.opcua.driver import read_nodes
    from energyd.errors import DeviceError

    o = device.opcua
    assert o is not None
    title = f"{device.name} ({o.endpoint})"
    try:
        readings, bad = await read_nodes(device.name, o, RealClock().now)
    except DeviceError as exc:
        # the session's errors begin with the endpoint: it is the part that failed
        why = str(exc).removeprefix(f"{o.endpoint}: ")
        return OneRead(title=title, facts={"endpoint": o.endpoint},
                       failures=[(o.endpoint, why)])
    return OneRead(title=title, facts={"endpoint": o.endpoint, "bad": bad},
                   readings=readings, unavailable=list(bad), unavailable_as=bad)


PLUGIN = DriverPlugin(name="opcua", read_once=read_once,
                      owned=Owned(open_session=OpcuaSession, metrics=METRICS))
