"""Parsing of the human-friendly values a config holds: durations and sizes."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, None: 1,
}


def parse_duration(value: object) -> float:
    """'10s', '5m', '1h', '7d', '250ms', or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 10s, 5m, 1h, 7d)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """'500MB', '2GiB', or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 500MB or 2GiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"{value!r} is not a size (e.g. 500MB, 2GiB)")


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(y|yrs?|years?|mo|months?)?\s*$", re.IGNORECASE)
_AGE_ISO = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?$")


def parse_age(value: object) -> int:
    """'3y', '3 years', '18mo', '18 months', 'P3Y', 'P1Y6M', or a bare number of years ->
    calendar months. Kept in months, not days, so that a year is a year whether it has 365
    or 366 days."""
    if isinstance(value, bool):
        raise ValueError("expected an age like 3y or 18mo")
    if isinstance(value, int | float):
        years, unit = float(value), "y"
    elif isinstance(value, str) and (m := _AGE_ISO.match(value.strip().upper())) \
            and any(m.groups()):
        return int(m.group(1) or 0) * 12 + int(m.group(2) or 0)
    elif isinstance(value, str) and (m := _AGE.match(value)):
        years, unit = float(m.group(1)), (m.group(2) or "y").lower()
    else:
        raise ValueError(f"{value!r} is not an age (e.g. 3y, 18mo)")
    months = years * (1 if unit.startswith("mo") else 12)
    if months < 0 or abs(months - round(months)) > 1e-9:
        raise ValueError(f"{value!r} is not a whole number of months")
    return round(months)


Duration = Annotated[float, BeforeValidator(parse_duration)]
AgeMonths = Annotated[int, BeforeValidator(parse_age)]
Size = Annotated[int, BeforeValidator(parse_size)]
