"""From a cumulative counter to energy per hour, with every doubtful step told apart.

A counter's samples are cut into *blocks*: runs of samples joined by links the counter can
vouch for (it went up, by no more than the device's rated power could have drawn in the
time). Inside a block the counter is continuous, so the energy between any two instants is
the difference of the counter linearly interpolated at them:

- a link no longer than `max_gap` is metered time (it counts towards `coverage`);
- a longer link is a polling gap with a continuous counter: its exact total is spread over
  the gap in proportion to time (`meter_interpolated`).

Before that, `validation.validate` sets aside the samples that are not the counter's (read
glitches high or low, dropouts that read 0.0 or a stuck value, stale registers that catch up
in one link); a dropout or stale stretch is bridged by the counter's delta across it, spread
as `meter_interpolated`. What is set aside is listed in `Trace.findings` and in each hour.

Between blocks the counter cannot be trusted and that time is *missing*; the rollup fills it
from a statement or an estimate. What breaks a block:

- a step back that a configured rollover explains and the rate limit allows is a **wrap**:
  the block goes on, counting `rollover` more (no negative hours);
- any other step back is a **reset** (the counter restarts near zero) or a **replacement**
  (it continues from some other value), and a step up beyond the rate limit is a **jump**:
  the energy of that link is unknown and never counted.

The rate limit is the rating, or one learned from the device's history (validation.py says
how); with neither, forward jumps cannot be judged and only the neighbours decide. Power
integration (`integrate_power`) gives the same blocks from active power for devices that
have no counter, and is flagged as such.

Pure functions over lists of epoch milliseconds and floats; nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import mul, sub

from energyd.accounting.validation import (
    LEARN_FACTOR,
    MAX_REPAIR_MS,
    PLAUSIBILITY_MARGIN,
    PLAUSIBILITY_SLACK,
    Finding,
    Limits,
    sustained,
    validate,
    wraps,
)
from energyd.model import HOUR_MS

DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """How to read one counter.

    `rated_per_hour`: the most the counter can advance in an hour (rated power in kW for a
    kWh counter, rated flow for a fuel counter); `learned`: (UTC day, rate per hour) learned
    from the device's history, used where there is no rating (validation.learn_rates).
    `rollover`: the value at which the counter wraps to zero. `max_gap_ms`: samples further
    apart are a polling gap.
    """

    max_gap_ms: int
    rated_per_hour: float | None = None
    rollover: float | None = None
    margin: float = PLAUSIBILITY_MARGIN
    slack: float = PLAUSIBILITY_SLACK
    learned: tuple[tuple[int, float], ...] = ()

    @property
    def limits(self) -> Limits:
        return Limits(self.rated_per_hour, self.learned, self.margin, self.slack)

    def limit(self, dt_ms: int, t_ms: int = 0) -> float:
        return self.limits.limit(dt_ms, t_ms)

    def steady_rate(self, start: int, end: int) -> float | None:
        """The lowest rate that applies to every link in [start, end], if one does."""
        if self.rated_per_hour is not None:
            return self.rated_per_hour
        days = range(start - start % DAY_MS, end + 1, DAY_MS)
        got = dict(self.learned)
        if not days or any(d not in got for d in days):
            return None
        return min(got[d] for d in days)


@dataclass(frozen=True, slots=True)
class Event:
    time_ms: int
    kind: str  # wrap | reset | replacement | jump | power_gap
    before: float
    after: float


@dataclass(slots=True)
class Block:
    """Samples over which the counter is continuous; `values` are unwrapped."""

    times: list[int]
    values: list[float]
    gaps: list[tuple[int, int, float]] = field(default_factory=list)  # (t0, t1, energy) > max_gap

    @property
    def start(self) -> int:
        return self.times[0]

    @property
    def end(self) -> int:
        return self.times[-1]

    def value_at(self, t: int) -> float:
        times, values = self.times, self.values
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            return values[0]
        if i >= len(times) - 1:
            return values[-1]
        t0, t1 = times[i], times[i + 1]
        return values[i] + (values[i + 1] - values[i]) * (t - t0) / (t1 - t0)


@dataclass(slots=True)
class Trace:
    blocks: list[Block]
    events: list[Event]
    power_integrated: bool = False
    findings: list[Finding] = field(default_factory=list)  # samples set aside, by time
    limit_basis: str = ""
    validated: bool = False  # each sample was weighed (not the quick all-clear)

    @property
    def first(self) -> int | None:
        return self.blocks[0].start if self.blocks else None


@dataclass(slots=True)
class HourEnergy:
    """What the readings say about one device-hour, before any gap is filled."""

    hour: int
    metered: float = 0.0  # from links no longer than max_gap
    interpolated: float = 0.0  # from longer links with a continuous counter
    meter_ms: int = 0
    interp_ms: int = 0
    missing: list[tuple[int, int]] = field(default_factory=list)  # intervals with no energy
    events: list[Event] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def missing_ms(self) -> int:
        return sum(b - a for a, b in self.missing)

    @property
    def measured(self) -> float:
        return self.metered + self.interpolated


def analyse_counter(times: Sequence[int], values: Sequence[float], spec: CounterSpec) -> Trace:
    """Validate a counter's samples (sorted by time, distinct times) and cut the ones kept
    into continuous blocks."""
    n = len(times)
    if n == 0:
        return Trace([], [])
    if n == 1:
        return Trace([Block([times[0]], [float(values[0])])], [])
    limits = spec.limits
    dts = list(map(sub, times[1:], times[:-1]))
    dvs = list(map(sub, values[1:], values[:-1]))
    # The common case, checked at C speed: a counter that only rose, within a rate limit,
    # with no gap. The largest step against the shortest interval is a sufficient test of
    # every link at regular polling; only when it fails is each link weighed on its own.
    # Validation would keep every sample of such a span (nothing to set aside is possible
    # while every link is within a finite limit), so skipping it changes nothing.
    rate = spec.steady_rate(times[0], times[-1])
    if rate is not None and min(dvs) >= 0 and max(dts) <= spec.max_gap_ms and (
        max(dvs) <= rate * spec.margin * min(dts) / HOUR_MS + spec.slack
        or max(map(sub, dvs, map(mul, dts, repeat(rate * spec.margin / HOUR_MS))))
        <= spec.slack
    ):
        # REAL columns come back as floats already
        return Trace([Block(list(times), list(values))], [], limit_basis=limits.basis)
    checked = validate(times, values, limits, spec.rollover)
    trace = _cut(checked.times, checked.values, spec, set(checked.repaired))
    trace.findings = checked.findings
    trace.limit_basis = limits.basis
    trace.validated = True
    return trace


def _cut(times: Sequence[int], values: Sequence[float], spec: CounterSpec,
         repaired: set[tuple[int, int]]) -> Trace:
    n = len(times)
    blocks: list[Block] = []
    events: list[Event] = []
    if n == 0:
        return Trace(blocks, events)
    cur = Block([times[0]], [float(values[0])])
    prev_raw = float(values[0])
    offset = 0.0
    local = sustained(times, values) if spec.rated_per_hour is None and (
        spec.learned or spec.rollover is not None) else None
    for i in range(1, n):
        t, v = times[i], float(values[i])
        pt = cur.times[-1]
        dt = t - pt
        dv = v - prev_raw
        limit = spec.limit(dt, t)
        if local is not None and math.isfinite(limit):
            limit = max(limit, spec.margin * LEARN_FACTOR * local[i] * dt / HOUR_MS)
        ok = 0 <= dv <= limit
        if not ok and dv < 0 and spec.rollover is not None \
                and wraps(prev_raw, v, spec.rollover, limit,
                          None if local is None else local[i] * dt / HOUR_MS):
            offset += spec.rollover
            events.append(Event(t, "wrap", prev_raw, v))
            ok = True
        if ok:
            if dt > spec.max_gap_ms or (pt, t) in repaired:
                cur.gaps.append((pt, t, v + offset - cur.values[-1]))
            cur.times.append(t)
            cur.values.append(v + offset)
            prev_raw = v
            continue
        if dv < 0:
            kind = "reset" if v <= min(limit, 0.01 * prev_raw + spec.slack) \
                or v <= spec.slack else "replacement"
        else:
            kind = "jump"
        events.append(Event(t, kind, prev_raw, v))
        blocks.append(cur)
        cur = Block([t], [v])
        prev_raw = v
        offset = 0.0
    blocks.append(cur)
    return Trace(blocks, events)


def open_tail(trace: Trace) -> int | None:
    """Where the counter's last samples are still undecided: the start of a value held at the
    end (a dropout or stale registers whose end has not come yet), or the earliest sample set
    aside or break within MAX_REPAIR_MS of the end (later samples may show it was a dropout).
    Hours from there on may change when the next samples arrive; None when nothing is open."""
    if trace.power_integrated or not trace.blocks:
        return None
    last = trace.blocks[-1]
    end = last.end
    out = None
    times, values = last.times, last.values
    k = len(values) - 1
    while k > 0 and values[k - 1] == values[-1]:
        k -= 1
    if k < len(values) - 1:
        out = times[k]
    recent = [e.time_ms for e in trace.events if e.time_ms >= end - MAX_REPAIR_MS] + \
        [f.time_ms for f in trace.findings if f.time_ms >= end - MAX_REPAIR_MS]
    if recent:
        out = min(recent) if out is None else min(out, min(recent))
    return out


def integrate_power(times: Sequence[int], kw: Sequence[float], max_gap_ms: int, *,
                    sign: float = 1.0) -> Trace:
    """Blocks of integrated energy (kWh, trapezoids) from power samples no more than
    `max_gap_ms` apart; power cannot be trusted across a longer gap, so it breaks the block.
    `sign` picks the direction counted (+1 import); the other direction counts zero."""
    blocks: list[Block] = []
    events: list[Event] = []
    if not times:
        return Trace([], [], power_integrated=True)
    cur = Block([times[0]], [0.0])
    p_prev = max(0.0, sign * kw[0])
    for t, p in zip(times[1:], kw[1:], strict=True):
        p = max(0.0, sign * p)
        dt = t - cur.times[-1]
        if dt > max_gap_ms:
            events.append(Event(t, "power_gap", 0.0, 0.0))
            blocks.append(cur)
            cur = Block([t], [0.0])
        else:
            cur.times.append(t)
            cur.values.append(cur.values[-1] + (p_prev + p) / 2 * dt / HOUR_MS)
        p_prev = p
    blocks.append(cur)
    return Trace(blocks, events, power_integrated=True)


def hourly(trace: Trace, hours: Sequence[int]) -> list[HourEnergy]:
    """Energy per hour (start ms, sorted) from a trace; time no block spans is missing."""
    blocks = trace.blocks
    starts = [b.start for b in blocks]
    ev_times = [e.time_ms for e in trace.events]
    f_times = [f.time_ms for f in trace.findings]
    out: list[HourEnergy] = []
    for h0 in hours:
        h1 = h0 + HOUR_MS
        he = HourEnergy(h0)
        cursor = h0
        # blocks that may overlap: from the last one starting at or before h0
        j = max(0, bisect.bisect_right(starts, h0) - 1)
        while j < len(blocks) and blocks[j].start < h1:
            b = blocks[j]
            j += 1
            a, z = max(h0, b.start), min(h1, b.end)
            if z <= a:
                continue
            if a > cursor:
                he.missing.append((cursor, a))
            cursor = z
            energy = b.value_at(z) - b.value_at(a)
            span = z - a
            interp_e, interp_ms = 0.0, 0
            for g0, g1, ge in b.gaps:
                o0, o1 = max(a, g0), min(z, g1)
                if o1 > o0:
                    interp_ms += o1 - o0
                    interp_e += ge * (o1 - o0) / (g1 - g0)
            if interp_ms == span:  # all of it spread over a gap: no rounding residue
                interp_e = energy
            he.interpolated += interp_e
            he.metered += max(energy - interp_e, 0.0)
            he.interp_ms += interp_ms
            he.meter_ms += span - interp_ms
        if cursor < h1:
            he.missing.append((cursor, h1))
        lo, hi = bisect.bisect_left(ev_times, h0), bisect.bisect_left(ev_times, h1)
        he.events = trace.events[lo:hi]
        if trace.findings:
            lo, hi = bisect.bisect_left(f_times, h0), bisect.bisect_left(f_times, h1)
            he.findings = trace.findings[lo:hi]
        out.append(he)
    return out
