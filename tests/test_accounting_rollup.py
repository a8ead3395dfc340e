"""Rollups over a real store: known answers for gaps, replacements, statements, factors,
certificates, fuel and daylight saving; idempotency; late readings."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import stored

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.service import Accountant
from energyd.config.loader import parse_config
from energyd.daemon.reconciliation import record_reconciliation
from energyd.errors import ImportRejected
from energyd.store import Store

SHANGHAI = ZoneInfo("Asia/Shanghai")


def ms(text: str, tz: ZoneInfo = SHANGHAI) -> int:
    """Local wall time -> epoch ms."""
    return round(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)


def device_yaml(name: str, role: str = "grid_import", extra: str = "") -> str:
    return f"""
  - name: {name}
    role: {role}
    driver: modbus
    modbus: {{host: 127.0.0.1, port: 1502}}
    registers: [{{quantity: active_energy_import_kwh, address: 0}}]
    rated_power_kw: 300
{extra}"""


def make(tmp_path: Path, devices: str, *, accounting: str = "", tz: str = "Asia/Shanghai",
         region: str = "CN-national", factors: str | None = None) -> Accountant:
    if factors is not None:
        (tmp_path / "factors.yaml").write_text(factors)
        accounting = f"  emission_factors: {tmp_path / 'factors.yaml'}\n" + accounting
    text = f"""
site: {{name: test-plant, timezone: {tz}, grid_region: {region}}}
storage: {{path: {tmp_path / 'energyd.db'}}}
http: {{enabled: false}}
devices:{devices}
accounting:
  residual_region: CN-national
{accounting}"""
    config = parse_config(text, "test.yaml")
    return Accountant(Store.open(config.storage.path), config)


def load(acc: Accountant, device: str, start: int, end: int, step_s: int,
         power: Callable[[int], float], *, base: float = 10_000.0,
         quantity: str = "active_energy_import_kwh", skip: tuple[int, int] | None = None,
         scale: float = 1.0) -> float:
    """Store counter samples of a load whose power (counter units per hour) is `power(t)`,
    integrated exactly (midpoint rule per step: power is smooth); returns the last value."""
    rows = []
    v = base
    t = start
    step = step_s * 1000
    while t < end:
        if skip is None or not skip[0] <= t < skip[1]:
            rows.append((t, device, quantity, round(v, 6), 0))
        v += power(t + step / 2) * step / HOUR_MS * scale
        t += step
    acc.store.import_rows(rows)
    return v


def diurnal(t: int) -> float:
    return 100.0 + 40.0 * math.sin(2 * math.pi * (t % 86_400_000) / 86_400_000)


def flat(t: int) -> float:
    return 100.0


def seqs(acc: Accountant) -> list[tuple]:
    return stored(acc.store, "SELECT device, hour, seq FROM rollups ORDER BY device, hour")


def by_hour(acc: Accountant, device: str) -> dict[int, tuple]:
    return {r.hour: r for r in acc.rows(0, 2**62, [device])}


# --- meter replacement, statements, provisional -> final -----------------------------------


def test_replacement_estimated_then_statement_makes_invoice_hours_and_a_final_month(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    start, end = ms("2023-03-01T00:00"), ms("2023-04-01T00:00")
    out0, out1 = ms("2023-03-10T10:00"), ms("2023-03-10T13:00")
    # the old meter until 10:00, nothing for 3 hours, a new meter from 0 at 13:00
    load(acc, "incomer", start - HOUR_MS, out0, 60, diurnal, base=50_000.0)
    load(acc, "incomer", out1, end + HOUR_MS, 60, diurnal, base=0.0)
    now = ms("2023-04-02T00:00")
    first = acc.recompute((start, end), now)
    rows = by_hour(acc, "incomer")
    assert len(rows) == 744
    for h in range(out0, out1, HOUR_MS):
        assert rows[h].source == "estimated" and rows[h].coverage == 0
        assert rows[h].detail["provisional"]
        assert rows[h].mwh == pytest.approx(diurnal(h + HOUR_MS // 2) / 1000, rel=0.05)
    assert rows[out0 - HOUR_MS].source == "estimated"  # its last minute was unmetered
    assert rows[out1].source == "meter" and rows[out1].coverage == 1.0
    report = acc.report("2023-03", now)
    assert report["status"] == "provisional"
    assert any("estimated" in r for r in report["reasons"])

    # re-running changes nothing, and bumps no seq
    before = seqs(acc)
    again = acc.recompute((start, end), now)
    assert again.written == 0 and seqs(acc) == before
    assert first.written == 744

    true_total = sum(diurnal(t + 30_000) * 60_000 / HOUR_MS
                     for t in range(start, end, 60_000))
    csv_text = f"account,period_start,period_end,energy_kwh,supplier,document\n" \
               f"incomer,2023-03-01,2023-03-31,{true_total:.3f},State Grid,SG-2023-03\n"
    stored, result = acc.import_statements(io.StringIO(csv_text), "bill.csv", now)
    assert len(stored) == 1 and result.written > 0
    rows = by_hour(acc, "incomer")
    gap_hours = [rows[h] for h in range(out0 - HOUR_MS, out1, HOUR_MS)]
    assert all(r.source == "invoice" for r in gap_hours)
    assert gap_hours[1].detail["statements"][0]["document"] == "SG-2023-03"
    # the statement period's hours sum to the statement
    assert sum(r.mwh for r in rows.values()) * 1000 == pytest.approx(true_total, abs=1e-3)
    # and the filled hours got roughly what the load really drew (profile spread)
    got = sum(r.detail["kwh"]["invoice"] for r in gap_hours)
    truth = sum(diurnal(t + 30_000) / 60 for t in range(out0 - 60_000, out1, 60_000))
    assert got == pytest.approx(truth, rel=0.05)
    report = acc.report("2023-03", now)
    assert report["status"] == "final", report["reasons"]
    assert report["totals"]["purchased_by_source_mwh"]["estimated"] == 0
    assert report["totals"]["purchased_by_source_mwh"]["invoice"] == pytest.approx(got / 1000,
                                                                                    abs=1e-5)
    before = seqs(acc)
    assert acc.recompute((start, end), now).written == 0 and seqs(acc) == before


def test_statement_import_refuses_overlaps_and_duplicates_with_line_numbers(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("sub", "submeter"),
               accounting="  accounts: {ACC-7: [incomer]}\n")
    now = ms("2023-06-01T00:00")
    ok = "account,period_start,period_end,energy_kwh\nincomer,2023-03-01,2023-03-31,1000\n"
    acc.import_statements(io.StringIO(ok), "march.csv", now)
    bad = ("account,period_start,period_end,energy_kwh,supplier,document\n"
           "incomer,2023-03-01,2023-03-31,1000,,dup\n"
           "incomer,2023-04-01,2023-04-30,1000,,\n"
           "incomer,2023-04-15,2023-05-14,1000,,\n"
           "sub,2023-04-01,2023-04-30,5,,\n"
           "ACC-7,2023-05-01,2023-04-30,5,,\n"
           "ACC-7,2023-05-01,2023-05-31,x,,\n")
    with pytest.raises(ImportRejected) as err:
        acc.import_statements(io.StringIO(bad), "april.csv", now)
    text = str(err.value)
    assert "april.csv:2: statement for incomer duplicates stored statement 1" in text
    assert "april.csv:4: statement for incomer overlaps the one on line 3" in text
    assert "april.csv:5: account 'sub' is neither a grid_import device" in text
    assert "april.csv:6: period_end 2023-04-30 is not after period_start" in text
    assert "april.csv:7: energy_kwh 'x' is not a number" in text
    assert "nothing was imported" in text
    assert stored(acc.store, "SELECT count(*) FROM invoices")[0][0] == 1


def test_fully_metered_period_keeps_the_meter_and_flags_a_difference(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    start, end = ms("2023-05-01T00:00"), ms("2023-05-04T00:00")
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    now = ms("2023-06-01T00:00")
    acc.recompute((start, end), now)
    csv_text = ("account,period_start,period_end,energy_kwh,supplier,document\n"
                "incomer,2023-05-01,2023-05-03,7560,SG,SG-0501\n")  # metered: 7200, +5%
    _, result = acc.import_statements(io.StringIO(csv_text), "bill.csv", now)
    record_reconciliation(acc.store, acc.config, result, now)  # as the caller does
    assert [f.statement_kwh for f in result.findings] == [7560]
    f = result.findings[0]
    assert f.metered_kwh == pytest.approx(7200, abs=0.01)
    assert f.difference_share == pytest.approx(360 / 7560, rel=1e-4)
    assert all(r.source == "meter" for r in acc.rows(start, end))
    alerts = stored(acc.store, "SELECT rule, device, state, detail FROM alerts")
    assert [(a[0], a[1], a[2]) for a in alerts] == [("reconciliation", "incomer", "active")]
    assert "SG-0501" in json.loads(alerts[0][3])["message"]
    report = acc.report("2023-05", now)
    assert report["reconciliation"][0]["statement"] == f.statement
    assert report["flags"] and "SG-0501" in report["flags"][0]
    # within tolerance: no finding
    acc2 = make(tmp_path / "b", device_yaml("incomer"))
    load(acc2, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    acc2.recompute((start, end), now)
    _, result = acc2.import_statements(io.StringIO(csv_text.replace("7560", "7300")), "b.csv",
                                       now)
    record_reconciliation(acc2.store, acc2.config, result, now)
    assert result.findings == []
    assert stored(acc2.store, "SELECT count(*) FROM alerts")[0][0] == 0


# --- gaps and late readings through the hourly job -------------------------------------------


def test_hourly_job_turns_estimated_gap_hours_into_interpolated_when_readings_resume(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    t0 = ms("2023-05-01T00:00")
    stop, resume = t0 + 3 * HOUR_MS + 20 * 60_000, t0 + 8 * HOUR_MS + 40 * 60_000
    load(acc, "incomer", t0 - 2 * HOUR_MS, stop, 10, diurnal)
    first = acc.run(t0 + 6 * HOUR_MS + 300_000, recompute_hours=8)
    assert first.ranges == [(t0 - 2 * HOUR_MS, t0 + 6 * HOUR_MS)]
    rows = by_hour(acc, "incomer")
    assert [rows[t0 + k * HOUR_MS].source for k in range(3, 6)] == ["estimated"] * 3
    last = load(acc, "incomer", stop, t0 + 12 * HOUR_MS, 10, diurnal, skip=(stop, resume),
                base=max(r.value for r in acc.store.readings.query_readings())
                + sum(diurnal(t + 5000) * 10_000 / HOUR_MS for t in range(stop - 10_000, stop,
                                                                           10_000)))
    assert last > 0
    second = acc.run(t0 + 11 * HOUR_MS + 300_000)
    assert second.ranges == [(t0 + 3 * HOUR_MS, t0 + 11 * HOUR_MS)]
    rows = by_hour(acc, "incomer")
    gap = [rows[t0 + k * HOUR_MS] for k in range(3, 9)]
    assert [r.source for r in gap] == ["meter_interpolated"] * 6
    assert all(r.coverage == 0 for r in gap[1:5])
    a, b = [(r.value,) for r in acc.store.readings.query_readings()
            if r.time_ms in (stop - 10_000, resume)]
    spread = sum(r.detail["kwh"]["meter_interpolated"] for r in gap)
    assert spread == pytest.approx(b[0] - a[0], abs=1e-5)
    # nothing new: the next run computes only the new hour and rewrites nothing else
    before = seqs(acc)
    third = acc.run(t0 + 12 * HOUR_MS + 300_000)
    assert third.ranges == [(t0 + 11 * HOUR_MS, t0 + 12 * HOUR_MS)]
    assert [s for s in seqs(acc) if s[1] < t0 + 11 * HOUR_MS] == \
        [s for s in before if s[1] < t0 + 11 * HOUR_MS]


def test_no_rows_for_hours_before_a_device_was_first_seen(tmp_path: Path) -> None:
    """A gateway's first start recomputes the last hours: the ones before the meter's first
    reading (and before any statement of its account) are not made up as `estimated`."""
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("spare"))
    t0 = ms("2023-05-01T00:00")
    load(acc, "incomer", t0 + 20 * 60_000, t0 + 3 * HOUR_MS, 10, flat)
    acc.run(t0 + 3 * HOUR_MS + 300_000, recompute_hours=48)
    hours = sorted(by_hour(acc, "incomer"))
    assert hours == [t0, t0 + HOUR_MS, t0 + 2 * HOUR_MS]
    assert by_hour(acc, "spare") == {}  # never seen, never billed: nothing to report yet


# --- factors, certificates, fuel, roles --------------------------------------------------------


def test_year_boundary_uses_each_years_factor_and_carries_forward_provisionally(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    a, b = ms("2022-12-31T21:00"), ms("2023-01-01T03:00")
    load(acc, "incomer", a - HOUR_MS, b + HOUR_MS, 60, flat)
    c, d = ms("2024-06-01T00:00"), ms("2024-06-01T02:00")
    load(acc, "incomer", c - HOUR_MS, d + HOUR_MS, 60, flat, base=90_000)
    e, f = ms("2025-06-01T00:00"), ms("2025-06-01T02:00")
    load(acc, "incomer", e - HOUR_MS, f + HOUR_MS, 60, flat, base=190_000)
    now = ms("2025-07-01T00:00")
    acc.recompute({"incomer": (a, b)}, now)
    acc.recompute({"incomer": (c, d)}, now)
    acc.recompute({"incomer": (e, f)}, now)
    rows = by_hour(acc, "incomer")
    midnight = ms("2023-01-01T00:00")  # 2022-12-31T16:00Z
    for h in range(a, b, HOUR_MS):
        r = rows[h]
        want = ("CN-MEE-2022-national", 0.5366) if h < midnight else \
            ("CN-MEE-2023-national", 0.5306)
        assert (r.ef_id, r.ef_location) == want
        assert r.tco2_location == pytest.approx(0.1 * want[1], abs=1e-9)
        assert r.detail["factor"]["source"].startswith("MEE and NBS")
        residual = 0.5856 if h < midnight else 0.6096
        assert r.tco2_market == pytest.approx(0.1 * residual, abs=1e-9)
        assert not r.detail["provisional"]
    r = rows[c]
    assert r.ef_id == "CN-MEE-2023-national" and r.detail["provisional"]
    assert r.detail["factor"]["carried_forward"]
    r = rows[e]  # carried within accounting.max_factor_age (three years), with its age
    assert r.ef_id == "CN-MEE-2023-national" and r.detail["provisional"]
    assert r.detail["factor"]["age_days"] == (datetime(2025, 6, 1) - datetime(2024, 1, 1)).days
    assert r.tco2_location == pytest.approx(0.1 * 0.5306, abs=1e-9)


def test_beyond_max_factor_age_the_hour_and_the_month_total_are_null_with_the_reason(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"), accounting="  max_factor_age: 1y\n")
    a, b = ms("2025-06-01T00:00"), ms("2025-07-01T00:00")
    load(acc, "incomer", a - HOUR_MS, b + HOUR_MS, 300, flat)
    acc.recompute({"incomer": (a, b)}, ms("2025-08-01T00:00"))
    r = by_hour(acc, "incomer")[a]
    assert r.ef_id is None and r.tco2_location is None and r.tco2_market is None
    assert "max_factor_age (12 months)" in r.detail["no_factor"]
    assert r.mwh == pytest.approx(0.1, abs=1e-9)
    report = acc.report("2025-06", ms("2025-08-01T00:00"))
    dev = report["devices"][0]
    assert dev["tco2_location"] is None and dev["tco2_market"] is None
    assert dev["mwh"] == pytest.approx(72.0, abs=1e-6)
    t = report["totals"]
    assert t["scope2_location_tco2"] is None and t["total_location_tco2"] is None
    assert t["scope2_market_tco2"] is None and t["total_market_tco2"] is None
    assert any("720 hours" in why and "max_factor_age" in why for why in t["tco2_null"])
    assert report["status"] == "provisional"
    from energyd.accounting.report import report_csv, report_lines

    assert "tCO2 null:" in "\n".join(report_lines(report, "2025-06"))
    assert report_csv(report).splitlines()[1].split(",")[12:14] == ["", ""]


def test_new_factor_file_recomputes_the_hours_it_applies_to(tmp_path: Path) -> None:
    base = """factors:
  - {id: y23, region: CN-national, method: location, value: 0.5, valid_from: 2023-01-01,
     valid_to: 2023-12-31, source: first notice}
"""
    acc = make(tmp_path, device_yaml("incomer"), factors=base)
    t0 = ms("2024-02-01T00:00")
    load(acc, "incomer", t0 - 2 * HOUR_MS, t0 + 4 * HOUR_MS, 60, flat)
    acc.run(t0 + 3 * HOUR_MS + 1, recompute_hours=4)
    assert {r.ef_id for r in acc.rows(t0, t0 + 3 * HOUR_MS)} == {"y23"}
    (tmp_path / "factors.yaml").write_text(base + """\
  - {id: y24, region: CN-national, method: location, value: 0.4, valid_from: 2024-01-01,
     valid_to: 2024-12-31, source: second notice}
""")
    acc2 = Accountant(acc.store, acc.config)
    result = acc2.run(t0 + 3 * HOUR_MS + 1)
    rows = acc2.rows(t0, t0 + 3 * HOUR_MS)
    assert {r.ef_id for r in rows} == {"y24"} and not any(r.detail["provisional"] for r in rows)
    assert result.ranges and result.ranges[0][0] <= t0 - HOUR_MS


def test_certificates_run_out_mid_month_and_residual_covers_the_rest(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("sub", "submeter"), accounting="""\
  certificates:
    - {id: GEC-A, type: GEC, mwh: 20, vintage: 2023, market: CN}
    - {id: GEC-B, type: GEC, mwh: 10.05, vintage: 2023, market: CN}
""")
    start, end = ms("2023-03-01T00:00"), ms("2023-04-01T00:00")
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    load(acc, "sub", start - HOUR_MS, end + HOUR_MS, 60, lambda t: 40.0)
    now = ms("2023-04-02T00:00")
    acc.recompute((start, end), now)
    rows = [r for r in acc.rows(start, end) if r.device == "incomer"]
    covered = [sum(c["mwh"] for c in r.detail["market"]["certificates"]) for r in rows]
    assert sum(covered) == pytest.approx(30.05, abs=1e-6)
    # 0.1 MWh an hour: 300 whole hours, then half of hour 301, then none
    assert all(c == pytest.approx(0.1) for c in covered[:300])
    assert covered[300] == pytest.approx(0.05) and not any(covered[301:])
    assert [c["id"] for c in rows[199].detail["market"]["certificates"]] == ["GEC-A"]
    assert [c["id"] for c in rows[200].detail["market"]["certificates"]] == ["GEC-B"]
    assert rows[0].tco2_market == 0 and rows[300].tco2_market == pytest.approx(0.05 * 0.6096)
    assert rows[400].tco2_market == pytest.approx(0.1 * 0.6096)
    assert all(r.tco2_location == pytest.approx(0.1 * 0.5306) for r in rows)
    sub = [r for r in acc.rows(start, end) if r.device == "sub"]
    assert all(r.tco2_location == 0 and r.tco2_market == 0 for r in sub)
    report = acc.report("2023-03", now)
    certs = {c["id"]: c for c in report["certificates"]}
    assert certs["GEC-A"]["remaining_mwh"] == 0 and certs["GEC-B"]["remaining_mwh"] == 0
    assert report["totals"]["certificates_mwh"] == pytest.approx(30.05, abs=1e-6)
    assert report["totals"]["purchased_mwh"] == pytest.approx(74.4, abs=1e-6)
    assert report["totals"]["submeter_mwh"] == pytest.approx(29.76, abs=1e-6)
    # recomputing one hour in the middle leaves every allocation where it was
    before = seqs(acc)
    assert acc.recompute({"incomer": (rows[250].hour, rows[252].hour)}, now).written == 0
    assert seqs(acc) == before


def test_fuel_device_gives_scope_one_tco2(tmp_path: Path) -> None:
    fuel = """
  - name: boiler-diesel
    role: fuel
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: fuel_mass_t, address: 0}]
    fuel: {quantity: fuel_mass_t, ncv_gj_per_unit: 42.652, carbon_content_tc_per_gj: 0.0202,
           oxidation: 0.98, source: "GB/T 32151 defaults (unconfirmed)"}
"""
    acc = make(tmp_path, device_yaml("incomer") + fuel)
    t0 = ms("2023-05-01T00:00")
    load(acc, "boiler-diesel", t0 - HOUR_MS, t0 + 5 * HOUR_MS, 60, lambda t: 0.05,
         quantity="fuel_mass_t", base=12.0)
    load(acc, "incomer", t0 - HOUR_MS, t0 + 5 * HOUR_MS, 60, flat)
    acc.recompute((t0, t0 + 4 * HOUR_MS), ms("2023-06-01T00:00"))
    rows = [r for r in acc.rows(t0, t0 + 4 * HOUR_MS) if r.device == "boiler-diesel"]
    per_t = 42.652 * 0.0202 * 0.98 * 44 / 12
    for r in rows:
        assert r.source == "meter"
        assert r.tco2_location == pytest.approx(0.05 * per_t, rel=1e-9)
        assert r.mwh == pytest.approx(0.05 * 42.652 / 3.6, rel=1e-9)
        assert r.detail["scope"] == 1 and r.detail["fuel"]["amount"] == pytest.approx(0.05)
    report = acc.report("2023-05", ms("2023-06-01T00:00"))
    assert report["totals"]["scope1_fuel_tco2"] == pytest.approx(4 * 0.05 * per_t, abs=1e-6)


def test_power_integration_only_without_a_counter_and_flagged(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("line-3", "submeter"))
    t0 = ms("2023-05-01T00:00")
    load(acc, "incomer", t0 - HOUR_MS, t0 + 3 * HOUR_MS, 10, flat)
    rows = [(t, "line-3", "active_power_kw", 50.0, 0)
            for t in range(t0 - HOUR_MS, t0 + 3 * HOUR_MS, 10_000)]
    acc.store.import_rows(rows)
    result = acc.recompute((t0, t0 + 2 * HOUR_MS), ms("2023-06-01T00:00"))
    out = {(r.device, r.hour): r for r in result.rows}
    assert out[("line-3", t0)].as_json()["power_integrated"] is True
    assert out[("line-3", t0)].mwh == pytest.approx(0.05, rel=1e-9)
    assert out[("incomer", t0)].as_json()["power_integrated"] is False


def test_hours_with_receive_timed_readings_say_so(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("air", "submeter"))
    t0 = ms("2023-05-01T00:00")
    load(acc, "incomer", t0 - HOUR_MS, t0 + 4 * HOUR_MS, 10, flat)
    # an MQTT counter without payload times: received live in the first hour, and from a
    # broker session's backlog in the third
    rows = [(t, "air", "active_energy_import_kwh", 500.0 + (t - t0) / 36_000_000,
             4 if t0 + 2 * HOUR_MS <= t < t0 + 3 * HOUR_MS else 3)
            for t in range(t0 - HOUR_MS, t0 + 4 * HOUR_MS, 60_000)]
    acc.store.import_rows(rows)
    result = acc.recompute((t0, t0 + 3 * HOUR_MS), ms("2023-06-01T00:00"))
    out = {(r.device, r.hour): r.detail.get("times_from_receipt") for r in result.rows}
    assert [out[("air", t0 + i * HOUR_MS)] for i in range(3)] == [
        "received", "received", "received_backlog"]
    assert {out[("incomer", t0 + i * HOUR_MS)] for i in range(3)} == {None}


# --- daylight saving -------------------------------------------------------------------------


def test_dst_months_in_berlin_have_743_and_745_hours_and_local_factor_days(
        tmp_path: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    factors = """factors:
  - {id: DE-2025, region: DE-test, method: location, value: 0.40, valid_from: 2025-01-01,
     valid_to: 2025-12-31, source: test}
  - {id: DE-2026, region: DE-test, method: location, value: 0.35, valid_from: 2026-01-01,
     valid_to: 2026-12-31, source: test}
  - {id: DE-2026-r, region: CN-national, method: residual, value: 0.5, valid_from: 2026-01-01,
     valid_to: 2026-12-31, source: test}
"""
    acc = make(tmp_path, device_yaml("incomer"), tz="Europe/Berlin", region="DE-test",
               factors=factors)
    start, end = ms("2026-03-01T00:00", berlin), ms("2026-04-01T00:00", berlin)
    assert (end - start) // HOUR_MS == 743
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    now = ms("2026-04-02T00:00", berlin)
    acc.recompute((start, end), now)
    report = acc.report("2026-03", now)
    assert report["period"]["hours"] == 743
    assert report["period"]["start"] == "2026-02-28T23:00:00Z"
    assert report["period"]["end"] == "2026-03-31T22:00:00Z"
    assert report["status"] == "final", report["reasons"]
    assert report["totals"]["purchased_mwh"] == pytest.approx(74.3, abs=1e-6)
    assert report["totals"]["scope2_location_tco2"] == pytest.approx(74.3 * 0.35, abs=1e-6)
    day = [r for r in acc.rows(ms("2026-03-29T00:00", berlin), ms("2026-03-30T00:00", berlin))]
    assert len(day) == 23
    october = acc.report("2026-10", now)
    assert october["period"]["hours"] == 745
    assert october["devices"][0]["missing_hours"] == 745 and october["status"] == "provisional"
    # the year's first local hour is 2025-12-31T23:00Z and already uses 2026's factor
    new_year = ms("2026-01-01T00:00", berlin)
    load(acc, "incomer", new_year - 3 * HOUR_MS, new_year + 2 * HOUR_MS, 60, flat, base=5e5)
    acc.recompute({"incomer": (new_year - HOUR_MS, new_year + HOUR_MS)}, now)
    got = {r.hour: r.ef_id for r in acc.rows(new_year - HOUR_MS, new_year + HOUR_MS)}
    assert got == {new_year - HOUR_MS: "DE-2025", new_year: "DE-2026"}


def test_configured_rollover_wraps_and_generation_is_not_purchased(tmp_path: Path) -> None:
    pv = """
  - name: pv-roof
    role: generation
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: active_energy_export_kwh, address: 0}]
    rated_power_kw: 200
"""
    acc = make(tmp_path, device_yaml("incomer", extra="    counter_rollover: 10000\n") + pv)
    t0 = ms("2023-05-01T00:00")
    rows = []
    for k, t in enumerate(range(t0 - HOUR_MS, t0 + 7 * HOUR_MS, 30_000)):
        rows.append((t, "incomer", "active_energy_import_kwh",
                     round((9_500.0 + 250.0 * k * 30 / 3600) % 10_000, 4), 0))
        rows.append((t, "pv-roof", "active_energy_export_kwh", 50.0 * k * 30 / 3600, 0))
    acc.store.import_rows(rows)
    acc.recompute((t0, t0 + 6 * HOUR_MS), ms("2023-06-01T00:00"))
    incomer = [r for r in acc.rows(t0, t0 + 6 * HOUR_MS) if r.device == "incomer"]
    # one wrap, in the hour from 01:00
    assert sum(1 for r in incomer if r.detail.get("events")) == 1
    assert all(r.source == "meter" and r.mwh == pytest.approx(0.25, abs=1e-6) for r in incomer)
    report = acc.report("2023-05", ms("2023-06-01T00:00"))
    assert report["totals"]["purchased_mwh"] == pytest.approx(1.5, abs=1e-6)
    assert report["totals"]["generation_mwh"] == pytest.approx(0.3, abs=1e-6)
    pv_row = [d for d in report["devices"] if d["device"] == "pv-roof"][0]
    assert pv_row["tco2_location"] == 0 and pv_row["scope"] is None


def test_earlier_hours_computed_later_take_certificates_first_and_later_rows_follow(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"), accounting="""\
  certificates:
    - {id: I-REC-1, type: I-REC, mwh: 1.0, vintage: 2023, market: CN}
""")
    t0 = ms("2023-05-01T00:00")
    load(acc, "incomer", t0 - HOUR_MS, t0 + 31 * HOUR_MS, 60, flat)
    now = ms("2023-06-01T00:00")
    acc.recompute((t0 + 5 * HOUR_MS, t0 + 30 * HOUR_MS), now)
    covered = {r.hour: r.tco2_market == 0 for r in acc.rows(t0, t0 + 30 * HOUR_MS)}
    assert [h for h, c in sorted(covered.items()) if c] == \
        [t0 + k * HOUR_MS for k in range(5, 15)]
    seq_late = dict((r[1], r[2]) for r in seqs(acc))
    acc.recompute((t0, t0 + 5 * HOUR_MS), now)  # the first hours arrive afterwards
    rows = acc.rows(t0, t0 + 30 * HOUR_MS)
    assert [r.hour for r in rows if r.tco2_market == 0] == [t0 + k * HOUR_MS for k in range(10)]
    after = dict((r[1], r[2]) for r in seqs(acc))
    moved = [h for h in seq_late if after[h] != seq_late[h]]
    assert moved == [t0 + k * HOUR_MS for k in range(10, 15)]  # re-sent to the sinks
    used = stored(acc.store, "SELECT sum(mwh) FROM certificate_allocations")[0][0]
    assert used == pytest.approx(1.0, abs=1e-9)


def test_readings_held_for_a_suspect_clock_make_no_hours(tmp_path: Path) -> None:
    """A gateway ran with its clock in 2000 (readings flagged CLOCK_SUSPECT, the hourly job
    done up to 2000), then restarts with the right clock: only the hours of trusted readings
    are rolled up, not the 23 years between."""
    acc = make(tmp_path, device_yaml("incomer"))
    t2000 = ms("2000-01-01T00:00")
    acc.store.import_rows([(t2000 + i * 60_000, "incomer", "active_energy_import_kwh",
                            5000.0 + i, 5) for i in range(30)])
    acc.run(t2000 + 2 * HOUR_MS, recompute_hours=48)  # the first start, clock wrong
    assert by_hour(acc, "incomer") == {}
    t0 = ms("2023-05-01T00:00")
    load(acc, "incomer", t0 + 20 * 60_000, t0 + 3 * HOUR_MS, 10, flat)
    acc.run(t0 + 3 * HOUR_MS + 300_000, recompute_hours=48)
    hours = sorted(by_hour(acc, "incomer"))
    assert hours == [t0, t0 + HOUR_MS, t0 + 2 * HOUR_MS]
    assert acc.store.readings.held_count() == 30  # kept for review


def test_hours_a_clock_step_jumped_over_are_not_filled(tmp_path: Path) -> None:
    """The wall clock stepped three years forward while a meter was polled: its counter's
    readings before and after the step are continuous, but the hours between never passed
    for it. The run after the step starts at the hour the clock landed in."""
    acc = make(tmp_path, device_yaml("incomer"))
    t0 = ms("2026-05-01T00:00")
    last = load(acc, "incomer", t0, t0 + 2 * HOUR_MS, 10, flat)
    acc.run(t0 + 2 * HOUR_MS + 300_000, recompute_hours=48)
    assert len(by_hour(acc, "incomer")) == 2
    landed = t0 + 3 * 365 * 24 * HOUR_MS
    load(acc, "incomer", landed, landed + 2 * HOUR_MS, 10, flat, base=last)
    acc.run(landed + 2 * HOUR_MS + 300_000, not_before=landed)
    hours = sorted(by_hour(acc, "incomer"))
    assert hours == [t0, t0 + HOUR_MS, landed, landed + HOUR_MS]


def test_a_newer_factor_replaces_the_carried_one_for_the_years_after_it_too(
        tmp_path: Path) -> None:
    base = """factors:
  - {id: y23, region: CN-national, method: location, value: 0.5, valid_from: 2023-01-01,
     valid_to: 2023-12-31, source: first notice}
"""
    acc = make(tmp_path, device_yaml("incomer"), factors=base)
    t0 = ms("2025-06-01T00:00")
    load(acc, "incomer", t0 - 2 * HOUR_MS, t0 + 4 * HOUR_MS, 60, flat)
    acc.run(t0 + 3 * HOUR_MS + 1, recompute_hours=4)
    rows = acc.rows(t0, t0 + 3 * HOUR_MS)
    assert {r.ef_id for r in rows} == {"y23"}
    assert {r.detail["factor"]["age_days"] for r in rows} == {(datetime(2025, 6, 1)
                                                               - datetime(2024, 1, 1)).days}
    (tmp_path / "factors.yaml").write_text(base + """\
  - {id: y24, region: CN-national, method: location, value: 0.4, valid_from: 2024-01-01,
     valid_to: 2024-12-31, source: second notice}
""")
    acc2 = Accountant(acc.store, acc.config)
    acc2.run(t0 + 3 * HOUR_MS + 1)
    rows = acc2.rows(t0, t0 + 3 * HOUR_MS)
    assert {r.ef_id for r in rows} == {"y24"}
    assert all(r.detail["provisional"] and r.detail["factor"]["carried_forward"] for r in rows)
    assert {r.detail["factor"]["age_days"] for r in rows} == {(datetime(2025, 6, 1)
                                                               - datetime(2025, 1, 1)).days}
    assert all(r.tco2_location == pytest.approx(0.1 * 0.4, abs=1e-9) for r in rows)
