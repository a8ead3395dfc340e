"""Emission factors as data: loading `emission-factors.yaml` and choosing the hour's factor.

A factor is (id, region, method, value tCO2/MWh, valid_from, valid_to, source, provisional).
`valid_from`/`valid_to` are dates, both inclusive, in the site's time zone (a "2023" factor
covers 2023-01-01 to 2023-12-31 local time). Two factors of the same region and method may
not overlap: which one applies must never depend on file order.

Choosing (`lookup`): the factor valid on the hour's local date; if none is, the most recent
earlier factor of the same region and method is carried forward, marked provisional with its
age (the MEE publishes a year's factors about two years late, and the GHG Protocol practice is
to use the latest available one), but only while the date lies within `max_age_months`
(`accounting.max_factor_age`, three years by default) of the first day that factor no longer
covers. The bound is calendar arithmetic (a year is twelve months, whatever its days), so a
carry into a leap year runs to the same date as any other. Beyond it there is no factor and
the tCO2 of the hour is null.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from energyd.config.loader import parse_yaml, read_text
from energyd.errors import ConfigError, Problem

# Shipped inside the wheel as package data; a source checkout reads the repository's copy.
_PACKAGED = Path(__file__).resolve().parents[1] / "data" / "emission-factors.yaml"
_CHECKOUT = Path(__file__).resolve().parents[2] / "config" / "emission-factors.yaml"
DEFAULT_FACTORS = _PACKAGED if _PACKAGED.exists() else _CHECKOUT
METHODS = ("location", "residual")
DEFAULT_MAX_AGE_MONTHS = 36
_KEYS = {"id", "region", "method", "value", "unit", "valid_from", "valid_to", "source",
         "provisional", "note"}


@dataclass(frozen=True, slots=True)
class Factor:
    id: str
    region: str
    method: str  # location | residual
    value: float  # tCO2/MWh
    valid_from: date
    valid_to: date  # inclusive
    source: str
    provisional: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid_from"], d["valid_to"] = self.valid_from.isoformat(), self.valid_to.isoformat()
        d["unit"] = "tCO2/MWh"
        return d


@dataclass(frozen=True, slots=True)
class Choice:
    """The factor an hour uses, and why."""

    factor: Factor
    provisional: bool
    carried_forward: bool
    age_days: int = 0  # days from the first day the factor no longer covers to the hour's date
    age_months: int = 0  # the same in whole calendar months

    @property
    def value(self) -> float:
        return self.factor.value

    def as_detail(self) -> dict[str, Any]:
        f = self.factor
        d: dict[str, Any] = {"id": f.id, "value": f.value, "source": f.source,
                             "region": f.region, "method": f.method,
                             "provisional": self.provisional}
        if self.carried_forward:
            d["carried_forward"] = True
            d["valid_to"] = f.valid_to.isoformat()
            d["age_days"] = self.age_days
            d["age_months"] = self.age_months
        return d


class FactorTable:
    def __init__(self, factors: list[Factor], origin: str = "<factors>"):
        self.factors = factors
        self.origin = origin
        self._by_key: dict[tuple[str, str], list[Factor]] = {}
        for f in sorted(factors, key=lambda f: f.valid_from):
            self._by_key.setdefault((f.region, f.method), []).append(f)
        self._cache: dict[tuple[str, str, date, int], Choice | None] = {}

    def lookup(self, region: str, method: str, day: date,
               max_age_months: int = DEFAULT_MAX_AGE_MONTHS) -> Choice | None:
        key = (region, method, day, max_age_months)
        if key in self._cache:
            return self._cache[key]
        choice: Choice | None = None
        earlier: Factor | None = None
        for f in self._by_key.get((region, method), []):
            if f.valid_from <= day <= f.valid_to:
                choice = Choice(f, f.provisional, False)
                break
            if f.valid_to < day and (earlier is None or f.valid_to > earlier.valid_to):
                earlier = f
        if choice is None and earlier is not None \
                and day < carry_end(earlier, max_age_months):
            choice = Choice(earlier, True, True, (day - earlier.valid_to).days - 1,
                            _months_between(earlier.valid_to + timedelta(days=1), day))
        self._cache[key] = choice
        return choice

    def regions(self) -> set[str]:
        return {f.region for f in self.factors}

    def fingerprint(self) -> dict[str, str]:
        """id -> digest of the factor's content: what changed since the last run."""
        return {f.id: hashlib.sha256(json.dumps(f.as_dict(), sort_keys=True).encode())
                .hexdigest()[:16] for f in self.factors}

    def by_id(self, fid: str) -> Factor | None:
        for f in self.factors:
            if f.id == fid:
                return f
        return None


def local_day(hour_ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(hour_ms / 1000, tz).date()


def day_start_ms(day: date, tz: ZoneInfo) -> int:
    return round(datetime.combine(day, time(0), tz).timestamp() * 1000)


def add_months(day: date, months: int) -> date:
    """The same day `months` calendar months later (the month's last day where it is short:
    29 February plus a year is 28 February)."""
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _months_between(a: date, b: date) -> int:
    """Whole calendar months from a to b (b >= a)."""
    months = (b.year - a.year) * 12 + b.month - a.month
    return months - 1 if add_months(a, months) > b else months


def carry_end(f: Factor, max_age_months: int) -> date:
    """The first local date the factor is no longer carried forward to: the day after its
    last valid day plus `max_age_months` (counted from the last day, so that a factor ending
    on 28 February of a leap year is carried through the next 28 February)."""
    return add_months(f.valid_to, max_age_months) + timedelta(days=1)


def validity_ms(f: Factor, tz: ZoneInfo,
                max_age_months: int = DEFAULT_MAX_AGE_MONTHS) -> tuple[int, int]:
    """[start, end) in epoch ms of the hours a factor may apply to, its carry included."""
    return day_start_ms(f.valid_from, tz), day_start_ms(carry_end(f, max_age_months), tz)


def load_factors(path: str | Path | None = None) -> FactorTable:
    path = Path(path) if path is not None else DEFAULT_FACTORS
    # the config's own reader: bounded, UTF-8 checked, every problem at its line
    return parse_factors(read_text(path), str(path))


def parse_factors(text: str, filename: str) -> FactorTable:
    tree = parse_yaml(text, filename)
    items = tree.get("factors") if isinstance(tree, dict) else None
    if not isinstance(items, list):
        raise ConfigError([Problem(filename, 1, "", "expected a top-level `factors:` list")])
    problems: list[Problem] = []
    factors: list[Factor] = []
    lines: dict[str, int] = {}
    for i, item in enumerate(items):
        line = items.lc.item(i)[0] + 1
        where = f"factors[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(filename, line, where, "expected a mapping"))
            continue
        unknown = set(map(str, item)) - _KEYS
        if unknown:
            problems.append(Problem(filename, line, where,
                                    f"unknown keys: {', '.join(sorted(unknown))}"))
            continue
        try:
            f = _factor(item)
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            problems.append(Problem(filename, line, where, msg))
            continue
        if f.id in lines:
            problems.append(Problem(filename, line, where,
                                    f"duplicate id {f.id!r} (first at line {lines[f.id]})"))
            continue
        lines[f.id] = line
        factors.append(f)
    by_key: dict[tuple[str, str], list[Factor]] = {}
    for f in factors:
        by_key.setdefault((f.region, f.method), []).append(f)
    for group in by_key.values():
        group.sort(key=lambda f: f.valid_from)
        for a, b in zip(group, group[1:], strict=False):
            if b.valid_from <= a.valid_to:
                problems.append(Problem(filename, lines[b.id], b.id,
                                        f"overlaps {a.id!r} (line {lines[a.id]}) for "
                                        f"{b.region}/{b.method}"))
    if problems:
        raise ConfigError(problems)
    return FactorTable(factors, filename)


def _factor(item: dict[str, Any]) -> Factor:
    method = str(item["method"])
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    unit = str(item.get("unit", "tCO2/MWh"))
    if unit != "tCO2/MWh":
        raise ValueError(f"unit must be tCO2/MWh (convert t/kWh x 1000), got {unit!r}")
    value = float(item["value"])
    if not 0 <= value < 5:
        raise ValueError(f"value {value} tCO2/MWh is not plausible")
    vf, vt = _date(item["valid_from"], "valid_from"), _date(item["valid_to"], "valid_to")
    if vt < vf:
        raise ValueError("valid_to is before valid_from")
    source = str(item.get("source") or "")
    if not source:
        raise ValueError("every factor needs its `source`")
    return Factor(str(item["id"]), str(item["region"]), method, value, vf, vt, source,
                  bool(item.get("provisional", False)))


def _date(v: Any, key: str) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    try:
        return date.fromisoformat(str(v))
    except ValueError:
        raise ValueError(f"{key} {v!r} is not a date (YYYY-MM-DD)") from None
