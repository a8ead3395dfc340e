"""The latest hourly rows, for views that show what the plant did lately."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store


@dataclass(frozen=True, slots=True)
class RecentRollup:
    hour: int
    device: str
    mwh: float
    source: str
    coverage: float | None
    tco2_location: float | None
    tco2_market: float | None


@dataclass(frozen=True, slots=True)
class RecentAirHour:
    hour: int
    station: str
    kwh: float | None
    m3: float | None
    specific_power: float | None
    loaded_share: float | None


class RecentHours:
    def __init__(self, store: Store):
        self._store = store

    def rollups(self, limit: int) -> list[RecentRollup]:
        """The newest hourly rollups, newest hour first, devices by name within an hour."""
        return [RecentRollup(*row) for row in self._store._read(
            "SELECT hour, device, mwh, source, coverage, tco2_location, tco2_market "
            "FROM rollups ORDER BY hour DESC, device LIMIT ?", (limit,))]

    def air_hours(self, stations: list[str], limit: int) -> list[RecentAirHour]:
        """The newest hours of these compressed-air stations, newest first."""
        if not stations:
            return []
        return [RecentAirHour(*row) for row in self._store._read(
            "SELECT hour, device, kwh, m3, specific_power, loaded_share FROM air_hourly "
            f"WHERE device IN ({','.join('?' * len(stations))}) ORDER BY hour DESC LIMIT ?",
            (*stations, limit))]
