"""Hourly rollup rows: read by range, written only where they changed.

A row is a tuple in `COLUMNS` order, `detail` as the JSON text it is stored as; the
accounting turns it into its own RollupRow. A changed row gets a fresh change number (`seq`)
so the sinks forward it again; an unchanged one is not touched."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

COLUMNS = ("device", "hour", "mwh", "source", "coverage", "tco2_location", "tco2_market",
           "ef_location", "ef_id", "detail")
"""A rollup row's fields, in the order every method here takes and gives them."""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM rollups"
_VALUES = COLUMNS[2:]  # what a row holds beside its key (device, hour)
_UPSERT = (f"INSERT INTO rollups ({', '.join(COLUMNS)}, seq) "
           f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) ON CONFLICT (device, hour) "
           "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in (*_VALUES, "seq")))

RollupRecord = tuple[Any, ...]


class Rollups:
    def __init__(self, store: Store):
        self._store = store

    def first_hour(self) -> int | None:
        """The earliest hour any row is stored for."""
        return self._store._read("SELECT min(hour) FROM rollups")[0][0]

    def first_hours(self, start: int, end: int) -> dict[str, int]:
        """device -> its earliest stored hour in [start, end)."""
        return dict(self._store._read(
            "SELECT device, min(hour) FROM rollups WHERE hour >= ? AND hour < ? GROUP BY device",
            (start, end)))

    def rows(self, start: int, end: int,
             devices: Sequence[str] | None = None) -> list[RollupRecord]:
        """The rows of hours in [start, end) (of `devices` only, if given), by hour and
        device."""
        sql = _SELECT + " WHERE hour >= ? AND hour < ?"
        params: list[Any] = [start, end]
        if devices is not None:
            sql += f" AND device IN ({','.join('?' * len(devices))})"
            params += list(devices)
        return self._store._read(sql + " ORDER BY hour, device", params)

    def energy(self, start: int, end: int, devices: Sequence[str]
               ) -> list[tuple[str, int, float, str]]:
        """(device, hour, MWh, source) of `devices` for the hours in [start, end): what an
        alert rule over hourly energy reads, without the rest of each row."""
        if not devices:
            return []
        return self._store._read(
            f"SELECT device, hour, mwh, source FROM rollups WHERE device IN "
            f"({','.join('?' * len(devices))}) AND hour >= ? AND hour < ?",
            (*devices, start, end))

    def metered(self, start: int, end: int, devices: Sequence[str]
                ) -> list[tuple[str, int, float, str, float, Any]]:
        """(device, hour, MWh, source, coverage, kWh split) of `devices` for the hours in
        [start, end): what a statement is compared with. The split (the detail's `kwh`, by
        source: the metered part of an hour with a gap) is None where the row has none."""
        if not devices:
            return []
        return [(d, h, mwh, src, cov, json.loads(split) if split else None)
                for d, h, mwh, src, cov, split in self._store._read(
                    f"SELECT device, hour, mwh, source, coverage, json_extract(detail, '$.kwh') "
                    f"FROM rollups WHERE device IN ({','.join('?' * len(devices))}) "
                    "AND hour >= ? AND hour < ?", (*devices, start, end))]

    def write_changed(self, rows: Iterable[RollupRecord],
                      spans: Mapping[str, tuple[int, int]]) -> int:
        """Store `rows` where they differ from what is stored; returns how many did.
        `spans` (device -> [start, end)) are the hours recomputed: what is stored there is
        read at once; a row outside them (a later hour whose certificates moved) is
        compared alone."""
        with self._store._writing() as conn:
            stored: dict[tuple[str, int], tuple] = {}
            ranges = set(spans.values())
            if len(ranges) == 1:  # the usual case: one query for every device
                (a, b), = ranges
                for rec in conn.execute(_SELECT + " WHERE hour >= ? AND hour < ?", (a, b)):
                    stored[(rec[0], rec[1])] = tuple(rec[2:])
            else:
                for name, (a, b) in spans.items():
                    for rec in conn.execute(
                            _SELECT + " WHERE device = ? AND hour >= ? AND hour < ?",
                            (name, a, b)):
                        stored[(rec[0], rec[1])] = tuple(rec[2:])
            written = 0
            for rec in rows:
                device, hour, values = rec[0], rec[1], tuple(rec[2:])
                span = spans.get(device)
                if span is not None and span[0] <= hour < span[1]:
                    old = stored.get((device, hour))
                else:
                    got = conn.execute(_SELECT + " WHERE device = ? AND hour = ?",
                                       (device, hour)).fetchone()
                    old = tuple(got[2:]) if got else None
                if old == values:
                    continue
                conn.execute(_UPSERT, (device, hour, *values, self._store.next_seq(conn)))
                written += 1
        return written

    def restore(self, rows: Iterable[RollupRecord]) -> None:
        """Rows as a verifier's scratch store holds them (an evidence folder's): with no
        change number, since nothing forwards them."""
        with self._store._writing() as conn:
            conn.executemany(_UPSERT, [(*rec, 0) for rec in rows])
