"""Alert conditions as pure functions over plain data: no clock, no store, no sockets.

Every rule answers with a `Verdict`: ON (the condition holds), OFF (it has cleared, below the
release threshold) or HOLD (inside the hysteresis band, or too little data to say). The episode
tracker (episodes.py) turns a stream of verdicts into one start and one end per episode, so the
band between the firing and the release threshold is what keeps a value hovering at the limit
from flapping.

    rule            input                                  fires when
    spike (hourly)  the hour's kWh, same hour of week      kWh > factor x median AND
                    over N weeks (median)                  kWh - median >= min_delta_kwh
    spike (live)    mean kW over a rolling window vs the   the same test, in kW (kWh per hour)
                    hour-of-week baseline
    threshold       one quantity's samples                 above `limit` for >= `duration`
    off_shift       the hour's kWh, outside production     kWh > margin_kwh
    stale           last reading time; counter vs power    silent > multiple x interval, or the
                                                           counter stands while power runs
    reconciliation  meter vs statement findings            |difference| beyond tolerance
    backlog         a sink's oldest unsent reading         older than max_age
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

# the production week is configuration; the off-shift rule reads it
from energyd.config.hours import ProductionHours as ProductionHours
from energyd.model import HOUR_MS

WEEK = timedelta(weeks=1)


class Level(enum.Enum):
    ON = "on"
    OFF = "off"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Verdict:
    level: Level
    figures: dict[str, float | str | None] = field(default_factory=dict)


HOLD = Verdict(Level.HOLD)


def band_level(value: float, fire_at: float, hysteresis: float) -> Level:
    """ON above `fire_at`, OFF at or below the release threshold, HOLD in between."""
    if value > fire_at:
        return Level.ON
    if value <= fire_at - abs(fire_at) * hysteresis:
        return Level.OFF
    return Level.HOLD


def band(value: float, fire_at: float, hysteresis: float, figures: dict) -> Verdict:
    """`band_level`, with the figures an event carries."""
    release_at = fire_at - abs(fire_at) * hysteresis
    figures = {**figures, "fire_at": round(fire_at, 6), "release_at": round(release_at, 6)}
    if value > fire_at:
        return Verdict(Level.ON, figures)
    if value <= release_at:
        return Verdict(Level.OFF, figures)
    return Verdict(Level.HOLD, figures)


# --- spike -------------------------------------------------------------------------------


def same_hour_of_week(hour_ms: int, weeks: int, tz: tzinfo) -> list[int]:
    """Start (UTC ms) of the same local hour of the week, 1..`weeks` weeks back.

    Taken on the site's wall clock, so Monday 07:00 stays Monday 07:00 across a DST change.
    """
    local = datetime.fromtimestamp(hour_ms / 1000, tz=UTC).astimezone(tz)
    out = []
    for k in range(1, weeks + 1):
        prev = (local - k * WEEK).astimezone(UTC)  # wall-clock arithmetic, then back to UTC
        ms = int(prev.timestamp() * 1000)
        out.append(ms - ms % HOUR_MS)
    return out


def baseline(hour_ms: int, history: Mapping[int, float], weeks: int, tz: tzinfo,
             min_weeks: int | None = None) -> tuple[float | None, int]:
    """Median kWh of the same hour of the week over the last `weeks` weeks, and how many
    weeks it rests on; None while fewer than `min_weeks` (default half of `weeks`) are known,
    since one odd week is no baseline."""
    need = min_weeks if min_weeks is not None else max(1, (weeks + 1) // 2)
    values = [history[h] for h in same_hour_of_week(hour_ms, weeks, tz) if h in history]
    if len(values) < need:
        return None, len(values)
    return float(statistics.median(values)), len(values)


def spike(value: float, base: float | None, *, factor: float, min_delta: float,
          hysteresis: float, unit: str = "kwh") -> Verdict:
    """`value` against `base`: above by the factor AND by the absolute margin.

    The margin keeps a quiet hour (a base of 2 kWh) from firing on 4 kWh; the factor keeps a
    big load's normal swing from firing on a few percent.
    """
    if base is None:
        return HOLD
    fire_at = max(base * factor, base + min_delta)
    return band(value, fire_at, hysteresis,
                {unit: round(value, 6), f"baseline_{unit}": round(base, 6),
                 "factor": round(value / base, 4) if base > 0 else None})


def spike_level(value: float, base: float | None, *, factor: float, min_delta: float,
                hysteresis: float) -> Level:
    """The level `spike` would give, without its figures (the live path's common case)."""
    if base is None:
        return Level.HOLD
    return band_level(value, max(base * factor, base + min_delta), hysteresis)


class RollingMean:
    """Mean of a gauge over the samples of the last `window` seconds (live spike).

    Polls are evenly spaced, so the plain mean of the samples in (latest - window, latest]
    is the time average; with `window` equal to the poll interval it is the latest poll.
    """

    def __init__(self, window_s: float):
        self.window_ms = int(window_s * 1000)
        self._samples: deque[tuple[int, float]] = deque()
        self._sum = 0.0

    def add(self, t_ms: int, value: float) -> None:
        if self._samples and t_ms <= self._samples[-1][0]:
            return  # out of order or a replay: the window only moves forward
        self._samples.append((t_ms, value))
        self._sum += value
        horizon = t_ms - self.window_ms
        while self._samples[0][0] <= horizon:
            self._sum -= self._samples.popleft()[1]
        if len(self._samples) == 1:
            self._sum = value  # no float drift carried over a whole run

    def mean(self) -> float | None:
        if not self._samples:
            return None
        return self._sum / len(self._samples)

    @property
    def samples(self) -> int:
        return len(self._samples)


# --- threshold ---------------------------------------------------------------------------


class Threshold:
    """A value above `limit` for at least `duration` seconds fires; at or below
    limit - |limit| x hysteresis it clears."""

    def __init__(self, limit: float, duration_s: float, hysteresis: float):
        self.limit = limit
        self.duration_ms = int(duration_s * 1000)
        self.hysteresis = hysteresis
        self.above_since: int | None = None
        self.peak: float | None = None

    def add(self, t_ms: int, value: float, *, active: bool = True) -> Verdict:
        """`active`: whether an episode of this threshold is going on; if not, a value below
        the limit has nothing to end, and its verdict is HOLD without figures."""
        if value > self.limit:
            if self.above_since is None:
                self.above_since, self.peak = t_ms, value
            self.peak = max(self.peak or value, value)
            held = t_ms - self.above_since
            figures = {"value": value, "limit": self.limit, "peak": self.peak,
                       "above_s": held / 1000}
            return Verdict(Level.ON, figures) if held >= self.duration_ms else HOLD
        self.above_since = self.peak = None
        if not active:
            return HOLD
        return band(value, self.limit, self.hysteresis, {"value": value, "limit": self.limit})


# --- off-shift ---------------------------------------------------------------------------


def off_shift(kwh: float | None, *, off_shift_hour: bool, margin: float,
              hysteresis: float) -> Verdict:
    """Energy in an hour outside production above `margin` kWh (what a leak or a forgotten
    load draws while nobody works). The first production hour ends the episode."""
    if not off_shift_hour:
        return Verdict(Level.OFF, {"production": "yes"})
    if kwh is None:
        return HOLD
    return band(kwh, margin, hysteresis, {"kwh": round(kwh, 6), "margin_kwh": margin})


# --- stale -------------------------------------------------------------------------------


def silent(now_ms: int, last_seen_ms: int | None, *, interval_s: float, multiple: float,
           hysteresis: float) -> Verdict:
    """A device that has sent nothing for longer than `multiple` x its interval."""
    if last_seen_ms is None:
        return HOLD
    age_s = (now_ms - last_seen_ms) / 1000
    v = band(age_s, interval_s * multiple, hysteresis,
             {"reason": "silent", "silent_s": round(age_s, 3), "interval_s": interval_s})
    return v


class CounterWatch:
    """An energy counter that stands still while the power readings say energy flows.

    The power since the counter last moved is integrated; once it adds up to `stuck_kwh`
    over more than `multiple` x interval, the counter is stuck (a frozen register, a meter
    whose pulse input died). Any step of the counter clears it.
    """

    def __init__(self, *, interval_s: float, multiple: float, stuck_kwh: float):
        self.min_ms = int(interval_s * multiple * 1000)
        self.stuck_kwh = stuck_kwh
        self.value: float | None = None
        self.since: int | None = None
        self.kwh = 0.0
        self._power: tuple[int, float] | None = None
        self.moved = False

    def counter(self, t_ms: int, value: float) -> None:
        if self.value is None or value != self.value:
            self.moved = self.value is not None
            self.value, self.since, self.kwh = value, t_ms, 0.0

    def power(self, t_ms: int, kw: float) -> None:
        if self._power is not None and self.since is not None and t_ms > self._power[0]:
            t0, p0 = self._power
            # trapezoid from the later of the last power sample and the counter's last step
            start = max(t0, self.since)
            if t_ms > start:
                self.kwh += max(0.0, (p0 + kw) / 2) * (t_ms - start) / HOUR_MS
        self._power = (t_ms, kw)

    def verdict(self, now_ms: int) -> Verdict:
        if self.since is None:
            return HOLD
        stood_s = (now_ms - self.since) / 1000
        if self.kwh >= self.stuck_kwh and now_ms - self.since > self.min_ms:
            return Verdict(Level.ON, {"reason": "counter_stuck", "counter": self.value,
                                      "stuck_s": round(stood_s, 3),
                                      "kwh_by_power": round(self.kwh, 6)})
        if self.moved and self.kwh < self.stuck_kwh * 0.5:
            return Verdict(Level.OFF, {"reason": "counter_moving"})
        return HOLD


def stale(quiet: Verdict, stuck: Verdict) -> Verdict:
    """One stale episode per device: silent or stuck, whichever holds; clear when neither."""
    if quiet.level is Level.ON:
        return quiet
    if stuck.level is Level.ON:
        return stuck
    if quiet.level is Level.OFF and stuck.level is not Level.ON:
        return Verdict(Level.OFF, {**stuck.figures, **quiet.figures})
    return HOLD


# --- reconciliation and backlog ----------------------------------------------------------


def reconciliation(meter_kwh: float, statement_kwh: float, *, tolerance: float,
                   hysteresis: float) -> Verdict:
    """Meter total against the supplier's statement for one billing period."""
    if statement_kwh == 0:
        diff = 0.0 if meter_kwh == 0 else 1.0
    else:
        diff = abs(meter_kwh - statement_kwh) / abs(statement_kwh)
    return band(diff, tolerance, hysteresis,
                {"meter_kwh": round(meter_kwh, 6), "statement_kwh": round(statement_kwh, 6),
                 "difference": round(diff, 6), "tolerance": tolerance})


def backlog(now_ms: int, count: int, oldest_ms: int | None, *, max_age_s: float,
            hysteresis: float) -> Verdict:
    """A sink whose oldest unsent reading is older than `max_age_s`: the sink is down or
    refusing, and the local store is filling."""
    if count == 0 or oldest_ms is None:
        return Verdict(Level.OFF, {"backlog": count})
    age = (now_ms - oldest_ms) / 1000
    return band(age, max_age_s, hysteresis, {"backlog": count, "oldest_age_s": round(age, 3)})


def hours(start_ms: int, end_ms: int) -> Iterable[int]:
    """Hour starts in [start_ms, end_ms)."""
    h = start_ms - start_ms % HOUR_MS
    while h < end_ms:
        if h >= start_ms:
            yield h
        h += HOUR_MS
