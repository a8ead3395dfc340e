"""The organisation's month: three sites' evidence folders, in three time zones, verified and
added up; a tampered folder fails and names its site; sites that cannot be added up are
refused."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from energyd.accounting.consolidate import ConsolidationError, SiteMonth, combine
from energyd.accounting.energy import HOUR_MS
from energyd.accounting.granular import import_certificates
from energyd.accounting.service import Accountant
from energyd.cli import cli
from energyd.config.loader import parse_config
from energyd.store import Store
from tests.test_accounting_rollup import device_yaml, flat, load
from tests.test_scope2_store import PV, certs_csv, line, pv_power

FUEL = """
  - name: boiler
    role: fuel
    driver: modbus
    modbus: {host: 127.0.0.1, port: 1502}
    registers: [{quantity: fuel_volume_m3, address: 0}]
    rated_flow: 100
    fuel: {quantity: fuel_volume_m3, unit_factor: 0.0001, ncv_gj_per_unit: 389.31,
           carbon_content_tc_per_gj: 0.01532, oxidation: 0.99, source: test}
"""
SITES = [("shanghai-works", "Asia/Shanghai", 1.0), ("tokyo-office", "Asia/Tokyo", 0.5),
         ("berlin-lab", "Europe/Berlin", 2.0)]
NOW = round(datetime(2026, 7, 3).timestamp() * 1000)


def site_folder(tmp_path: Path, name: str, tz: str, scale: float) -> tuple[Path, dict]:
    """A site's June 2026 evidence: one local day of an incomer, a roof PV, a boiler, and
    granular certificates of the site's own (ids prefixed with its name)."""
    root = tmp_path / name
    root.mkdir()
    zone = ZoneInfo(tz)
    config = parse_config(f"""
site: {{name: {name}, timezone: {tz}, grid_region: CN-national}}
storage: {{path: {root / 'energyd.db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer") + PV + FUEL}
accounting:
  residual_region: CN-national
""", "test.yaml")
    acc = Accountant(Store.open(config.storage.path), config)
    start = round(datetime(2026, 6, 10, tzinfo=zone).timestamp() * 1000)
    end = start + 24 * HOUR_MS
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 120, flat, scale=scale)
    load(acc, "pv-roof", start - HOUR_MS, end + HOUR_MS, 120, pv_power, base=0.0,
         quantity="active_energy_export_kwh")
    load(acc, "boiler", start - HOUR_MS, end + HOUR_MS, 120, flat, base=0.0, scale=0.1,
         quantity="fuel_volume_m3")
    # every hour from the first reading on, as the daemon computes them (what verify redoes)
    acc.recompute((start - HOUR_MS, round(datetime(2026, 7, 1, tzinfo=zone).timestamp() * 1000)),
                  NOW)
    import_certificates(acc.store, certs_csv(*(
        line(f"{name}-{h}", datetime(2026, 6, 10, h, tzinfo=zone).isoformat(),
             datetime(2026, 6, 10, h + 1, tzinfo=zone).isoformat(), wh=60_000)
        for h in range(10, 14))), "certs.csv", zone, 0)
    folder = tmp_path / f"{name}-evidence"
    acc.export_evidence("2026-06", folder, NOW)
    report = acc.report("2026-06", NOW)
    acc.store.close()
    return folder, report


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict]]:
    tmp = tmp_path_factory.mktemp("org")
    return [site_folder(tmp, name, tz, scale) for name, tz, scale in SITES]


def test_consolidate_equals_the_sum_of_the_sites_reports(three_sites) -> None:
    folders = [str(f) for f, _ in three_sites]
    res = CliRunner().invoke(cli, ["consolidate", *folders, "--format", "json"])
    assert res.exit_code == 0, res.output
    org = json.loads(res.output)
    assert org["month"] == "2026-06"
    reports = {r["site"]["name"]: r for _, r in three_sites}
    assert [s["site"] for s in org["sites"]] == sorted(reports)
    for s in org["sites"]:
        r = reports[s["site"]]
        assert s["timezone"] == r["timezone"] and s["period"] == r["period"]
        assert s["scope1_tco2"] == r["totals"]["scope1_fuel_tco2"]
        assert s["scope2_location_tco2"] == r["totals"]["scope2_location_tco2"]
        assert s["scope2_market_annual_tco2"] == r["scope2"]["totals"]["annual_market_tco2"]
        assert s["scope2_market_hourly_tco2"] == r["scope2"]["totals"]["hourly_market_tco2"]
        assert s["status"] == r["status"] == "provisional"  # 29 days without rows
        assert s["reasons"] == r["reasons"]
    t = org["totals"]
    for key, pick in (("scope1_tco2", lambda r: r["totals"]["scope1_fuel_tco2"]),
                      ("scope2_location_tco2", lambda r: r["totals"]["scope2_location_tco2"]),
                      ("scope2_market_annual_tco2",
                       lambda r: r["scope2"]["totals"]["annual_market_tco2"]),
                      ("scope2_market_hourly_tco2",
                       lambda r: r["scope2"]["totals"]["hourly_market_tco2"]),
                      ("purchased_mwh", lambda r: r["totals"]["purchased_mwh"])):
        assert t[key] == pytest.approx(sum(pick(r) for r in reports.values()), abs=1e-6)
        assert t[key] > 0
    # the hourly mode covers each site's certificates in their own local hours: 4 x 0.06 MWh,
    # but in Tokyo, whose incomer draws 0.05 MWh an hour, 4 x 0.05
    covered = {n: r["scope2"]["totals"]["hourly_covered_mwh"] for n, r in reports.items()}
    assert covered == pytest.approx({"shanghai-works": 0.24, "tokyo-office": 0.2,
                                     "berlin-lab": 0.24})
    assert t["total_market_hourly_tco2"] == pytest.approx(
        t["scope1_tco2"] + t["scope2_market_hourly_tco2"], abs=1e-6)
    assert org["status"] == "provisional"
    assert any(r.startswith("berlin-lab: ") for r in org["reasons"])
    table = CliRunner().invoke(cli, ["consolidate", *folders])
    assert table.exit_code == 0 and "organisation 2026-06: provisional" in table.output
    assert "tokyo-office" in table.output and "Asia/Tokyo" in table.output
    as_csv = CliRunner().invoke(cli, ["consolidate", *folders, "--format", "csv"])
    assert as_csv.output.splitlines()[-1].startswith("TOTAL,")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_tampered_folder_fails_and_names_its_site(three_sites, tmp_path: Path) -> None:
    folders = [f for f, _ in three_sites]
    tampered = _copy(folders[1], tmp_path / "tampered")
    readings = (tampered / "readings.csv").read_text().splitlines(keepends=True)
    i = next(k for k, r in enumerate(readings) if ",incomer,active_energy_import_kwh," in r
             and k > len(readings) // 2)
    t, d, q, v, qual = readings[i].strip().split(",")
    readings[i] = f"{t},{d},{q},{float(v) + 50},{qual}\n"
    (tampered / "readings.csv").write_text("".join(readings))
    res = CliRunner().invoke(cli, ["consolidate", str(folders[0]), str(tampered),
                                   str(folders[2])])
    assert res.exit_code == 1
    assert "site tokyo-office" in res.output and "readings.csv: does not match" in res.output
    assert "shanghai-works" not in res.output
    # the manifest re-made over the altered file: the recompute tells
    manifest = "".join(f"{hashlib.sha256((tampered / n).read_bytes()).hexdigest()}  {n}\n"
                       for n in sorted(p.name for p in tampered.iterdir()
                                       if p.name != "MANIFEST.sha256"))
    (tampered / "MANIFEST.sha256").write_text(manifest)
    res = CliRunner().invoke(cli, ["consolidate", str(folders[0]), str(tampered)])
    assert res.exit_code == 1
    assert "site tokyo-office" in res.output and "does not verify" in res.output


def report_of(name: str, month: str = "2026-06", *, loc: float | None = 1.0,
              certs: tuple[str, ...] = ()) -> dict:
    return {"site": {"name": name}, "month": month, "timezone": "UTC",
            "period": {"start": "x", "end": "y", "hours": 720}, "status": "final",
            "reasons": [],
            "totals": {"scope1_fuel_tco2": 0.5, "scope2_location_tco2": loc,
                       "scope2_market_tco2": 0.8, "purchased_mwh": 2.0, "generation_mwh": 0.0},
            "certificates": [], "scope2": {"totals": {
                "annual_market_tco2": 0.8, "hourly_market_tco2": 0.9, "cfe": 0.25,
                "generation_mwh": 0.0, "self_consumed_mwh": 0.0},
                "hours": [{"load_mwh": 2.0, "clean_mwh": 0.5}],
                "granular_certificates": {"hourly_used_ids": list(certs),
                                          "annual_used_ids": []}}}


def test_combine_refuses_what_cannot_be_added_up() -> None:
    with pytest.raises(ConsolidationError, match="different months"):
        combine([SiteMonth("a", report_of("a")), SiteMonth("b", report_of("b", "2026-07"))])
    with pytest.raises(ConsolidationError, match="site a twice"):
        combine([SiteMonth("a1", report_of("a")), SiteMonth("a2", report_of("a"))])
    with pytest.raises(ConsolidationError, match="certificate GC-1 is claimed by site a and "
                                                 "by site b"):
        combine([SiteMonth("a", report_of("a", certs=("GC-1",))),
                 SiteMonth("b", report_of("b", certs=("GC-1",)))])


def test_combine_keeps_a_null_total_null_and_weights_cfe_by_load() -> None:
    org = combine([SiteMonth("a", report_of("a")), SiteMonth("b", report_of("b", loc=None))])
    assert org["totals"]["scope2_location_tco2"] is None
    assert org["totals"]["total_location_tco2"] is None
    assert org["totals"]["scope2_market_hourly_tco2"] == pytest.approx(1.8)
    assert org["totals"]["total_market_hourly_tco2"] == pytest.approx(2.8)
    assert org["totals"]["cfe"] == pytest.approx(0.25)
    assert org["status"] == "final"


def test_an_unreadable_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["consolidate", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "site empty" in res.output
    assert "MANIFEST.sha256: missing" in res.output


def test_a_report_whose_scope2_figure_was_altered_does_not_verify(three_sites,
                                                                   tmp_path: Path) -> None:
    altered = _copy(three_sites[0][0], tmp_path / "altered")
    report = json.loads((altered / "report.json").read_text())
    report["scope2"]["totals"]["hourly_market_tco2"] -= 0.01
    (altered / "report.json").write_text(json.dumps(report))
    manifest = "".join(f"{hashlib.sha256((altered / n).read_bytes()).hexdigest()}  {n}\n"
                       for n in sorted(p.name for p in altered.iterdir()
                                       if p.name != "MANIFEST.sha256"))
    (altered / "MANIFEST.sha256").write_text(manifest)
    res = CliRunner().invoke(cli, ["consolidate", str(altered)])
    assert res.exit_code == 1
    assert "site shanghai-works" in res.output
    assert "total: scope2.totals.hourly_market_tco2" in res.output
