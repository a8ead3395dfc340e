"""CSV in and out of the store: `time,device,quantity,value`, ISO 8601 times with an offset.

An export adds a fifth column, `quality` (good, uncertain, imported, received,
received_backlog, clock_suspect: energyd.model.Quality), so an audit sees which times came
from receipt rather than from the device. An import takes the file with or without it; what
it imports is of quality imported whatever the column says.

A row for a series and time the store holds already is a replay when its value is the
stored one (left out: an import can be run twice) and a conflict when it is not: the stored
value stands, the row is kept in the store's conflicts table and counted in the result.

An import is one transaction: the file goes in whole or not at all, even if the process is
killed half-way (SQLite rolls an unfinished transaction back on the next open). Rows are
checked as they stream past, so a million-row file needs no more memory than one chunk;
every bad row is reported with its line number and nothing is committed.
"""

from __future__ import annotations

import csv
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from energyd.errors import ImportRejected, LineProblems, Problem, StoreError
from energyd.model import QUANTITIES, Quality, from_ms, to_ms
from energyd.store.sqlite import Conflict, Store

HEADER = ["time", "device", "quantity", "value"]
EXPORT_HEADER = [*HEADER, "quality"]
_QUALITY_NAMES = {q.name.lower() for q in Quality}
CHUNK = 50_000
MAX_REPORTED = 50


@dataclass(frozen=True)
class ImportResult:
    rows: int  # rows in the file
    inserted: int  # new readings (rows already stored are not counted twice)
    conflicts: list[Conflict] = field(default_factory=list)  # rows against another value


def import_readings(
    store: Store,
    stream: TextIO,
    filename: str,
    known_device: Callable[[str], bool] | None = None,
) -> ImportResult:
    """Import a CSV file whole, or raise ImportRejected listing the bad rows."""
    fail = LineProblems(filename, MAX_REPORTED)
    rows = 0
    inserted = 0
    conflicts: list[Conflict] = []

    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    columns = [h.strip().lower() for h in header]
    if columns not in (HEADER, EXPORT_HEADER):
        raise ImportRejected(
            [Problem(filename, 1, "",
                     f"header must be {','.join(HEADER)}, got {','.join(header)}")], 1)

    # One transaction for the whole file. Rows are parsed and inserted chunk by chunk; on the
    # first bad row insertion stops, but parsing goes on so every bad row can be reported.
    with store.transaction() as conn:
        parse = _RowParser(fail, known_device, lambda d, q: store.series_id(d, q, conn),
                           len(columns))
        chunk: list[tuple[int, int, float, int]] = []
        for fields in reader:
            if not fields or fields == [""]:
                continue
            rows += 1
            row = parse(fields, reader.line_num)
            if row is None or fail:
                chunk.clear()
                continue
            chunk.append(row)
            if len(chunk) >= CHUNK:
                inserted += store.insert_series_rows(conn, chunk, conflicts)
                chunk.clear()
        if fail:
            raise fail.rejected()
        if chunk:
            inserted += store.insert_series_rows(conn, chunk, conflicts)
    return ImportResult(rows, inserted, conflicts)


class _RowParser:
    """Checks one row at a time. Times are cached by their text: a poll's readings share one
    timestamp, so a million-row file holds far fewer distinct times than rows."""

    def __init__(self, fail: Callable[[int, str], None],
                 known_device: Callable[[str], bool] | None,
                 series_id: Callable[[str, str], int], columns: int = 4):
        self._columns = columns
        self._fail = fail
        self._known_device = known_device
        self._series_id = series_id
        self._series: dict[tuple[str, str], int] = {}
        self._times: dict[str, int] = {}
        self._devices: set[str] = set()
        self._imported = int(Quality.IMPORTED)

    def __call__(self, fields: list[str], line: int) -> tuple[int, int, float, int] | None:
        """The row as the store keeps it, (series id, time ms, value, quality), or None."""
        fail = self._fail
        if len(fields) != self._columns:
            fail(line, f"expected {self._columns} columns "
                 f"({','.join(EXPORT_HEADER[:self._columns])}), got {len(fields)}")
            return None
        t, device, quantity, v = fields[:4]
        if self._columns == 5 and fields[4].strip().lower() not in _QUALITY_NAMES:
            fail(line, f"unknown quality {fields[4].strip()!r} "
                 f"(one of {', '.join(sorted(_QUALITY_NAMES))})")
            return None
        ms = self._times.get(t)
        if ms is None:
            ms = self._time(t, line)
            if ms is None:
                return None
        if device not in self._devices:
            device = device.strip()
            if not device:
                fail(line, "device is empty")
                return None
            if self._known_device is not None and not self._known_device(device):
                fail(line, f"device {device!r} is not in the configuration")
                return None
            self._devices.add(device)
        if quantity not in QUANTITIES:
            quantity = quantity.strip()
            if quantity not in QUANTITIES:
                fail(line, f"unknown quantity {quantity!r}")
                return None
        try:
            value = float(v)
        except ValueError:
            fail(line, f"value {v.strip()!r} is not a number")
            return None
        if not math.isfinite(value):
            fail(line, f"value {v.strip()!r} is not finite")
            return None
        sid = self._series.get((device, quantity))
        if sid is None:
            sid = self._series[(device, quantity)] = self._series_id(device, quantity)
        return (sid, ms, value, self._imported)

    def _time(self, text: str, line: int) -> int | None:
        t = text.strip()
        try:
            when = datetime.fromisoformat(t)
        except ValueError:
            self._fail(line, f"time {t!r} is not ISO 8601")
            return None
        if when.tzinfo is None:
            self._fail(line, f"time {t!r} has no UTC offset (write e.g. {t}+00:00)")
            return None
        ms = to_ms(when)
        if len(self._times) > 100_000:
            self._times.clear()
        self._times[text] = ms
        return ms


@dataclass
class ExportProgress:
    """How far an export got: a failure part way says so."""

    rows: int = 0
    last_time: str | None = None


def export_readings(store: Store, out: TextIO, start: datetime, end: datetime,
                    device: str | None = None, progress: ExportProgress | None = None) -> int:
    """Write readings with start <= time < end as CSV, ordered by time; returns the count.
    A store that cannot be read part way raises StoreError; `progress` then says how far
    the CSV got."""
    progress = progress if progress is not None else ExportProgress()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_HEADER)
    names = {int(q): q.name.lower() for q in Quality}
    try:
        for t, d, q, v, quality in store.readings_in(to_ms(start), to_ms(end), device=device):
            stamp = from_ms(t).isoformat(timespec="milliseconds")
            writer.writerow((stamp, d, q, repr(v), names.get(quality, str(quality))))
            progress.rows += 1
            progress.last_time = stamp
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{store.path}: the store cannot be read past this point ({exc}); "
                         f"check it with `energyd store check`") from None
    return progress.rows

