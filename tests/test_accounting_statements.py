"""Statement integrity: a meter billed twice, accounts that hold only incomers, and a
statement below the metered energy of its period (estimate kept, finding, alert, acceptance)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import stored

from energyd.accounting.energy import HOUR_MS
from energyd.cli import cli
from energyd.config.loader import parse_config
from energyd.daemon.reconciliation import record_reconciliation
from energyd.errors import ConfigError, ImportRejected
from tests.test_accounting_rollup import by_hour, device_yaml, flat, load, make, ms


def test_the_same_meter_billed_under_its_name_and_an_account_is_refused_with_the_lines(
        tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("incomer-2"),
               accounting="  accounts: {ACC-7: [incomer, incomer-2]}\n")
    now = ms("2023-07-01T00:00")
    acc.import_statements(io.StringIO("account,period_start,period_end,energy_kwh,supplier,"
                                      "document\nACC-7,2023-03-01,2023-03-31,1000,SG,SG-03\n"),
                          "march.csv", now)
    bad = ("account,period_start,period_end,energy_kwh\n"
           "incomer-2,2023-03-20,2023-04-10,50\n"  # inside ACC-7's stored March
           "ACC-7,2023-04-01,2023-04-30,900\n"
           "incomer,2023-04-15,2023-04-30,40\n"  # inside ACC-7's April on line 3
           "incomer,2023-05-01,2023-05-31,40\n")  # no one else bills May: fine
    with pytest.raises(ImportRejected) as err:
        acc.import_statements(io.StringIO(bad), "april.csv", now)
    text = str(err.value)
    assert "april.csv:2: statement for incomer-2 bills meter incomer-2 that stored statement " \
           "1 bills under ACC-7" in text and "document SG-03" in text
    assert "april.csv:4: statement for incomer bills meter incomer that the statement on " \
           "line 3 bills under ACC-7" in text
    assert ":5:" not in text
    assert stored(acc.store, "SELECT count(*) FROM invoices")[0][0] == 1
    # the two accounts billing disjoint time are fine
    acc.import_statements(io.StringIO("account,period_start,period_end,energy_kwh\n"
                                      "incomer,2023-04-01,2023-04-30,40\n"), "ok.csv", now)


def test_an_account_holding_a_submeter_is_refused_with_its_line() -> None:
    text = f"""
site: {{name: p, timezone: Asia/Shanghai, grid_region: CN-East}}
http: {{enabled: false}}
devices:{device_yaml("incomer")}{device_yaml("line-3", "submeter")}{device_yaml("pv", "generation")}
accounting:
  accounts:
    ACC-1:
      - incomer
      - line-3
    ACC-2: [pv]
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "plant.yaml")
    lines = [str(p) for p in err.value.problems]
    at = text.splitlines().index("      - line-3") + 1
    assert lines[0].startswith(f"plant.yaml:{at}: accounting.accounts.ACC-1[1]: account "
                               "'ACC-1' holds 'line-3', a submeter device")
    assert lines[1].startswith(f"plant.yaml:{at + 1}: accounting.accounts.ACC-2[0]:")
    assert "grid_import devices only" in lines[1] and len(lines) == 2
    parse_config(text.replace("      - line-3\n", "").replace("ACC-2: [pv]", "ACC-2: []"),
                 "plant.yaml")


def test_check_config_exits_2_for_a_submeter_under_an_account(tmp_path: Path) -> None:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: p, timezone: Asia/Shanghai, grid_region: CN-East}}
storage: {{path: {tmp_path / 'db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer")}{device_yaml("line-3", "submeter")}
accounting:
  accounts: {{ACC-1: [incomer, line-3]}}
""")
    res = CliRunner().invoke(cli, ["check-config", "-c", str(cfg)])
    assert res.exit_code == 2
    at = cfg.read_text().splitlines().index("  accounts: {ACC-1: [incomer, line-3]}") + 1
    assert f"{cfg}:{at}: accounting.accounts.ACC-1[1]:" in res.output
    assert "submeter" in res.output


def below_metered(tmp_path: Path):
    """A 3-day statement period, 100 kW flat, the meter silent for 6 hours on the 2nd (a
    replacement: the counter restarts from 0), and a statement of 6,000 kWh where the meter
    alone measured 6,600."""
    acc = make(tmp_path, device_yaml("incomer"))
    start, end = ms("2023-05-01T00:00"), ms("2023-05-04T00:00")
    out0, out1 = ms("2023-05-02T08:00"), ms("2023-05-02T14:00")
    load(acc, "incomer", start - HOUR_MS, out0 + 1, 60, flat, base=5_000.0)
    load(acc, "incomer", out1, ms("2023-06-01T00:00") + HOUR_MS, 60, flat, base=0.0)
    now = ms("2023-06-02T00:00")
    acc.recompute((ms("2023-05-01T00:00"), ms("2023-06-01T00:00")), now)
    csv_text = ("account,period_start,period_end,energy_kwh,supplier,document\n"
                "incomer,2023-05-01,2023-05-03,6000,SG,SG-0501\n")
    _, result = acc.import_statements(io.StringIO(csv_text), "bill.csv", now)
    record_reconciliation(acc.store, acc.config, result, now)  # as the caller does
    return acc, result, (start, end, out0, out1, now)


def test_a_statement_below_the_meter_keeps_the_estimate_flags_alerts_and_holds_the_month(
        tmp_path: Path) -> None:
    acc, result, (start, end, out0, out1, now) = below_metered(tmp_path)
    rows = by_hour(acc, "incomer")
    gap = [rows[h] for h in range(out0, out1, HOUR_MS)]
    # never zeroed: the gap hours keep the profile's estimate (the 100 kW of the other hours)
    assert all(r.source == "estimated" for r in gap)
    assert all(r.mwh == pytest.approx(0.1, abs=1e-6) for r in gap)
    assert all(r.detail["statements"][0]["conflict"] == "below_metered" for r in gap)
    [f] = result.findings
    assert f.below_metered and f.statement_kwh == 6000
    assert f.metered_kwh == pytest.approx(6600, abs=0.01)
    assert f.difference_kwh == pytest.approx(600, abs=0.01)
    assert f.estimated_kwh == pytest.approx(600, abs=0.01) and f.gap_hours == 6
    alerts = stored(acc.store, "SELECT rule, device, state, detail FROM alerts")
    assert [a[:3] for a in alerts] == [("reconciliation", "incomer", "active")]
    assert "keep an estimate" in json.loads(alerts[0][3])["message"]
    report = acc.report("2023-05", now)
    assert report["status"] == "provisional"
    assert any("SG-0501" in r and "not final until" in r for r in report["reasons"])
    assert report["reconciliation"][0]["accepted"] is None
    assert report["acceptances"] == []


def test_an_acceptance_is_stored_with_who_when_why_and_makes_the_month_final(
        tmp_path: Path) -> None:
    acc, result, (start, end, out0, out1, now) = below_metered(tmp_path)
    sid = result.findings[0].statement
    with pytest.raises(ValueError, match="needs a reason"):
        acc.accept_statement(sid, "  ", "li.wei", now)
    with pytest.raises(ValueError, match="no statement 99"):
        acc.accept_statement(99, "why", "li.wei", now)
    got = acc.accept_statement(sid, "supplier confirms the bill; meter swap on 2 May",
                               "li.wei", now + 1000)
    # accepted as it stands: the alerts' tracker ends the statement's episode
    [ended] = record_reconciliation(acc.store, acc.config, acc.reconcile([sid]), now + 1000)
    assert (ended.kind, ended.episode.rule, ended.episode.device, ended.episode.ended) == (
        "end", "reconciliation", "incomer", now + 1000)
    assert stored(acc.store, "SELECT state FROM alerts") == [("resolved",)]
    assert got["by"] == "li.wei" and got["at"] == "2023-06-01T16:00:01Z"
    report = acc.report("2023-05", now)
    assert report["status"] == "final", report["reasons"]
    assert report["acceptances"][0]["reason"].startswith("supplier confirms")
    assert report["reconciliation"][0]["accepted"]["by"] == "li.wei"
    assert any("accepted by li.wei" in f for f in report["flags"])
    [dev] = report["devices"]
    assert dev["accepted_estimated_hours"] == 6
    assert stored(acc.store, "SELECT state FROM alerts")[0][0] == "resolved"
    # nothing else changed: the rows are as they were
    assert acc.recompute((start, end), now).written == 0


def test_invoices_accept_from_the_command_line(tmp_path: Path) -> None:
    acc, result, (start, end, out0, out1, now) = below_metered(tmp_path)
    sid = result.findings[0].statement
    acc.store.close()
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: test-plant, timezone: Asia/Shanghai, grid_region: CN-national}}
storage: {{path: {tmp_path / 'energyd.db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer")}
accounting:
  residual_region: CN-national
""")
    runner = CliRunner()
    res = runner.invoke(cli, ["invoices", "accept", "-c", str(cfg), "--statement", "77",
                              "--reason", "x"])
    assert res.exit_code == 2 and "no statement 77" in res.output
    res = runner.invoke(cli, ["invoices", "accept", "-c", str(cfg), "--statement", str(sid),
                              "--reason", "bill confirmed", "--by", "auditor"])
    assert res.exit_code == 0, res.output
    assert "accepted by auditor" in res.output and "6000 kWh billed" in res.output
    res = runner.invoke(cli, ["report", "-c", str(cfg), "--month", "2023-05", "--format",
                              "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["status"] == "final" and report["acceptances"][0]["by"] == "auditor"


def test_a_corrected_statement_replaces_the_one_below_the_meter(tmp_path: Path) -> None:
    acc, result, (start, end, out0, out1, now) = below_metered(tmp_path)
    sid = result.findings[0].statement
    bad = ("account,period_start,period_end,energy_kwh,supplier,document,replaces\n"
           "incomer,2023-05-01,2023-05-03,7200,SG,SG-0501-R,99\n"
           "incomer-x,2023-05-01,2023-05-03,7200,SG,SG-0501-R,\n")
    with pytest.raises(ImportRejected) as err:
        acc.import_statements(io.StringIO(bad), "fix.csv", now)
    assert "fix.csv:2: replaces 99: no such stored statement" in str(err.value)
    assert "fix.csv:3: account 'incomer-x' is neither" in str(err.value)
    # without `replaces` the correction overlaps the stored statement and is refused
    plain = ("account,period_start,period_end,energy_kwh,supplier,document\n"
             "incomer,2023-05-01,2023-05-03,7200,SG,SG-0501-R\n")
    with pytest.raises(ImportRejected, match="duplicates stored statement"):
        acc.import_statements(io.StringIO(plain), "fix.csv", now)
    fixed = ("account,period_start,period_end,energy_kwh,supplier,document,replaces\n"
             f"incomer,2023-05-01,2023-05-03,7200,SG,SG-0501-R,{sid}\n")
    _, res = acc.import_statements(io.StringIO(fixed), "fix.csv", now)
    record_reconciliation(acc.store, acc.config, res, now)
    assert res.findings == []
    rows = by_hour(acc, "incomer")
    gap = [rows[h] for h in range(out0, out1, HOUR_MS)]
    # 7,200 - 6,600 metered = 600 kWh over the six gap hours
    assert all(r.source == "invoice" and r.mwh == pytest.approx(0.1, abs=1e-6) for r in gap)
    assert {r.detail["statements"][0]["document"] for r in gap} == {"SG-0501-R"}
    report = acc.report("2023-05", now)
    assert report["status"] == "final", report["reasons"]
    assert report["reconciliation"] == []
    assert [s["document"] for s in report["statements"]] == ["SG-0501-R"]
    assert [(s["id"], s["document"]) for s in report["replaced_statements"]] == [
        (sid, "SG-0501")]
    assert stored(acc.store, "SELECT state FROM alerts") == [("resolved",)]
    assert stored(acc.store, "SELECT count(*) FROM invoices")[0][0] == 2  # the old one kept


def test_invoices_import_says_when_a_statement_is_below_the_meter(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    start = ms("2023-05-01T00:00")
    out0, out1 = ms("2023-05-02T08:00"), ms("2023-05-02T14:00")
    load(acc, "incomer", start - HOUR_MS, out0 + 1, 60, flat, base=5_000.0)
    load(acc, "incomer", out1, ms("2023-05-04T01:00"), 60, flat, base=0.0)
    acc.store.close()
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: test-plant, timezone: Asia/Shanghai, grid_region: CN-national}}
storage: {{path: {tmp_path / 'energyd.db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer")}
accounting:
  residual_region: CN-national
""")
    bills = tmp_path / "bills.csv"
    bills.write_text("account,period_start,period_end,energy_kwh\n"
                     "incomer,2023-05-01,2023-05-03,6000\n")
    res = CliRunner().invoke(cli, ["invoices", "import", "-c", str(cfg), str(bills)])
    assert res.exit_code == 0, res.output
    assert "reconciliation: statement 1 for incomer: 6000 kWh billed, 6600 kWh metered in the " \
           "period alone: below the meter; 6 gap hours keep an estimate" in res.output
    assert "energyd invoices accept --statement 1" in res.output


def test_findings_come_back_as_values_and_a_reconciliation_rule_keeps_their_episodes(
        tmp_path: Path) -> None:
    """The accounting writes no episode itself; the caller records them unless an alert rule
    of type reconciliation owns them."""
    rule = "alerts:\n  rules:\n    - {name: bills, type: reconciliation}\n"
    acc = make(tmp_path, device_yaml("incomer"), accounting=rule)
    start, end = ms("2023-05-01T00:00"), ms("2023-05-04T00:00")
    load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 60, flat)
    now = ms("2023-06-01T00:00")
    acc.recompute((start, end), now)
    _, result = acc.import_statements(io.StringIO(
        "account,period_start,period_end,energy_kwh,supplier,document\n"
        "incomer,2023-05-01,2023-05-03,7560,SG,SG-0501\n"), "bill.csv", now)
    [f] = result.findings
    assert (f.kind, f.account, f.devices, f.document) == (
        "meter_difference", "incomer", ("incomer",), "SG-0501")
    assert [st.id for st in result.checked] == [f.statement]
    # today's dict, key for key, for the reports
    assert f.to_json() == acc.report("2023-05", now)["reconciliation"][0]
    assert "7560 kWh billed, 7200 kWh metered (4.8% apart, tolerance 2%)" in f.message()
    assert stored(acc.store, "SELECT count(*) FROM alerts")[0][0] == 0  # none written
    record_reconciliation(acc.store, acc.config, result, now)
    assert stored(acc.store, "SELECT count(*) FROM alerts")[0][0] == 0  # the rule owns them
