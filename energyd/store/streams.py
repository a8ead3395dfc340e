"""What a sink reads: the store's four streams as typed readers, each `after(position, n)`.

    readings     ReadingStream: (series id, time, value) by reading id; positions are ids
    rollups      TableStream of RollupRow     \\
    alerts       TableStream of AlertRow       } by change sequence (`seq`): a row recomputed
    air_hourly   TableStream of AirRow        /  differently gets a new seq and comes again

`after(position, n)` returns a Chunk: the rows after `position`, the position that covers
them (`next`, to store as the sink's cursor once the rows are acknowledged), and whether
more may follow. What a sink calls its cursors, and how many it keeps, is its own affair:
the streams take positions and give positions.
"""

from __future__ import annotations

import sqlite3
from typing import Generic, NamedTuple, TypeVar

from energyd.errors import StoreError
from energyd.store.sqlite import AIR, ALERTS, READINGS, ROLLUPS, Backlog, Store

__all__ = ["STORE_ERRORS", "TOP", "AirRow", "AlertRow", "Backlog", "Chunk", "ReadingStream",
           "RollupRow", "Streams", "TableStream"]

TOP = 2**62  # above every position the store gives out
# what the store raises when it cannot serve a read or a commit (a full disk, a lock)
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, StoreError)

Row = TypeVar("Row")


class Chunk(NamedTuple, Generic[Row]):
    rows: list[Row]
    next: int  # the position that covers `rows` (the one asked for when there are none)
    more: bool  # whether rows may follow `next` (up to the bound asked for)


class RollupRow(NamedTuple):
    seq: int
    device: str
    hour: int
    mwh: float | None
    source: str
    coverage: float | None
    tco2_location: float | None
    tco2_market: float | None
    ef_location: float | None


class AlertRow(NamedTuple):
    seq: int
    rule: str
    device: str
    state: str
    started: int
    ended: int | None
    detail: str | None


class AirRow(NamedTuple):
    seq: int
    device: str
    hour: int
    kwh: float | None
    m3: float | None
    specific_power: float | None
    loaded_share: float | None


class ReadingStream:
    """Readings in id order. Ids only grow, so a cursor moved to `next` misses nothing."""

    name = READINGS

    def __init__(self, store: Store):
        self._store = store

    def after(self, position: int, n: int, *, upto: int = TOP
              ) -> Chunk[tuple[int, int, float]]:
        """Whole polls of the readings with ids in (position, upto] until at least `n`
        are in."""
        rows, end, more = self._store.readings.reading_chunk(position, upto, n)
        return Chunk(rows, end, more)

    def count_after(self, position: int, at_least: int | None = None) -> int:
        return self._store.readings.count_after(position, at_least=at_least)

    def position_back(self, n: int, floor: int) -> int:
        """A position >= floor with at least `n` readings after it (floor if fewer)."""
        return self._store.readings.reading_id_back(n, floor)

    def pending(self, ranges: list[tuple[int, int]]) -> Backlog:
        """How many readings have ids in the (after, upto] ranges (disjoint), and the
        earliest time among the first (about) 10,000 of each: a sink's backlog, the ranges
        being what its cursors have not passed."""
        count = 0
        times = []
        for after, upto in ranges:
            n = self.count_after(after) - (self.count_after(upto) if upto < TOP else 0)
            if n > 0:
                count += n
                t = self._store.readings.oldest_after(after, upto)
                if t is not None:
                    times.append(t)
        return Backlog(count, min(times) if times else None)

    def poll_ids(self, device: str, time_ms: int, after: int, upto: int) -> list[int]:
        """The ids in (after, upto] of one poll of `device` (a point is one poll)."""
        return self._store.readings.poll_reading_ids(device, time_ms, after, upto)

    def series_names(self) -> dict[int, tuple[str, str]]:
        """series id -> (device, quantity): what a reading row's series id stands for."""
        return {sid: (device, quantity) for sid, device, quantity in
                self._store._read("SELECT id, device, quantity FROM series")}

    def readings_per_poll(self) -> float:
        """Quantities per device and poll on average (1.0 in an empty store): how many
        readings make one point."""
        return float(self._store._read(
            "SELECT coalesce(count(*) * 1.0 / count(DISTINCT device), 1.0) FROM series")[0][0])


_TABLES: dict[str, tuple[str, type]] = {
    ROLLUPS: ("SELECT seq, device, hour, mwh, source, coverage, tco2_location, tco2_market, "
              "ef_location FROM rollups WHERE seq > ? ORDER BY seq LIMIT ?", RollupRow),
    ALERTS: ("SELECT seq, rule, device, state, started, ended, detail FROM alerts "
             "WHERE seq > ? ORDER BY seq LIMIT ?", AlertRow),
    AIR: ("SELECT seq, device, hour, kwh, m3, specific_power, loaded_share FROM air_hourly "
          "WHERE seq > ? ORDER BY seq LIMIT ?", AirRow),
}


_PENDING = {ROLLUPS: ("rollups", "hour"), ALERTS: ("alerts", "started"),
            AIR: ("air_hourly", "hour")}


class TableStream(Generic[Row]):
    """Rows of a table with a change sequence, in `seq` order."""

    def __init__(self, store: Store, name: str):
        self._store = store
        self.name = name
        self._sql, self._row = _TABLES[name]

    def after(self, position: int, n: int) -> Chunk[Row]:
        rows = [self._row(*r) for r in self._store._read(self._sql, (position, n))]
        return Chunk(rows, rows[-1].seq if rows else position, len(rows) == n)

    def pending(self, position: int) -> Backlog:
        """How many rows have a seq above `position`, and the earliest time among them."""
        table, when = _PENDING[self.name]
        count, oldest = self._store._read(
            f"SELECT count(*), min({when}) FROM {table} WHERE seq > ?", (position,))[0]
        return Backlog(count, oldest)


class Streams:
    """The four streams of one store."""

    def __init__(self, store: Store):
        self.readings = ReadingStream(store)
        self.rollups: TableStream[RollupRow] = TableStream(store, ROLLUPS)
        self.alerts: TableStream[AlertRow] = TableStream(store, ALERTS)
        self.air_hourly: TableStream[AirRow] = TableStream(store, AIR)

    def tables(self) -> list[TableStream]:
        return [self.rollups, self.alerts, self.air_hourly]

    def table(self, name: str) -> TableStream:
        return {t.name: t for t in self.tables()}[name]
