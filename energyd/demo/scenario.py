"""The scenario: when the simulated plant starts, and the spike and the leak on its way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from energyd.config.schema import Config
from energyd.demo.plant import Event, Plant

SPIKE_FACTOR = 4.0
LEAK_M3_MIN = 10.0
SPIKE_AT_H, SPIKE_HOURS, LEAK_AT_H = 1.0, 1.0, 2.0
START_LOCAL = dtime(20, 0)  # production ends at 22:00: the leak runs into the night


def demo_start(now: datetime, tz: ZoneInfo) -> datetime:
    """The latest weekday 20:00 (site time) at least 12 hours before `now`."""
    latest = (now - timedelta(hours=12)).astimezone(tz)
    day = latest.date()
    while True:
        candidate = datetime.combine(day, START_LOCAL, tz)
        if candidate <= latest and candidate.weekday() < 5:
            return candidate.astimezone(UTC)
        day -= timedelta(days=1)



async def scenario(plant: Plant, config: Config, clock: Any, start: datetime) -> None:
    """The spike and the leak, at their simulated times."""
    incomer = next((d.name for d in config.devices
                    if d.role == "grid_import" and d.name in plant.meter_of), None)

    async def at(hours: float) -> None:
        await clock.sleep(max(0.0, (start + timedelta(hours=hours) - clock.now())
                              .total_seconds()))

    await at(SPIKE_AT_H)
    if incomer:
        sim, unit = plant.meter_of[incomer]
        sim.unit(unit).faults.spike = SPIKE_FACTOR
        plant.events.append(Event(clock.now(), f"spike: {incomer} draws {SPIKE_FACTOR:g}x "
                                               f"its load for an hour"))
        await at(SPIKE_AT_H + SPIKE_HOURS)
        sim.unit(unit).faults.spike = 1.0
        plant.events.append(Event(clock.now(), f"spike over: {incomer} back to normal"))
    await at(LEAK_AT_H)
    if plant.stations:
        station = plant.stations[0]
        station.inject_leak(LEAK_M3_MIN)
        plant.events.append(Event(clock.now(), f"leak: {LEAK_M3_MIN:g} m3/min at station "
                                               f"{station.station}, from now on"))


