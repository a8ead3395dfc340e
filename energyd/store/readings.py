"""Readings as the store gives them back: by series and time, by insertion order (what sinks
and the hourly job follow), the latest of a series, the readings held for review and the
conflicts refused. How they are packed (samples.py: a row per instant and set of series) stays
inside the store: every method here takes and gives readings, series ids and reading ids.

`Store` owns the connection, the series and layout caches and the writing; this is
`store.readings`.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from energyd.model import Quality, Reading, from_ms
from energyd.store.samples import (
    SLOTS,
    count,
    quality_at,
    unpack_values,
    value_at,
)

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

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
class Conflict:
    """A reading refused because the store holds another value for its series and time."""

    device: str
    quantity: str
    time_ms: int
    value: float  # the value that came later, not taken
    quality: int
    stored: float  # the value the store holds, which stands


_layout_of = itemgetter(0)
_time_of = itemgetter(0)
# the id of a sample's last reading, in SQL (see samples.py)
_LAST_ID = f"id * {SLOTS} + length(vals) / 8 - 1"
HELD = Quality.CLOCK_SUSPECT
"""Readings of this quality wait for review: the accounting reads around them and retention
keeps them, however old they look (their time came from a clock that was wrong), until they
are marked reviewed (`mark_held_reviewed`). Reviewed, they stay out of the accounting."""
HELD_REVIEWED = "store.held_reviewed_until"
"""The meta key of the last reading id whose held readings were reviewed."""
_HELD_BYTE = f"x'{int(HELD):02x}'"
_NOT_HELD_AT = f"(quality IS NULL OR substr(quality, ?, 1) != {_HELD_BYTE})"  # ? = position + 1
_HOLDS_NONE = f"(quality IS NULL OR instr(quality, {_HELD_BYTE}) = 0)"



class Readings:
    def __init__(self, store: Store):
        self._store = store

    def conflict_counts(self) -> dict[str, int]:
        """Conflicts kept, per device."""
        return dict(self._store._read(
            "SELECT s.device, count(*) FROM conflicts c JOIN series s ON s.id = c.series "
            "GROUP BY s.device"))

    def conflicts(self, device: str | None = None, limit: int = 1000) -> list[Conflict]:
        """The conflicts kept, by series and time (of `device` only, if given)."""
        where, params = "", []
        if device is not None:
            where, params = "WHERE s.device = ?", [device]
        return [Conflict(*row) for row in self._store._read(
            "SELECT s.device, s.quantity, c.time, c.value, c.quality, c.stored FROM conflicts c "
            f"JOIN series s ON s.id = c.series {where} "
            "ORDER BY s.device, s.quantity, c.time, c.id LIMIT ?", (*params, limit))]

    # --- reading by series and time -------------------------------------------------------

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
        with self._store._lock:
            wanted = [sid for (d, q), sid in self._store._series.items()
                      if (device is None or d == device) and (quantity is None or q == quantity)]
        lo = start_ms if start_ms is not None else -(2**62)
        hi = end_ms if end_ms is not None else 2**62
        for sid in sorted(wanted, key=lambda s: self._store._series_names[s]):
            d, q = self._store._series_names[sid]
            for t, rid, v, qual in self._series_stream(sid, lo, hi, batch):
                yield StoredReading(rid, t, d, q, v, qual)

    def _series_stream(self, series: int, lo: int, hi: int, batch: int = 10000
                       ) -> Iterator[tuple[int, int, float, int]]:
        """(time, reading id, value, quality) of the series' readings with lo <= time < hi,
        by time, one per time should two layouts hold the same."""
        streams = [self._placement_pages(lid, pos, lo, hi, batch)
                   for lid, pos in self._store._placements(series)]
        if len(streams) == 1:  # the usual case: the series is always read in one block
            yield from streams[0]
            return
        last = None
        for reading in heapq.merge(*streams):
            if reading[0] != last:
                last = reading[0]
                yield reading

    def _placement_pages(self, lid: int, pos: int, lo: int, hi: int, batch: int
                         ) -> Iterator[tuple[int, int, float, int]]:
        """(time, reading id, value, quality) at one position of one layout, by time."""
        after = lo - 1
        while True:
            with self._store._lock:
                self._store._check_open()
                rows = self._store._conn.execute(
                    "SELECT time, id, substr(vals, ?, 8), quality FROM samples "
                    "WHERE layout = ? AND time > ? AND time < ? ORDER BY time LIMIT ?",
                    (pos * 8 + 1, lid, after, hi, batch)).fetchall()
            for t, sid, value, quality in rows:
                yield t, sid * SLOTS + pos, value_at(value, 0), quality_at(quality, pos)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def latest(self, device: str, quantity: str) -> StoredReading | None:
        sid = self._store._series.get((device, quantity))
        if sid is None:
            return None
        best = None
        for lid, pos in self._store._placements(sid):
            rows = self._store._read("SELECT time, id, vals, quality FROM samples WHERE layout = ? "
                                "ORDER BY time DESC LIMIT 1", (lid,))
            if rows and (best is None or rows[0][0] > best[0][0]):
                best = rows[0], pos
        if best is None:
            return None
        (t, sample, vals, quality), pos = best
        return StoredReading(sample * SLOTS + pos, t, device, quantity,
                             value_at(vals, pos), quality_at(quality, pos))

    def count_readings(self) -> int:
        return self._store._read("SELECT coalesce(sum(length(vals)), 0) / 8 FROM samples")[0][0]

    def readings_in(self, start_ms: int, end_ms: int, *, device: str | None = None,
                    by_series: bool = False) -> Iterator[tuple[int, str, str, float, int]]:
        """(time, device, quantity, value, quality) of the readings with start <= time < end,
        ordered by time (then device, quantity), or with `by_series` by device, quantity,
        time; streamed on a connection of its own (exports, evidence files)."""
        self._store._check_open()
        return self._stream_readings(start_ms, end_ms, device, by_series)

    def _stream_readings(self, start_ms: int, end_ms: int, device: str | None,
                         by_series: bool) -> Iterator[tuple[int, str, str, float, int]]:
        conn = sqlite3.connect(f"file:{self._store.path}?mode=ro", uri=True, timeout=30)
        try:
            names = {sid: (d, q) for sid, d, q in
                     conn.execute("SELECT id, device, quantity FROM series")
                     if device is None or d == device}
            layouts: dict[int, list[tuple[int, int]]] = {}  # layout -> [(position, series)]
            for sid, lid, pos in conn.execute(
                    "SELECT series, layout, position FROM layout_series ORDER BY series"):
                if sid in names:
                    layouts.setdefault(lid, []).append((pos, sid))

            def stream(lid: int, placed: list[tuple[int, int]]
                       ) -> Iterator[tuple[int, list[tuple[str, str, float, int]]]]:
                for t, vals, quality in conn.execute(
                        "SELECT time, vals, quality FROM samples WHERE layout = ? "
                        "AND time >= ? AND time < ? ORDER BY time", (lid, start_ms, end_ms)):
                    values = unpack_values(vals)
                    yield t, [(*names[sid], values[pos], quality_at(quality, pos))
                              for pos, sid in placed]

            if by_series:
                by_sid: dict[int, list[tuple[int, int]]] = {}
                for lid, placed in layouts.items():
                    for pos, sid in placed:
                        by_sid.setdefault(sid, []).append((lid, pos))
                for sid in sorted(by_sid, key=names.__getitem__):
                    last = None
                    merged = heapq.merge(*(stream(lid, [(pos, sid)]) for lid, pos in by_sid[sid]),
                                         key=_time_of)
                    for t, ((d, q, v, qual),) in merged:
                        if t != last:
                            last = t
                            yield t, d, q, v, qual
                return
            merged = heapq.merge(*(stream(lid, placed) for lid, placed in layouts.items()),
                                 key=_time_of)
            for t, group in itertools.groupby(merged, key=_time_of):
                at: dict[tuple[str, str], tuple[float, int]] = {}
                for _, items in group:
                    for d, q, v, qual in items:
                        at.setdefault((d, q), (v, qual))
                for (d, q), (v, qual) in sorted(at.items()):
                    yield t, d, q, v, qual
        finally:
            conn.close()

    # --- one series, by id: what the accounting reads -----------------------------------
    # Readings held for review (HELD) are left out: their time cannot be trusted.

    def _series_time(self, series: int, where: str, params: tuple, last: bool) -> int | None:
        # an ordered walk of the (layout, time) index that stops at the first reading not
        # held: as quick as min()/max() when none is held, which the filter would not be
        sql = (f"SELECT time FROM samples WHERE layout = ? {where} AND {_NOT_HELD_AT} "
               f"ORDER BY time {'DESC' if last else 'ASC'} LIMIT 1")
        found = []
        for lid, pos in self._store._placements(series):
            rows = self._store._read(sql, (lid, *params, pos + 1))
            if rows:
                found.append(rows[0][0])
        if not found:
            return None
        return max(found) if last else min(found)

    def series_time_before(self, series: int, time_ms: int) -> int | None:
        """The time of the series' last reading before `time_ms`, if any."""
        return self._series_time(series, "AND time < ?", (time_ms,), last=True)

    def series_time_from(self, series: int, time_ms: int) -> int | None:
        """The time of the series' first reading at or after `time_ms`, if any."""
        return self._series_time(series, "AND time >= ?", (time_ms,), last=False)

    def series_first_time(self, series: int) -> int | None:
        return self._series_time(series, "", (), last=False)

    def series_values(self, series: int, first_ms: int, last_ms: int
                      ) -> list[tuple[int, float]]:
        """(time, value) of the series' readings with first_ms <= time <= last_ms, by time."""
        return [(t, v) for t, _, v, q in self._series_stream(series, first_ms, last_ms + 1)
                if q != HELD]

    def held(self) -> list[tuple[str, str, int, int, int]]:
        """(device, quantity, count, first time, last time) of the readings held for review
        (stamped under a suspect clock, not yet marked reviewed), by device and quantity."""
        reviewed = self._store.meta.get(HELD_REVIEWED, -1)
        out: dict[int, list[int]] = {}
        for sample, lid, t, q in self._store._read(
                f"SELECT id, layout, time, quality FROM samples WHERE NOT {_HOLDS_NONE}"):
            for pos, sid in enumerate(self._store._layout(lid)):
                if q[pos] == HELD and sample * SLOTS + pos > reviewed:
                    span = out.setdefault(sid, [0, t, t])
                    span[0] += 1
                    span[1], span[2] = min(span[1], t), max(span[2], t)
        return sorted((*self._store._series_names[sid], n, a, b) for sid, (n, a, b) in out.items())

    def held_count(self) -> int:
        """Readings held for review (stamped under a suspect clock, not yet reviewed)."""
        return sum(n for _, _, n, _, _ in self.held())

    def mark_held_reviewed(self) -> int:
        """Mark the readings held now as reviewed: retention may remove them once they are
        older than it keeps and forwarded, like any other. Returns how many were marked."""
        count = self.held_count()
        self._store.meta.set(HELD_REVIEWED, self.last_reading_id())
        return count

    def series_readings(self, series: int, first_ms: int, last_ms: int
                        ) -> list[tuple[int, float, int]]:
        """`series_values` with each reading's quality: (time, value, quality); readings held
        for review are left out, as there."""
        return [(t, v, q) for t, _, v, q in self._series_stream(series, first_ms, last_ms + 1)
                if q != HELD]

    # --- insertion order: what sinks and the hourly job follow ----------------------------

    def last_reading_id(self) -> int:
        """The newest reading's id, 0 in an empty store. Ids only grow (see the schema), but
        they are not dense (see samples.py): count readings with `count_after`."""
        rows = self._store._read("SELECT id, length(vals) FROM samples ORDER BY id DESC LIMIT 1")
        return rows[0][0] * SLOTS + rows[0][1] // 8 - 1 if rows else 0

    def reading_chunk(self, after: int, upto: int, count: int
                      ) -> tuple[list[tuple[int, int, float]], int, bool]:
        """(series id, time, value) of the readings with ids in (after, upto], in id order,
        whole samples until at least `count` are in: (rows, the last id they cover or
        `after`, whether more readings up to `upto` follow). Ids are given out above every
        existing one, so nothing can appear below that last id later: a sink that moves its
        cursor there misses nothing, and the rows need not carry their ids."""
        out: list[tuple[int, int, float]] = []
        end = after
        first, last = after // SLOTS, upto // SLOTS
        page = max(8, count // self._store._per_sample + 1)
        layouts = self._store._layouts
        while True:
            with self._store._lock:
                self._store._check_open()
                samples = self._store._conn.execute(
                    "SELECT id, layout, time, vals FROM samples WHERE id >= ? AND id <= ? "
                    "ORDER BY id LIMIT ?", (first, last, page)).fetchall()
            if samples:
                self._store._per_sample = max(
                    1, sum(len(row[3]) for row in samples) // 8 // len(samples))
            for sample, lid, t, vals in samples:
                base = sample * SLOTS
                if len(out) >= count:
                    return out, end, base <= upto
                series = layouts.get(lid) or self._store._layout(lid)
                values = unpack_values(vals)
                top = base + len(values) - 1
                if base > after and top <= upto:
                    out.extend(zip(series, repeat(t), values, strict=False))
                    end = top
                else:  # a sample the range cuts (a position not at a sample's end)
                    for pos, (sid, v) in enumerate(zip(series, values, strict=True)):
                        if after < base + pos <= upto:
                            out.append((sid, t, v))
                            end = base + pos
            if len(samples) < page:
                return out, end, False
            first = samples[-1][0] + 1

    def readings_after(self, position: int, limit: int) -> list[StoredReading]:
        """The next `limit` readings in insertion order after `position`, with their ids."""
        with self._store._lock:
            self._store._check_open()
            samples = self._store._conn.execute(
                "SELECT id, layout, time, vals, quality FROM samples WHERE id >= ? "
                "ORDER BY id LIMIT ?", (position // SLOTS, limit + 1)).fetchall()
        names = self._store._series_names
        if any(sid not in names for _, lid, *_ in samples for sid in self._store._layout(lid)):
            self._store.invalidate_series_cache()
        out = []
        for sample, lid, t, vals, quality in samples:
            for pos, (sid, v) in enumerate(zip(self._store._layout(lid), unpack_values(vals),
                                                  strict=True)):
                if sample * SLOTS + pos > position and len(out) < limit:
                    out.append(StoredReading(sample * SLOTS + pos, t, *names[sid], v,
                                             quality_at(quality, pos)))
        return out

    def count_after(self, position: int, at_least: int | None = None) -> int:
        """How many readings have ids above `position`; with `at_least`, counting may stop
        once it has found that many (a sample holds at least one)."""
        k = position // SLOTS
        limit = -1 if at_least is None else at_least + 1  # -1: no limit
        rows = self._store._read(
            "SELECT coalesce(sum(length(vals)), 0) / 8, "
            "(SELECT length(vals) / 8 FROM samples WHERE id = ?) "
            "FROM (SELECT vals FROM samples WHERE id > ? ORDER BY id LIMIT ?)",
            (k, k, limit))[0]
        partial = max(0, k * SLOTS + rows[1] - 1 - position) if rows[1] is not None else 0
        return rows[0] + partial

    def reading_id_back(self, count: int, floor: int) -> int:
        """A position p >= floor, at a sample's start, with at least `count` readings in
        (p, newest]; `floor` if there are not that many above it."""
        total = 0
        for sample, n in self._store._read(
                "SELECT id, length(vals) / 8 FROM samples WHERE id > ? ORDER BY id DESC "
                "LIMIT ?", (floor // SLOTS, count)):
            total += n
            if total >= count:
                return max(floor, sample * SLOTS - 1)
        return floor

    def earliest_by_series(self, after: int, upto: int) -> dict[int, int]:
        """series id -> the earliest time among its readings with ids in (after, upto]."""
        first, last = after // SLOTS, upto // SLOTS
        out: dict[int, int] = {}

        def note(sid: int, t: int) -> None:
            if t < out.get(sid, t + 1):
                out[sid] = t
        for lid, t in self._store._read("SELECT layout, min(time) FROM samples WHERE id > ? "
                                   "AND id < ? GROUP BY layout", (first, last)):
            for sid in self._store._layout(lid):
                note(sid, t)
        for sample, lid, t, vals in self._store._read(
                "SELECT id, layout, time, vals FROM samples WHERE id IN (?, ?)", (first, last)):
            for pos, sid in enumerate(self._store._layout(lid)[:count(vals)]):
                if after < sample * SLOTS + pos <= upto:
                    note(sid, t)
        return out

    def poll_reading_ids(self, device: str, time_ms: int, after: int, upto: int) -> list[int]:
        """Ids in (after, upto] of the device's readings taken at `time_ms` (one poll)."""
        mine = {sid for (sid,) in self._store._read("SELECT id FROM series WHERE device = ?",
                                                (device,))}
        ids = []
        for sample, lid, n in self._store._read(
                "SELECT id, layout, length(vals) / 8 FROM samples WHERE id >= ? AND id <= ? "
                "AND time = ?", (after // SLOTS, upto // SLOTS, time_ms)):
            for pos, sid in enumerate(self._store._layout(lid)[:n]):
                if sid in mine and after < sample * SLOTS + pos <= upto:
                    ids.append(sample * SLOTS + pos)
        return sorted(ids)

    def oldest_after(self, position: int, upto: int = 2**62) -> int | None:
        """The earliest reading time among the (about) 10,000 readings with ids in
        (position, upto]."""
        return self._store._read(
            "SELECT min(time) FROM (SELECT time, id, vals FROM samples WHERE id >= ? "
            f"AND id <= ? ORDER BY id LIMIT ?) WHERE {_LAST_ID} > ?",
            (position // SLOTS, upto // SLOTS, 10000 // self._store._per_sample + 1,
             position))[0][0]
