"""The hourly compressed-air job: specific power per compressor and per station.

Runs `accounting.rollup_delay` after every hour (ctx.scheduler.hourly) over the last few
complete hours, so late readings are taken in, and over `accounting.recompute_hours` at
start-up. Rows go to table air_hourly; a row's `seq` is bumped only when its content
changed, so the sinks forward an hour again exactly when it was recomputed differently.

Stations: a template entry (topic pattern with device_level) is a station of its own,
named after the entry (or its `mqtt.station`). Other compressors join the station named
by `mqtt.station`, or the station "air" when none is given (Modbus compressors included).
A station's row carries the station's name as device.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

from energyd.accounting.air import HOUR_MS, AirHour, compressor_hour, station_hour
from energyd.config.schema import Config
from energyd.daemon.context import Component, Context
from energyd.model import Quality, from_ms, to_ms
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)

DEFAULT_STATION = "air"
LATE_HOURS = 3  # hours recomputed on every regular run, for readings that came late
QUANTITIES = {"energy": "active_energy_import_kwh", "power": "active_power_kw",
              "flow": "flow_m3_min", "state": "compressor_state"}


def stations(config: Config) -> dict[str, list[str]]:
    """Station name -> its compressors' device names."""
    out: dict[str, list[str]] = {}
    for d in config.devices:
        if d.role != "compressor" or not d.enabled:
            continue
        if d.mqtt is not None and d.mqtt.device_level is not None:
            out.setdefault(d.mqtt.station or d.name, []).extend(d.mqtt.devices or [])
        else:
            station = d.mqtt.station if d.mqtt is not None and d.mqtt.station else DEFAULT_STATION
            out.setdefault(station, []).append(d.name)
    return out


def compute_hours(store: Store, config: Config, start_ms: int, end_ms: int) -> int:
    """(Re)compute the hours in [start_ms, end_ms) and store what changed; returns the
    number of rows written."""
    max_gap = int(config.accounting.max_interpolation_gap * 1000)
    rows: list[AirHour] = []
    for station, members in stations(config).items():
        for hour in range(start_ms - start_ms % HOUR_MS, end_ms, HOUR_MS):
            mine = []
            for device in members:
                samples = {
                    key: [(r.time_ms, r.value) for r in store.readings.query_readings(
                        device=device, quantity=q, start_ms=hour - max_gap,
                        end_ms=hour + HOUR_MS + max_gap + 1)
                          if r.quality != Quality.CLOCK_SUSPECT]  # held for review
                    for key, q in QUANTITIES.items()}
                row = compressor_hour(device, hour, max_gap_ms=max_gap, **samples)
                if row is not None:
                    mine.append(row)
            rows.extend(mine)
            total = station_hour(station, hour, members, mine)
            if total is not None:
                rows.append(total)
    return write_rows(store, rows)


def write_rows(store: Store, rows: list[AirHour]) -> int:
    """Store the hours that changed; returns how many did."""
    return store.air.write_changed(
        (r.device, r.hour_ms, r.kwh, r.m3, r.specific_power, r.loaded_share,
         json.dumps(r.detail, sort_keys=True)) for r in rows)


class AirJob:
    name = "air"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.runs = 0

    async def run(self) -> None:
        acc = self.ctx.config.accounting
        await self.compute(max(1, acc.recompute_hours))
        self.ctx.scheduler.hourly(self.tick, name="air.hourly", delay=acc.rollup_delay)
        await asyncio.Event().wait()

    async def tick(self) -> None:
        await self.compute(LATE_HOURS)

    async def compute(self, hours: int, now: datetime | None = None) -> int:
        """The `hours` complete hours before `now` (the clock's time by default)."""
        end = to_ms(now or self.ctx.clock.now())
        end -= end % HOUR_MS
        start = end - hours * HOUR_MS
        # readings taken but not yet committed belong to these hours too
        await self.ctx.writer.flush()
        changed = await asyncio.to_thread(compute_hours, self.ctx.store, self.ctx.config,
                                          start, end)
        self.runs += 1
        if changed:
            log.info("air: %d hourly rows (re)computed up to %s", changed,
                     from_ms(end).isoformat())
        return changed


def build(ctx: Context) -> list[Component]:
    if not stations(ctx.config):
        return []
    return [AirJob(ctx)]
