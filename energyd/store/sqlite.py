"""The durable local store: SQLite in WAL mode.

A reading is durable once `commit_samples` (the daemon's committer process), `insert_readings`
or an import's transaction has returned: the database runs with `synchronous=FULL`, so a
commit survives a crash or a power cut. Writers batch: one transaction per flush, not per
reading. One connection serves the process, guarded by a lock, so the asyncio loop may call
it through `asyncio.to_thread`; other processes (`energyd status`, `export`) read
concurrently, which WAL allows.

Readings are kept packed, a row per instant and set of series (energyd/store/samples.py says
how and why); the methods here take and give readings, so no layer above needs to know.

`Store` owns the connection, the caches and the writing of readings; what the layers above
read and write goes through its repositories, one module each: `store.readings`
(readings.py), `store.cursors`, `store.rollups`, `store.statements`, `store.certificates`,
`store.air`, `store.meta`, `store.episodes` and `store.outbox`. `store.atomic()` makes
their writes one transaction. The connection never leaves energyd/store/: the repositories
reach it through `_read` and `_writing`, and no SQL is written outside the package
(tests/test_no_sql_outside_store.py).

Lifecycle: `Store.open(path)` or `with Store.open(path) as store:`; `close()` is idempotent.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from energyd.errors import StoreCorrupt, StoreError
from energyd.model import QUANTITIES, Reading, to_ms
from energyd.store.air import AirHours
from energyd.store.allocations import CertificateAllocations
from energyd.store.certificates import Certificates
from energyd.store.cursors import (  # noqa: F401 (the stream names are imported from here too)
    AIR,
    ALERTS,
    READINGS,
    ROLLUPS,
    STREAMS,
    Backlog,
    SinkCursors,
)
from energyd.store.episodes import Episodes
from energyd.store.meta import Meta
from energyd.store.outbox import OutboxRows
from energyd.store.readings import (
    _HOLDS_NONE,
    _LAST_ID,
    HELD_REVIEWED,
    Conflict,
    Readings,
    _layout_of,
)
from energyd.store.recent import RecentHours
from energyd.store.rollups import Rollups
from energyd.store.samples import (
    SLOTS,
    Sample,
    count,
    group_rows,
    pack_ids,
    pack_quality,
    pack_values,
    quality_at,
    unpack_ids,
    unpack_values,
    value_at,
)
from energyd.store.schema import MIGRATIONS, SCHEMA_VERSION
from energyd.store.statements import Statements


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


# (series id, time ms, value, quality, stored value): a conflict as the store finds it
_Found = tuple[int, int, float, int, float]



_INSERT_SAMPLE = ("INSERT INTO samples (layout, time, vals, quality) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (layout, time) DO NOTHING")


def _sheddable(quantity: str) -> bool:
    return quantity not in QUANTITIES or QUANTITIES[quantity].sheddable


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path, quota: int | None):
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.quota = quota
        self.state = State.OPEN
        self._series: dict[tuple[str, str], int] = {}
        # counts the rollbacks that emptied known_series: a caller keeping ids from it
        # (StoreWriter.submit_values) forgets them when this moves
        self.series_generation = 0
        self._series_names: dict[int, tuple[str, str]] = {}
        self._load_series()
        self._layout_ids: dict[bytes, int] = {}  # samples.pack_ids(series) -> layout id
        self._layouts: dict[int, tuple[int, ...]] = {}
        self._load_layouts()
        self._per_sample = 8  # readings per sample, about: sizes the reads by id
        # for the conflicts between layouts (see `_across_layouts`): the placements of the
        # series held by more than one layout, as of the newest layout id seen, and the
        # latest sample time per layout, as of SQLite's data_version
        self._shared: dict[int, list[tuple[int, int]]] = {}
        self._shared_upto = -1
        # layout -> (position, series, other layout, position there) for its shared series
        self._others: dict[int, list[tuple[int, int, int, int]]] = {}
        self._latest: dict[int, int] = {}
        self._data_version = -1
        self._depth = 0  # transactions open on the connection: 0, or 1 plus those joined
        self.meta = Meta(self)
        self.readings = Readings(self)
        self.cursors = SinkCursors(self)
        self.rollups = Rollups(self)
        self.statements = Statements(self)
        self.allocations = CertificateAllocations(self)
        self.certificates = Certificates(self)
        self.air = AirHours(self)

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
            _refuse_what_is_not_a_store(path)
            if not path.exists():
                _create(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            _check_ours(conn, path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            _migrate(conn, path)
            store = cls(conn, path, quota)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if not isinstance(exc, sqlite3.DatabaseError):
                raise
            if corrupt(exc):
                raise StoreCorrupt(f"{path}: the store is damaged ({exc}); {RECOVER_HINT}"
                                   ) from None
            raise StoreError(f"{path}: cannot open the store: {exc}") from None
        return store

    def check(self, *, full: bool = False, limit: int = 20) -> list[str]:
        """SQLite's own check of every page: `quick_check` (the b-trees and their pages; a
        few seconds per GB) or, `full`, `integrity_check` (indexes against their tables too).
        Returns the problems found, [] when the store is intact."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = self._read(f"PRAGMA {pragma}({int(limit)})")
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        lines = [line for row in rows for line in row[0].splitlines()
                 if line.strip() and not line.startswith("*** in database")]
        return [] if lines == ["ok"] else lines

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
    def atomic(self) -> Iterator[None]:
        """One unit of work across repositories: what they write inside commits together or
        not at all (a recompute's rollups and the certificate allocations they rest on)."""
        with self._writing():
            yield

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection inside a transaction; a transaction already open on this thread
        (an `atomic` block) is joined rather than nested, which SQLite cannot do."""
        with self._lock:
            self._check_open()
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back on its own (a full disk, an I/O error): then
                # there is nothing to roll back, and the error to report is the first one
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                # ids handed out inside the transaction are free again: another process
                # could give them to a different series or layout
                self.invalidate_series_cache()
                raise
            finally:
                self._depth = 0

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            self._check_open()
            return self._conn.execute(sql, params).fetchall()

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

    def find_series(self, device: str, quantity: str) -> int | None:
        """The series id of (device, quantity), None if the device never reported it; unlike
        `series_id`, creates nothing."""
        sid = self._series.get((device, quantity))
        if sid is None:  # another process (the committer, an import) may have made it
            rows = self._read("SELECT id FROM series WHERE device = ? AND quantity = ?",
                              (device, quantity))
            sid = rows[0][0] if rows else None
        return sid

    @property
    def known_series(self) -> dict[tuple[str, str], int]:
        """(device, quantity) -> series id of every series this store has seen; a lookup
        needs no lock (a miss only means: ask `series_id()`). Not to be changed."""
        return self._series

    def series(self) -> list[tuple[str, str]]:
        return sorted(self._series)

    # --- layouts: the sets of series a sample holds (energyd/store/samples.py) -------------

    def _load_layouts(self) -> None:
        for lid, key in self._conn.execute("SELECT id, series FROM layouts"):
            self._layout_ids[key] = lid
            self._layouts[lid] = unpack_ids(key)

    def _layout(self, lid: int) -> tuple[int, ...]:
        """The series of a layout, by position (the committer process may have made it)."""
        series = self._layouts.get(lid)
        if series is None:
            with self._lock:
                self._check_open()
                row = self._conn.execute("SELECT series FROM layouts WHERE id = ?",
                                         (lid,)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: a sample refers to layout {lid}, which is missing")
            series = self._layouts[lid] = unpack_ids(row[0])
        return series

    def _layout_id(self, conn: sqlite3.Connection, key: bytes) -> int:
        """Inside a transaction: the layout of these series (`samples.pack_ids`), made if new."""
        lid = self._layout_ids.get(key)
        if lid is None:
            row = conn.execute("SELECT id FROM layouts WHERE series = ?", (key,)).fetchone()
            series = unpack_ids(key)
            if row is None:
                lid = conn.execute("INSERT INTO layouts (series) VALUES (?)", (key,)).lastrowid
                conn.executemany(
                    "INSERT INTO layout_series (series, layout, position) VALUES (?, ?, ?)",
                    [(sid, lid, pos) for pos, sid in enumerate(series)])
            else:
                lid = row[0]
            self._layout_ids[key] = lid
            self._layouts[lid] = series
        return lid

    def _placements(self, series: int) -> list[tuple[int, int]]:
        """(layout, position) of each layout that holds the series."""
        return self._read("SELECT layout, position FROM layout_series WHERE series = ?",
                            (series,))

    # --- writing readings ---------------------------------------------------------------

    def series_rows(self, readings: Iterable[Reading]) -> list[tuple[int, int, float, int]]:
        """(series id, time ms, value, quality) for each reading; new series are created."""
        if not isinstance(readings, list):
            readings = list(readings)
        known = self._series
        try:
            return [(known[(r.device, r.quantity)], to_ms(r.time), r.value, int(r.quality))
                    for r in readings]
        except KeyError:
            pass
        missing = {(r.device, r.quantity) for r in readings} - known.keys()
        with self._writing() as conn:  # a new device's series in one commit, not one each
            for device, quantity in sorted(missing):
                self.series_id(device, quantity, conn)
        return self.series_rows(readings)

    def commit_samples(self, samples: list[Sample],
                       polls: Iterable[tuple[str, int, str | None]],
                       conflicts: list[Conflict] | None = None) -> int:
        """One flush of the daemon: samples (`samples.group`) and the polls that read them, in
        one transaction (one sync to disk). A sample the store holds already (same layout and
        time: a batch sent again) is ignored; where its values differ from the stored ones,
        the differing readings are kept as conflicts (see `conflicts`) and, when
        `conflicts` is given, the ones not kept before are appended to it. Returns how many
        samples were new."""
        with self._writing() as conn:
            layout_id = self._layout_id
            rows = [(layout_id(conn, key), t, vals, quality) for key, t, vals, quality in samples]
            # consecutive rows of a layout land in the same leaf of the (layout, time) index;
            # the sort is stable, so of two samples with one layout and time the first stands
            rows.sort(key=_layout_of)
            before = conn.total_changes
            conn.executemany(_INSERT_SAMPLE, rows)
            inserted = conn.total_changes - before
            found = self._sample_conflicts(conn, rows) if inserted < len(rows) else []
            found += self._across_layouts(conn, rows)
            if found:
                new = self._record_conflicts(conn, found, "acquisition")
                if conflicts is not None:
                    conflicts += new
            self._record_polls(conn, polls)
        return inserted

    def _across_layouts(self, conn: sqlite3.Connection,
                        rows: list[tuple[int, int, bytes, bytes | None]]) -> list[_Found]:
        """Inside commit_samples, after the insert: readings of a new sample whose series and
        time an earlier sample of another layout holds (a message that came with fewer
        fields, a block read value by value after a refusal). They are taken out of the new
        sample, so only the first value is ever read or forwarded; those with another value
        are returned as conflicts."""
        top = conn.execute("SELECT max(id) FROM layouts").fetchone()[0] or 0
        if top != self._shared_upto:
            self._shared = {}
            for sid, lid, pos in conn.execute(
                    "SELECT series, layout, position FROM layout_series WHERE series IN "
                    "(SELECT series FROM layout_series GROUP BY series HAVING count(*) > 1)"):
                self._shared.setdefault(sid, []).append((lid, pos))
            self._shared_upto = top
            self._others.clear()
        if not self._shared:  # the usual store: every series in one layout
            return []
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection wrote: latest times may move
            self._latest.clear()
            self._data_version = version
        for lid, t, _, _ in rows:  # this commit's samples, inserted already
            if lid in self._latest and t > self._latest[lid]:
                self._latest[lid] = t
        # per layout of this commit, the latest time another layout holds of its series: a
        # sample later than that (the usual live sample) has nothing to look up
        reach: dict[int, int] = {}
        for lid in {row[0] for row in rows}:
            others = self._others.get(lid)
            if others is None:
                others = self._others[lid] = [
                    (pos, sid, other, at) for pos, sid in enumerate(self._layout(lid))
                    for other, at in self._shared.get(sid, ()) if other != lid]
            reach[lid] = max((self._latest_time(conn, o[2]) for o in others),
                             default=-(2**62))
        found: list[_Found] = []
        for lid, t, vals, quality in rows:
            if t > reach[lid]:
                continue
            series = self._layout(lid)
            others = [o for o in self._others[lid] if self._latest_time(conn, o[2]) >= t]
            if not others:
                continue
            own = conn.execute("SELECT id, vals FROM samples WHERE layout = ? AND time = ?",
                               (lid, t)).fetchone()
            if own is None or own[1] != vals:
                continue  # not this row's sample: a conflict within the layout, found already
            values = unpack_values(vals)
            held: set[int] = set()
            for pos, sid, other, at in others:
                first = conn.execute("SELECT id, substr(vals, ?, 8) FROM samples WHERE "
                                     "layout = ? AND time = ? AND id < ?",
                                     (at * 8 + 1, other, t, own[0])).fetchone()
                if first is None or pos in held:
                    continue
                held.add(pos)
                stored = value_at(first[1], 0)
                if stored != values[pos]:
                    found.append((sid, t, values[pos], quality_at(quality, pos), stored))
            if held:
                self._drop_positions(conn, own[0], series, values, quality, held)
        return found

    def _latest_time(self, conn: sqlite3.Connection, lid: int) -> int:
        latest = self._latest.get(lid)
        if latest is None:
            row = conn.execute("SELECT max(time) FROM samples WHERE layout = ?",
                               (lid,)).fetchone()
            latest = self._latest[lid] = row[0] if row[0] is not None else -(2**62)
        return latest

    def _drop_positions(self, conn: sqlite3.Connection, sample: int, series: tuple[int, ...],
                        values: array, quality: bytes | None, drop: set[int]) -> None:
        """Take readings out of a sample made in this transaction (no reader has its ids)."""
        keep = [p for p in range(len(series)) if p not in drop]
        if not keep:
            conn.execute("DELETE FROM samples WHERE id = ?", (sample,))
            return
        q = pack_quality(array("b", [quality[p] for p in keep])) if quality else None
        key = pack_ids([series[p] for p in keep])
        changed = conn.execute(
            "UPDATE OR IGNORE samples SET layout = ?, vals = ?, quality = ? WHERE id = ?",
            (self._layout_id(conn, key), pack_values(array("d", [values[p] for p in keep])),
             q, sample)).rowcount
        if not changed:  # that layout holds the rest at this time already
            conn.execute("DELETE FROM samples WHERE id = ?", (sample,))

    def _sample_conflicts(self, conn: sqlite3.Connection,
                          rows: list[tuple[int, int, bytes, bytes | None]]) -> list[_Found]:
        """The readings of `rows` (layout, time, values, qualities) whose value differs from
        the one stored for their series and time. A row that was inserted finds itself."""
        found: list[_Found] = []
        for lid, t, vals, quality in rows:
            stored = conn.execute("SELECT vals FROM samples WHERE layout = ? AND time = ?",
                                  (lid, t)).fetchone()
            if stored is None or stored[0] == vals:
                continue
            old, new = unpack_values(stored[0]), unpack_values(vals)
            for pos, sid in enumerate(self._layout(lid)):
                if new[pos] != old[pos]:
                    found.append((sid, t, new[pos], quality_at(quality, pos), old[pos]))
        return found

    def _record_conflicts(self, conn: sqlite3.Connection, found: list[_Found],
                          origin: str) -> list[Conflict]:
        """Inside a transaction: keep `found`; returns those not kept before."""
        now = int(time.time() * 1000)
        new = []
        for sid, t, value, quality, stored in found:
            if conn.execute(
                    "INSERT INTO conflicts (series, time, value, quality, stored, origin, found) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, time, value) DO NOTHING",
                    (sid, t, value, quality, stored, origin, now)).rowcount:
                device, quantity = self._series_name(conn, sid)
                new.append(Conflict(device, quantity, t, value, quality, stored))
        return new

    def _series_name(self, conn: sqlite3.Connection, sid: int) -> tuple[str, str]:
        name = self._series_names.get(sid)
        if name is None:  # made by another process since this one loaded the series
            device, quantity = conn.execute("SELECT device, quantity FROM series WHERE id = ?",
                                            (sid,)).fetchone()
            name = self._series_names[sid] = (device, quantity)
        return name

    def insert_readings(self, readings: Iterable[Reading]) -> int:
        """Commit `readings` in one transaction; returns how many were new."""
        rows = self.series_rows(readings)
        with self._writing() as conn:
            return self.insert_series_rows(conn, rows)

    def import_rows(self, rows: Iterable[tuple[int, str, str, float, int]]) -> int:
        """Insert (time_ms, device, quantity, value, quality) rows in one transaction (or
        the `atomic` block it is called in), as an import does: a reading the store holds
        already is left out, one held with another value kept as a conflict; returns how
        many were new."""
        with self._writing() as conn:
            return self.insert_rows(conn, rows)

    def insert_rows(self, conn: sqlite3.Connection,
                    rows: Iterable[tuple[int, str, str, float, int]]) -> int:
        """Insert (time_ms, device, quantity, value, quality) rows inside `_writing()`;
        returns how many were new."""
        known = self._series
        params = [((known.get((device, quantity)) or self.series_id(device, quantity, conn)),
                   t, v, q) for t, device, quantity, v, q in rows]
        return self.insert_series_rows(conn, params)

    def insert_series_rows(self, conn: sqlite3.Connection,
                           params: list[tuple[int, int, float, int]],
                           conflicts: list[Conflict] | None = None,
                           origin: str = "import") -> int:
        """Insert (series id, time ms, value, quality) rows inside `_writing()`; returns
        how many were new. For bulk paths (imports, backfills): a reading of a series and time
        the store holds already is left out, so replays and re-imports are harmless whatever
        samples the readings were first stored in. One with another value than the stored
        (or an earlier row's) is a conflict: kept in `conflicts` (the table), the stored value
        stands, and appended to `conflicts` (the list) when given, kept before or not."""
        rows, found = self._unknown(conn, params)
        if found:
            self._record_conflicts(conn, found, origin)
            if conflicts is not None:
                conflicts += [Conflict(*self._series_name(conn, sid), t, v, q, stored)
                              for sid, t, v, q, stored in found]
        layout_id = self._layout_id
        conn.executemany(_INSERT_SAMPLE, [(layout_id(conn, key), t, vals, quality)
                                          for key, t, vals, quality in group_rows(rows)])
        return len(rows)

    @staticmethod
    def _unknown(conn: sqlite3.Connection, rows: list[tuple[int, int, float, int]]
                 ) -> tuple[list[tuple[int, int, float, int]], list[_Found]]:
        """The rows whose (series, time) neither the store nor an earlier row holds, and the
        conflicts: rows whose (series, time) is held with another value."""
        times: dict[int, list[int]] = {}
        for sid, t, _, _ in rows:
            times.setdefault(sid, []).append(t)
        layouts: dict[int, list[tuple[int, int]]] = {}
        ids = list(times)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for sid, lid, pos in conn.execute(
                    f"SELECT series, layout, position FROM layout_series WHERE series IN "
                    f"({','.join('?' * len(part))})", part):
                layouts.setdefault(sid, []).append((lid, pos))
        seen: dict[tuple[int, int], float] = {}  # (series, time) -> the value held
        for sid, placed in layouts.items():
            mine = times[sid]
            lo, hi, most = min(mine), max(mine), 4 * len(mine)
            for lid, pos in placed:
                # the usual backfill: little or nothing stored over its span, read it all
                found = conn.execute("SELECT time, substr(vals, ?, 8) FROM samples WHERE "
                                     "layout = ? AND time >= ? AND time <= ? LIMIT ?",
                                     (pos * 8 + 1, lid, lo, hi, most + 1)).fetchall()
                if len(found) > most:
                    # sparse rows over densely stored time: look each one up instead
                    found = []
                    for i in range(0, len(mine), 500):
                        part = mine[i:i + 500]
                        found += conn.execute(
                            f"SELECT time, substr(vals, ?, 8) FROM samples WHERE layout = ? "
                            f"AND time IN ({','.join('?' * len(part))})",
                            (pos * 8 + 1, lid, *part)).fetchall()
                for t, value in found:
                    seen.setdefault((sid, t), value_at(value, 0))
        out = []
        conflicts: list[_Found] = []
        for row in rows:
            key = (row[0], row[1])
            held = seen.get(key)
            if held is None:
                seen[key] = row[2]
                out.append(row)
            elif held != row[2]:
                conflicts.append((*row, held))
        return out, conflicts

    def invalidate_series_cache(self) -> None:
        """After a rollback, series and layouts created inside it no longer exist."""
        with self._lock:
            self.series_generation += 1
            self._series.clear()
            self._series_names.clear()
            self._load_series()
            self._layout_ids.clear()
            self._layouts.clear()
            self._load_layouts()

    # --- what callers outside the store's own area still ask of it directly -----------
    # (alerts/engine.py, daemon/subscriptions.py); everything else asks the repositories

    # --- change sequence for rollups and alerts -----------------------------------------

    def next_seq(self, conn: sqlite3.Connection) -> int:
        """Inside a transaction: the next change number (rollups and alerts share it)."""
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    # --- repositories of the alerts and the status view (their own modules) -------------

    @functools.cached_property
    def episodes(self) -> Episodes:
        return Episodes(self)

    @functools.cached_property
    def outbox(self) -> OutboxRows:
        return OutboxRows(self)

    @functools.cached_property
    def recent(self) -> RecentHours:
        return RecentHours(self)

    # --- device status ----------------------------------------------------------------

    @staticmethod
    def _record_polls(conn: sqlite3.Connection,
                      results: Iterable[tuple]) -> None:
        """(device, poll time ms, error or None[, polls, errors]) for each poll since the
        last flush (or folded by the writer while commits failed), folded
        per device first: one row update per device and flush, however fast it polls."""
        folded: dict[str, list[Any]] = {}
        for device, when, error, *counts in results:
            # an entry the writer folded while commits failed carries its counts
            polls, errors = counts or (1, 0 if error is None else 1)
            # [last_poll, last_success, last_error, last_error_time, polls, errors]
            f = folded.setdefault(device, [None, None, None, None, 0, 0])
            f[0] = when if f[0] is None else max(f[0], when)
            f[4] += polls
            if error is None:
                f[1] = when if f[1] is None else max(f[1], when)
            else:
                if f[3] is None or when >= f[3]:
                    f[2], f[3] = error, when
                f[5] += errors
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
        rows = self._read("SELECT device, last_poll, last_success, last_error, last_error_time, "
                            "polls, errors FROM device_status")
        keys = ("last_poll", "last_success", "last_error", "last_error_time", "polls", "errors")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    # --- size, quota, retention ---------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes in use by the database (free pages excluded; they are reused first)."""
        page_count, = self._read("PRAGMA page_count")[0]
        free, = self._read("PRAGMA freelist_count")[0]
        page_size, = self._read("PRAGMA page_size")[0]
        return (page_count - free) * page_size

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def enforce_quota(self, batch: int = 5000, sinks: Sequence[str] = (),
                      positions: Sequence[str] = ()) -> int:
        """Shed the oldest sheddable readings (power, voltage, current...) until under quota.

        What every sink in `sinks` has already forwarded goes first; only if that is not
        enough are unsent samples shed. Energy counters are never shed: they carry what the
        accounting signs for (a sample holding both keeps its counters). `positions` are
        the meta keys under which a job keeps its position among the reading ids (the hourly
        rollup's): no id is moved across one. Returns the number of readings shed; if only
        counters are left, the store stays over quota.
        """
        if self.quota is None:
            return 0
        shed = 0
        target = int(self.quota * 0.9)  # leave headroom so shedding is not re-run every flush
        forwarded = min((self.cursors.position(s, READINGS) for s in sinks), default=None)
        for limit in ([forwarded] if forwarded is not None else []) + [2**62]:
            while self.size_bytes() > self.quota or (shed and self.size_bytes() > target):
                n = self._shed(limit, batch, positions)
                shed += n
                if n == 0:
                    break
        return shed

    def _shed(self, upto: int, batch: int, positions: Sequence[str] = ()) -> int:
        """Shed the sheddable readings of the oldest `batch` samples with ids up to `upto`
        that hold any; returns how many readings went."""
        with self._lock:
            self._load_series()
            kept = {}  # layout -> positions of the readings it keeps
            for lid, key in self._read("SELECT id, series FROM layouts"):
                series = unpack_ids(key)
                keep = [pos for pos, sid in enumerate(series)
                        if not _sheddable(self._series_names[sid][1])]
                if len(keep) < len(series):
                    kept[lid] = keep
        if not kept:
            return 0
        shed = 0
        marks = ",".join("?" * len(kept))
        with self._writing() as conn:
            pinned = self._pinned(conn, positions)
            rows = conn.execute(
                f"SELECT id, layout, vals, quality FROM samples WHERE layout IN ({marks}) "
                f"AND {_LAST_ID} <= ? ORDER BY id LIMIT ?",
                (*kept, upto, batch + len(pinned))).fetchall()
            for sample, lid, vals, quality in rows:
                keep = kept[lid]
                if keep and sample in pinned:
                    continue
                n = count(vals)
                shed += n - len(keep)
                if not keep:
                    conn.execute("DELETE FROM samples WHERE id = ?", (sample,))
                    continue
                # the counters stay, in a sample of their own layout with the same id; their
                # ids may go down, which no reader sees unless its position is inside the
                # sample: those samples are pinned
                series, values = self._layout(lid), unpack_values(vals)
                key = pack_ids([series[p] for p in keep])
                q = array("b", [quality[p] for p in keep]) if quality else None
                changed = conn.execute(
                    "UPDATE OR IGNORE samples SET layout = ?, vals = ?, quality = ? WHERE id = ?",
                    (self._layout_id(conn, key), pack_values(array("d", [values[p] for p in keep])),
                     pack_quality(q) if q is not None else None, sample)).rowcount
                if not changed:  # the counters' own sample at that time holds them already
                    conn.execute("DELETE FROM samples WHERE id = ?", (sample,))
        return shed

    @staticmethod
    def _pinned(conn: sqlite3.Connection, keys: Sequence[str]) -> set[int]:
        """Samples a reading position points into (a cursor set by hand to resend refused
        readings, a refused reading itself, a job's position under a meta key of `keys`):
        rewriting them could move an id across it."""
        # a cursor of stream `readings` or `readings.<a sink's own name>` holds a reading id
        positions = [p for (p,) in conn.execute(
            "SELECT position FROM sink_cursors WHERE stream = ? OR stream LIKE ? "
            "UNION ALL SELECT item FROM rejected WHERE stream = ?",
            (READINGS, f"{READINGS}.%", READINGS))]
        for key in keys:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                positions.append(int(json.loads(row[0])))
        return {p // SLOTS for p in positions}

    def apply_retention(self, now_ms: int, retention_ms: int, sinks: Sequence[str]) -> int:
        """Delete raw readings older than the retention that every sink has forwarded, and
        the conflicts older than the retention (kept for inspection as long as readings
        are, so a publisher that keeps conflicting cannot fill the disk with them); returns
        how many readings went. Samples holding a reading held for review stay: their time
        says nothing about their age."""
        horizon = now_ms - retention_ms
        limit = min((self.cursors.position(s, READINGS) for s in sinks), default=None)
        reviewed = self.meta.get(HELD_REVIEWED, -1)
        where, params = f"time < ? AND ({_HOLDS_NONE} OR {_LAST_ID} <= ?)", [horizon, reviewed]
        if limit is not None:
            where += f" AND {_LAST_ID} <= ?"
            params.append(limit)
        with self._writing() as conn:
            gone = conn.execute(f"SELECT coalesce(sum(length(vals)), 0) / 8 FROM samples "
                                f"WHERE {where}", params).fetchone()[0]
            conn.execute(f"DELETE FROM samples WHERE {where}", params)
            conn.execute("DELETE FROM conflicts WHERE time < ?", (horizon,))
        return gone


DatabaseError = sqlite3.DatabaseError
"""What SQLite raises when the store cannot be read or written (a damaged page, a full
disk): for the layers above, which report it without knowing the database."""

RECOVER_HINT = ("it was left as it is. Stop energyd, then `energyd store check -c CONFIG` "
                "says what is wrong and `energyd store recover -c CONFIG --to NEW_FILE` copies "
                "what can be read into a new store; point storage.path at it, or move it in "
                "place of the old one (keep the old one)")
_SQLITE_HEADER = b"SQLite format 3\0"
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def corrupt(exc: BaseException) -> bool:
    """Is this SQLite's word for a damaged file (or one that is no database)?"""
    return (isinstance(exc, sqlite3.DatabaseError)
            and getattr(exc, "sqlite_errorcode", None) in _CORRUPT)


def _refuse_what_is_not_a_store(path: Path) -> None:
    """A file at the store's path that is not an SQLite database (an empty file left by a
    full disk or a failed copy, something else entirely) is refused, never made into a new,
    empty store over it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return  # a new store
    except IsADirectoryError:
        raise StoreError(f"{path}: is a directory, not a store") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store: {exc.strerror}") from None
    if not head:
        raise StoreCorrupt(f"{path}: the file is empty, which is not a store (a store that was "
                           f"never written is not left empty); {RECOVER_HINT}. If no store "
                           f"was ever kept here, remove the empty file and energyd starts "
                           f"a new one")
    if head != _SQLITE_HEADER:
        raise StoreCorrupt(f"{path}: the file is not an SQLite database; {RECOVER_HINT}")


def _create(path: Path) -> None:
    """A new store is made beside its path and moved there whole, so a file at the path is
    always a store that was written (an empty one there is damage, not a new store)."""
    making = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        conn = sqlite3.connect(str(making), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn, making)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        # a link, not a rename: a store another process made meanwhile is never replaced
        try:
            os.link(making, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links (FAT, some network mounts)
            if not path.exists():
                making.rename(path)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"{path}: cannot create the store: {exc}") from None
    finally:
        for made in (making, making.with_name(making.name + "-wal"),
                     making.with_name(making.name + "-shm")):
            made.unlink(missing_ok=True)


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    """Before anything is changed (even the journal mode): refuse another program's
    database, which has tables but no energyd schema version."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == 0 and conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]:
        raise StoreError(f"{path}: an SQLite database that is not an energyd store (it has "
                         f"tables of its own); nothing was changed. Check storage.path")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: the store has schema version {version}, newer than this energyd "
            f"understands ({SCHEMA_VERSION}); upgrade energyd or restore a backup")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration = MIGRATIONS[number]
            if callable(migration):
                migration(conn)
            else:
                for statement in _statements(migration):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    # executescript() would commit on its own; splitting keeps a migration atomic
    return [s.strip() for s in script.split(";") if s.strip()]
