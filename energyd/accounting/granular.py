"""Granular certificates and the region's hourly clean share, from CSV.

Certificates: `id,production_start,production_end,wh,market,device,technology` and optional
`location,storage_discharge,registry` (any column order; a header names them; EnergyTag's
`certificate_id`, `device_id`, `market_boundary`, `energy_wh`, `production_interval_start`
and `production_interval_end` are read as the same). `id` is the
registry's certificate id (EnergyTag: the certificate's unique id), stable across exports,
and the store keeps each id once. `production_start` / `production_end`: ISO 8601 instants
(a time without an offset is site time); the interval is an hour or less (one across a UTC
hour's start is split between the two hours in proportion to time, see scope2.py).
`wh` > 0 (EnergyTag's unit). `storage_discharge`: true/false (empty: false).
`backs`: the id of an annual instrument (`accounting.certificates`) whose production the
certificate details hour by hour: of the instrument's market, produced within its validity,
and never, with what is stored for it, beyond its MWh.

A file goes in whole or not at all. Refused, each with its line, the field and what is wrong:
a bad field; an interval that is empty or longer than an hour; an id
twice in the file (both lines named); an id the store holds with other figures (a certificate
is retired once and never changed). An id the store holds with the same figures is left as
it is and counted as already stored, so importing a file again, or one that overlaps an
earlier one, adds nothing twice.

Grid mix: `hour,clean_share`: the start of an hour (ISO 8601; site time without an offset;
on the hour) and the share 0..1 of the region's supply that is carbon-free in that hour.
Refused like certificates: a bad field, an hour twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from energyd.accounting.scope2 import (
    HOUR_MS,
    GranularCertificate,
    Instrument,
    interval_problem,
    iso,
)
from energyd.errors import ImportRejected, LineProblems, Problem
from energyd.store.certificates import CertificateRecord
from energyd.store.csvio import csv_records, named_records

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

REQUIRED = ["id", "production_start", "production_end", "wh", "market", "device",
            "technology"]
OPTIONAL = ["location", "storage_discharge", "registry", "backs"]
MAX_REPORTED = 50
MAX_FIELD = 200
MAX_CERTIFICATES = 1_000_000  # a year of quarter-hour certificates from 25 devices
MAX_HOURS = 100_000  # eleven years of hours: more is not one region's grid mix
MAX_WH = 1e12  # a terawatt-hour in one hour: a slipped exponent
FIRST_YEAR, END_YEAR = 1970, 2200
# EnergyTag's and registries' names for the same columns
ALIASES = {"certificate_id": "id", "device_id": "device", "market_boundary": "market",
           "energy_wh": "wh", "production_interval_start": "production_start",
           "production_interval_end": "production_end"}
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}


@dataclass(frozen=True, slots=True)
class CertificateLine:
    line: int
    record: CertificateRecord


@dataclass
class CertificateImport:
    added: list[str]
    already: list[str]  # held with the same figures: left as they were


def to_certificate(r: CertificateRecord) -> GranularCertificate:
    return GranularCertificate(r.id, r.production_start, r.production_end, r.wh, r.market,
                               r.device, r.technology, r.location, r.storage_discharge,
                               r.registry, r.backs)


def _header(records: Iterator[tuple[int, list[str]]], filename: str, wanted: list[str],
            optional: list[str], fail: LineProblems) -> list[str]:
    first = next(records, None)
    if fail:
        raise fail.rejected()
    if first is None:
        raise ImportRejected([Problem(filename, 1, "", "the file is empty")], 1)
    line, header = first
    names = [ALIASES.get(n, n) for n in (h.strip().lower() for h in header)]
    missing = [n for n in wanted if n not in names]
    unknown = [n for n in names if n not in wanted and n not in optional]
    if missing or unknown or len(set(names)) != len(names):
        what = (f"missing {', '.join(missing)}" if missing else
                f"unknown column {unknown[0][:40]!r}" if unknown else "a column named twice")
        raise ImportRejected([Problem(
            filename, line, "", f"header must name {','.join(wanted)} (and optionally "
            f"{','.join(optional)}): {what}")], 1)
    return names


def _instant(text: str, key: str, tz: ZoneInfo) -> int:
    shown = text if len(text) <= 40 else text[:37] + "..."
    if not text:
        raise ValueError(f"{key} is empty")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{key} {shown!r} is not an ISO 8601 time") from None
    if len(text) <= 10:
        raise ValueError(f"{key} {shown!r} is a date: a production interval needs times")
    if not FIRST_YEAR <= when.year < END_YEAR:
        raise ValueError(f"{key} {shown} is outside the years {FIRST_YEAR} to {END_YEAR - 1}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return round(when.timestamp() * 1000)


def parse_certificates(stream: TextIO, filename: str, tz: ZoneInfo,
                       instruments: Mapping[str, Instrument] | None = None,
                       ) -> list[CertificateLine]:
    """Parse and check a certificates file on its own (not against the store); raise
    ImportRejected listing every bad line. `instruments`: the annual instruments (id ->)
    a certificate may detail the production of (`backs`)."""
    known = instruments or {}
    fail = LineProblems(filename, MAX_REPORTED)
    records = csv_records(stream, fail)
    names = _header(records, filename, REQUIRED, OPTIONAL, fail)
    out: list[CertificateLine] = []
    first_line: dict[str, int] = {}
    for line, named in named_records(records, names, fail, most=MAX_CERTIFICATES,
                                     what="certificates", max_field=MAX_FIELD):
        rec = dict.fromkeys(OPTIONAL, "") | named
        empty = [k for k in ("id", "market", "device", "technology") if not rec[k]]
        if empty:
            fail(line, f"{empty[0]} is empty")
            continue
        try:
            start = _instant(rec["production_start"], "production_start", tz)
            end = _instant(rec["production_end"], "production_end", tz)
        except ValueError as exc:
            fail(line, str(exc))
            continue
        why = interval_problem(start, end)
        if why is not None:
            fail(line, f"production_start {rec['production_start']} to production_end "
                       f"{rec['production_end']}: {why}")
            continue
        try:
            wh = float(rec["wh"])
        except ValueError:
            fail(line, f"wh {rec['wh'][:40]!r} is not a number")
            continue
        if not (math.isfinite(wh) and 0 < wh <= MAX_WH):
            fail(line, f"wh {rec['wh'][:40]} must be a number above 0 and at most {MAX_WH:g}")
            continue
        flag = rec["storage_discharge"].lower()
        if flag not in _TRUE | _FALSE:
            fail(line, f"storage_discharge {rec['storage_discharge'][:40]!r} is not true or "
                       "false")
            continue
        backs = rec["backs"]
        if backs:
            ins = known.get(backs)
            if ins is None:
                fail(line, f"backs {backs[:40]!r}: no such instrument under "
                           "accounting.certificates")
                continue
            if ins.market != rec["market"]:
                fail(line, f"backs {backs}: the instrument's market is {ins.market}, this "
                           f"certificate's {rec['market']}")
                continue
            if not ins.start_ms <= start < ins.end_ms:
                fail(line, f"backs {backs}: produced at {iso(start)}, outside the instrument's "
                           f"validity ({iso(ins.start_ms)} to {iso(ins.end_ms)})")
                continue
        cid = rec["id"]
        if cid in first_line:
            fail(line, f"id {cid}: the certificate on line {first_line[cid]} has the same id "
                       "(a certificate is retired once)")
            continue
        first_line[cid] = line
        out.append(CertificateLine(line, CertificateRecord(
            cid, start, end, wh, rec["market"], rec["device"], rec["technology"],
            rec["location"], flag in _TRUE, rec["registry"], backs)))
    if fail:
        raise fail.rejected()
    return out


def _differences(a: CertificateRecord, b: CertificateRecord) -> list[str]:
    out = []
    for k in CertificateRecord.__slots__:
        x, y = getattr(a, k), getattr(b, k)
        same = math.isclose(x, y, rel_tol=1e-12) if isinstance(x, float) else x == y
        if not same:
            out.append(k)
    return out


def check_against_stored(lines: list[CertificateLine], held: Mapping[str, CertificateRecord],
                         filename: str) -> None:
    """Refuse (ImportRejected) a line whose id the store holds with other figures."""
    fail = LineProblems(filename, MAX_REPORTED)
    for cl in lines:
        old = held.get(cl.record.id)
        if old is None:
            continue
        diff = _differences(old, cl.record)
        if diff:
            k = diff[0]
            fail(cl.line, f"id {cl.record.id}: the store holds this certificate with "
                          f"{_shown(k, getattr(old, k))} where this line says "
                          f"{_shown(k, getattr(cl.record, k))}; a certificate is retired once "
                          "and never changed")
    if fail:
        raise fail.rejected()


def _shown(key: str, value: object) -> str:
    if key in ("production_start", "production_end") and isinstance(value, int):
        return f"{key} {iso(value)}"
    return f"{key} {value!r}"


def parse_grid_mix(stream: TextIO, filename: str, tz: ZoneInfo) -> dict[int, float]:
    """hour (UTC epoch ms) -> the region's clean share 0..1; raise ImportRejected listing
    every bad line."""
    fail = LineProblems(filename, MAX_REPORTED)
    records = csv_records(stream, fail)
    names = _header(records, filename, ["hour", "clean_share"], [], fail)
    out: dict[int, float] = {}
    first_line: dict[int, int] = {}
    for line, rec in named_records(records, names, fail, most=MAX_HOURS, what="hours",
                                   max_field=MAX_FIELD):
        try:
            hour = _instant(rec["hour"], "hour", tz)
        except ValueError as exc:
            fail(line, str(exc))
            continue
        if hour % HOUR_MS:
            fail(line, f"hour {rec['hour'][:40]} is not the start of an hour")
            continue
        try:
            share = float(rec["clean_share"])
        except ValueError:
            fail(line, f"clean_share {rec['clean_share'][:40]!r} is not a number")
            continue
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            fail(line, f"clean_share {rec['clean_share'][:40]} is not within 0..1")
            continue
        if hour in first_line:
            fail(line, f"hour {rec['hour'][:40]}: already given on line {first_line[hour]}")
            continue
        first_line[hour] = line
        out[hour] = share
    if fail:
        raise fail.rejected()
    return out


def import_certificates(store: Store, stream: TextIO, filename: str, tz: ZoneInfo,
                        now_ms: int, instruments: Mapping[str, Instrument] | None = None,
                        ) -> CertificateImport:
    """Check a certificates file whole, then store the certificates the store does not hold
    yet (raise ImportRejected, storing nothing, when any line is refused). A certificate that
    details an annual instrument's production (`backs`) is refused where the production
    stored for it would exceed the instrument's MWh: the hourly mode then never covers more
    than the instrument holds."""
    lines = parse_certificates(stream, filename, tz, instruments)
    repo = store.certificates
    held = repo.held(cl.record.id for cl in lines)
    check_against_stored(lines, held, filename)
    fail = LineProblems(filename, MAX_REPORTED)
    backing: dict[str, float] = {}
    for cl in lines:
        b = cl.record.backs
        if not b or cl.record.id in held:
            continue
        if b not in backing:
            backing[b] = repo.backing_wh(b)
        backing[b] += cl.record.wh
        limit = (instruments or {})[b].mwh * 1e6
        if backing[b] > limit * (1 + 1e-12):
            fail(cl.line, f"backs {b}: the production stored for it would reach "
                          f"{backing[b] / 1e6:.6g} MWh, beyond the instrument's "
                          f"{limit / 1e6:.6g} MWh")
    if fail:
        raise fail.rejected()
    added, already = repo.retire(((cl.record, f"{filename}:{cl.line}") for cl in lines),
                                 now_ms)
    return CertificateImport(added, already)
