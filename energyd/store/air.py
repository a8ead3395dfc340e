"""Compressed-air hours: a compressor's or a station's kWh, m3 and specific power per hour."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

COLUMNS = ("device", "hour", "kwh", "m3", "specific_power", "loaded_share", "detail")
"""An air hour's fields, in the order `write_changed` takes them (`detail` as JSON text)."""


def _same(old: tuple, new: tuple) -> bool:
    # a recompute's floats may differ in the last place from the stored ones: not a change
    for a, b in zip(old, new, strict=True):
        if isinstance(a, float) and isinstance(b, float):
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif a != b:
            return False
    return True


class AirHours:
    def __init__(self, store: Store):
        self._store = store

    def write_changed(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Store the rows (`COLUMNS` order) that differ from the stored ones, each with a
        fresh change number so the sinks forward it; returns how many did."""
        changed = 0
        with self._store._writing() as conn:
            for device, hour, *new in rows:
                old = conn.execute(
                    "SELECT kwh, m3, specific_power, loaded_share, detail FROM air_hourly "
                    "WHERE device = ? AND hour = ?", (device, hour)).fetchone()
                if old is not None and _same(tuple(old), tuple(new)):
                    continue
                conn.execute(
                    "INSERT INTO air_hourly (device, hour, kwh, m3, specific_power, "
                    "loaded_share, detail, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (device, hour) DO UPDATE SET kwh = excluded.kwh, "
                    "m3 = excluded.m3, specific_power = excluded.specific_power, "
                    "loaded_share = excluded.loaded_share, detail = excluded.detail, "
                    "seq = excluded.seq",
                    (device, hour, *new, self._store.next_seq(conn)))
                changed += 1
        return changed

    def kwh(self, devices: Sequence[str], start: int, end: int) -> list[tuple[str, int, float]]:
        """(device, hour, kWh) of `devices` for the hours in [start, end)."""
        if not devices:
            return []
        return self._store._read(
            f"SELECT device, hour, kwh FROM air_hourly WHERE device IN "
            f"({','.join('?' * len(devices))}) AND hour >= ? AND hour < ?",
            (*devices, start, end))
