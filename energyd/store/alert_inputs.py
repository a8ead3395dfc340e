"""What the alert rules read besides readings: hourly energy (rollups, and the air stations'
hours for compressors without a counter of their own) and the statements a reconciliation
rule compares with the meter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.store.sqlite import Store


@dataclass(frozen=True, slots=True)
class StoredStatement:
    id: int
    account: str
    period_start: int
    period_end: int
    energy_kwh: float
    supplier: str | None
    document: str | None


@dataclass(frozen=True, slots=True)
class MeteredHour:
    """An hourly rollup as the reconciliation reads it; `kwh_split` is the rollup's split
    of its kWh by source (the metered part of an hour with a gap), when it has one."""

    device: str
    hour: int
    mwh: float
    source: str
    coverage: float
    kwh_split: Any


class AlertInputs:
    def __init__(self, store: Store):
        self._store = store

    def hourly_kwh(self, devices: list[str], start_ms: int, end_ms: int, *,
                   skip_sources: Collection[str] = ()) -> dict[str, dict[int, float]]:
        """kWh per device and hour in [start_ms, end_ms) from the rollups, leaving out the
        rollups of `skip_sources`; a device with no rollup at all there is taken from the air
        stations' hours."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        if not devices:
            return out
        marks = ",".join("?" * len(devices))
        for device, hour, mwh, source in self._store.execute(
                f"SELECT device, hour, mwh, source FROM rollups WHERE device IN ({marks}) "
                "AND hour >= ? AND hour < ?", (*devices, start_ms, end_ms)):
            if source not in skip_sources:
                out[device][hour] = mwh * 1000.0
        missing = [d for d in devices if d not in out]
        if missing:
            marks = ",".join("?" * len(missing))
            for device, hour, kwh in self._store.execute(
                    f"SELECT device, hour, kwh FROM air_hourly WHERE device IN ({marks}) "
                    "AND hour >= ? AND hour < ?", (*missing, start_ms, end_ms)):
                out[device][hour] = kwh
        return out

    def statements_overlapping(self, start_ms: int, end_ms: int) -> list[StoredStatement]:
        """Statements in force (not replaced) whose period overlaps [start_ms, end_ms)."""
        return [StoredStatement(*row) for row in self._store.execute(
            "SELECT id, account, period_start, period_end, energy_kwh, supplier, document "
            "FROM invoices WHERE period_start < ? AND period_end > ? "
            "AND replaced_by IS NULL", (end_ms, start_ms))]

    def metered_hours(self, devices: list[str], start_ms: int, end_ms: int
                      ) -> list[MeteredHour]:
        if not devices:
            return []
        marks = ",".join("?" * len(devices))
        return [MeteredHour(d, h, mwh, src, cov, json.loads(split) if split else None)
                for d, h, mwh, src, cov, split in self._store.execute(
                    f"SELECT device, hour, mwh, source, coverage, json_extract(detail, '$.kwh') "
                    f"FROM rollups WHERE device IN ({marks}) AND hour >= ? AND hour < ?",
                    (*devices, start_ms, end_ms))]

    def accepted_statements(self) -> set[int]:
        """Statements a person accepted as they stand."""
        return {sid for (sid,) in self._store.execute(
            "SELECT DISTINCT statement FROM statement_acceptances")}
