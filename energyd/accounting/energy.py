"""From a cumulative counter to energy per hour, with every doubtful step told apart.

A counter's samples are cut into *blocks*: runs of samples joined by links the counter can
vouch for (it went up, by no more than the device's rated power could have drawn in the
time). Inside a block the counter is continuous, so the energy between any two instants is
the difference of the counter linearly interpolated at them:

- a link no longer than `max_gap` is metered time (it counts towards `coverage`);
- a longer link is a polling gap with a continuous counter: its exact total is spread over
  the gap in proportion to time (`meter_interpolated`).

Between blocks the counter cannot be trusted and that time is *missing*; the rollup fills it
from a statement or an estimate. What breaks a block:

- a step back that a configured rollover explains and the rating allows is a **wrap**: the
  block goes on, counting `rollover` more (no negative hours);
- a single sample out of line with both neighbours (a read glitch, a drop to zero and
  back) is a **glitch**: that sample is dropped;
- any other step back is a **reset** (the counter restarts near zero) or a **replacement**
  (it continues from some other value), and a step up beyond the rating is a **jump**: the
  energy of that link is unknown and never counted.

Without `rated_power_kw` forward jumps cannot be judged and are taken as energy; configure
it for every accounting meter. Power integration (`integrate_power`) gives the same blocks
from active power for devices that have no counter, and is flagged as such.

Pure functions over lists of epoch milliseconds and floats; nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import mul, sub

from energyd.model import HOUR_MS

PLAUSIBILITY_MARGIN = 1.1  # a link may carry 10% more than rated power x elapsed time
PLAUSIBILITY_SLACK = 0.5  # plus this much (counter units): register resolution, rounding


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """How to read one counter.

    `rated_per_hour`: the most the counter can advance in an hour (rated power in kW for a
    kWh counter); None disables the check of forward jumps. `rollover`: the value at which
    the counter wraps to zero. `max_gap_ms`: samples further apart are a polling gap.
    """

    max_gap_ms: int
    rated_per_hour: float | None = None
    rollover: float | None = None
    margin: float = PLAUSIBILITY_MARGIN
    slack: float = PLAUSIBILITY_SLACK

    def limit(self, dt_ms: int) -> float:
        if self.rated_per_hour is None:
            return math.inf
        return self.rated_per_hour * self.margin * dt_ms / HOUR_MS + self.slack


@dataclass(frozen=True, slots=True)
class Event:
    time_ms: int
    kind: str  # wrap | glitch | reset | replacement | jump | power_gap
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

    @property
    def missing_ms(self) -> int:
        return sum(b - a for a, b in self.missing)

    @property
    def measured(self) -> float:
        return self.metered + self.interpolated


def analyse_counter(times: Sequence[int], values: Sequence[float], spec: CounterSpec) -> Trace:
    """Cut a counter's samples (sorted by time, distinct times) into continuous blocks."""
    n = len(times)
    if n == 0:
        return Trace([], [])
    if n == 1:
        return Trace([Block([times[0]], [float(values[0])])], [])
    dts = list(map(sub, times[1:], times[:-1]))
    dvs = list(map(sub, values[1:], values[:-1]))
    # The common case, checked at C speed: a counter that only rose, plausibly, with no gap.
    # The largest step against the shortest interval is a sufficient test of every link at
    # regular polling; only when it fails is each link weighed on its own.
    if min(dvs) >= 0 and max(dts) <= spec.max_gap_ms and (
        spec.rated_per_hour is None
        or max(dvs) <= spec.limit(min(dts))
        or max(map(sub, dvs, map(mul, dts, repeat(
            spec.rated_per_hour * spec.margin / HOUR_MS))))
        <= spec.slack
    ):
        # REAL columns come back as floats already
        return Trace([Block(list(times), list(values))], [])
    return _analyse_slow(times, values, spec)


def _analyse_slow(times: Sequence[int], values: Sequence[float], spec: CounterSpec) -> Trace:
    n = len(times)
    blocks: list[Block] = []
    events: list[Event] = []
    cur = Block([times[0]], [float(values[0])])
    prev_raw = float(values[0])
    offset = 0.0
    i = 1
    while i < n:
        t, v = times[i], float(values[i])
        pt = cur.times[-1]
        dt = t - pt
        dv = v - prev_raw
        limit = spec.limit(dt)
        ok = 0 <= dv <= limit
        if not ok and dv < 0 and spec.rollover is not None:
            wrapped = v + spec.rollover - prev_raw
            plausible = wrapped <= limit if spec.rated_per_hour is not None \
                else prev_raw >= 0.9 * spec.rollover
            if wrapped >= 0 and plausible:
                offset += spec.rollover
                events.append(Event(t, "wrap", prev_raw, v))
                ok = True
        if ok:
            if dt > spec.max_gap_ms:
                cur.gaps.append((pt, t, v + offset - cur.values[-1]))
            cur.times.append(t)
            cur.values.append(v + offset)
            prev_raw = v
            i += 1
            continue
        # One sample out of line with both neighbours is a glitch, not a break.
        if i + 1 < n:
            dv2 = float(values[i + 1]) - prev_raw
            if 0 <= dv2 <= spec.limit(times[i + 1] - pt):
                events.append(Event(t, "glitch", prev_raw, v))
                i += 1
                continue
        if dv < 0:
            kind = "reset" if v <= min(spec.limit(dt), 0.01 * prev_raw + spec.slack) \
                or v <= spec.slack else "replacement"
        else:
            kind = "jump"
        events.append(Event(t, kind, prev_raw, v))
        blocks.append(cur)
        cur = Block([t], [v])
        prev_raw = v
        offset = 0.0
        i += 1
    blocks.append(cur)
    return Trace(blocks, events)


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
        out.append(he)
    return out
