"""The accounting commands (rollup, report with evidence, invoices import) and the daemon's
hourly rollup component."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from conftest import stored

from energyd.accounting.energy import HOUR_MS
from energyd.cli import cli
from energyd.clock import AcceleratedClock
from energyd.config.loader import load_config
from energyd.daemon import rollups
from energyd.daemon.app import Daemon
from energyd.daemon.context import Component, Context
from energyd.store import Store

CONFIG = """
site: {{name: plant-a, timezone: Asia/Shanghai, grid_region: CN-East}}
storage: {{path: {db}}}
http: {{enabled: false}}
devices:
  - name: incomer
    role: grid_import
    driver: modbus
    modbus: {{host: 127.0.0.1, port: 1502}}
    registers: [{{quantity: active_energy_import_kwh, address: 0}}]
    rated_power_kw: 300
accounting:
  residual_region: CN-national
  recompute_hours: 3
  rollup_delay: 5m
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "energyd.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "energyd.db"))
    return path


def fill(db: Path, start: int, end: int, step_s: int = 60, kw: float = 100.0) -> None:
    with Store.open(db) as store:
        store.import_rows([(t, "incomer", "active_energy_import_kwh",
                            1000.0 + kw * (t - start) / HOUR_MS, 0)
                           for t in range(start, end, step_s * 1000)])


def ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def test_rollup_report_evidence_and_statement_import_from_the_command_line(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    start, end = ms("2023-02-28T16:00:00+00:00"), ms("2023-03-31T16:00:00+00:00")  # March, CST
    fill(tmp_path / "energyd.db", start - HOUR_MS, end + HOUR_MS)
    runner = CliRunner()
    res = runner.invoke(cli, ["rollup", "-c", str(cfg), "--from", "2023-03-01T00:00:00+08:00",
                              "--to", "2023-04-01T00:00:00+08:00", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 744 and rows[0]["hour"] == "2023-02-28T16:00:00Z"
    assert {r["source"] for r in rows} == {"meter"}
    assert rows[0]["ef_id"] == "CN-MEE-2023-East" and rows[0]["ef_location"] == 0.55
    assert abs(rows[0]["mwh"] - 0.1) < 1e-9 and abs(rows[0]["tco2_location"] - 0.055) < 1e-9
    assert rows[0]["detail"]["factor"]["source"].startswith("MEE and NBS")

    bills = tmp_path / "bills.csv"
    bills.write_text("account,period_start,period_end,energy_kwh\n"
                     "incomer,2023-03-01,2023-03-31,74400\n"
                     "incomer,2023-03-20,2023-04-10,100\n"
                     "meter-9,2023-03-01,2023-03-31,1\n")
    res = runner.invoke(cli, ["invoices", "import", "-c", str(cfg), str(bills)])
    assert res.exit_code == 2
    assert f"{bills}:3: statement for incomer overlaps the one on line 2" in res.output
    assert f"{bills}:4: account 'meter-9' is neither" in res.output
    bills.write_text("account,period_start,period_end,energy_kwh,supplier,document\n"
                     "incomer,2023-03-01,2023-03-31,80000,State Grid,SG-03\n")
    res = runner.invoke(cli, ["invoices", "import", "-c", str(cfg), str(bills)])
    assert res.exit_code == 0, res.output
    assert "1 statements stored" in res.output
    assert "reconciliation: statement 1 for incomer: 80000 kWh billed, 74400 kWh metered" \
        in res.output

    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03", "--format", "csv"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.output)))
    assert table[0]["device"] == "incomer" and float(table[0]["mwh"]) == 74.4
    assert table[0]["status"] == "final"
    assert table[1]["device"] == "TOTAL purchased"
    assert abs(float(table[1]["tco2_location"]) - 74.4 * 0.55) < 1e-6

    evidence = tmp_path / "evidence"
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03", "--format",
                              "json", "--evidence", str(evidence)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert report["status"] == "final" and report["reconciliation"][0]["statement_kwh"] == 80000
    assert [f["id"] for f in report["factors"]] == ["CN-MEE-2023-East",
                                                    "CN-MEE-2023-national-residual"]
    manifest = (evidence / "MANIFEST.sha256").read_text().splitlines()
    names = [line.split("  ")[1] for line in manifest]
    assert names == ["readings.csv", "invoices.csv", "acceptances.json", "rollups.csv",
                     "profile_inputs.csv", "factors.yaml", "factors.json", "certificates.json",
                     "config.json", "devices.json", "evidence.json", "report.json"]
    for line in manifest:
        digest, name = line.split("  ")
        assert hashlib.sha256((evidence / name).read_bytes()).hexdigest() == digest
    readings = list(csv.DictReader((evidence / "readings.csv").open()))
    assert len(readings) == 744 * 60 + 2 * 60  # the month and an hour either side
    assert "SG-03" in (evidence / "invoices.csv").read_text()
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                              "--evidence", str(evidence)])
    assert res.exit_code == 1 and "not empty; evidence is never written over" in res.output
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-13"])
    assert res.exit_code == 2 and "is not YYYY-MM" in res.output


def test_bad_factor_table_is_refused_with_file_and_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "factors.yaml").write_text(
        "factors:\n  - {id: a, region: CN-East, method: grid, value: 0.5,\n"
        "     valid_from: 2023-01-01, valid_to: 2023-12-31, source: s}\n")
    cfg.write_text(cfg.read_text().replace(
        "  residual_region:", f"  emission_factors: {tmp_path / 'factors.yaml'}\n"
                              "  residual_region:"))
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03"])
    assert res.exit_code == 2
    assert f"{tmp_path / 'factors.yaml'}:2: factors[0]: method must be one of" in res.output


async def test_daemon_recomputes_at_start_then_hourly_and_tells_listeners(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    config = load_config(cfg)
    start = datetime(2023, 5, 1, 3, 30, tzinfo=UTC)
    t0 = round(start.timestamp() * 1000)
    fill(tmp_path / "energyd.db", t0 - 5 * HOUR_MS, t0 + 6 * HOUR_MS, step_s=60)
    heard: list[tuple[int, int]] = []
    got_two = asyncio.Event()

    async def listener(a: int, b: int) -> None:
        heard.append((a, b))
        if len(heard) >= 2:
            got_two.set()

    def listen(ctx: Context) -> list[Component]:
        ctx.rollup_listeners.append(listener)
        return []

    # a simulated hour is a wall second
    daemon = Daemon(config, clock=AcceleratedClock(3600, start), builders=[listen, rollups.build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        await asyncio.wait_for(got_two.wait(), 10)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    h = t0 - t0 % HOUR_MS
    assert heard[0] == (h - 3 * HOUR_MS, h)  # recompute_hours: 3
    assert heard[1][0] == h and heard[1][1] > h  # then the hours completed since
    with Store.open(tmp_path / "energyd.db") as store:
        rows = stored(store, "SELECT hour, source, mwh FROM rollups ORDER BY hour")
    assert rows[0][0] == h - 3 * HOUR_MS and len(rows) >= 4
    assert all(src == "meter" and abs(mwh - 0.1) < 1e-9 for _, src, mwh in rows)


def test_rollup_and_report_tables_for_a_terminal(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    start = ms("2023-02-28T16:00:00+00:00")
    fill(tmp_path / "energyd.db", start - HOUR_MS, start + 3 * HOUR_MS)
    runner = CliRunner()
    res = runner.invoke(cli, ["rollup", "-c", str(cfg), "--from", "2023-03-01T00:00:00+08:00",
                              "--to", "2023-03-01T02:00:00+08:00"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["hour", "(UTC)", "device", "MWh", "source", "cover", "tCO2",
                                "loc", "tCO2", "mkt", "factor"]
    first = lines[1].split()
    assert first[:4] == ["2023-02-28T16:00:00Z", "incomer", "0.1000", "meter"]
    assert first[-1] == "CN-MEE-2023-East"
    assert lines[-1] == "2 device-hours, 2 changed"
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("plant-a 2023-03 (Asia/Shanghai, 744 hours): ")
    device_line = next(line for line in res.output.splitlines() if line.startswith("incomer"))
    assert device_line.split()[1:3] == ["grid_import", "0.200"]  # the two hours rolled up
    assert "purchased 0.200 MWh; scope 2 location" in res.output
    assert "  factor CN-MEE-2023-East: 0.55 tCO2/MWh" in res.output
