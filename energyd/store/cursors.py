"""Where each sink is in each stream it forwards, and what servers refused for good.

A cursor is a position in a stream: a reading id for `readings` (and for any stream named
`readings.<something>`, which the quota keeps samples whole around), a change number
(`seq`) for rollups, alerts and air hours. Stream names beyond those are the sink's own: the
store keeps them without knowing what they mean.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

READINGS = "readings"
ROLLUPS = "rollups"
ALERTS = "alerts"
AIR = "air_hourly"
STREAMS = (READINGS, ROLLUPS, ALERTS, AIR)
_CHANGES = {ROLLUPS: ("rollups", "hour"), ALERTS: ("alerts", "started"),
            AIR: ("air_hourly", "hour")}  # stream -> (table, the time its backlog is dated by)


@dataclass(frozen=True, slots=True)
class Backlog:
    count: int
    oldest_ms: int | None  # reading time of the oldest unsent item


class SinkCursors:
    def __init__(self, store: Store):
        self._store = store

    def position(self, sink: str, stream: str = READINGS) -> int:
        rows = self._store._read(
            "SELECT position FROM sink_cursors WHERE sink = ? AND stream = ?", (sink, stream))
        return rows[0][0] if rows else 0

    def positions(self, sink: str) -> dict[str, int]:
        """Every cursor of `sink`, by stream name (including the sink's own ones)."""
        return dict(self._store._read(
            "SELECT stream, position FROM sink_cursors WHERE sink = ?", (sink,)))

    def move(self, sink: str, stream: str, position: int) -> None:
        with self._store._writing() as conn:
            conn.execute(
                "INSERT INTO sink_cursors (sink, stream, position, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink, stream) DO UPDATE SET position = excluded.position, "
                "updated = excluded.updated",
                (sink, stream, position, int(time.time() * 1000)))

    def commit(self, sink: str, positions: dict[str, int | None],
               rejected: Iterable[tuple[str, int, str]] = ()) -> None:
        """Move `sink`'s cursors (None removes one) and keep the (stream, item, message)
        the server refused for good, all in one transaction: a crash leaves either the
        state before the acknowledged chunk or the state after it."""
        now = int(time.time() * 1000)
        with self._store._writing() as conn:
            conn.executemany(
                "INSERT INTO rejected (sink, stream, item, message, time) VALUES (?, ?, ?, ?, ?)",
                [(sink, stream, item, message, now) for stream, item, message in rejected])
            for stream, position in positions.items():
                if position is None:
                    conn.execute("DELETE FROM sink_cursors WHERE sink = ? AND stream = ?",
                                 (sink, stream))
                else:
                    conn.execute(
                        "INSERT INTO sink_cursors (sink, stream, position, updated) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (sink, stream) DO UPDATE SET "
                        "position = excluded.position, updated = excluded.updated",
                        (sink, stream, position, now))

    def backlog(self, sink: str, stream: str = READINGS,
                split: tuple[str, str] | None = None) -> Backlog:
        """What `sink` has not sent of `stream`. `split` names the sink's two cursors of a
        readings backlog it drains behind the live tail (gap, live): while both are set,
        unsent are the ids in (position, gap] and after live."""
        position = self.position(sink, stream)
        readings = self._store.readings
        if stream == READINGS:
            if split is not None:
                mine = self.positions(sink)
                gap, live = mine.get(split[0]), mine.get(split[1])
                if gap is not None and live is not None:
                    old = readings.count_after(position) - readings.count_after(gap)
                    new = readings.count_after(live)
                    times = [t for n, after, upto in ((old, position, gap),
                                                      (new, live, 2**62))
                             if n and (t := readings.oldest_after(after, upto)) is not None]
                    return Backlog(old + new, min(times) if times else None)
            count = readings.count_after(position)
            return Backlog(count, readings.oldest_after(position) if count else None)
        table, time_col = _CHANGES[stream]
        row = self._store._read(
            f"SELECT count(*), min({time_col}) FROM {table} WHERE seq > ?", (position,))[0]
        return Backlog(row[0], row[1])

    def rejected_count(self, sink: str | None = None) -> int:
        if sink is None:
            return self._store._read("SELECT count(*) FROM rejected")[0][0]
        return self._store._read("SELECT count(*) FROM rejected WHERE sink = ?",
                                 (sink,))[0][0]
