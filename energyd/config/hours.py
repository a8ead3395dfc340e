"""Production hours as the config states them: the site's working week, on its wall clock.

Alert rules ask it whether an hour is off shift (the compressed-air leak signal); the config
uses it to refuse a span it cannot read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_SPEC = re.compile(
    r"^\s*(?P<days>[A-Za-z]{3}(?:\s*-\s*[A-Za-z]{3})?(?:\s*,\s*[A-Za-z]{3}(?:\s*-\s*[A-Za-z]{3})?)*)"
    r"\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


def _clock(text: str, spec: str) -> time | None:
    h, m = (int(x) for x in text.split(":"))
    if (h, m) == (24, 0):
        return None  # end of day
    if h > 23 or m > 59:
        raise ValueError(f"{spec!r}: {text} is not a time of day")
    return time(h, m)


@dataclass(frozen=True)
class ProductionHours:
    """Weekly production hours on the site's wall clock, e.g. ["Mon-Fri 06:00-22:00",
    "Sat 06:00-14:00"]. A span whose end is before its start runs past midnight."""

    spans: tuple[tuple[frozenset[int], time, time | None], ...]

    @classmethod
    def parse(cls, specs: Sequence[str]) -> ProductionHours:
        spans = []
        for spec in specs:
            m = _SPEC.match(spec)
            if not m:
                raise ValueError(f"{spec!r} is not like 'Mon-Fri 06:00-22:00'")
            days: set[int] = set()
            for part in m["days"].split(","):
                ends = [p.strip().lower() for p in part.split("-")]
                for name in ends:
                    if name not in _DAYS:
                        raise ValueError(f"{spec!r}: unknown day {name!r} (Mon..Sun)")
                a, b = (_DAYS.index(ends[0]), _DAYS.index(ends[-1]))
                days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
            start, end = _clock(m["start"], spec), _clock(m["end"], spec)
            if start is None:
                raise ValueError(f"{spec!r}: a span cannot start at 24:00")
            spans.append((frozenset(days), start, end))
        return cls(tuple(spans))

    def contains(self, local: datetime) -> bool:
        """Whether the wall-clock instant `local` falls inside production hours."""
        t = local.time().replace(tzinfo=None)
        for days, start, end in self.spans:
            if end is not None and end <= start:  # past midnight
                if (local.weekday() in days and t >= start) or \
                        ((local.weekday() - 1) % 7 in days and t < end):
                    return True
            elif local.weekday() in days and t >= start and (end is None or t < end):
                return True
        return False

    def hour_is_off_shift(self, hour_ms: int, tz: tzinfo) -> bool:
        """True when the whole hour lies outside production hours (checked every 15 min, so
        a shift starting at :30 keeps its first hour out of the off-shift count)."""
        start = datetime.fromtimestamp(hour_ms / 1000, tz=UTC)
        return not any(self.contains((start + timedelta(minutes=m)).astimezone(tz))
                       for m in (0, 15, 30, 45, 59))
