"""The durable local store: SQLite in WAL mode.

A reading is durable once `commit_batch` (the daemon's committer process), `insert_readings`
or an import's transaction has returned: the database runs with `synchronous=FULL`, so a
commit survives a crash or a power cut. Writers batch: one transaction per flush, not per
reading. One connection serves the process, guarded by a lock, so the asyncio loop may call
it through `asyncio.to_thread`; other processes (`energyd status`, `export`) read
concurrently, which WAL allows.

Lifecycle: `Store.open(path)` or `with Store.open(path) as store:`; `close()` is idempotent.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from energyd.errors import StoreError
from energyd.model import QUANTITIES, Quality, Reading, from_ms, to_ms
from energyd.store.schema import MIGRATIONS, SCHEMA_VERSION

READINGS = "readings"
ROLLUPS = "rollups"
ALERTS = "alerts"
AIR = "air_hourly"
STREAMS = (READINGS, ROLLUPS, ALERTS, AIR)


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as the store holds it: `id` orders insertion and is what sinks follow."""

    id: int
    time_ms: int
    device: str
    quantity: str
    value: float
    quality: int

    def to_reading(self) -> Reading:
        return Reading(from_ms(self.time_ms), self.device, self.quantity, self.value,
                       Quality(self.quality))


@dataclass(frozen=True, slots=True)
class Backlog:
    count: int
    oldest_ms: int | None  # reading time of the oldest unsent item


_series_of = itemgetter(0)


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path, quota: int | None):
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.quota = quota
        self.state = State.OPEN
        self._series: dict[tuple[str, str], int] = {}
        self._series_names: dict[int, tuple[str, str]] = {}
        self._load_series()

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, quota: int | None = None,
             must_exist: bool = False) -> Store:
        """Open (and create or migrate) the store. `must_exist` is for commands that only
        look: they should say there is no store rather than leave an empty one behind."""
        path = Path(path)
        if must_exist and not path.exists():
            raise StoreError(f"{path}: no store here yet (has energyd run with this config?)")
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            _migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from None
        return cls(conn, path, quota)

    def close(self, *, checkpoint: bool = True) -> None:
        with self._lock:
            if self.state is State.CLOSED:
                return
            self.state = State.CLOSED
            # another process may be reading; the next open checkpoints then
            if checkpoint:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.state is State.CLOSED:
            raise StoreError(f"{self.path}: the store is closed")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                self.invalidate_series_cache()
                raise
            else:
                self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Read query for the layers above (accounting, alerts, status)."""
        with self._lock:
            self._check_open()
            return self._conn.execute(sql, params).fetchall()

    def iterate(self, sql: str, params: Sequence[Any] = (), batch: int = 10000) -> Iterator[tuple]:
        """Stream a large read (an export, an evidence file) on a connection of its own, so
        memory stays flat and the writer is not held up meanwhile."""
        self._check_open()
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            cur = conn.execute(sql, params)
            while rows := cur.fetchmany(batch):
                yield from rows
        finally:
            conn.close()

    # --- series -------------------------------------------------------------------------

    def _load_series(self) -> None:
        for sid, device, quantity in self._conn.execute("SELECT id, device, quantity FROM series"):
            self._series[(device, quantity)] = sid
            self._series_names[sid] = (device, quantity)

    def series_id(self, device: str, quantity: str, conn: sqlite3.Connection | None = None) -> int:
        key = (device, quantity)
        sid = self._series.get(key)
        if sid is None:
            with self._lock:  # outside a transaction: a commit of its own (new series are rare)
                self._check_open()
                c = conn or self._conn
                c.execute("INSERT OR IGNORE INTO series (device, quantity) VALUES (?, ?)", key)
                sid = c.execute(
                    "SELECT id FROM series WHERE device = ? AND quantity = ?", key
                ).fetchone()[0]
                self._series[key] = sid
                self._series_names[sid] = key
        return sid

    @property
    def known_series(self) -> dict[tuple[str, str], int]:
        """(device, quantity) -> series id of every series this store has seen; a lookup
        needs no lock (a miss only means: ask `series_id()`). Not to be changed."""
        return self._series

    def series(self) -> list[tuple[str, str]]:
        return sorted(self._series)

    # --- readings -----------------------------------------------------------------------

    def insert_readings(self, readings: Iterable[Reading]) -> int:
        """Commit `readings` in one transaction; returns how many were new."""
        return self.commit_batch(self.series_rows(readings), ())

    def series_rows(self, readings: Iterable[Reading]) -> list[tuple[int, int, float, int]]:
        """(series id, time ms, value, quality) for each reading; new series are created."""
        if not isinstance(readings, list):
            readings = list(readings)
        known = self._series
        try:
            # the daemon's hot path: one tuple per reading, no intermediate objects
            return [(known[(r.device, r.quantity)], to_ms(r.time), r.value, int(r.quality))
                    for r in readings]
        except KeyError:
            pass
        missing = {(r.device, r.quantity) for r in readings} - known.keys()
        with self.transaction() as conn:  # a new device's series in one commit, not one each
            for device, quantity in sorted(missing):
                self.series_id(device, quantity, conn)
        return self.series_rows(readings)

    def commit_batch(self, rows: list[tuple[int, int, float, int]],
                     polls: Iterable[tuple[str, int, str | None]]) -> int:
        """One flush of the daemon: `series_rows()` rows and the polls that read them, in one
        transaction (one sync to disk). Returns how many readings were new."""
        # A flush holds many polls of each device: in series order (a stable sort keeps each
        # series' readings in the order they were read) consecutive rows land in the same
        # index leaf, which roughly halves SQLite's work per reading. The order only speeds
        # the insert, so sorting on the series id alone (an int key) is enough, at half the
        # cost of comparing whole rows.
        rows.sort(key=_series_of)
        with self.transaction() as conn:
            inserted = self.insert_series_rows(conn, rows) if rows else 0
            self._record_polls(conn, polls)
        return inserted

    def insert_rows(self, conn: sqlite3.Connection,
                    rows: Iterable[tuple[int, str, str, float, int]]) -> int:
        """Insert (time_ms, device, quantity, value, quality) rows inside `transaction()`;
        returns how many were new."""
        known = self._series
        params = [((known.get((device, quantity)) or self.series_id(device, quantity, conn)),
                   t, v, q) for t, device, quantity, v, q in rows]
        return self.insert_series_rows(conn, params)

    def insert_series_rows(self, conn: sqlite3.Connection,
                           params: list[tuple[int, int, float, int]]) -> int:
        """Insert (series id, time ms, value, quality) rows inside `transaction()`; returns
        how many were new. For bulk paths that resolved their series ids themselves."""
        # Bulk paths (imports) arrive in time order and stay so: sorting a large batch by
        # series would cost the import its rate and split polls apart for the sinks.
        before = conn.total_changes
        # the same series and time twice is one reading: replays and re-imports are harmless
        conn.executemany(
            "INSERT INTO readings (series, time, value, quality) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (series, time) DO NOTHING", params)
        return conn.total_changes - before

    def invalidate_series_cache(self) -> None:
        """After a rollback, series created inside it no longer exist."""
        with self._lock:
            self._series.clear()
            self._series_names.clear()
            self._load_series()

    def query_readings(
        self,
        *,
        device: str | None = None,
        quantity: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        batch: int = 10000,
    ) -> Iterator[StoredReading]:
        """Readings in [start_ms, end_ms), ordered by series then time."""
        with self._lock:
            self._check_open()
            wanted = [sid for (d, q), sid in self._series.items()
                      if (device is None or d == device) and (quantity is None or q == quantity)]
        lo = start_ms if start_ms is not None else -(2**62)
        hi = end_ms if end_ms is not None else 2**62
        for sid in sorted(wanted, key=lambda s: self._series_names[s]):
            d, q = self._series_names[sid]
            after = lo - 1
            last_id = -1
            while True:
                with self._lock:
                    rows = self._conn.execute(
                        "SELECT id, time, value, quality FROM readings "
                        "WHERE series = ? AND (time > ? OR (time = ? AND id > ?)) AND time < ? "
                        "ORDER BY time, id LIMIT ?",
                        (sid, after, after, last_id, hi, batch),
                    ).fetchall()
                for rid, t, v, qual in rows:
                    yield StoredReading(rid, t, d, q, v, qual)
                if len(rows) < batch:
                    break
                after, last_id = rows[-1][1], rows[-1][0]

    def readings_after(self, position: int, limit: int) -> list[StoredReading]:
        """The next `limit` readings in insertion order after `position` (a sink's cursor)."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT id, series, time, value, quality FROM readings WHERE id > ? "
                "ORDER BY id LIMIT ?", (position, limit)).fetchall()
        names = self._series_names
        if any(r[1] not in names for r in rows):
            self.invalidate_series_cache()
        return [StoredReading(rid, t, *names[sid], v, q) for rid, sid, t, v, q in rows]

    def latest(self, device: str, quantity: str) -> StoredReading | None:
        sid = self._series.get((device, quantity))
        if sid is None:
            return None
        rows = self.execute(
            "SELECT id, time, value, quality FROM readings WHERE series = ? "
            "ORDER BY time DESC LIMIT 1", (sid,))
        return StoredReading(rows[0][0], rows[0][1], device, quantity, rows[0][2], rows[0][3]) \
            if rows else None

    def count_readings(self) -> int:
        return self.execute("SELECT count(*) FROM readings")[0][0]

    def readings_in(self, start_ms: int, end_ms: int, *, device: str | None = None,
                    by_series: bool = False) -> Iterator[tuple[int, str, str, float, int]]:
        """(time, device, quantity, value, quality) of the readings with start <= time < end,
        ordered by time (then device, quantity), or with `by_series` by device, quantity,
        time; streamed on a connection of its own (exports, evidence files)."""
        sql = ("SELECT r.time, s.device, s.quantity, r.value, r.quality FROM readings r "
               "JOIN series s ON s.id = r.series WHERE r.time >= ? AND r.time < ?")
        params: list[object] = [start_ms, end_ms]
        if device is not None:
            sql += " AND s.device = ?"
            params.append(device)
        sql += (" ORDER BY s.device, s.quantity, r.time" if by_series
                else " ORDER BY r.time, s.device, s.quantity")
        return self.iterate(sql, params)

    # --- one series, by id: what the accounting reads -----------------------------------

    def series_time_before(self, series: int, time_ms: int) -> int | None:
        """The time of the series' last reading before `time_ms`, if any."""
        return self.execute("SELECT max(time) FROM readings WHERE series = ? AND time < ?",
                            (series, time_ms))[0][0]

    def series_time_from(self, series: int, time_ms: int) -> int | None:
        """The time of the series' first reading at or after `time_ms`, if any."""
        return self.execute("SELECT min(time) FROM readings WHERE series = ? AND time >= ?",
                            (series, time_ms))[0][0]

    def series_first_time(self, series: int) -> int | None:
        return self.execute("SELECT min(time) FROM readings WHERE series = ?",
                            (series,))[0][0]

    def series_values(self, series: int, first_ms: int, last_ms: int
                      ) -> list[tuple[int, float]]:
        """(time, value) of the series' readings with first_ms <= time <= last_ms, by time."""
        return self.execute("SELECT time, value FROM readings WHERE series = ? AND time >= ? "
                            "AND time <= ? ORDER BY time", (series, first_ms, last_ms))

    # --- insertion order: what sinks and the hourly job follow ----------------------------

    def last_reading_id(self) -> int:
        """The newest reading's id, 0 in an empty store. Ids only grow (see the schema)."""
        return self.execute("SELECT coalesce(max(id), 0) FROM readings")[0][0]

    def reading_rows(self, after: int, upto: int) -> list[tuple[int, int, float]]:
        """(series id, time, value) of the readings with ids in (after, upto], in id order."""
        return self.execute("SELECT series, time, value FROM readings WHERE id > ? AND id <= ? "
                            "ORDER BY id", (after, upto))

    def earliest_by_series(self, after: int, upto: int) -> dict[int, int]:
        """series id -> the earliest time among its readings with ids in (after, upto]."""
        return dict(self.execute("SELECT series, min(time) FROM readings WHERE id > ? "
                                 "AND id <= ? GROUP BY series", (after, upto)))

    def poll_reading_ids(self, device: str, time_ms: int, after: int, upto: int) -> list[int]:
        """Ids in (after, upto] of the device's readings taken at `time_ms` (one poll)."""
        return [r[0] for r in self.execute(
            "SELECT r.id FROM readings r JOIN series s ON s.id = r.series "
            "WHERE s.device = ? AND r.time = ? AND r.id > ? AND r.id <= ? ORDER BY r.id",
            (device, time_ms, after, upto))]

    # --- sink cursors -------------------------------------------------------------------

    def cursor(self, sink: str, stream: str = READINGS) -> int:
        rows = self.execute(
            "SELECT position FROM sink_cursors WHERE sink = ? AND stream = ?", (sink, stream))
        return rows[0][0] if rows else 0

    def set_cursor(self, sink: str, stream: str, position: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sink_cursors (sink, stream, position, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink, stream) DO UPDATE SET position = excluded.position, "
                "updated = excluded.updated",
                (sink, stream, position, int(time.time() * 1000)))

    def backlog(self, sink: str, stream: str = READINGS) -> Backlog:
        position = self.cursor(sink, stream)
        if stream == READINGS:
            split = self._split_backlog(sink, position)
            if split is not None:
                return split
            count = self.execute("SELECT count(*) FROM readings WHERE id > ?", (position,))[0][0]
            oldest = self.execute(
                "SELECT min(time) FROM readings WHERE id > ? AND id <= ?",
                (position, position + 10000))[0][0] if count else None
            return Backlog(count, oldest)
        table, time_col = {ROLLUPS: ("rollups", "hour"), ALERTS: ("alerts", "started"),
                           AIR: ("air_hourly", "hour")}[stream]
        row = self.execute(
            f"SELECT count(*), min({time_col}) FROM {table} WHERE seq > ?", (position,))[0]
        return Backlog(row[0], row[1])

    def rejected_count(self, sink: str | None = None) -> int:
        if sink is None:
            return self.execute("SELECT count(*) FROM rejected")[0][0]
        return self.execute("SELECT count(*) FROM rejected WHERE sink = ?", (sink,))[0][0]

    # --- change sequence for rollups and alerts -----------------------------------------

    def next_seq(self, conn: sqlite3.Connection) -> int:
        """Inside a transaction: the next change number (rollups and alerts share it)."""
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self.execute("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    # --- device status ----------------------------------------------------------------

    @staticmethod
    def _record_polls(conn: sqlite3.Connection,
                      results: Iterable[tuple[str, int, str | None]]) -> None:
        """(device, poll time ms, error or None) for each poll since the last flush, folded
        per device first: one row update per device and flush, however fast it polls."""
        folded: dict[str, list[Any]] = {}
        for device, when, error in results:
            # [last_poll, last_success, last_error, last_error_time, polls, errors]
            f = folded.setdefault(device, [None, None, None, None, 0, 0])
            f[0] = when if f[0] is None else max(f[0], when)
            f[4] += 1
            if error is None:
                f[1] = when if f[1] is None else max(f[1], when)
            else:
                if f[3] is None or when >= f[3]:
                    f[2], f[3] = error, when
                f[5] += 1
        if folded:
            conn.executemany(
                "INSERT INTO device_status (device, last_poll, last_success, last_error, "
                "last_error_time, polls, errors) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET "
                "last_poll = max(coalesce(last_poll, 0), excluded.last_poll), "
                "last_success = coalesce(max(last_success, excluded.last_success), "
                "last_success, excluded.last_success), "
                "last_error = CASE WHEN excluded.last_error_time IS NOT NULL "
                "THEN excluded.last_error ELSE last_error END, "
                "last_error_time = coalesce(excluded.last_error_time, last_error_time), "
                "polls = polls + excluded.polls, errors = errors + excluded.errors",
                [(device, *f) for device, f in folded.items()])

    def device_status(self) -> dict[str, dict[str, Any]]:
        rows = self.execute("SELECT device, last_poll, last_success, last_error, last_error_time, "
                            "polls, errors FROM device_status")
        keys = ("last_poll", "last_success", "last_error", "last_error_time", "polls", "errors")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    # --- size, quota, retention ---------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes in use by the database (free pages excluded; they are reused first)."""
        page_count, = self.execute("PRAGMA page_count")[0]
        free, = self.execute("PRAGMA freelist_count")[0]
        page_size, = self.execute("PRAGMA page_size")[0]
        return (page_count - free) * page_size

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def enforce_quota(self, batch: int = 20000, sinks: Sequence[str] = ()) -> int:
        """Shed the oldest sheddable readings (power, voltage, current...) until under quota.

        What every sink in `sinks` has already forwarded goes first; only if that is not
        enough are unsent samples shed. Energy counters are never shed: they carry what the
        accounting signs for. Returns the number of readings shed; if only counters are
        left, the store stays over quota.
        """
        if self.quota is None:
            return 0
        shed = 0
        sheddable = [sid for (_, q), sid in self._series.items()
                     if q not in QUANTITIES or QUANTITIES[q].sheddable]
        if not sheddable:
            return 0
        marks = ",".join("?" * len(sheddable))
        target = int(self.quota * 0.9)  # leave headroom so shedding is not re-run every flush
        forwarded = min((self.cursor(s, READINGS) for s in sinks), default=None)
        for limit in ([forwarded] if forwarded is not None else []) + [2**62]:
            while self.size_bytes() > self.quota or (shed and self.size_bytes() > target):
                with self.transaction() as conn:
                    n = conn.execute(
                        f"DELETE FROM readings WHERE id IN (SELECT id FROM readings "
                        f"WHERE series IN ({marks}) AND id <= ? ORDER BY id LIMIT ?)",
                        (*sheddable, limit, batch)).rowcount
                shed += n
                if n == 0:
                    break
        return shed

    def apply_retention(self, now_ms: int, retention_ms: int, sinks: Sequence[str]) -> int:
        """Delete raw readings older than the retention that every sink has forwarded."""
        horizon = now_ms - retention_ms
        limit = min((self.cursor(s, READINGS) for s in sinks), default=None)
        with self.transaction() as conn:
            if limit is None:
                return conn.execute("DELETE FROM readings WHERE time < ?", (horizon,)).rowcount
            return conn.execute("DELETE FROM readings WHERE time < ? AND id <= ?",
                                (horizon, limit)).rowcount

    # --- sink forwarding state (energyd/sinks/forwarder.py) -------------------------------

    def sink_positions(self, sink: str) -> dict[str, int]:
        """Every cursor of `sink`, by stream name (including the forwarder's own ones)."""
        return dict(self.execute(
            "SELECT stream, position FROM sink_cursors WHERE sink = ?", (sink,)))

    def commit_sink(self, sink: str, positions: dict[str, int | None],
                    rejected: Iterable[tuple[str, int, str]] = ()) -> None:
        """Move `sink`'s cursors (None removes one) and keep the (stream, item, message)
        the server refused for good, all in one transaction: a crash leaves either the
        state before the acknowledged chunk or the state after it."""
        now = int(time.time() * 1000)
        with self.transaction() as conn:
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

    def _split_backlog(self, sink: str, head: int) -> Backlog | None:
        """The readings backlog while the forwarder sends the live tail ahead of the
        backlog: unsent are the ids in (head, readings.gap] and after readings.live."""
        positions = self.sink_positions(sink)
        gap, live = positions.get("readings.gap"), positions.get("readings.live")
        if gap is None or live is None:
            return None
        old = self.execute("SELECT count(*), min(time) FROM readings WHERE id > ? AND id <= ?",
                           (head, gap))[0]
        new = self.execute("SELECT count(*), min(time) FROM readings WHERE id > ?", (live,))[0]
        times = [t for t in (old[1], new[1]) if t is not None]
        return Backlog(old[0] + new[0], min(times) if times else None)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: the store has schema version {version}, newer than this energyd "
            f"understands ({SCHEMA_VERSION}); upgrade energyd or restore a backup")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    # executescript() would commit on its own; splitting keeps a migration atomic
    return [s.strip() for s in script.split(";") if s.strip()]
