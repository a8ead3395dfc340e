"""From energyd's Modbus meter simulator over a real socket, through polling and the store,
to hourly rollups: the hours equal the simulated energy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.service import Accountant
from energyd.clock import AcceleratedClock
from energyd.config.loader import parse_config
from energyd.daemon import polling, rollups
from energyd.daemon.app import Daemon
from energyd.model import to_ms
from energyd.simulators import MeterSimulator
from energyd.store import Store


def simulated_kwh(meter, a: datetime, b: datetime, step_s: float = 5.0) -> float:
    """The simulator's load integrated over [a, b) (trapezoids of `step_s`)."""
    total, t = 0.0, a
    step = timedelta(seconds=step_s)
    while t < b:
        total += (meter.power_kw(t) + meter.power_kw(t + step)) / 2 * step_s / 3600
        t += step
    return total


async def test_hours_polled_from_the_simulator_equal_the_simulated_energy(
        tmp_path: Path) -> None:
    start = datetime(2024, 3, 3, 0, 45, tzinfo=UTC)
    clock = AcceleratedClock(900, start)  # a simulated hour in 4 wall seconds
    async with MeterSimulator(profile="schneider_pm5xxx", units=[1], host="127.0.0.1", port=0,
                              clock=clock, base_kw=200.0) as sim:
        config = parse_config(f"""
site: {{name: e2e, timezone: Asia/Shanghai, grid_region: CN-East}}
storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.1}}
http: {{enabled: false}}
devices:
  - name: incomer
    role: grid_import
    driver: modbus
    interval: 30s
    profile: schneider_pm5xxx
    modbus: {{host: 127.0.0.1, port: {sim.port}, unit: 1, timeout: 1s}}
    rated_power_kw: 400
accounting: {{residual_region: CN-national, recompute_hours: 0, max_interpolation_gap: 30m,
             rollup_delay: 25m}}
""", "e2e.yaml")
        heard: list[tuple[int, int]] = []

        async def listener(a: int, b: int) -> None:
            heard.append((a, b))

        def listen(ctx):
            ctx.rollup_listeners.append(listener)
            return []

        daemon = Daemon(config, clock=clock, builders=[listen, polling.build, rollups.build])
        task = asyncio.create_task(daemon.run(handle_signals=False))
        try:
            # Start-up takes a moment of wall time, many simulated minutes: polling starts
            # well before 01:00. The job runs at :10 (25 min after start); accelerated 900
            # times, a commit every 0.1 wall seconds is 1.5 simulated minutes, so each hour's
            # last readings are in by then.
            until = start + timedelta(hours=2, minutes=50)
            while clock.now() < until:
                await asyncio.sleep(0.1)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
        meter = sim.unit(1)
    h1 = datetime(2024, 3, 3, 1, tzinfo=UTC)
    with Store.open(config.storage.path) as store:
        acc = Accountant(store, config)
        rows = acc.rows(to_ms(h1), to_ms(h1) + 2 * HOUR_MS)
        assert len(rows) == 2, rows  # both written by the daemon's hourly job
        assert (to_ms(h1), to_ms(h1) + HOUR_MS) in heard
        for r in rows:
            a = datetime.fromtimestamp(r.hour / 1000, UTC)
            expected = simulated_kwh(meter, a, a + timedelta(hours=1))
            assert r.source == "meter" and r.coverage == 1.0
            print(f"{r.hour}: {r.mwh * 1000:.4f} kWh, simulated {expected:.4f} kWh")
            assert abs(r.mwh * 1000 - expected) <= 0.001 * expected, (r.mwh, expected)
            # 2024's factor is not in the table: 2023's, carried forward, provisional
            assert r.ef_id == "CN-MEE-2023-East" and r.detail["provisional"]
