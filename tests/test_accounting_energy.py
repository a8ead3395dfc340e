"""Counter -> hourly energy, on constructed data whose answers are known in closed form."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from energyd.accounting.energy import (
    HOUR_MS,
    CounterSpec,
    analyse_counter,
    hourly,
    integrate_power,
)
from energyd.accounting.factors import parse_factors
from energyd.accounting.rollup import FuelSpec, fuel_tco2
from energyd.errors import ConfigError

T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
DAY_S = 86400.0


def power_kw(t_ms: int) -> float:
    """A load with a daily swing: 200 kW +- 50 kW."""
    return 200.0 + 50.0 * math.sin(2 * math.pi * (t_ms - T0) / 1000 / DAY_S)


def energy_kwh(t_ms: int) -> float:
    """The exact integral of power_kw from T0."""
    s = (t_ms - T0) / 1000
    return 200.0 * s / 3600 + 50.0 * DAY_S / (2 * math.pi) / 3600 * (
        1 - math.cos(2 * math.pi * s / DAY_S))


def samples(start: int, end: int, step_s: float, *, base: float = 1000.0,
            rollover: float | None = None, resolution: float = 0.01,
            skip: tuple[int, int] | None = None) -> tuple[list[int], list[float]]:
    """A counter register as a meter shows it: energy from T0, rounded to its resolution,
    wrapping at `rollover`; polls inside `skip` are missing."""
    times, values = [], []
    t = start
    while t < end:
        if skip is None or not skip[0] <= t < skip[1]:
            v = round((base + energy_kwh(t)) / resolution) * resolution
            times.append(t)
            values.append(v % rollover if rollover else v)
        t += int(step_s * 1000)
    return times, values


SPEC = CounterSpec(max_gap_ms=900_000, rated_per_hour=300.0, rollover=None)


def test_steady_load_hours_equal_simulated_energy_within_a_thousandth() -> None:
    times, values = samples(T0 - 60_000, T0 + 24 * HOUR_MS + 60_000, 10)
    trace = analyse_counter(times, values, SPEC)
    hours = hourly(trace, range(T0, T0 + 24 * HOUR_MS, HOUR_MS))
    assert len(hours) == 24 and not trace.events
    for he in hours:
        expected = energy_kwh(he.hour + HOUR_MS) - energy_kwh(he.hour)
        assert he.metered == pytest.approx(expected, rel=1e-3)
        assert he.meter_ms == HOUR_MS and not he.missing and he.interpolated == 0


def test_polling_gap_with_continuous_counter_sums_exactly_to_the_delta() -> None:
    gap = (T0 + 3 * HOUR_MS + 20 * 60_000, T0 + 8 * HOUR_MS + 40 * 60_000)
    times, values = samples(T0 - 60_000, T0 + 12 * HOUR_MS, 10, skip=gap)
    trace = analyse_counter(times, values, SPEC)
    hours = hourly(trace, range(T0, T0 + 11 * HOUR_MS, HOUR_MS))
    i = times.index(max(t for t in times if t < gap[0]))
    delta = values[i + 1] - values[i]
    assert sum(he.interpolated for he in hours) == pytest.approx(delta, abs=1e-9)
    for he in hours[4:8]:  # 04:00..08:00 lie wholly in the gap
        assert he.metered == 0 and he.interp_ms == HOUR_MS and he.meter_ms == 0
        assert he.interpolated == pytest.approx(delta * HOUR_MS / (times[i + 1] - times[i]))
    assert hours[3].meter_ms == 20 * 60_000 - 10_000  # polled until 03:19:50
    assert hours[3].interp_ms == 40 * 60_000 + 10_000
    assert not any(he.missing for he in hours)


def test_counter_wrap_is_energy_and_never_a_negative_hour() -> None:
    rollover = 100_000.0
    times, values = samples(T0, T0 + 8 * HOUR_MS + 60_000, 10, base=rollover - 700.0,
                            rollover=rollover)
    assert min(values) < 10 < max(values) > rollover - 800  # it did wrap
    spec = CounterSpec(900_000, 300.0, rollover)
    trace = analyse_counter(times, values, spec)
    assert [e.kind for e in trace.events] == ["wrap"]
    hours = hourly(trace, range(T0, T0 + 8 * HOUR_MS, HOUR_MS))
    for he in hours:
        expected = energy_kwh(he.hour + HOUR_MS) - energy_kwh(he.hour)
        assert he.metered == pytest.approx(expected, rel=1e-3)
        assert not he.missing


def test_reset_to_zero_is_a_break_not_a_giant_or_negative_hour() -> None:
    times, values = samples(T0, T0 + 6 * HOUR_MS, 10)
    k = times.index(T0 + 2 * HOUR_MS + 30 * 60_000)
    shift = values[k]
    values = values[:k] + [round(v - shift, 2) for v in values[k:]]  # restarts from 0
    trace = analyse_counter(times, values, SPEC)
    assert [e.kind for e in trace.events] == ["reset"]
    hours = hourly(trace, range(T0, T0 + 5 * HOUR_MS, HOUR_MS))
    for he in hours:
        assert 0 <= he.measured <= 300.0 * 1.1
    assert hours[2].missing == [(times[k - 1], times[k])]
    assert hours[2].events[0].kind == "reset"
    for he in (hours[0], hours[1], hours[3], hours[4]):
        assert not he.missing
        assert he.metered == pytest.approx(energy_kwh(he.hour + HOUR_MS) - energy_kwh(he.hour),
                                           rel=1e-3)


def test_wrap_without_plausibility_is_a_replacement() -> None:
    # A step back that a rollover would explain only with far more than rated power.
    times = [T0, T0 + 10_000, T0 + 20_000, T0 + 30_000]
    values = [50_000.0, 50_000.5, 30_000.0, 30_000.6]
    trace = analyse_counter(times, values, CounterSpec(900_000, 300.0, 100_000.0))
    assert [e.kind for e in trace.events] == ["replacement"]
    assert len(trace.blocks) == 2


def test_implausible_jump_is_never_energy_and_a_glitch_is_dropped() -> None:
    times, values = samples(T0, T0 + 3 * HOUR_MS + 60_000, 10)
    j = times.index(T0 + HOUR_MS + 15 * 60_000)
    g = times.index(T0 + 2 * HOUR_MS + 15 * 60_000)
    values = values[:j] + [v + 40_000.0 for v in values[j:]]  # +40 MWh in 10 s on a 300 kW feed
    values[g] = 0.0  # one read of zero, then the counter carries on
    trace = analyse_counter(times, values, SPEC)
    assert [e.kind for e in trace.events] == ["jump"]
    assert [(f.time_ms, f.kind) for f in trace.findings] == [(times[g], "below_neighbours")]
    hours = hourly(trace, range(T0, T0 + 3 * HOUR_MS, HOUR_MS))
    assert [f.value for f in hours[2].findings] == [0.0]
    assert all(he.measured <= 330 for he in hours)
    assert hours[1].missing and not hours[2].missing
    assert hours[2].metered == pytest.approx(energy_kwh(T0 + 3 * HOUR_MS)
                                             - energy_kwh(T0 + 2 * HOUR_MS), rel=1e-3)


def test_power_integration_matches_the_energy_and_breaks_on_gaps() -> None:
    times = list(range(T0, T0 + 2 * HOUR_MS + 1, 10_000))
    trace = integrate_power(times, [power_kw(t) for t in times], 900_000)
    assert trace.power_integrated
    hours = hourly(trace, [T0, T0 + HOUR_MS])
    for he in hours:
        assert he.metered == pytest.approx(energy_kwh(he.hour + HOUR_MS) - energy_kwh(he.hour),
                                           rel=1e-4)
    gappy = [t for t in times if not T0 + 1800_000 < t < T0 + 3600_000]
    trace = integrate_power(gappy, [power_kw(t) for t in gappy], 900_000)
    assert hourly(trace, [T0])[0].missing == [(T0 + 1800_000, T0 + 3600_000)]


def test_fuel_tco2_is_quantity_ncv_carbon_oxidation_44_12() -> None:
    diesel = FuelSpec("fuel_mass_t", 1.0, 42.652, 0.0202, 0.98, "test")
    assert fuel_tco2(2.0, diesel) == pytest.approx(2.0 * 42.652 * 0.0202 * 0.98 * 44 / 12)
    assert diesel.tco2_per_unit == pytest.approx(3.096, abs=1e-3)  # about 3.10 t/t
    gas = FuelSpec("fuel_volume_m3", 1e-4, 389.31, 0.01532, 0.99, "test")
    assert fuel_tco2(10_000, gas) == pytest.approx(21.65, abs=0.01)  # per 10^4 Nm3


def test_factor_table_refuses_overlaps_and_missing_sources_with_lines() -> None:
    text = """factors:
  - {id: a, region: X, method: location, value: 0.5, valid_from: 2023-01-01,
     valid_to: 2023-12-31, source: s}
  - {id: b, region: X, method: location, value: 0.4, valid_from: 2023-06-01,
     valid_to: 2024-12-31, source: s}
  - {id: c, region: X, method: residual, value: 0.4, valid_from: 2023-06-01,
     valid_to: 2024-12-31}
"""
    with pytest.raises(ConfigError) as err:
        parse_factors(text, "f.yaml")
    msgs = [str(p) for p in err.value.problems]
    assert any(m.startswith("f.yaml:4: b: overlaps 'a' (line 2)") for m in msgs), msgs
    assert any(m.startswith("f.yaml:6:") and "source" in m for m in msgs), msgs


def test_factor_lookup_carries_forward_within_the_age_bound_and_says_so() -> None:
    from datetime import date

    table = parse_factors("""factors:
  - {id: y22, region: X, method: location, value: 0.5, valid_from: 2022-01-01,
     valid_to: 2022-12-31, source: s}
  - {id: y23, region: X, method: location, value: 0.4, valid_from: 2023-01-01,
     valid_to: 2023-12-31, source: s, provisional: true}
""", "f.yaml")
    assert table.lookup("X", "location", date(2022, 12, 31)).factor.id == "y22"
    c = table.lookup("X", "location", date(2023, 1, 1))
    assert c.factor.id == "y23" and c.provisional and not c.carried_forward
    c = table.lookup("X", "location", date(2024, 7, 1))
    assert c.factor.id == "y23" and c.provisional and c.carried_forward
    assert c.as_detail()["age_days"] == (date(2024, 7, 1) - date(2024, 1, 1)).days
    assert c.as_detail()["age_months"] == 6
    assert table.lookup("X", "location", date(2024, 6, 30)).age_months == 5
    # three years by default: through 2026-12-31, not a day more
    assert table.lookup("X", "location", date(2026, 12, 31)).factor.id == "y23"
    assert table.lookup("X", "location", date(2027, 1, 1)) is None
    assert table.lookup("X", "location", date(2024, 12, 31), 12).factor.id == "y23"
    assert table.lookup("X", "location", date(2025, 1, 1), 12) is None
    assert table.lookup("X", "location", date(2021, 12, 31)) is None


def test_factor_carried_into_a_leap_year_covers_all_366_days() -> None:
    from datetime import date, timedelta

    table = parse_factors("""factors:
  - {id: y23, region: X, method: location, value: 0.4, valid_from: 2023-01-01,
     valid_to: 2023-12-31, source: s}
  - {id: f28, region: Y, method: location, value: 0.4, valid_from: 2023-03-01,
     valid_to: 2024-02-28, source: s}
""", "f.yaml")
    # a year of carry: every day of 2024, 29 February and 31 December included
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(366)]
    assert all(table.lookup("X", "location", d, 12) is not None for d in days)
    assert table.lookup("X", "location", date(2025, 1, 1), 12) is None
    # a factor that ends on 28 February of a leap year is carried from the 29th
    c = table.lookup("Y", "location", date(2024, 2, 29), 12)
    assert c is not None and c.carried_forward and c.age_days == 0
    assert table.lookup("Y", "location", date(2025, 2, 28), 12) is not None
    assert table.lookup("Y", "location", date(2025, 3, 1), 12) is None


def test_factor_age_parses_years_and_months() -> None:
    from energyd.config.units import parse_age

    assert parse_age("3y") == parse_age(3) == parse_age("3 years") == parse_age("36mo") == 36
    assert parse_age("18 months") == 18 == parse_age("P1Y6M") == parse_age(1.5)
    assert parse_age("P3Y") == 36 and parse_age("2 yrs") == 24
    with pytest.raises(ValueError, match="whole number of months"):
        parse_age("1.01y")
    with pytest.raises(ValueError, match="not an age"):
        parse_age("3 weeks")
