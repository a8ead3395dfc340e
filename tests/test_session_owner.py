"""The component of an owned driver (a connection per device) is the same for every such
driver: driven through drivers/contracts.py by a driver that is not OPC UA, it stores what the
session submits (holding receipt times from a suspect clock, never a device's own time),
keeps the device's status, counts in the plugin's metrics once registered, and shows the
session's /health entry while it runs.

The driver here is a small in-process one whose session ticks: what the daemon hands it is
only SessionServices.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from energyd.config.loader import parse_config
from energyd.daemon import sessions
from energyd.daemon.app import Daemon
from energyd.daemon.context import Component, Context
from energyd.daemon.metrics import Metrics
from energyd.drivers.contracts import DriverPlugin, Owned, SessionMetric, SessionServices
from energyd.model import Quality, Reading, to_ms
from energyd.store import Store

SOURCE_T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)  # the device's own clock, far from ours
TICK = 0.05


class Ticker:
    """A DeviceSession: every tick a counter stamped on receipt and a power value with the
    device's own time; one refusal counted by reason."""

    opened: list[Ticker] = []

    def __init__(self, device: Any):
        self.device = device.name
        self.ticks = 0
        self.stopped = False
        Ticker.opened.append(self)

    async def run(self, services: SessionServices) -> None:
        services.show(lambda: {"ticks": self.ticks})
        services.metric("energyd_ticker_refused", reason="garbled").inc()
        try:
            while True:
                self.ticks += 1
                now = services.clock.now()
                services.submit([
                    Reading(now, self.device, "active_energy_import_kwh", float(self.ticks),
                            Quality.RECEIVED),
                    Reading(SOURCE_T0 + timedelta(seconds=self.ticks), self.device,
                            "active_power_kw", 10.0 + self.ticks, Quality.GOOD)])
                services.record_poll(None)
                services.metric("energyd_ticker_ticks").inc()
                services.metric("energyd_ticker_up").set(1)
                await asyncio.sleep(TICK)
        finally:
            self.stopped = True


TICKER = DriverPlugin(name="ticker", owned=Owned(open_session=Ticker, metrics=(
    SessionMetric("energyd_ticker_ticks", "counter", "ticks"),
    SessionMetric("energyd_ticker_up", "gauge", "1 while up"),
    SessionMetric("energyd_ticker_refused", "counter", "refused", ("reason",)))))


def build(ctx: Context) -> list[Component]:
    assert TICKER.owned is not None
    metrics = sessions._registered(ctx.metrics, TICKER.owned)
    return [sessions.SessionComponent(ctx, TICKER, d, metrics) for d in ctx.config.devices]


def config(tmp_path: Path) -> str:
    # the devices' own options are the driver's business; these serve as any device would
    devices = "".join(f"  - {{name: t{i}, driver: modbus, profile: eastron_sdm630,"
                      f" modbus: {{host: 127.0.0.1}}}}\n" for i in (1, 2))
    return (f"storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.1}}\n"
            f"http: {{enabled: false}}\ndevices:\n{devices}")


async def test_the_component_runs_any_owned_driver_through_the_contract(
        tmp_path: Path) -> None:
    Ticker.opened.clear()
    daemon = Daemon(parse_config(config(tmp_path), "plant.yaml"), builders=[build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await asyncio.wait_for(daemon.ready.wait(), 10)
    try:
        t1, t2 = Ticker.opened
        await asyncio.sleep(0.5)
        ctx = daemon.context
        assert ctx is not None
        assert ctx.health["t1.ticker"]() == {"ticks": t1.ticks} and t1.ticks >= 5
        # then the wall clock becomes implausible: receipt times are held from now on
        watch = daemon.clock_watch
        assert watch is not None
        suspect_from = to_ms(datetime.now(UTC))
        watch.earliest_s = time.time() + 86400
        await asyncio.sleep(0.5)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    assert t1.stopped and t2.stopped
    assert "t1.ticker" not in ctx.health  # gone with its session

    sample = daemon.metrics.registry.get_sample_value
    assert sample("energyd_ticker_ticks_total", {"device": "t1"}) == t1.ticks
    assert sample("energyd_ticker_ticks_total", {"device": "t2"}) == t2.ticks
    assert sample("energyd_ticker_up", {"device": "t2"}) == 1
    assert sample("energyd_ticker_refused_total", {"device": "t1", "reason": "garbled"}) == 1
    held = sample("energyd_readings_clock_suspect_total", {})
    assert held is not None and held > 0

    with Store.open(tmp_path / "energyd.db") as store:
        status = store.device_status()["t1"]
        rows = list(store.readings.readings_in(0, 2**62))
    energy = [(t, q) for t, d, quantity, _, q in rows
              if d == "t1" and quantity == "active_energy_import_kwh"]
    power = [(t, q) for t, d, quantity, _, q in rows if d == "t1" and quantity == "active_power_kw"]
    assert status["last_success"] is not None and status["last_error"] is None
    assert len(energy) == len(power) == t1.ticks
    assert {q for t, q in energy if t < suspect_from - 200} == {Quality.RECEIVED}
    assert {q for t, q in energy if t > suspect_from + 200} == {Quality.CLOCK_SUSPECT}
    assert {q for _, q in power} == {Quality.GOOD}  # the device's own time stands
    # counted: every reading held, of both devices
    assert held == len([1 for *_, q in rows if q == Quality.CLOCK_SUSPECT])


def test_the_plugins_metrics_are_registered_once_across_generations() -> None:
    assert TICKER.owned is not None
    metrics = Metrics()
    first = sessions._registered(metrics, TICKER.owned)
    again = sessions._registered(metrics, TICKER.owned)  # a reload's build
    assert first["energyd_ticker_ticks"] is again["energyd_ticker_ticks"]
    assert set(first) == {m.name for m in TICKER.owned.metrics}
