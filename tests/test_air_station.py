"""End to end on an accelerated clock: the simulated station publishes through a real
Mosquitto, energyd stores, and its hourly job writes specific power to air_hourly."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from conftest import stored
from servers import MosquittoServer

from energyd.clock import AcceleratedClock
from energyd.config.schema import Config
from energyd.daemon.app import Daemon
from energyd.model import to_ms
from energyd.simulators.compressor import CompressorStation

START = datetime(2026, 3, 2, 9, 58, tzinfo=UTC)  # a Monday, two minutes before the hour
HOUR = to_ms(datetime(2026, 3, 2, 10, tzinfo=UTC))


async def test_hourly_specific_power_from_the_simulated_station(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path):
    clock = AcceleratedClock(3600, START)  # an hour per second
    sim = CompressorStation(broker=(mosquitto.host, mosquitto.port), station="air5",
                            compressors=3, clock=clock, rate=0.1,
                            topic_prefix=mqtt_topic_prefix, client_id=f"{mqtt_topic_prefix}-s")
    config = Config.model_validate({
        "storage": {"path": str(tmp_path / "e.db"), "flush_interval": 0.2},
        "http": {"enabled": False},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port,
                 "client_id": f"{mqtt_topic_prefix}-e"},
        "accounting": {"rollup_delay": "60s"},
        "devices": [sim.template_entry()],
    })
    daemon = Daemon(config, clock=clock)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        async with sim:
            deadline = time.monotonic() + 15
            while True:
                rows = stored(daemon.store, "SELECT device, kwh, m3, specific_power, "
                              "loaded_share, detail FROM air_hourly WHERE hour = ?", (HOUR,))
                # the hour's first run may come before the last of its readings were
                # committed (an hour is a second here); later runs take them in
                got = {r[0]: r for r in rows}
                complete = len(rows) == 4 and all(
                    got[d][3] is not None and got[d][4] is not None for d in ("air5", "air5-c1"))
                if complete or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    by = {r[0]: r[1:] for r in rows}
    assert set(by) == {"air5", "air5-c1", "air5-c2", "air5-c3"}, rows
    station = by["air5"]
    assert station[0] == pytest.approx(sum(by[c][0] for c in sim.devices))
    assert station[1] == pytest.approx(sum(by[c][1] for c in sim.devices))
    # the lead compressor runs loaded most of a production hour; 10 m3/min at ~55 kW
    lead = by["air5-c1"]
    assert lead[3] > 0.5 and 40 < lead[0] < 60 and 300 < lead[1] <= 600
    assert 5.0 < station[2] < 9.0
    assert station[2] == pytest.approx(60 * station[0] / station[1])
    assert json.loads(station[4])["compressors"] == sim.devices
