"""One time per poll: a meter read in several blocks is one point per poll in a real InfluxDB
(deploy/influxdb/README.md), every field filled."""

from __future__ import annotations

import asyncio
from pathlib import Path

from servers import InfluxDBServer
from test_modbus_polling import Running, plant

from energyd.config.loader import parse_config
from energyd.config.profiles import device_profile
from energyd.daemon import forwarding
from energyd.daemon.app import Daemon
from energyd.drivers.modbus.link import DevicePoller
from energyd.simulators import MeterSimulator
from energyd.sinks.forwarder import backlog as sink_backlog
from energyd.store import Store


async def test_a_poll_of_several_blocks_is_one_point_with_every_field(
        tmp_path: Path, influxdb: InfluxDBServer, influxdb_database: str) -> None:
    # a profile the meter answers in several requests (its registers lie in separate ranges)
    profile = "chint_dtsu666"
    sim = await MeterSimulator(profile=profile, units=[1, 2]).start()
    try:
        text = plant(tmp_path, sim.port, [1, 2], transport="tcp", interval=0.2,
                     profile=profile) + (
            f"influxdb: {{api: v1, url: '{influxdb.url}', database: {influxdb_database}}}\n")
        config = parse_config(text, "plant.yaml")
        device = config.devices[0]
        poller = DevicePoller.from_device(device)
        assert len(poller.blocks) >= 2  # the profile takes more than one request
        quantities = {r.quantity for r in device_profile(device).registers}
        async with Running(text):  # polling only: the points are sent once polls stop
            await asyncio.sleep(2.0)
        with Store.open(tmp_path / "energyd.db") as store:
            status = store.device_status()
            polled = {d: {r.time_ms for r in store.readings.query_readings(device=d)}
                      for d in ("m1", "m2")}
        for d, times in polled.items():
            assert status[d]["errors"] == 0 and len(times) == status[d]["polls"] >= 5, (d, status)

        sender = Daemon(config, builders=[forwarding.build])
        task = asyncio.create_task(sender.run(handle_signals=False))
        try:
            await asyncio.wait_for(sender.ready.wait(), 10)
            for _ in range(200):
                assert sender.context is not None
                if sink_backlog(sender.context.store, "influxdb").count == 0:
                    break
                await asyncio.sleep(0.1)
        finally:
            sender.stop()
            await asyncio.wait_for(task, 10)

        for d, times in polled.items():
            result = influxdb.query(f"SELECT * FROM energy_reading WHERE device = '{d}'",
                                    influxdb_database, epoch="ms")
            series = result["results"][0]["series"][0]
            columns, rows = series["columns"], series["values"]
            # one point per poll, at the poll's time
            assert sorted(row[columns.index("time")] for row in rows) == sorted(times)
            for row in rows:  # and no point with half its fields empty
                point = dict(zip(columns, row, strict=True))
                assert all(point[q] is not None for q in quantities), point
    finally:
        await sim.stop()
