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

Lines are read at most MAX_LINE characters at a time (csv_records), so a file of one
gigabyte-long line costs no more memory than a short one; a line too long, bytes that are
not UTF-8 and NUL characters are bad rows like any other, and so are two rows of one chunk
that give a series and time two values (the file contradicts itself).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from energyd.errors import ImportRejected, LineProblems, Problem, StoreError
from energyd.model import QUANTITIES, Quality, from_ms, to_ms
from energyd.store.sqlite import Conflict, Store

HEADER = ["time", "device", "quantity", "value"]
EXPORT_HEADER = [*HEADER, "quality"]
_QUALITY_NAMES = {q.name.lower() for q in Quality}
CHUNK = 50_000
MAX_REPORTED = 50
MAX_LINE = 64 * 1024  # characters; a reading's row is under 100
BLOCK = 256 * 1024  # characters read at once
MAX_FIELD = 200  # characters: a time, a device name, a quantity, a number
# Readings are of this world: a time outside these years is a typo or a clock gone wrong.
FIRST_MS = to_ms(datetime(1970, 1, 1, tzinfo=UTC))
END_MS = to_ms(datetime(2200, 1, 1, tzinfo=UTC))

# Undecodable bytes (read with errors="surrogateescape") and NUL: never text a row holds.
_NOT_TEXT = re.compile("[\x00\udc80-\udcff]")


def csv_reader(stream: TextIO, fail: Callable[[int, str], None],
               max_line: int = MAX_LINE) -> Any:
    """A csv.reader over the stream's checked lines, holding no more than one block and
    `max_line` characters of a line in memory. A line that is too long, not UTF-8 or holds
    NUL is passed to `fail` with its line and read as an empty record. Lines end at LF only,
    as an editor counts them. The reader raises csv.Error for a record that is not valid CSV
    and can be read on after it (csv_records does both).

    The stream is best opened with errors="surrogateescape": then a bad byte costs its own
    line only; with strict decoding the reading stops at it."""
    lines = itertools.chain.from_iterable(_checked_blocks(stream, fail, max_line))
    return csv.reader(lines, strict=True)


def csv_records(stream: TextIO, fail: Callable[[int, str], None],
                max_line: int = MAX_LINE, *, reader: Any = None
                ) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record of csv_reader (or of `reader`, one made by it);
    invalid CSV goes to `fail`."""
    if reader is None:
        reader = csv_reader(stream, fail, max_line)
    while True:
        try:
            for fields in reader:
                yield reader.line_num, fields
            return
        except csv.Error as exc:
            fail(reader.line_num, f"not valid CSV: {exc}")


def named_records(records: Iterable[tuple[int, list[str]]], names: list[str],
                  fail: Callable[[int, str], None], *, most: int, what: str,
                  max_field: int = MAX_FIELD) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped field}) of each record after the header: blank lines
    passed over; a line with another number of fields, or a field longer than `max_field`,
    refused at its line; after `most` records the file is refused as not `what` at all."""
    taken = 0
    for line, fields in records:
        if not fields or all(not f.strip() for f in fields):
            continue
        if taken >= most:
            fail(line, f"more than {most} {what}: split the file")
            return
        if len(fields) != len(names):
            fail(line, f"expected {len(names)} columns, got {len(fields)}")
            continue
        long = [n for n, f in zip(names, fields, strict=True) if len(f) > max_field]
        if long:
            fail(line, f"{long[0]} is longer than {max_field} characters")
            continue
        taken += 1
        yield line, dict(zip(names, (f.strip() for f in fields), strict=True))


def _checked_blocks(stream: TextIO, fail: Callable[[int, str], None], max_line: int
                    ) -> Iterator[list[str]]:
    """The stream's lines, a block at a time; a block without a bad character or an
    over-long line (the usual case) is checked by one regex search and passed on whole."""
    count = 0  # lines passed on
    carry = ""  # the start of a line the last block cut
    skipping = False  # inside a line already reported too long
    while True:
        try:
            block = stream.read(BLOCK)
        except UnicodeDecodeError as exc:
            fail(count + 1, f"byte 0x{exc.object[exc.start]:02x} is not UTF-8: the file must "
                            "be UTF-8 text (nothing after it was read)")
            return
        if not block:
            if carry and not skipping:
                yield _check([carry], count, fail, max_line)
            return
        if skipping:
            cut = block.find("\n")
            if cut < 0:
                continue
            block, skipping = block[cut + 1:], False
        text = carry + block
        cut = text.rfind("\n") + 1
        text, carry = text[:cut], text[cut:]
        lines = list(io.StringIO(text, newline="\n")) if text else []
        if len(carry) > max_line:
            # a line longer than any row: reported once, the rest of it read and dropped
            lines = _check(lines, count, fail, max_line)
            count += len(lines) + 1
            fail(count, f"the line is longer than {max_line} characters")
            yield [*lines, "\n"]
            carry, skipping = "", True
            continue
        if _NOT_TEXT.search(text) is not None or \
                (lines and max(map(len, lines)) > max_line + 1):
            lines = _check(lines, count, fail, max_line)
        count += len(lines)
        yield lines


def _check(lines: list[str], before: int, fail: Callable[[int, str], None], max_line: int
           ) -> list[str]:
    """The lines of a block that holds trouble: each bad one reported and read as empty."""
    out = []
    for n, text in enumerate(lines, before + 1):
        if len(text.rstrip("\n")) > max_line:
            fail(n, f"the line is longer than {max_line} characters")
            text = "\n"
        elif bad := _NOT_TEXT.search(text):
            char = bad.group()
            what = "a NUL character" if char == "\x00" else \
                f"byte 0x{ord(char) - 0xDC00:02x}, which is not UTF-8"
            fail(n, f"column {bad.start() + 1} holds {what}: the file must be UTF-8 text")
            text = "\n"
        out.append(text)
    return out


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

    reader = csv_reader(stream, fail)
    header = next(csv_records(stream, fail, reader=reader), None)
    if fail:
        raise fail.rejected()
    if header is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    columns = [h.strip().lower() for h in header[1]]
    if columns not in (HEADER, EXPORT_HEADER):
        raise ImportRejected(
            [Problem(filename, header[0], "", f"header must be {','.join(HEADER)}, got "
                     f"{_shown(','.join(header[1]))!r}")], 1)

    # One transaction for the whole file. Rows are parsed and inserted chunk by chunk; on the
    # first bad row insertion stops, but parsing goes on so every bad row can be reported.
    with store._writing() as conn:
        parse = _RowParser(fail, known_device, lambda d, q: store.series_id(d, q, conn),
                           len(columns))
        chunk: list[tuple[int, int, float, int]] = []
        lines: list[int] = []

        def insert() -> int:
            _refuse_conflicts_within(chunk, lines, parse.names, fail)
            if fail:
                return 0
            new = store.insert_series_rows(conn, chunk, conflicts)
            chunk.clear()
            lines.clear()
            return new

        while True:  # the csv module's loop, fast; a broken record is reported and skipped
            try:
                for fields in reader:
                    if not fields or fields == [""]:
                        continue
                    rows += 1
                    line = reader.line_num
                    row = parse(fields, line)
                    if row is None or fail:
                        chunk.clear()
                        lines.clear()
                        continue
                    chunk.append(row)
                    lines.append(line)
                    if len(chunk) >= CHUNK:
                        inserted += insert()
                break
            except csv.Error as exc:
                fail(reader.line_num, f"not valid CSV: {exc}")
        if chunk and not fail:
            inserted += insert()
        if fail:
            raise fail.rejected()
    return ImportResult(rows, inserted, conflicts)


def _refuse_conflicts_within(chunk: list[tuple[int, int, float, int]], lines: list[int],
                             names: dict[int, tuple[str, str]],
                             fail: Callable[[int, str], None]) -> None:
    """Rows of a chunk that give one series and time two values: the file contradicts
    itself, which is a bad row, not a conflict with the store. (Across chunks, the later row
    meets the earlier one in the store and is kept as a conflict, so memory stays bounded by
    the chunk.)"""
    mine: dict[tuple[int, int], tuple[float, int]] = {}
    for (sid, t, value, _), line in zip(chunk, lines, strict=True):
        first = mine.setdefault((sid, t), (value, line))
        if first[0] != value:
            fail(line, f"{_what(names[sid], t)}: value {value!r} conflicts with {first[0]!r} "
                       f"on line {first[1]}")


def _what(series: tuple[str, str], time_ms: int) -> str:
    return f"{series[0]} {series[1]} at {from_ms(time_ms).isoformat(timespec='milliseconds')}"


def _shown(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        self.names: dict[int, tuple[str, str]] = {}  # series id -> (device, quantity)
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
            if len(device) > MAX_FIELD:
                fail(line, f"column 2 (device) is longer than {MAX_FIELD} characters")
                return None
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
                fail(line, f"unknown quantity {_shown(quantity)!r}")
                return None
        try:
            value = float(v)
        except ValueError:
            fail(line, f"value {_shown(v.strip())!r} is not a number")
            return None
        if not math.isfinite(value) or len(v) > MAX_FIELD:
            fail(line, f"value {_shown(v.strip())!r} is not finite" if len(v) <= MAX_FIELD
                 else f"column 4 (value) is longer than {MAX_FIELD} characters")
            return None
        sid = self._series.get((device, quantity))
        if sid is None:
            sid = self._series[(device, quantity)] = self._series_id(device, quantity)
            self.names[sid] = (device, quantity)
        return (sid, ms, value, self._imported)

    def _time(self, text: str, line: int) -> int | None:
        if len(text) > MAX_FIELD:
            self._fail(line, f"column 1 (time) is longer than {MAX_FIELD} characters")
            return None
        t = text.strip()
        try:
            when = datetime.fromisoformat(t)
        except ValueError:
            self._fail(line, f"time {t!r} is not ISO 8601")
            return None
        if when.tzinfo is None:
            self._fail(line, f"time {t!r} has no UTC offset (write e.g. {t}+00:00)")
            return None
        try:
            ms = to_ms(when)
        except OverflowError:
            ms = -1
        if not FIRST_MS <= ms < END_MS:
            self._fail(line, f"time {t!r} is outside the years 1970 to 2199")
            return None
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
                    device: str | None = None, progress: ExportProgress | None = None,
                    notes: Mapping[tuple[str, str, int], str] | None = None) -> int:
    """Write readings with start <= time < end as CSV, ordered by time; returns the count.
    Each row carries the reading's quality; with `notes` ((device, quantity, time ms) ->
    text), a sixth column `validation` carries the note of each reading that has one (what
    the accounting set aside, and why). A store that cannot be read part way raises
    StoreError; `progress` then says how far the CSV got."""
    progress = progress if progress is not None else ExportProgress()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_HEADER if notes is None else [*EXPORT_HEADER, "validation"])
    names = {int(q): q.name.lower() for q in Quality}
    try:
        for t, d, q, v, quality in store.readings.readings_in(to_ms(start), to_ms(end),
                                                               device=device):
            stamp = from_ms(t).isoformat(timespec="milliseconds")
            row: tuple[str, ...] = (stamp, d, q, repr(v), names.get(quality, str(quality)))
            if notes is not None:
                row = (*row, notes.get((d, q, t), ""))
            writer.writerow(row)
            progress.rows += 1
            progress.last_time = stamp
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{store.path}: the store cannot be read past this point ({exc}); "
                         f"check it with `energyd store check`") from None
    return progress.rows

