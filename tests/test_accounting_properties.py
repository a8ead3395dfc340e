"""Properties of the counter -> hourly energy path over random counters with random faults.

A random load (flat within each hour) drives a counter (an incomer's kWh or a gas counter's
m3, rated or not) polled every two minutes for eight hours; faults are laid over it apart
from each other: out-of-line reads either way, runs of zeros, frozen registers, resets,
wraps, meter replacements, polling gaps, and a statement over the whole period that bills
the true energy. Whatever was drawn:

- the rows are the same whatever window is recomputed (one window, hour by hour, random
  splits), and a re-run writes nothing;
- no hour is negative, and no hour of a rated meter is above its plausible-rate limit;
- with no break in the counter (no reset, wrap-less rollover or replacement), the hours sum
  to the counter's true delta, whatever glitches, dropouts, stale runs and gaps it had;
- with a break and the statement, the statement period's hours sum to the statement.

`make test` runs a few dozen examples (a few seconds); `make test-long` runs the long profile
(HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.service import Accountant
from energyd.accounting.validation import PLAUSIBILITY_MARGIN, PLAUSIBILITY_SLACK
from energyd.config.loader import parse_config
from energyd.store import Store
from energyd.store.csvio import import_readings

settings.register_profile("default", max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

T0 = int(datetime(2026, 3, 3, 0, tzinfo=UTC).timestamp() * 1000)  # 08:00 in Shanghai
HOURS = 8
STEP = 120_000
RATED = 1000.0
ROLLOVER = 100_000.0
FAULTS = ("high", "low", "zeros", "frozen", "gap", "reset", "replacement")
BREAKS = ("reset", "replacement")


@dataclass
class Counter:
    times: list[int]
    values: list[float]
    true_delta: float  # what the load drew from T0 to the end
    hour_energy: list[float]
    breaks: bool = False
    faults: list[str] = field(default_factory=list)


@st.composite
def counters(draw: st.DrawFn) -> tuple[Counter, bool, bool]:
    rated = draw(st.booleans())
    wraps = draw(st.booleans())
    loads = draw(st.lists(st.sampled_from([0.0, 120.0, 300.0, 600.0, 900.0]),
                          min_size=HOURS + 3, max_size=HOURS + 3))
    # the load is constant within each hour from T0 - 1 h; every two-minute step a whole
    # number of kWh-thousandths so that values are exact
    times = list(range(T0 - HOUR_MS, T0 + (HOURS + 1) * HOUR_MS + 1, STEP))
    base = draw(st.sampled_from([5_000.0, ROLLOVER - 2_000.0 if wraps else 40_000.0]))
    true = []
    v = base
    for t in times:
        true.append(v)
        v += loads[(t - times[0]) // HOUR_MS] * STEP / HOUR_MS
    values = [x % ROLLOVER if wraps else x for x in true]
    n_faults = draw(st.integers(0, 3))
    kinds = draw(st.lists(st.sampled_from(FAULTS), min_size=n_faults, max_size=n_faults))
    # faults start on separate 100-minute slots inside [T0 + 20 min, end - 40 min]
    slots = draw(st.lists(st.integers(0, 3), min_size=n_faults, max_size=n_faults,
                          unique=True))
    keep = [True] * len(times)
    counter = Counter(times, values, 0.0, [])
    offset = 0.0  # what a reset or a replacement moves the register by from its start
    events: list[tuple[int, str, int]] = []
    for kind, slot in zip(kinds, slots, strict=True):
        i = times.index(T0 + 20 * 60_000 + slot * 100 * 60_000) \
            + draw(st.integers(0, 10))
        length = draw(st.integers(2, 20))  # samples, for runs and gaps
        events.append((i, kind, length))
    for i, kind, length in sorted(events):
        if kind == "high":
            values[i] = draw(st.sampled_from([9_999_999.0, values[i + 1] + 0.5]))
        elif kind == "low":
            values[i] = draw(st.sampled_from([0.0, values[i - 1] - 50.0]))
        elif kind == "zeros":
            for k in range(i, i + length):
                values[k] = 0.0
        elif kind == "frozen":
            for k in range(i + 1, i + length):
                values[k] = values[i]
        elif kind == "gap":
            for k in range(i, i + length):
                keep[k] = False
        elif kind in BREAKS:
            # a step up can only be judged against a rating
            new_start = 3.0 if kind == "reset" else draw(
                st.sampled_from([70_000.0, 500.0] if rated else [500.0]))
            shift = new_start - values[i]
            for k in range(i, len(values)):
                values[k] = round(values[k] + shift, 6)
            offset += shift
            counter.breaks = True
            if wraps:  # a replaced meter's rollover is not known: keep it simple
                wraps = False
    counter.times = [t for t, k in zip(times, keep, strict=True) if k]
    counter.values = [x for x, k in zip(values, keep, strict=True) if k]
    counter.true_delta = true[times.index(T0 + HOURS * HOUR_MS)] - true[times.index(T0)]
    counter.hour_energy = [loads[h + 1] for h in range(HOURS)]
    counter.faults = [f"{k} at {iso(times[i])} x{n}" for i, k, n in sorted(events)]
    return counter, rated, wraps or base == ROLLOVER - 2_000.0


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def accountant(tmp: Path, counter: Counter, rated: bool, rollover: bool,
               fuel: bool = False) -> Accountant:
    """An incomer (kWh), or a gas counter whose m3 count one MWh each (so rows read alike)."""
    quantity = "fuel_volume_m3" if fuel else "active_energy_import_kwh"
    extra = (f"    {'rated_flow' if fuel else 'rated_power_kw'}: {RATED}\n" if rated else "") \
        + (f"    counter_rollover: {ROLLOVER}\n" if rollover else "") \
        + ("    fuel: {quantity: fuel_volume_m3, ncv_gj_per_unit: 3.6, "
           "carbon_content_tc_per_gj: 0.0153}\n" if fuel else "")
    config = parse_config(f"""
site: {{name: prop, timezone: Asia/Shanghai, grid_region: CN-national}}
storage: {{path: {tmp / 'energyd.db'}}}
http: {{enabled: false}}
devices:
  - name: incomer
    role: {"fuel" if fuel else "grid_import"}
    driver: modbus
    modbus: {{host: 127.0.0.1, port: 1502}}
    registers: [{{quantity: {quantity}, address: 0}}]
{extra}accounting:
  residual_region: CN-national
""", "prop.yaml")
    store = Store.open(config.storage.path)
    text = "time,device,quantity,value\n" + "".join(
        f"{datetime.fromtimestamp(t / 1000, UTC).isoformat()},incomer,"
        f"{quantity},{v!r}\n"
        for t, v in zip(counter.times, counter.values, strict=True))
    import_readings(store, io.StringIO(text), "prop.csv")
    return Accountant(store, config)


def rows_of(acc: Accountant) -> list[tuple]:
    return [(r.hour, r.mwh, r.source, r.coverage, repr(sorted(r.detail.items())))
            for r in acc.rows(T0, T0 + HOURS * HOUR_MS)]


@given(counters(), st.lists(st.integers(1, HOURS - 1), max_size=3, unique=True),
       st.booleans(), st.booleans())
def test_counter_faults_keep_the_hours_right_whatever_the_window(
        drawn: tuple[Counter, bool, bool], cuts: list[int], statement: bool,
        fuel: bool) -> None:
    counter, rated, rollover = drawn
    statement = statement and not fuel  # statements bill purchased electricity
    now = T0 + (HOURS + 24) * HOUR_MS
    span = (T0, T0 + HOURS * HOUR_MS)
    bill = ""
    if statement:
        bill = ("account,period_start,period_end,energy_kwh\n"
                f"incomer,{datetime.fromtimestamp(span[0] / 1000, UTC).isoformat()},"
                f"{datetime.fromtimestamp(span[1] / 1000, UTC).isoformat()},"
                f"{counter.true_delta!r}\n")
    edges = [T0] + sorted(T0 + c * HOUR_MS for c in cuts) + [T0 + HOURS * HOUR_MS]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("whole", "hourly", "split"):
            (Path(tmp) / strategy).mkdir()
            acc = accountant(Path(tmp) / strategy, counter, rated, rollover, fuel)
            try:
                if bill:
                    acc.import_statements(io.StringIO(bill), "bill.csv", now)
                windows = {"whole": [span],
                           "hourly": [(h, h + HOUR_MS) for h in range(*span, HOUR_MS)],
                           "split": list(zip(edges[:-1], edges[1:], strict=True))}[strategy]
                for w in reversed(windows) if strategy == "split" else windows:
                    acc.recompute(w, now)
                assert acc.recompute(span, now).written == 0, "a re-run changed rows"
                results[strategy] = rows_of(acc)
            finally:
                acc.store.close()
    assert results["whole"] == results["hourly"] == results["split"], counter.faults
    rows = results["whole"]
    assert len(rows) == HOURS
    kwh = [mwh * (1 if fuel else 1000) for _, mwh, *_ in rows]  # counter units
    assert min(kwh) >= 0
    if rated:
        assert max(kwh) <= RATED * PLAUSIBILITY_MARGIN + PLAUSIBILITY_SLACK + 1e-6
    # a continuous counter sums to its delta; a broken one, with the statement, to the bill
    # (which is the true energy)
    if not counter.breaks or statement:
        assert sum(kwh) == _approx(counter.true_delta), (counter.faults, kwh, rated, rollover,
                                                         counter.hour_energy)


def _approx(x: float) -> object:
    from pytest import approx

    return approx(x, abs=1e-3)
