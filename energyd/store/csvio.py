"""CSV in and out of the store: `time,device,quantity,value`, ISO 8601 times with an offset.

An import is one transaction: the file goes in whole or not at all, even if the process is
killed half-way (SQLite rolls an unfinished transaction back on the next open). Rows are
checked as they stream past, so a million-row file needs no more memory than one chunk;
every bad row is reported with its line number and nothing is committed.

Lines are read at most MAX_LINE characters at a time (csv_records), so a file of one
gigabyte-long line costs no more memory than a short one; a line too long, bytes that are
not UTF-8 and NUL characters are bad rows like any other. A row whose series and time the
store (or an earlier row) holds with another value is a conflict: reported with both
values, and the file refused, since the stored reading is never replaced.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from energyd.errors import ImportRejected, LineProblems, Problem
from energyd.model import QUANTITIES, Quality, from_ms, to_ms
from energyd.store.sqlite import Store

HEADER = ["time", "device", "quantity", "value"]
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

    reader = csv_reader(stream, fail)
    header = next(csv_records(stream, fail, reader=reader), None)
    if fail:
        raise fail.rejected()
    if header is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    if [h.strip().lower() for h in header[1]] != HEADER:
        raise ImportRejected(
            [Problem(filename, header[0], "", f"header must be {','.join(HEADER)}, got "
                     f"{_shown(','.join(header[1]))!r}")], 1)

    # One transaction for the whole file. Rows are parsed and inserted chunk by chunk; on the
    # first bad row insertion stops, but parsing goes on so every bad row can be reported.
    with store.transaction() as conn:
        parse = _RowParser(fail, known_device, lambda d, q: store.series_id(d, q, conn))
        chunk: list[tuple[int, int, float, int]] = []
        lines: list[int] = []

        def insert() -> int:
            new = store.insert_series_rows(conn, chunk)
            if new < len(chunk):  # some were stored already: with the same values?
                _report_conflicts(store, chunk, lines, parse.names, fail)
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
    return ImportResult(rows, inserted)


def _report_conflicts(store: Store, chunk: list[tuple[int, int, float, int]], lines: list[int],
                      names: dict[int, tuple[str, str]], fail: Callable[[int, str], None]
                      ) -> None:
    """Rows of a chunk whose series and time the store holds with another value. The chunk
    is inserted by then (same transaction), so a row of an earlier chunk is found too."""
    by_series: dict[int, dict[int, tuple[float, int]]] = {}
    for (sid, t, value, _), line in zip(chunk, lines, strict=True):
        mine = by_series.setdefault(sid, {})
        if t in mine:
            first, first_line = mine[t]
            if first != value:
                fail(line, f"{_what(names[sid], t)}: value {value!r} conflicts with {first!r} "
                           f"on line {first_line}")
            continue
        mine[t] = (value, line)
    for sid, mine in by_series.items():
        device, quantity = names[sid]
        for r in store.query_readings(device=device, quantity=quantity, start_ms=min(mine),
                                      end_ms=max(mine) + 1):
            if r.time_ms in mine and (ours := mine[r.time_ms])[0] != r.value:
                fail(ours[1], f"{_what(names[sid], r.time_ms)}: the store holds {r.value!r}, "
                              f"the file says {ours[0]!r}; a stored reading is never replaced "
                              "(drop or correct the row)")


def _what(series: tuple[str, str], time_ms: int) -> str:
    return f"{series[0]} {series[1]} at {from_ms(time_ms).isoformat(timespec='milliseconds')}"


def _shown(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        self.names: dict[int, tuple[str, str]] = {}  # series id -> (device, quantity)
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


def export_readings(store: Store, out: TextIO, start: datetime, end: datetime,
                    device: str | None = None) -> int:
    """Write readings with start <= time < end as CSV, ordered by time; returns the count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    n = 0
    for t, d, q, v, _ in store.readings_in(to_ms(start), to_ms(end), device=device):
        writer.writerow((from_ms(t).isoformat(timespec="milliseconds"), d, q, repr(v)))
        n += 1
    return n

