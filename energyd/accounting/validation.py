"""Counter validation: which stored samples a counter's energy may be computed from.

Between the store and the rollup, for every cumulative counter (active import and export,
reactive, fuel volume and mass). Pure functions over one series' samples (epoch ms, values),
sorted by time; nothing here reads a clock or the store, and nothing stored is altered: a
sample set aside is only left out of the computation and listed with its reason.

What is set aside, and why:

- **out of line** (`above_neighbours`, `below_neighbours`): up to `GLITCH_RUN` samples
  that lie above the next good sample or below the last good one, where the good samples on
  either side join plausibly. High or low, with or without a rating: the neighbours decide;
  a rate limit only sharpens what "plausibly" means.
- **held** (`dropout`): a run of one repeated value out of line with its neighbours (a
  communication dropout that reads 0.0, a register stuck at 65535) that ends where the
  counter's own trend continues. The samples are set aside and the counter's delta across
  the run is spread over it (`meter_interpolated`).
- **stale**: the counter held one value and then caught up in one link that the rate limit
  refuses (but allows over the whole run), or, where no limit is known, after holding for
  `STALE_MIN_LINKS` links or more, in one link that carried the run's advance at
  `STALE_RATIO` times its rate and by many of the counter's own steps, while the advance over
  the run matched the trend before it (a gateway serving stale registers). The held samples
  after the first are set aside and the delta across the run is spread over it.

What stays a break in the counter (energy.py tells them apart): a step back that a configured
rollover explains (wrap), a restart near zero (reset), a continuation from some other value
(replacement), and a step up beyond the rate limit that does not come back (jump).

The plausible-rate limit of a link is `rate x margin x elapsed + slack`, where the rate is
the device's rating (`rated_power_kw` for kWh counters, `rated_flow` for a fuel counter, in
counter units per hour), or else a rate learned from the device's own history: `LEARN_FACTOR`
x the highest of the daily 99th percentiles of its link rates over the `LEARN_DAYS` UTC days
before the link's day (days polled for at least half their length, in at least
`LEARN_MIN_LINKS` links, count). A learned limit
gives way where the counter sustains a higher rate over the links on either side
(`sustained`): history bounds a lone step, not a load that rose. A day's limit thus
depends only on stored samples of earlier days, the same whatever window is recomputed. A
counter with neither a rating nor that much history is judged by its neighbours alone.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from energyd.model import HOUR_MS

DAY_MS = 24 * HOUR_MS
PLAUSIBILITY_MARGIN = 1.1  # a link may carry 10% more than the rate x elapsed time
PLAUSIBILITY_SLACK = 0.5  # plus this much (counter units): register resolution, rounding
GLITCH_RUN = 3  # samples of any value out of line, at most, that still count as a glitch
MAX_REPAIR_MS = 12 * HOUR_MS  # a held run longer than this is not repaired
STALE_MIN_LINKS = 3  # a value repeated over fewer links is an idle load, not stale registers
STALE_RATIO = 5.0  # the catch-up link's rate against the rate across the whole run
WRAP_SHARE = 0.01  # without a limit, the most of a turn one link may carry through a wrap
LEARN_DAYS = 7
SUSTAIN_LINKS = 3
LEARN_MIN_LINKS = 24
LEARN_MIN_COVER_MS = 12 * HOUR_MS  # a day teaches a rate when half of it was polled
LEARN_FACTOR = 2.0
LEARN_QUANTILE = 0.99


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Limits:
    """How fast a counter can plausibly advance.

    `rated_per_hour`: the device's rating in counter units per hour, or None. `learned`:
    (UTC day start ms, rate per hour) for the days a rate was learned, sorted; used where
    there is no rating. `margin` and `slack` widen every limit.
    """

    rated_per_hour: float | None = None
    learned: tuple[tuple[int, float], ...] = ()
    margin: float = PLAUSIBILITY_MARGIN
    slack: float = PLAUSIBILITY_SLACK

    def rate(self, t_ms: int) -> float | None:
        if self.rated_per_hour is not None:
            return self.rated_per_hour
        if not self.learned:
            return None
        i = bisect.bisect_right(self.learned, (t_ms, math.inf)) - 1
        if i < 0 or self.learned[i][0] != t_ms - t_ms % DAY_MS:
            return None
        return self.learned[i][1]

    def limit(self, dt_ms: int, t_ms: int) -> float:
        """The most a link of `dt_ms` ending at `t_ms` may carry."""
        rate = self.rate(t_ms)
        if rate is None:
            return math.inf
        return rate * self.margin * dt_ms / HOUR_MS + self.slack

    @property
    def basis(self) -> str:
        if self.rated_per_hour is not None:
            return f"rating: {self.rated_per_hour:g} per hour"
        if self.learned:
            return (f"learned: {LEARN_FACTOR:g} x the daily {LEARN_QUANTILE:.0%} link rate "
                    f"over the previous {LEARN_DAYS} days")
        return "none: no rating and too little history; neighbours only"


@dataclass(frozen=True, slots=True)
class Finding:
    """A stored sample left out of the energy computation (the stored value is untouched)."""

    time_ms: int
    value: float
    kind: str  # above_neighbours | below_neighbours | dropout | stale
    reason: str


@dataclass(slots=True)
class Validated:
    """The samples energy is computed from, and what was set aside."""

    times: list[int]
    values: list[float]
    findings: list[Finding] = field(default_factory=list)
    repaired: list[tuple[int, int]] = field(default_factory=list)  # links spread as interpolated


def wraps(before: float, after: float, rollover: float, limit: float,
          typical: float | None = None) -> bool:
    """Whether a step back from `before` to `after` is the counter wrapping at `rollover`:
    the advance through the wrap within the limit; with no limit, a register read many times
    a turn: near the top before, no more than WRAP_SHARE of a turn in the link, and (given
    `typical`, what the links around it advance) not far beyond the links around it."""
    wrapped = after + rollover - before
    if math.isfinite(limit):
        return 0 <= wrapped <= limit
    return before >= (1 - WRAP_SHARE) * rollover and 0 <= wrapped <= WRAP_SHARE * rollover \
        and (typical is None or wrapped <= STALE_RATIO * typical + PLAUSIBILITY_SLACK)


def sustained(times: Sequence[int], values: Sequence[float]) -> list[float]:
    """Per sample i, the rate (per hour) the counter kept up around the link into i: the
    higher of the median rates of the `SUSTAIN_LINKS` links before it and after it. A
    learned limit gives way to it, so a load that really rose (a plant back from a week's
    shutdown) is not a string of jumps, while a lone step is still judged."""
    n = len(times)
    rates = [0.0] * n  # rates[i]: the link from i - 1 to i
    for i in range(1, n):
        dt = times[i] - times[i - 1]
        rates[i] = max(0.0, (values[i] - values[i - 1]) * HOUR_MS / dt) if dt > 0 else 0.0
    out = [0.0] * n
    k = SUSTAIN_LINKS
    for i in range(1, n):
        before = sorted(rates[max(1, i - k):i])
        after = sorted(rates[i + 1:i + 1 + k])
        out[i] = max(before[len(before) // 2] if len(before) == k else 0.0,
                     after[len(after) // 2] if len(after) == k else 0.0)
    return out


def learn_rates(times: Sequence[int], values: Sequence[float], max_gap_ms: int,
                days: Sequence[int]) -> tuple[tuple[int, float], ...]:
    """(day, learned rate per hour) for each UTC day start in `days`, from the samples of the
    `LEARN_DAYS` days before it (the caller passes at least those)."""
    per_day: dict[int, list[float]] = {}
    covered: dict[int, int] = {}
    for i in range(1, len(times)):
        dt = times[i] - times[i - 1]
        dv = values[i] - values[i - 1]
        if 0 < dt <= max_gap_ms and dv >= 0:
            day = times[i] - times[i] % DAY_MS
            per_day.setdefault(day, []).append(dv * HOUR_MS / dt)
            covered[day] = covered.get(day, 0) + dt
    q99: dict[int, float] = {}
    for day, rates in per_day.items():
        if len(rates) >= LEARN_MIN_LINKS and covered[day] >= LEARN_MIN_COVER_MS:
            rates.sort()
            q99[day] = rates[min(len(rates) - 1, int(LEARN_QUANTILE * len(rates)))]
    out = []
    for day in days:
        seen = [q99[d] for d in range(day - LEARN_DAYS * DAY_MS, day, DAY_MS) if d in q99]
        if seen and max(seen) > 0:
            out.append((day, LEARN_FACTOR * max(seen)))
    return tuple(out)


def validate(times: Sequence[int], values: Sequence[float], limits: Limits,
             rollover: float | None = None) -> Validated:
    """Set aside the samples that are not the counter's (see the module docstring)."""
    n = len(times)
    t = list(times)
    v = [float(x) for x in values]
    if n < 3:
        return Validated(t, v)
    keep = [True] * n
    findings: list[Finding] = []
    repaired: list[tuple[int, int]] = []

    local = sustained(t, v) if limits.rated_per_hour is None and (
        limits.learned or rollover is not None) else None

    def limit(a: int, b: int) -> float:
        """The most the counter may advance from sample a to sample b."""
        lim = limits.limit(t[b] - t[a], t[b])
        if local is not None and math.isfinite(lim):
            lim = max(lim, limits.margin * LEARN_FACTOR * local[b] * (t[b] - t[a]) / HOUR_MS)
        return lim

    def joins(a: int, b: int) -> bool:
        """Whether the counter can go from sample a to sample b."""
        dv = v[b] - v[a]
        lim = limit(a, b)
        if 0 <= dv <= lim:
            return True
        return dv < 0 and rollover is not None and wraps(
            v[a], v[b], rollover, lim,
            None if local is None else local[b] * (t[b] - t[a]) / HOUR_MS)

    # nxt[i]: the first sample after i with another value (a held run's end)
    nxt = [n] * n
    for k in range(n - 2, -1, -1):
        nxt[k] = k + 1 if v[k + 1] != v[k] else nxt[k + 1]
    last = 0  # the last sample kept
    i = 1
    while i < n:
        a = last
        ok = joins(a, i)
        b = None
        # a step back that a wrap would explain is still a dropout if the counter comes back
        if not ok or v[i] < v[a] or (v[i] > v[a] and nxt[i] < n and v[nxt[i]] < v[i]):
            b = _rejoin(t, v, a, i, joins)
        if b is None and (v[i] > v[a] or (v[i] < v[a] and rollover is not None)):
            s = _stale_run(t, v, keep, a, i, limit, rollover)
            if s is not None:
                for k in range(s + 1, a + 1):
                    keep[k] = False
                    findings.append(Finding(
                        t[k], v[k], "stale",
                        f"held at {v[k]:g} from {iso(t[s])} while the counter ran on (it "
                        f"caught up to {v[i]:g} at {iso(t[i])})"))
                repaired.append((t[s], t[i]))
                last = i
                i += 1
                continue
        if b is None:
            last = i  # in line, or a break the block cutter classifies
            i += 1
            continue
        same = len({v[k] for k in range(i, b)}) == 1
        held = b - i > GLITCH_RUN or (b - i > 1 and same)
        for k in range(i, b):
            keep[k] = False
            if held:
                kind, why = "dropout", (f"held at {v[k]:g} from {iso(t[i])} to {iso(t[b - 1])} "
                                        f"while the counter went from {v[a]:g} to {v[b]:g}")
            elif v[k] > v[b]:
                kind, why = "above_neighbours", f"above the next good sample ({v[b]:g})"
            else:
                kind, why = "below_neighbours", f"below the last good sample ({v[a]:g})"
            findings.append(Finding(t[k], v[k], kind, why))
        if held:
            repaired.append((t[a], t[b]))
        last = b
        i = b + 1
    kt = [t[k] for k in range(n) if keep[k]]
    kv = [v[k] for k in range(n) if keep[k]]
    return Validated(kt, kv, findings, repaired)


def _rejoin(t: list[int], v: list[float], a: int, i: int,
            joins: Callable[[int, int], bool]) -> int | None:
    """The first sample b after i that the counter joins from a, with every sample in
    [i, b) out of line (above v[b] or below v[a]): at most GLITCH_RUN samples of any values,
    or a run of one repeated value lasting no longer than MAX_REPAIR_MS."""
    n = len(t)
    held = v[i]
    same = True
    b = i + 1
    while b < n and t[b - 1] - t[i] <= MAX_REPAIR_MS:
        same = same and v[b - 1] == held
        run = b - i
        if run > GLITCH_RUN and not same:
            return None
        # b below a joins only through a wrap: then only a held run (a dropout across the
        # rollover) is out of line, a lone sample near the top is the counter's own
        if (v[b] >= v[a] or (same and run > 1 and v[b] != held)) and joins(a, b) and (
                (held > v[b] or held < v[a]) if same
                else all(v[k] > v[b] or v[k] < v[a] for k in range(i, b))):
            return b
        b += 1
    return None


def _stale_run(t: list[int], v: list[float], keep: list[bool], a: int, i: int,
               limit: Callable[[int, int], float], rollover: float | None) -> int | None:
    """When sample a ends a run of one held value and i catches up: the run's first sample,
    if the run is stale registers rather than an idle load or a coarse register's steps."""
    s = a
    while s > 0 and v[s - 1] == v[a] and keep[s - 1]:
        s -= 1
    if a == s or t[i] - t[s] > MAX_REPAIR_MS:
        return None
    dv = v[i] - v[a]
    if dv < 0:  # caught up through the rollover
        if rollover is None:
            return None
        dv += rollover
    link, span = t[i] - t[a], t[i] - t[s]
    lim = limit(a, i)
    if dv > lim:
        return s if dv <= limit(s, i) else None
    if math.isfinite(lim) or a - s < STALE_MIN_LINKS:
        return None  # the limit allows the catch-up, or too short to tell: an idle load
    # No limit refuses the catch-up: the trend before the run decides. The run must have
    # advanced as the counter did before it, all in the last link, by many of its steps.
    p = s
    while p > 0 and t[s] - t[p - 1] <= span and keep[p - 1]:
        p -= 1
    if p == s or v[s] <= v[p]:
        return None
    step = max(v[k + 1] - v[k] for k in range(p, s))
    before = (v[s] - v[p]) / (t[s] - t[p])
    across = dv / span
    if dv >= STALE_RATIO * step and dv / link >= STALE_RATIO * across \
            and 0.5 * before <= across <= 2.0 * before:
        return s
    return None
