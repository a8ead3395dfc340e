"""CSV in and out of the store: `time,device,quantity,value`, ISO 8601 times with an offset.

An import is one transaction: the file goes in whole or not at all, even if the process is
killed half-way (SQLite rolls an unfinished transaction back on the next open). Rows are
checked as they stream past, so a million-row file needs no more memory than one chunk;
every bad row is reported with its line number and nothing is committed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from energyd.errors import ImportRejected, LineProblems, Problem
from energyd.model import QUANTITIES, Quality, from_ms, to_ms
from energyd.store.sqlite import Store

HEADER = ["time", "device", "quantity", "value"]
CHUNK = 50_000
MAX_REPORTED = 50


@dataclass(frozen=True)
class ImportResult:
    rows: int  # rows in the file
    inserted: int  # new readings (rows already stored are not counted twice)


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

    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    if [h.strip().lower() for h in header] != HEADER:
        raise ImportRejected(
            [Problem(filename, 1, "",
                     f"header must be {','.join(HEADER)}, got {','.join(header)}")], 1)

    # One transaction for the whole file. Rows are parsed and inserted chunk by chunk; on the
    # first bad row insertion stops, but parsing goes on so every bad row can be reported.
    with store.transaction() as conn:
        parse = _RowParser(fail, known_device, lambda d, q: store.series_id(d, q, conn))
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
                inserted += store.insert_series_rows(conn, chunk)
                chunk.clear()
        if fail:
            raise fail.rejected()
        if chunk:
            inserted += store.insert_series_rows(conn, chunk)
    return ImportResult(rows, inserted)


class _RowParser:
    """Checks one row at a time. Times are cached by their text: a poll's readings share one
    timestamp, so a million-row file holds far fewer distinct times than rows."""

    def __init__(self, fail: Callable[[int, str], None],
                 known_device: Callable[[str], bool] | None,
                 series_id: Callable[[str, str], int]):
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
        if len(fields) != 4:
            fail(line, f"expected 4 columns (time,device,quantity,value), got {len(fields)}")
            return None
        t, device, quantity, v = fields
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


def export_readings(store: Store, out: TextIO, start: datetime, end: datetime,
                    device: str | None = None,
                    notes: Mapping[tuple[str, str, int], str] | None = None) -> int:
    """Write readings with start <= time < end as CSV, ordered by time; returns the count.
    With `notes` ((device, quantity, time ms) -> text), a fifth column `validation` carries
    the note of each reading that has one (what the accounting set aside, and why)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER if notes is None else [*HEADER, "validation"])
    n = 0
    for t, d, q, v, _ in store.readings_in(to_ms(start), to_ms(end), device=device):
        row: tuple[str, ...] = (from_ms(t).isoformat(timespec="milliseconds"), d, q, repr(v))
        if notes is not None:
            row = (*row, notes.get((d, q, t), ""))
        writer.writerow(row)
        n += 1
    return n

