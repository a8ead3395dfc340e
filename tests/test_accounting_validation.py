"""Counter validation on constructed counters whose energy is known: each fault class, with
and without a rating, and the breaks that must still be breaks."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from energyd.accounting.energy import HOUR_MS, CounterSpec, analyse_counter, hourly
from energyd.accounting.validation import DAY_MS, Limits, learn_rates, validate

T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
STEP = 10_000
RATE = 120.0  # counter units per hour: kW for kWh, m3/h for a gas counter


def counter(hours: float, *, base: float = 5_000.0, rate: float = RATE,
            step: int = STEP) -> tuple[list[int], list[float]]:
    times = list(range(T0, T0 + int(hours * HOUR_MS) + 1, step))
    return times, [round(base + rate * (t - T0) / HOUR_MS, 3) for t in times]


def energy(times: list[int], values: list[float], spec: CounterSpec, n: int) -> list[float]:
    trace = analyse_counter(times, values, spec)
    return [he.measured for he in hourly(trace, range(T0, T0 + n * HOUR_MS, HOUR_MS))]


RATED = CounterSpec(900_000, 300.0)
BARE = CounterSpec(900_000)


@pytest.mark.parametrize("spec", [RATED, BARE], ids=["rated", "no rating"])
@pytest.mark.parametrize("bad", [9_999_999.0, 0.0, 4_000.0, 5_150.5], ids=[
    "huge", "zero", "low", "slightly high"])
def test_one_sample_out_of_line_is_set_aside_either_way(spec: CounterSpec, bad: float) -> None:
    times, values = counter(3)
    g = times.index(T0 + HOUR_MS + 20 * 60_000)
    if bad == 5_150.5:  # above the next sample but within a 300 kW rating: neighbours decide
        bad = values[g + 1] + 0.05
    values[g] = bad
    hours = energy(times, values, spec, 3)
    assert hours == pytest.approx([RATE] * 3, abs=1e-3)
    trace = analyse_counter(times, values, spec)
    assert [(f.time_ms, f.value) for f in trace.findings] == [(times[g], bad)]
    assert not trace.events


@pytest.mark.parametrize("spec", [RATED, BARE], ids=["rated", "no rating"])
def test_two_and_three_bad_reads_in_a_row_are_set_aside(spec: CounterSpec) -> None:
    times, values = counter(2)
    g = times.index(T0 + 30 * 60_000)
    values[g:g + 2] = [9_999_999.0, 9_999_999.0]
    values[g + 50:g + 53] = [0.0, 7.0, 0.0]
    assert energy(times, values, spec, 2) == pytest.approx([RATE] * 2, abs=1e-3)
    assert len(analyse_counter(times, values, spec).findings) == 5


@pytest.mark.parametrize("spec", [RATED, BARE], ids=["rated", "no rating"])
@pytest.mark.parametrize("held", [0.0, 65_535.0], ids=["zeros", "stuck high"])
def test_dropout_run_is_bridged_by_the_counter_delta_as_interpolated(
        spec: CounterSpec, held: float) -> None:
    times, values = counter(3)
    a, b = times.index(T0 + HOUR_MS + 45 * 60_000), times.index(T0 + 2 * HOUR_MS + 12 * 60_000)
    values[a:b] = [held] * (b - a)  # 27 minutes across an hour boundary
    trace = analyse_counter(times, values, spec)
    hours = hourly(trace, range(T0, T0 + 3 * HOUR_MS, HOUR_MS))
    assert [he.measured for he in hours] == pytest.approx([RATE] * 3, abs=1e-3)
    assert hours[1].interpolated > 0 and hours[2].interpolated > 0
    assert not any(he.missing for he in hours) and not trace.events
    assert {f.kind for f in trace.findings} == {"dropout"}
    assert len(trace.findings) == b - a


@pytest.mark.parametrize("spec", [RATED, BARE], ids=["rated", "no rating"])
def test_frozen_registers_that_catch_up_are_stale_not_a_jump(spec: CounterSpec) -> None:
    times, values = counter(3)
    a, b = times.index(T0 + 40 * 60_000), times.index(T0 + HOUR_MS + 15 * 60_000)
    values[a:b] = [values[a]] * (b - a)  # 35 minutes on one value, then the true value
    trace = analyse_counter(times, values, spec)
    hours = hourly(trace, range(T0, T0 + 3 * HOUR_MS, HOUR_MS))
    assert [he.measured for he in hours] == pytest.approx([RATE] * 3, abs=1e-3)
    assert {f.kind for f in trace.findings} == {"stale"} and not trace.events
    assert len(trace.findings) == b - a - 1  # the first held sample was a true reading


def test_idle_load_and_a_coarse_register_are_not_stale() -> None:
    # a gas counter that reads whole m3 at 20 m3/h: it holds for 3 minutes, then steps by 1
    times = list(range(T0, T0 + 2 * HOUR_MS + 1, STEP))
    values = [float(int(20.0 * (t - T0) / HOUR_MS)) for t in times]
    trace = analyse_counter(times, values, BARE)
    assert not trace.findings and not trace.events
    # an idle hour, then the load starts
    times, values = counter(1, rate=0.0)
    more_t, more_v = counter(1, base=values[-1], rate=200.0)
    times += [t + HOUR_MS + STEP for t in more_t]
    values += more_v
    trace = analyse_counter(times, values, BARE)
    assert not trace.findings and not trace.events


@pytest.mark.parametrize("spec", [RATED, BARE], ids=["rated", "no rating"])
def test_reset_replacement_and_wrap_are_still_breaks(spec: CounterSpec) -> None:
    times, values = counter(4)
    r = times.index(T0 + HOUR_MS + 10 * 60_000)
    values[r:] = [round(v - values[r] + 0.1, 3) for v in values[r:]]  # reset near zero
    p = times.index(T0 + 2 * HOUR_MS + 30 * 60_000)
    values[p:] = [v + 70_000.0 - values[p] for v in values[p:]]  # replaced: starts at 70,000
    trace = analyse_counter(times, values, spec)
    kinds = [e.kind for e in trace.events]
    assert kinds[0] == "reset" and (kinds[1:] == ["jump"] if spec is RATED else True)
    hours = hourly(trace, range(T0, T0 + 4 * HOUR_MS, HOUR_MS))
    assert hours[1].missing and hours[0].measured == pytest.approx(RATE)
    if spec is RATED:  # without a rating or history a step up cannot be judged
        assert all(he.measured <= RATE + 1e-6 for he in hours)
    wrap = CounterSpec(900_000, 300.0, rollover=10_000.0)
    times, values = counter(2, base=9_950.0)
    values = [v % 10_000.0 for v in values]
    trace = analyse_counter(times, values, wrap)
    assert [e.kind for e in trace.events] == ["wrap"] and not trace.findings
    assert [he.measured for he in hourly(trace, [T0, T0 + HOUR_MS])] == pytest.approx(
        [RATE, RATE])


def test_learned_rate_judges_a_jump_on_a_counter_without_rating() -> None:
    times, values = counter(24 * 8, step=60_000)
    days = [T0 + d * DAY_MS for d in range(8)]
    learned = learn_rates(times, values, 900_000, days)
    assert [d for d, _ in learned] == days[1:]  # the first day has no history
    assert all(r == pytest.approx(2 * RATE, rel=1e-3) for _, r in learned)
    j = times.index(T0 + 7 * DAY_MS + 5 * HOUR_MS)
    values[j:] = [v + 50_000.0 for v in values[j:]]
    trace = analyse_counter(times, values, CounterSpec(900_000, learned=learned))
    assert [e.kind for e in trace.events] == ["jump"]
    assert "learned" in trace.limit_basis


def test_fuel_mass_and_reactive_counters_get_the_same_checks() -> None:
    limits = Limits(rated_per_hour=0.5)  # t/h of a boiler's fuel
    times = list(range(T0, T0 + HOUR_MS + 1, 60_000))
    values = [round(100.0 + 0.3 * (t - T0) / HOUR_MS, 4) for t in times]
    values[20] = 10_000.0
    got = validate(times, values, limits)
    assert [f.kind for f in got.findings] == ["above_neighbours"] and len(got.times) == 60
    kvarh = [round(800.0 + 40.0 * (t - T0) / HOUR_MS, 3) for t in times]
    kvarh[30:40] = [0.0] * 10
    got = validate(times, kvarh, Limits())
    assert [f.kind for f in got.findings] == ["dropout"] * 10
    assert got.repaired == [(times[29], times[40])]


def test_set_aside_readings_are_listed_by_export_and_counted_in_the_report(
        tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from energyd.cli import cli

    case = Path(__file__).parent / "cases" / "accounting" / "dropout_zero_runs"
    tree = yaml.safe_load((case / "config.yaml").read_text(encoding="utf-8"))
    tree["storage"]["path"] = str(tmp_path / "energyd.db")
    config = tmp_path / "energyd.yaml"
    config.write_text(yaml.safe_dump(tree), encoding="utf-8")
    run = CliRunner().invoke
    got = run(cli, ["readings", "import", "-c", str(config), str(case / "readings.csv")])
    assert got.exit_code == 0, got.output
    got = run(cli, ["rollup", "-c", str(config), "--from", "2026-03-03T00:00+08:00",
                    "--to", "2026-03-03T06:00+08:00"])
    assert got.exit_code == 0, got.output
    out = tmp_path / "export.csv"
    got = run(cli, ["readings", "export", "-c", str(config), "--from",
                    "2026-03-02T00:00+08:00", "--to", "2026-03-04T00:00+08:00",
                    "--validation", "-o", str(out)])
    assert got.exit_code == 0, got.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(case / "readings.csv", newline="", encoding="utf-8") as f:
        stored = list(csv.DictReader(f))
    assert len(rows) == len(stored)  # every reading, the set-aside ones unchanged
    flagged = [r for r in rows if r["validation"]]
    zeros = [r for r in stored if float(r["value"]) == 0.0]
    assert len(flagged) == len(zeros) == 28 + 8 + 30
    assert all(r["value"] == "0.0" and r["validation"].startswith("dropout: held at 0")
               for r in flagged)
    got = run(cli, ["report", "-c", str(config), "--month", "2026-03", "--format", "json"])
    assert got.exit_code == 0, got.output
    report = json.loads(got.output)
    assert report["validation"]["incomer"]["samples_set_aside"] == 36
    assert report["validation"]["line-2"]["by_kind"] == {"dropout": 30}
    # the rows' detail lists the stretches
    got = run(cli, ["rollup", "-c", str(config), "--from", "2026-03-03T02:00+08:00",
                    "--to", "2026-03-03T03:00+08:00", "--json", "--device", "incomer"])
    (row,) = json.loads(got.output)
    assert row["source"] == "meter_interpolated"
    assert row["detail"]["validation"][0]["kind"] == "dropout"
    assert row["detail"]["validation"][0]["samples"] == 18


def test_rated_flow_belongs_to_fuel_counters_and_a_misplaced_one_is_refused_with_its_line(
        ) -> None:
    from energyd.config.loader import parse_config
    from energyd.errors import ConfigError

    text = """site: {name: p, timezone: Asia/Shanghai, grid_region: CN-national}
storage: {path: /tmp/never-opened.db}
devices:
  - name: boiler
    role: fuel
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: fuel_volume_m3, address: 0}]
    rated_flow: 90
    fuel: {quantity: fuel_volume_m3, unit_factor: 0.0001, ncv_gj_per_unit: 389.31,
           carbon_content_tc_per_gj: 0.01532}
  - name: incomer
    role: grid_import
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: active_energy_import_kwh, address: 0}]
    rated_flow: 90
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml")
    (problem,) = info.value.problems
    assert problem.path.startswith("devices[1]") and problem.line == 12
    assert "rated_power_kw" in problem.message
    config = parse_config(text.replace("    rated_flow: 90\n", "", 2).replace(
        "    registers: [{quantity: fuel_volume_m3, address: 0}]\n",
        "    registers: [{quantity: fuel_volume_m3, address: 0}]\n    rated_flow: 90\n"),
        "plant.yaml")
    assert config.devices[0].rated_flow == 90


def test_like_day_profile_uses_earlier_days_of_the_same_kind_and_says_which() -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from energyd.accounting.rollup import Calendar, Profile

    tz = ZoneInfo("Asia/Shanghai")

    def hour(day: str, h: int) -> int:
        return round(datetime.fromisoformat(f"{day}T{h:02d}:00").replace(
            tzinfo=tz).timestamp() * 1000)

    clean = {}
    for d in range(2, 23):  # 2026-02-02 (a Monday) .. 2026-02-22
        day = date(2026, 2, d)
        for h in range(24):
            clean[hour(day.isoformat(), h)] = 100.0 if day.weekday() < 5 else 20.0
    clean[hour("2026-02-20", 10)] = 40.0  # a Friday that was a holiday, configured
    cal = Calendar(tz, holidays=frozenset({date(2026, 2, 20)}))
    prof = Profile(clean, cal)
    h = hour("2026-02-24", 10)  # a Tuesday
    assert prof(h) == 100.0
    assert prof.basis(h)["days"] == ["2026-02-13", "2026-02-16", "2026-02-17", "2026-02-18",
                                     "2026-02-19"]
    sunday = hour("2026-02-22", 10)  # its own day does not count, only earlier ones
    assert prof.basis(sunday)["kind"] == "non-working day"
    assert "2026-02-22" not in prof.basis(sunday)["days"] and "2026-02-20" in \
        prof.basis(sunday)["days"]
    assert prof(sunday) == (20.0 * 4 + 40.0) / 5
    first = Profile({hour("2026-02-02", 8): 30.0, hour("2026-02-02", 9): 50.0}, cal)
    assert first(hour("2026-02-02", 11)) == 40.0  # the first day: the hours before it
    assert "24 hours before" in first.basis(hour("2026-02-02", 11))["method"]
    assert Profile({}, cal)(h) == 0.0
