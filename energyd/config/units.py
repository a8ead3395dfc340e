"""Parsing of the human-friendly values a config holds: durations and sizes.

Every duration and size is finite, and a field says the range it makes sense in
(`Annotated[Duration, within(0.01, 60)]`): `interval: .nan`, `timeout: 1e300` or
`flush_interval: 0` are refused at load instead of stalling a link or spinning a core.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

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
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"{_shown(value)} is not a duration (e.g. 10s, 5m, 1h, 7d)")
    if not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """'500MB', '2GiB', or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 500MB or 2GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"{_shown(value)} is not a size (e.g. 500MB, 2GiB)")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    """The shortest of 250ms, 10s, 5m, 1h, 7d that says `seconds` exactly, else seconds."""
    if seconds == 0 or seconds >= 1e9:
        return f"{seconds:.3g}s"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and float(seconds / factor).is_integer():
            return f"{int(seconds // factor)}{unit}"
    if seconds < 1 and float(seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    if size >= 10**18:
        return f"about 10^{len(str(size)) - 1} B"
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def within(low: float, high: float) -> AfterValidator:
    """A duration's sane range, in seconds, both ends included."""
    def check(seconds: float) -> float:
        if not low <= seconds <= high:
            raise ValueError(f"{format_duration(seconds)} is out of range: a duration from "
                             f"{format_duration(low)} to {format_duration(high)}")
        return seconds
    return AfterValidator(check)


def size_within(low: int, high: int) -> AfterValidator:
    """A size's sane range, in bytes, both ends included."""
    def check(size: int) -> int:
        if not low <= size <= high:
            raise ValueError(f"{format_size(size)} is out of range: a size from "
                             f"{format_size(low)} to {format_size(high)}")
        return size
    return AfterValidator(check)


def _shown(value: object) -> str:
    """The value as the message quotes it: short, whatever was written."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    if not math.isfinite(months):
        raise ValueError(f"{value!r} is not a finite age")
    if months < 0 or abs(months - round(months)) > 1e-9:
        raise ValueError(f"{value!r} is not a whole number of months")
    return round(months)


Duration = Annotated[float, BeforeValidator(parse_duration)]
AgeMonths = Annotated[int, BeforeValidator(parse_age)]
Size = Annotated[int, BeforeValidator(parse_size)]
