"""Supplier statements in CSV: `account,period_start,period_end,energy_kwh[,supplier,document]`.

- `account` is a grid_import device's name, or an id that `accounting.accounts` maps to
  devices.
- `period_start` / `period_end`: a date (YYYY-MM-DD) is a whole day in the site's time zone
  and `period_end` as a date is the statement's last day, included (as bills print it); a
  time (ISO 8601) is an instant and `period_end` is then excluded. A time without an offset
  is site time.
- `energy_kwh`: the statement's energy for the period, >= 0.
- `replaces` (optional): the id of a stored statement of the same account that this one
  corrects. The old one is kept, marked as replaced, and no longer used; overlaps are checked
  without it.

A file goes in whole or not at all. Refused, with the line: a bad field, an unknown account,
an empty period, a period longer than `accounting.max_statement_days` (a mistyped year would
spread one bill over a century of hours) or outside the years 1970 to 2199, a statement that
duplicates or overlaps another one of the same account, and one that bills a meter over time
another account's statement already bills it (the same meter under its device name and under
an `accounting.accounts` id), whether in the file or already stored (statements are never
silently replaced; a duplicate says whether its kWh differ). Lines are read with a bounded
length (energyd.store.csvio.csv_records).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TextIO
from zoneinfo import ZoneInfo

from energyd.errors import ImportRejected, LineProblems, Problem
from energyd.store.csvio import csv_records, named_records

REQUIRED = ["account", "period_start", "period_end", "energy_kwh"]
OPTIONAL = ["supplier", "document", "replaces"]
MAX_REPORTED = 50
MAX_FIELD = 500  # characters: a document number or a supplier's name fits many times
MAX_DAYS = 400
MAX_STATEMENTS = 100_000  # a plant's bills for centuries; more is not a statements file
MAX_KWH = 1e12  # a terawatt-hour: more than any site's bill, a slipped exponent
FIRST_YEAR, END_YEAR = 1970, 2200


@dataclass(frozen=True, slots=True)
class StatementRow:
    line: int
    account: str
    start_ms: int
    end_ms: int
    kwh: float
    supplier: str | None
    document: str | None
    replaces: int | None = None  # the stored statement this one corrects


@dataclass(frozen=True, slots=True)
class StoredPeriod:
    id: int
    account: str
    start_ms: int
    end_ms: int
    document: str | None
    kwh: float | None = None


def parse_statements(
    stream: TextIO,
    filename: str,
    tz: ZoneInfo,
    known_account: Callable[[str], bool],
    stored: Sequence[StoredPeriod] = (),
    devices_of: Callable[[str], Sequence[str]] | None = None,
    *,
    max_days: int = MAX_DAYS,
) -> list[StatementRow]:
    """Parse and check a statements file; raise ImportRejected listing every bad line.

    `devices_of` maps an account to its meters (a grid_import device is its own account, an
    `accounting.accounts` id names several): two statements of different accounts that bill
    the same meter over overlapping time would count its energy twice, and are refused."""
    fail = LineProblems(filename, MAX_REPORTED)

    records = csv_records(stream, fail)
    first = next(records, None)
    if fail:
        raise fail.rejected()
    if first is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    header_line, header = first
    names = [h.strip().lower() for h in header]
    if names[:4] != REQUIRED or any(n not in OPTIONAL for n in names[4:]) \
            or len(set(names)) != len(names):
        got = ",".join(header)
        raise ImportRejected([Problem(
            filename, header_line, "", f"header must be {','.join(REQUIRED)}"
            f"[,supplier,document], got {got if len(got) <= 80 else got[:77] + '...'!r}")], 1)
    rows: list[StatementRow] = []
    for line, rec in named_records(records, names, fail, most=MAX_STATEMENTS,
                                   what="statements", max_field=MAX_FIELD):
        account = rec["account"]
        if not account:
            fail(line, "account is empty")
            continue
        if not known_account(account):
            fail(line, f"account {account!r} is neither a grid_import device nor an id under "
                       "accounting.accounts")
            continue
        try:
            start = _instant(rec["period_start"], tz, end=False)
            end = _instant(rec["period_end"], tz, end=True)
        except ValueError as exc:
            fail(line, str(exc))
            continue
        if end <= start:
            fail(line, f"period_end {rec['period_end']} is not after period_start "
                       f"{rec['period_start']}")
            continue
        if end - start > max_days * 86_400_000:
            fail(line, f"the period {rec['period_start']} to {rec['period_end']} is longer "
                       f"than {max_days} days (accounting.max_statement_days)")
            continue
        try:
            kwh = float(rec["energy_kwh"])
        except ValueError:
            fail(line, f"energy_kwh {rec['energy_kwh'][:40]!r} is not a number")
            continue
        if not math.isfinite(kwh) or kwh < 0 or kwh > MAX_KWH:
            fail(line, f"energy_kwh {rec['energy_kwh'][:40]!r} must be a number from 0 to "
                       f"{MAX_KWH:g}")
            continue
        replaces = None
        if rec.get("replaces"):
            try:
                replaces = int(rec["replaces"])
            except ValueError:
                fail(line, f"replaces {rec['replaces']!r} is not a statement id")
                continue
            old = next((s for s in stored if s.id == replaces), None)
            if old is None:
                fail(line, f"replaces {replaces}: no such stored statement (or it was "
                           "replaced already)")
                continue
            if old.account != account:
                fail(line, f"replaces {replaces}: that statement is for {old.account}, not "
                           f"{account}")
                continue
        rows.append(StatementRow(line, account, start, end, kwh, rec.get("supplier") or None,
                                 rec.get("document") or None, replaces))
    # Overlaps: within the file, then against what is stored.
    by_account: dict[str, list[StatementRow]] = {}
    for r in rows:
        by_account.setdefault(r.account, []).append(r)
    seen: dict[int, int] = {}
    for r in rows:
        if r.replaces is not None:
            if r.replaces in seen:
                fail(r.line, f"replaces {r.replaces}, as the statement on line "
                             f"{seen[r.replaces]} does")
            seen.setdefault(r.replaces, r.line)
    # a statement being replaced no longer counts against the others
    stored = [s for s in stored if s.id not in seen]
    for account, group in by_account.items():
        group.sort(key=lambda r: r.start_ms)
        for a, b in zip(group, group[1:], strict=False):
            if b.start_ms < a.end_ms:
                what = "duplicates" if (a.start_ms, a.end_ms) == (b.start_ms, b.end_ms) \
                    else "overlaps"
                fail(b.line, f"statement for {account} {what} the one on line {a.line} "
                             f"({_span(a.start_ms, a.end_ms, tz)})")
        for r in group:
            for s in stored:
                if s.account == account and r.start_ms < s.end_ms and s.start_ms < r.end_ms:
                    what = "duplicates" if (r.start_ms, r.end_ms) == (s.start_ms, s.end_ms) \
                        else "overlaps"
                    doc = f", document {s.document}" if s.document else ""
                    kwh = ""
                    if what == "duplicates" and s.kwh is not None:
                        kwh = (", same kWh" if s.kwh == r.kwh else
                               f"; it holds {s.kwh:g} kWh, this line {r.kwh:g} kWh: the stored "
                               "statement is kept")
                    fail(r.line, f"statement for {account} {what} stored statement {s.id} "
                                 f"({_span(s.start_ms, s.end_ms, tz)}{doc}){kwh}")
    if devices_of is not None:
        _same_meter_twice(rows, stored, devices_of, tz, fail)
    if fail:
        raise fail.rejected()
    if not rows:
        raise ImportRejected([Problem(filename, 2, "", "no statements in the file")], 1)
    return rows


def _same_meter_twice(rows: Sequence[StatementRow], stored: Sequence[StoredPeriod],
                      devices_of: Callable[[str], Sequence[str]], tz: ZoneInfo,
                      fail: LineProblems) -> None:
    """Overlaps per physical meter across accounts (the same account is checked above)."""
    for i, r in enumerate(rows):
        mine = set(devices_of(r.account))
        for other in rows[:i]:
            if other.account != r.account and r.start_ms < other.end_ms \
                    and other.start_ms < r.end_ms:
                both = sorted(mine & set(devices_of(other.account)))
                if both:
                    fail(r.line, f"statement for {r.account} bills meter {', '.join(both)} "
                                 f"that the statement on line {other.line} bills under "
                                 f"{other.account} over overlapping time "
                                 f"({_span(other.start_ms, other.end_ms, tz)})")
        for s in stored:
            if s.account != r.account and r.start_ms < s.end_ms and s.start_ms < r.end_ms:
                both = sorted(mine & set(devices_of(s.account)))
                if both:
                    doc = f", document {s.document}" if s.document else ""
                    fail(r.line, f"statement for {r.account} bills meter {', '.join(both)} "
                                 f"that stored statement {s.id} bills under {s.account} over "
                                 f"overlapping time ({_span(s.start_ms, s.end_ms, tz)}{doc})")


def _instant(text: str, tz: ZoneInfo, *, end: bool) -> int:
    key = "period_end" if end else "period_start"
    if not text:
        raise ValueError(f"{key} is empty")
    shown = text if len(text) <= 40 else text[:37] + "..."
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{key} {shown!r} is not a date (YYYY-MM-DD)") from None
        if not FIRST_YEAR <= day.year < END_YEAR:
            raise ValueError(f"{key} {shown} is outside the years {FIRST_YEAR} to "
                             f"{END_YEAR - 1}")
        if end:
            day += timedelta(days=1)
        return round(datetime.combine(day, time(0), tz).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{key} {shown!r} is not an ISO 8601 date or time") from None
    # checked before any arithmetic: year 9999 plus an offset or a day overflows
    if not FIRST_YEAR <= when.year < END_YEAR:
        raise ValueError(f"{key} {shown} is outside the years {FIRST_YEAR} to {END_YEAR - 1}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return round(when.timestamp() * 1000)


def _span(start_ms: int, end_ms: int, tz: ZoneInfo) -> str:
    a = datetime.fromtimestamp(start_ms / 1000, tz)
    b = datetime.fromtimestamp(end_ms / 1000, tz)
    return f"{a.isoformat()} to {b.isoformat()}"
