"""DL/T 645 acquisition: one owner per bus (serial port, or serial server host:port).

Every enabled dlt645 device is grouped by `Dlt645Options.link`; each group gets a
`BusOwner`, the Modbus `LinkOwner` (daemon/polling.py) with a DL/T 645 link and meter
pollers in place of the Modbus ones: the same ticks, queue (a healthy meter waits at most
for the one request on the wire, whatever the number of silent meters), backoff, utilisation
and logging on the way into failure and on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from typing import Any

from energyd.config.schema import Device
from energyd.daemon.context import Component, Context
from energyd.daemon.polling import LATENESS_SAMPLES, DeviceState, LinkOwner
from energyd.drivers.dlt645.link import BusSettings, Dlt645Link, MeterPoller
from energyd.drivers.modbus import PollResult

log = logging.getLogger(__name__)


class BusOwner(LinkOwner):
    """Owns one DL/T 645 bus: one connection, one queue, every meter on it."""

    def __init__(self, ctx: Context, link: str, devices: list[Device]):
        # LinkOwner.__init__ reads Modbus options; the state it sets up is set here instead
        self.ctx = ctx
        self.link_id = link
        self.name = f"energyd[{link}].poll"
        self.devices = devices
        first = devices[0].dlt645
        self.settings = BusSettings.from_options(first)  # type: ignore[assignment]
        for d in devices[1:]:
            o = d.dlt645
            assert o is not None and first is not None
            if (o.baudrate, o.parity, o.bytesize, o.stopbits) != (
                    first.baudrate, first.parity, first.bytesize, first.stopbits):
                log.warning("%s: %s sets other serial parameters than %s; one bus has one "
                            "setting, %s's is used", link, d.name, devices[0].name,
                            devices[0].name)
        self.states = [
            DeviceState(d, MeterPoller.from_device(d, ctx.clock),  # type: ignore[arg-type]
                        max(ctx.clock.real_seconds(d.interval), 0.001))
            for d in devices
        ]
        self.lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self.polls = 0
        self.ticks = 0
        self._queue: asyncio.PriorityQueue[tuple[bool, int, DeviceState]] = (
            asyncio.PriorityQueue())
        self._order = itertools.count()
        self._link: Any = None
        self._silent_in_row = 0
        self._stopping = False
        self._busy: deque[tuple[float, float]] = deque()
        self._busy_since = time.monotonic()
        self._reading_since: float | None = None
        self._busy_checked = self._busy_since
        self._busy_warned = False
        self._busy_metric = ctx.metrics.link_busy.labels(link)
        self._readings: list[Any] = []
        self._polled: list[tuple[str, int, str | None]] = []

    async def run(self) -> None:
        async with Dlt645Link(self.settings) as link:  # type: ignore[arg-type]
            self._link = link
            worker = asyncio.create_task(self._worker(), name=f"{self.name}.worker")
            ticks = asyncio.create_task(self._ticks(), name=f"{self.name}.ticks")
            self.ctx.health[self.name] = self.health
            try:
                await asyncio.Event().wait()
            finally:
                self._stopping = True
                ticks.cancel()
                worker.cancel()
                for task in (worker, ticks):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await asyncio.sleep(0)  # the last poll's decoding, queued by the worker
                self._hand_over()
                self.ctx.health.pop(self.name, None)

    async def read(self, st: DeviceState) -> PollResult:
        link = self._link
        late = max(0.0, time.monotonic() - st.polled_slot)
        self.lateness.append(late)
        st.lateness.append(late)
        started = self._reading_since = time.monotonic()
        try:
            return await st.poller.read(link)  # failures come back per identifier
        finally:
            ended = time.monotonic()
            self._reading_since = None
            self._busy.append((ended, ended - started))
            self._busy_metric.inc(ended - started)

    def _account(self, st: DeviceState, result: PollResult) -> None:
        name = st.device.name
        opts = st.device.dlt645
        assert opts is not None
        reason = result.reason
        if reason in ("timeout", "connection"):
            st.backoff = min(max(st.backoff * 2, st.interval_wall),
                             self.ctx.clock.real_seconds(opts.backoff_max))
            st.not_before = time.monotonic() + st.backoff
            if st.failing is None:
                log.warning("%s (meter %s on %s): %s; backing off", name, opts.address,
                            self.link_id, result.error)
            st.failing = reason
            self._silent_in_row += 1
            # every meter silent: the serial server or the port is gone; start afresh
            if self._silent_in_row >= len(self.states) + 2 and self._link is not None:
                self._link.close()
                self._silent_in_row = 0
            return
        self._silent_in_row = 0
        st.backoff = 0.0
        st.not_before = 0.0
        if st.failing is not None:
            log.info("%s (meter %s on %s): answering again", name, opts.address, self.link_id)
            st.failing = None
        new = {f.block for f in result.failures} - st.refused
        if new:
            log.warning("%s: %s", name, "; ".join(str(f) for f in result.failures
                                                  if f.block in new))
            st.refused |= new

    def health(self) -> dict[str, Any]:
        out = super().health()
        for st in self.states:
            out["devices"][st.device.name]["unit"] = None
            out["devices"][st.device.name]["address"] = (
                st.device.dlt645.address if st.device.dlt645 else None)
            # identifiers the meter said it does not have, not asked until a re-probe
            out["devices"][st.device.name]["set_aside"] = sorted(st.poller.set_aside)
        return out


def group_by_bus(devices: list[Device]) -> dict[str, list[Device]]:
    buses: dict[str, list[Device]] = {}
    for d in devices:
        if d.enabled and d.driver == "dlt645" and d.dlt645 is not None:
            buses.setdefault(d.dlt645.link, []).append(d)
    return buses


def build(ctx: Context) -> list[Component]:
    return [BusOwner(ctx, bus, devs) for bus, devs in group_by_bus(ctx.config.devices).items()]
