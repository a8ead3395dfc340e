"""Scope 2 by the hour over a real store: granular certificates imported from CSV (refused
line by line, each retired once), a PV day's report with both market-based modes, on-site
generation and CFE%, through the command line too."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import stored as table_rows

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.granular import import_certificates, parse_grid_mix
from energyd.accounting.scope2_report import scope2_section
from energyd.accounting.service import Accountant
from energyd.cli import cli
from energyd.errors import ImportRejected
from energyd.store import Store
from energyd.store.schema import SCHEMA_VERSION
from tests.test_accounting_rollup import SHANGHAI, device_yaml, flat, load, make, ms

HEADER = "id,production_start,production_end,wh,market,device,technology,location\n"


def certs_csv(*lines: str) -> io.StringIO:
    return io.StringIO(HEADER + "".join(f"{line}\n" for line in lines))


def line(cid: str, start: str, end: str, wh: float = 150_000, market: str = "CN") -> str:
    return f"{cid},{start},{end},{wh},{market},PV-ROOF-1,solar,Suzhou"


# --- import -----------------------------------------------------------------------------------


def test_the_store_has_migration_8_for_granular_certificates(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        assert SCHEMA_VERSION >= 8
        assert store.certificates.count() == 0


def test_import_refuses_bad_lines_with_file_line_and_field(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    bad = certs_csv(
        line("ok-1", "2026-06-01T13:00+08:00", "2026-06-01T14:00+08:00"),
        line("empty", "2026-06-01T13:30+08:00", "2026-06-01T13:30+08:00"),
        line("long", "2026-06-01T13:00+08:00", "2026-06-01T14:15+08:00"),
        line("neg", "2026-06-01T13:00+08:00", "2026-06-01T14:00+08:00", wh=-5),
        line("ok-1", "2026-06-01T15:00+08:00", "2026-06-01T16:00+08:00"),
        "nan-wh,2026-06-01T13:00+08:00,2026-06-01T14:00+08:00,nan,CN,PV,solar,x",
        ",2026-06-01T13:00+08:00,2026-06-01T14:00+08:00,1,CN,PV,solar,x",
        "date,2026-06-01,2026-06-01T14:00+08:00,1,CN,PV,solar,x",
        "few,2026-06-01T13:00+08:00",
    )
    with pytest.raises(ImportRejected) as exc:
        import_certificates(acc.store, bad, "certs.csv", SHANGHAI, 0)
    text = str(exc.value)
    assert "certs.csv:3: production_start 2026-06-01T13:30+08:00" in text
    assert "production_end must be after production_start" in text
    assert "certs.csv:4:" in text and "longer than one hour" in text
    assert "certs.csv:5: wh -5" in text
    assert "certs.csv:6: id ok-1: the certificate on line 2 has the same id" in text
    assert "certs.csv:7: wh nan" in text
    assert "certs.csv:8: id is empty" in text
    assert "certs.csv:9: production_start '2026-06-01' is a date" in text
    assert "certs.csv:10: expected 8 columns, got 2" in text
    assert "nothing was imported" in text
    assert acc.store.certificates.count() == 0  # the good line is not stored either
    with pytest.raises(ImportRejected, match=r"certs.csv:1: header must name .*missing wh"):
        import_certificates(acc.store, io.StringIO("id,production_start,production_end\n"),
                            "certs.csv", SHANGHAI, 0)


def test_a_certificate_is_retired_once_across_reruns_and_overlapping_imports(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    first = [line(f"GC-{h}", f"2026-06-01T{h:02d}:00+08:00", f"2026-06-01T{h + 1:02d}:00+08:00")
             for h in range(10, 14)]
    got = import_certificates(acc.store, certs_csv(*first), "a.csv", SHANGHAI, 1)
    assert got.added == ["GC-10", "GC-11", "GC-12", "GC-13"] and got.already == []
    again = import_certificates(acc.store, certs_csv(*first), "a.csv", SHANGHAI, 2)
    assert again.added == [] and len(again.already) == 4
    overlap = [line(f"GC-{h}", f"2026-06-01T{h:02d}:00+08:00",
                    f"2026-06-01T{h + 1:02d}:00+08:00") for h in range(12, 16)]
    got = import_certificates(acc.store, certs_csv(*overlap), "b.csv", SHANGHAI, 3)
    assert got.added == ["GC-14", "GC-15"] and got.already == ["GC-12", "GC-13"]
    assert acc.store.certificates.count() == 6
    # the same id with other figures is refused: a stored certificate never changes
    changed = line("GC-12", "2026-06-01T12:00+08:00", "2026-06-01T13:00+08:00", wh=999)
    with pytest.raises(ImportRejected, match=r"c.csv:2: id GC-12: the store holds this "
                                             r"certificate with wh 150000.0 where this line "
                                             r"says wh 999.0"):
        import_certificates(acc.store, certs_csv(changed), "c.csv", SHANGHAI, 4)
    assert acc.store.certificates.count() == 6
    stored = acc.store.certificates.held(["GC-12"])["GC-12"]
    assert stored.wh == 150_000 and stored.production_start == ms("2026-06-01T12:00")
    # the report counts each stored certificate once whatever was imported
    rows = table_rows(acc.store,
                      "SELECT id, count(*) FROM granular_certificates GROUP BY id")
    assert all(n == 1 for _, n in rows)


def test_grid_mix_csv_is_refused_line_by_line() -> None:
    ok = parse_grid_mix(io.StringIO("hour,clean_share\n2026-06-01T12:00+08:00,0.25\n"),
                        "mix.csv", SHANGHAI)
    assert ok == {ms("2026-06-01T12:00"): 0.25}
    with pytest.raises(ImportRejected) as exc:
        parse_grid_mix(io.StringIO("hour,clean_share\n2026-06-01T12:30+08:00,0.2\n"
                                   "2026-06-01T13:00+08:00,1.5\n2026-06-01T14:00,x\n"
                                   "2026-06-01T15:00+08:00,0.1\n2026-06-01T15:00+08:00,0.1\n"),
                       "mix.csv", SHANGHAI)
    text = str(exc.value)
    assert "mix.csv:2: hour 2026-06-01T12:30+08:00 is not the start of an hour" in text
    assert "mix.csv:3: clean_share 1.5 is not within 0..1" in text
    assert "mix.csv:4: clean_share 'x' is not a number" in text
    assert "mix.csv:6: hour 2026-06-01T15:00+08:00: already given on line 5" in text


# --- a PV day in the store --------------------------------------------------------------------

PV = """
  - name: pv-roof
    role: generation
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: active_energy_export_kwh, address: 0}]
    rated_power_kw: 200
"""
GEC = """  certificates:
    - {id: GEC-26, type: GEC, mwh: 0.3, vintage: 2026, market: CN}
"""
DAY = "2026-06-01"


def local_hour(t: int) -> int:
    return (t + 8 * HOUR_MS) % 86_400_000 // HOUR_MS


def pv_power(t: int) -> float:  # kWh per hour produced: 50 from 09:00 to 16:00 local
    return 50.0 if 9 <= local_hour(t) < 16 else 0.0


def export_power(t: int) -> float:  # 20 kWh per hour exported from 11:00 to 14:00 local
    return 20.0 if 11 <= local_hour(t) < 14 else 0.0


def pv_day(tmp_path: Path, *, name: str = "test-plant") -> tuple[Accountant, int, int]:
    """June 1st 2026 in Shanghai: an incomer drawing 0.1 MWh every hour, with an export
    counter; a roof PV producing 0.05 MWh an hour from 09:00 to 16:00, 0.02 MWh of it exported
    from 11:00 to 14:00; a 0.3 MWh GEC; granular certificates of 0.15 MWh for 10:00..14:00."""
    acc = make(tmp_path, device_yaml("incomer") + PV, accounting=GEC)
    start, end = ms(f"{DAY}T00:00"), ms(f"{DAY}T00:00") + 24 * HOUR_MS
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, export_power, base=500.0,
         quantity="active_energy_export_kwh")
    load(acc, "pv-roof", start - HOUR_MS, end + HOUR_MS, 60, pv_power, base=0.0,
         quantity="active_energy_export_kwh")
    acc.recompute((start, end), ms("2026-07-02T00:00"))
    import_certificates(acc.store, certs_csv(*(
        line(f"GC-{h}", f"{DAY}T{h:02d}:00+08:00", f"{DAY}T{h + 1:02d}:00+08:00")
        for h in range(10, 15))), "certs.csv", SHANGHAI, 0)
    return acc, start, end


def test_a_pv_day_reports_both_modes_on_site_generation_and_cfe(tmp_path: Path) -> None:
    acc, start, end = pv_day(tmp_path)
    report = acc.report("2026-06", ms("2026-07-02T00:00"))
    rows = [r for r in acc.rows(start, end) if r.device == "incomer"]
    residual = rows[0].detail["market"]["residual"]["value"]
    assert all(r.mwh == pytest.approx(0.1, abs=1e-9) for r in rows) and len(rows) == 24
    # today's annual figures are unchanged: the GEC takes local 00:00..02:00
    assert report["totals"]["scope2_market_tco2"] == pytest.approx((2.4 - 0.3) * residual)
    s2 = report["scope2"]
    t = s2["totals"]
    # annual: the GEC's 0.3 and the granular certificates' 0.75 MWh by volume
    assert t["annual_covered_mwh"] == pytest.approx(1.05)
    assert t["annual_market_tco2"] == pytest.approx((2.4 - 1.05) * residual)
    # hourly: each granular certificate only in its hour, 0.1 of its 0.15; the GEC nothing
    assert t["hourly_covered_mwh"] == pytest.approx(0.5)
    assert t["hourly_market_tco2"] == pytest.approx((2.4 - 0.5) * residual)
    assert s2["granular_certificates"]["hourly_excess_mwh"] == pytest.approx(0.25)
    assert any("GEC-26" in n and "no hourly production backs it" in n for n in s2["notes"])
    # annual covers local 00..09 whole and 0.05 of 10 (the GEC, then the granular volume in
    # time order); hourly covers 10..14: the gap is 10 x 0.1 MWh, all before 10:00
    gap = {g["hour_of_day"]: g["gap_mwh"] for g in s2["gap_by_hour_of_day"]}
    assert sum(gap.values()) == pytest.approx(1.0)
    assert gap[9] == pytest.approx(0.1) and gap[10] == 0.0 and gap[12] == 0.0
    assert t["gap_mwh"] == pytest.approx(1.0)
    # on-site: self-consumed = generation - export per hour
    hours = {local_hour(ms_of(h["hour"])): h for h in s2["hours"]}
    for lh in range(24):
        h = hours[lh]
        gen = 0.05 if 9 <= lh < 16 else 0.0
        exp = 0.02 if 11 <= lh < 14 else 0.0
        assert h["generation_mwh"] == pytest.approx(gen, abs=1e-6)
        assert h["export_mwh"] == pytest.approx(exp, abs=1e-6)
        assert h["self_consumed_mwh"] == pytest.approx(gen - exp, abs=1e-6)
    assert t["generation_mwh"] == pytest.approx(0.35)
    assert t["export_mwh"] == pytest.approx(0.06)
    assert t["self_consumed_mwh"] == pytest.approx(0.29)
    assert t["self_consumed_share"] == pytest.approx(0.29 / 2.69, abs=1e-6)
    # generation is not purchased: purchased stays the incomer's
    assert t["purchased_mwh"] == pytest.approx(2.4)
    # CFE by hand: 12:00 (0.1 + 0.03 load, 0.1 matched + 0.03 self) = 1; 09:00
    # (0.05 self of 0.15) = 1/3; 20:00 nothing clean = 0
    assert hours[12]["cfe"] == pytest.approx(1.0)
    assert hours[9]["cfe"] == pytest.approx(1 / 3)
    assert hours[20]["cfe"] == 0.0
    assert t["cfe"] == pytest.approx((0.5 + 0.29) / 2.69, abs=1e-6)
    by_hod = {c["hour_of_day"]: c["cfe"] for c in s2["cfe_by_hour_of_day"]}
    assert by_hod[12] == pytest.approx(1.0) and by_hod[9] == pytest.approx(1 / 3)
    assert by_hod[20] == 0.0


def test_a_grid_mix_adds_the_grid_clean_share_to_cfe(tmp_path: Path) -> None:
    acc, start, end = pv_day(tmp_path)
    mix = {start + k * HOUR_MS: 0.3 for k in range(24)}
    s2 = scope2_section(acc, "2026-06", acc.rows(start, end), grid_mix=mix)
    hours = {local_hour(ms_of(h["hour"])): h for h in s2["hours"]}
    # 09:00: 0.05 self + 0.3 x 0.1 grid, over 0.15
    assert hours[9]["cfe"] == pytest.approx((0.05 + 0.03) / 0.15)
    assert hours[20]["cfe"] == pytest.approx(0.3)
    assert hours[12]["cfe"] == pytest.approx(1.0)


def test_a_granular_certificate_of_another_market_covers_nothing_in_the_report(
        tmp_path: Path) -> None:
    acc, start, end = pv_day(tmp_path)
    import_certificates(acc.store, certs_csv(
        line("JP-1", f"{DAY}T18:00+08:00", f"{DAY}T19:00+08:00", market="JP")),
        "jp.csv", SHANGHAI, 0)
    s2 = acc.report("2026-06", ms("2026-07-02T00:00"))["scope2"]
    assert "JP-1" in s2["granular_certificates"]["refused"]
    assert s2["totals"]["hourly_covered_mwh"] == pytest.approx(0.5)
    assert any("JP-1 covers nothing: market JP" in n for n in s2["notes"])


def ms_of(text: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- the command line -------------------------------------------------------------------------


def config_file(tmp_path: Path, name: str = "test-plant", tz: str = "Asia/Shanghai") -> Path:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: {name}, timezone: {tz}, grid_region: CN-national}}
storage: {{path: {tmp_path / 'energyd.db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer") + PV}
accounting:
  residual_region: CN-national
{GEC}""")
    return cfg


def test_cli_imports_certificates_and_reports_both_modes(tmp_path: Path) -> None:
    acc, start, end = pv_day(tmp_path)
    acc.store.close()
    cfg = config_file(tmp_path)
    more = tmp_path / "more.csv"
    more.write_text(HEADER + line("GC-15", f"{DAY}T15:00+08:00", f"{DAY}T15:15+08:00",
                                  wh=40_000) + "\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["certificates", "import", "-c", str(cfg), str(more)])
    assert res.exit_code == 0, res.output
    assert "1 certificates stored, 0 already stored" in res.output
    res = runner.invoke(cli, ["certificates", "import", "-c", str(cfg), str(more)])
    assert "0 certificates stored, 1 already stored" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + line("X", f"{DAY}T15:30+08:00", f"{DAY}T16:45+08:00") + "\n")
    res = runner.invoke(cli, ["certificates", "import", "-c", str(cfg), str(bad)])
    assert res.exit_code == 2 and f"{bad}:2: production_start" in res.output

    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2026-06", "--format",
                              "json"])
    assert res.exit_code == 0, res.output
    s2 = json.loads(res.output)["scope2"]
    assert s2["totals"]["hourly_covered_mwh"] == pytest.approx(0.54)
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2026-06"])
    assert "scope 2 market-based, side by side (CN): annual" in res.output
    assert "hourly-matching gap by hour of day" in res.output
    assert "self-consumed 0.290 MWh" in res.output
    assert "CFE by hour of day: 00h 0%" in res.output and "12h 100%" in res.output
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2026-06", "--format", "csv"])
    rows = [r for r in csv.reader(io.StringIO(res.output)) if r]
    total = next(r for r in rows if r[:2] == ["scope2", "TOTAL"])
    assert float(total[5]) == pytest.approx(0.54)
    gap_rows = [r for r in rows if r[0] == "gap" and r[1] != "hour_of_day"]
    assert len(gap_rows) == 24 and sum(float(r[4]) for r in gap_rows) == pytest.approx(1.0)
    mix = tmp_path / "mix.csv"
    mix.write_text("hour,clean_share\n" + "".join(
        f"{DAY}T{h:02d}:00+08:00,0.5\n" for h in range(24)))
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2026-06", "--format",
                              "json", "--grid-mix", str(mix)])
    hours = json.loads(res.output)["scope2"]["hours"]
    by_utc = {h["hour"][11:13]: h["cfe"] for h in hours}
    assert by_utc["12"] == pytest.approx(0.5)  # 20:00 local: the grid's share alone
    assert by_utc["01"] == pytest.approx((0.05 + 0.5 * 0.1) / 0.15)  # 09:00 local


def test_the_html_report_shows_both_modes_as_the_json_has_them(tmp_path: Path) -> None:
    from energyd.accounting.report_html import render_html, report_series

    acc, start, end = pv_day(tmp_path)
    report = acc.report("2026-06", ms("2026-07-02T00:00"))
    page = render_html(report, report_series(report, acc.rows(start, end)))
    t = report["scope2"]["totals"]
    assert "<section id=scope2>" in page
    for key in ("annual_market_tco2", "hourly_market_tco2", "self_consumed_mwh", "cfe"):
        assert f"data-key=scope2.{key}>{json.dumps(t[key])}<" in page
    assert "no hourly production backs it" in page


def test_energytag_column_names_in_any_order_are_read(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    text = ("market_boundary,certificate_id,energy_wh,production_interval_start,"
            "production_interval_end,device_id,technology,storage_discharge\n"
            "CN,ET-1,2500,2026-06-01T13:00+08:00,2026-06-01T13:15+08:00,PV-9,solar,yes\n")
    got = import_certificates(acc.store, io.StringIO(text), "et.csv", SHANGHAI, 0)
    assert got.added == ["ET-1"]
    rec = acc.store.certificates.held(["ET-1"])["ET-1"]
    assert (rec.wh, rec.market, rec.device, rec.storage_discharge) == (2500, "CN", "PV-9", True)
    assert rec.production_end - rec.production_start == 15 * 60_000


def test_hourly_production_backs_an_annual_instrument_without_counting_it_twice(
        tmp_path: Path) -> None:
    acc, start, end = pv_day(tmp_path)
    from energyd.accounting.scope2_report import annual_instruments

    instruments = annual_instruments(acc)
    head = HEADER.strip() + ",backs\n"

    def backed(cid: str, hour: int, mwh: float, backs: str = "GEC-26", market: str = "CN",
               day: str = DAY) -> str:
        return (line(cid, f"{day}T{hour:02d}:00+08:00", f"{day}T{hour + 1:02d}:00+08:00",
                     wh=mwh * 1e6, market=market) + f",{backs}\n")

    bad = io.StringIO(head + backed("B-1", 18, 0.1, backs="NOPE") + backed("B-2", 18, 0.1,
                      market="JP") + backed("B-3", 18, 0.1, day="2027-01-05"))
    with pytest.raises(ImportRejected) as exc:
        import_certificates(acc.store, bad, "b.csv", SHANGHAI, 0, instruments)
    text = str(exc.value)
    assert "b.csv:2: backs 'NOPE': no such instrument under accounting.certificates" in text
    assert "b.csv:3: backs GEC-26: the instrument's market is CN, this certificate's JP" in text
    assert "b.csv:4: backs GEC-26: produced at 2027-01-05T10:00:00Z, outside" in text
    # the instrument holds 0.3 MWh: production stored for it may not go beyond
    too_much = io.StringIO(head + "".join(backed(f"B-{h}", h, 0.1) for h in (17, 18, 19, 20)))
    with pytest.raises(ImportRejected, match=r"b.csv:5: backs GEC-26: the production stored "
                                             r"for it would reach 0.4 MWh, beyond the "
                                             r"instrument's 0.3 MWh"):
        import_certificates(acc.store, too_much, "b.csv", SHANGHAI, 0, instruments)
    ok = head + "".join(backed(f"B-{h}", h, 0.1) for h in (18, 19))
    got = import_certificates(acc.store, io.StringIO(ok), "b.csv", SHANGHAI, 0, instruments)
    assert got.added == ["B-18", "B-19"]
    # imported again: nothing added, and the cap does not count them twice
    got = import_certificates(acc.store, io.StringIO(ok), "b.csv", SHANGHAI, 0, instruments)
    assert got.added == [] and got.already == ["B-18", "B-19"]
    s2 = acc.report("2026-06", ms("2026-07-02T00:00"))["scope2"]
    t = s2["totals"]
    assert t["annual_covered_mwh"] == pytest.approx(1.05)  # GEC-26's volume, counted once
    assert t["hourly_covered_mwh"] == pytest.approx(0.5 + 0.2)
    assert any("annual instrument GEC-26: 0.3 MWh in annual mode; in hourly mode its hourly "
               "production (2 certificates, 0.2 MWh) covers 0.2 MWh" in n for n in s2["notes"])


def test_the_pv_days_evidence_verifies_with_its_scope2_figures(tmp_path: Path) -> None:
    from energyd.accounting.evidence import verify_evidence

    acc, start, end = pv_day(tmp_path)
    now = ms("2026-07-02T00:00")
    acc.recompute((start - HOUR_MS, ms("2026-07-01T00:00")), now)  # as the daemon would
    acc.export_evidence("2026-06", tmp_path / "ev", now)
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["scope2"]["totals"]["self_consumed_mwh"] == pytest.approx(0.29)
    certs = json.loads((tmp_path / "ev" / "certificates.json").read_text())
    assert [c["id"] for c in certs["granular"]] == [f"GC-{h}" for h in range(10, 15)]
    acc.store.close()
    verdict = verify_evidence(tmp_path / "ev")
    assert verdict.ok, (verdict.problems, verdict.hours[:3], verdict.totals)
