"""Evidence a verifier recomputes: `report --evidence` writes what the month depends on,
byte-identical for the same store; `energyd verify` recomputes it from the folder alone."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from click.testing import CliRunner

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.evidence import verify_evidence
from energyd.cli import cli
from tests.test_accounting_rollup import device_yaml, diurnal, flat, load, make, ms

CERTS = """  certificates:
    - {id: GEC-1, type: GEC, mwh: 30, vintage: 2023, market: CN}
"""


def month_with_everything(tmp_path: Path) -> tuple[Path, int]:
    """March 2023 in Shanghai: an incomer with a meter replaced (a 5-hour gap) that a statement
    running into April fills, an incomer-2 billed under an account, a submeter, certificates
    that earlier months partly used, and February's rows as the profile's history."""
    acc = make(tmp_path, device_yaml("incomer") + device_yaml("incomer-2")
               + device_yaml("line-3", "submeter"),
               accounting="  accounts: {ACC-9: [incomer-2]}\n" + CERTS)
    feb, start, end = ms("2023-02-01T00:00"), ms("2023-03-01T00:00"), ms("2023-04-01T00:00")
    apr = ms("2023-04-15T00:00")
    out0, out1 = ms("2023-03-20T09:00"), ms("2023-03-20T14:00")
    load(acc, "incomer", feb - HOUR_MS, out0 + 1, 60, diurnal, base=40_000.0)
    load(acc, "incomer", out1, apr + HOUR_MS, 60, diurnal, base=0.0)
    load(acc, "incomer-2", feb - HOUR_MS, apr + HOUR_MS, 300, flat, base=7.0)
    load(acc, "line-3", start - HOUR_MS, end + HOUR_MS, 120, flat, base=1.0, scale=0.3)
    now = ms("2023-05-01T00:00")
    acc.recompute((feb, start), now)
    acc.import_statements(io.StringIO(
        "account,period_start,period_end,energy_kwh,supplier,document\n"
        "incomer,2023-03-15,2023-04-10,66000,SG,SG-0315\n"
        "ACC-9,2023-03-01,2023-03-31,74000,SG,SG-ACC9\n"), "bills.csv", now)
    acc.recompute((start, end), now)
    acc.store.close()
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: test-plant, timezone: Asia/Shanghai, grid_region: CN-national}}
storage: {{path: {tmp_path / 'energyd.db'}}}
http: {{enabled: false}}
devices:{device_yaml("incomer") + device_yaml("incomer-2") + device_yaml("line-3", "submeter")}
accounting:
  residual_region: CN-national
  accounts: {{ACC-9: [incomer-2]}}
{CERTS}""")
    return cfg, now


def export(cfg: Path, folder: Path) -> None:
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                                   "--format", "json", "--evidence", str(folder)])
    assert res.exit_code == 0, res.output


def rehash(folder: Path) -> None:
    lines = []
    for line in (folder / "MANIFEST.sha256").read_text().splitlines():
        name = line.split("  ")[1]
        lines.append(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n")
    (folder / "MANIFEST.sha256").write_text("".join(lines))


def test_evidence_is_byte_identical_and_verifies_from_the_folder_alone(tmp_path: Path) -> None:
    cfg, _ = month_with_everything(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    export(cfg, a)
    export(cfg, b)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the statement running into April is there whole, and so are the readings it spans
    invoices = list(csv.DictReader((a / "invoices.csv").open()))
    assert {r["document"] for r in invoices} == {"SG-0315", "SG-ACC9"}
    span = [r for r in invoices if r["document"] == "SG-0315"][0]
    assert span["period_end"] == "2023-04-10T16:00:00Z"
    times = [r["time"] for r in csv.DictReader((a / "readings.csv").open())
             if r["device"] == "incomer"]
    assert max(times) >= "2023-04-10T16:00" and min(times) < "2023-02-28T16:00"
    # the profile's history, the certificates used before, the accounting configuration
    assert "2023-02-2" in (a / "profile_inputs.csv").read_text()
    certs = json.loads((a / "certificates.json").read_text())
    assert certs["allocated_before_window_mwh"]["GEC-1"] > 0
    conf = json.loads((a / "config.json").read_text())
    assert conf["accounting"]["accounts"] == {"ACC-9": ["incomer-2"]}
    assert "modbus" not in conf["devices"][0]
    rows = list(csv.DictReader((a / "rollups.csv").open()))
    assert {r["source"] for r in rows if r["device"] == "incomer"} >= {"meter", "invoice"}

    res = CliRunner().invoke(cli, ["verify", str(a)])
    assert res.exit_code == 0, res.output
    assert f"{len(rows)} hours and the totals recomputed from the folder equal" in res.output


def test_verify_names_the_hours_when_a_reading_was_altered_and_the_manifest_rehashed(
        tmp_path: Path) -> None:
    cfg, _ = month_with_everything(tmp_path)
    folder = tmp_path / "ev"
    export(cfg, folder)
    path = folder / "readings.csv"
    lines = path.read_text().splitlines(keepends=True)
    # raise incomer-2's counter by 5 kWh at the sample on 18:00Z, 10 March local: 5 kWh move
    # from the hour after it to the hour before it
    target = "2023-03-09T18:00:00.000Z,incomer-2,active_energy_import_kwh,"
    [i] = [n for n, line in enumerate(lines) if line.startswith(target)]
    t, d, q, v, qual = lines[i].rstrip("\n").split(",")
    lines[i] = f"{t},{d},{q},{float(v) + 5.0!r},{qual}\n"
    path.write_text("".join(lines))

    res = CliRunner().invoke(cli, ["verify", str(folder)])  # manifest not re-hashed
    assert res.exit_code == 2
    assert "readings.csv: does not match its SHA-256 in the manifest" in res.output

    rehash(folder)
    res = CliRunner().invoke(cli, ["verify", str(folder)])
    assert res.exit_code == 1, res.output
    verdict = verify_evidence(folder)
    hours = {(h, d) for h, d, _ in verdict.hours}
    assert hours == {("2023-03-09T17:00:00Z", "incomer-2"),
                     ("2023-03-09T18:00:00Z", "incomer-2")}
    assert "hour 2023-03-09T17:00:00Z incomer-2: mwh 0.1 in the folder, 0.105" in res.output
    assert "hour 2023-03-09T18:00:00Z incomer-2: mwh 0.1 in the folder, 0.095" in res.output
    assert "2 hours and 0 totals differ" in res.output


def test_verify_names_the_hours_of_an_altered_reading_that_moves_no_figure(
        tmp_path: Path) -> None:
    import subprocess

    cfg, _ = month_with_everything(tmp_path)
    folder = tmp_path / "ev"
    export(cfg, folder)
    path = folder / "readings.csv"
    lines = path.read_text().splitlines(keepends=True)
    # a sample inside an hour of a straight counter: the hour's figures stay what they were
    target = "2023-03-09T18:30:00.000Z,incomer-2,active_energy_import_kwh,"
    [i] = [n for n, line in enumerate(lines) if line.startswith(target)]
    t, d, q, v, qual = lines[i].rstrip("\n").split(",")
    lines[i] = f"{t},{d},{q},{float(v) + 1.0!r},{qual}\n"
    path.write_text("".join(lines))
    # the manifest re-made as a person would, with sha256sum over the folder
    manifest = subprocess.run("sha256sum *", shell=True, cwd=folder, check=True,
                              capture_output=True, text=True).stdout
    (folder / "MANIFEST.sha256").write_text(manifest)
    res = CliRunner().invoke(cli, ["verify", str(folder)])
    assert res.exit_code == 1, res.output
    assert "hour 2023-03-09T18:00:00Z incomer-2: its readings in readings.csv are not those " \
           "it was exported with" in res.output
    assert "1 hours and 0 totals differ" in res.output


def test_verify_refuses_a_folder_missing_a_file(tmp_path: Path) -> None:
    cfg, _ = month_with_everything(tmp_path)
    folder = tmp_path / "ev"
    export(cfg, folder)
    (folder / "profile_inputs.csv").unlink()
    res = CliRunner().invoke(cli, ["verify", str(folder)])
    assert res.exit_code == 2
    assert "profile_inputs.csv: listed in the manifest but missing" in res.output


def test_a_month_the_hourly_job_computed_hour_by_hour_verifies(tmp_path: Path) -> None:
    acc = make(tmp_path, device_yaml("incomer"))
    start, end = ms("2023-02-01T00:00"), ms("2023-03-01T00:00")
    # a meter replaced on 10 February: the counter restarts lower after a gap
    load(acc, "incomer", start - HOUR_MS, ms("2023-02-10T10:00") + 1, 60, diurnal, base=100.0)
    load(acc, "incomer", ms("2023-02-10T12:30"), end + HOUR_MS, 60, diurnal, base=100.0)
    h = start + HOUR_MS
    while h <= end + 2 * HOUR_MS:
        acc.run(h + 300_000)
        h += HOUR_MS
    rows = acc.rows(start, end)
    assert len(rows) == 672 and {r.source for r in rows} == {"meter", "estimated"}
    acc.export_evidence("2023-02", tmp_path / "ev", end + 3 * HOUR_MS)
    verdict = verify_evidence(tmp_path / "ev")
    assert verdict.ok and verdict.checked_rows == 672, (verdict.hours[:5], verdict.totals)


def test_an_accepted_statement_below_the_meter_travels_with_the_evidence(
        tmp_path: Path) -> None:
    from tests.test_accounting_statements import below_metered

    acc, result, (_, _, _, _, now) = below_metered(tmp_path)
    acc.accept_statement(result.findings[0].statement, "bill confirmed", "auditor", now)
    acc.export_evidence("2023-05", tmp_path / "ev", now)
    accepted = json.loads((tmp_path / "ev" / "acceptances.json").read_text())
    assert [(a["by"], a["reason"]) for a in accepted] == [("auditor", "bill confirmed")]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["status"] == "final"
    verdict = verify_evidence(tmp_path / "ev")
    assert verdict.ok, (verdict.hours[:5], verdict.totals)
    # without the acceptance the recomputed month is provisional: verify says so
    (tmp_path / "ev" / "acceptances.json").write_text("[]\n")
    rehash(tmp_path / "ev")
    verdict = verify_evidence(tmp_path / "ev")
    assert verdict.hours == []
    assert verdict.totals == ["status final in report.json, provisional recomputed"]


def test_a_replaced_statement_is_in_the_record_but_not_in_the_figures(tmp_path: Path) -> None:
    from tests.test_accounting_statements import below_metered

    acc, result, (_, _, _, _, now) = below_metered(tmp_path)
    sid = result.findings[0].statement
    acc.import_statements(io.StringIO(
        "account,period_start,period_end,energy_kwh,supplier,document,replaces\n"
        f"incomer,2023-05-01,2023-05-03,7200,SG,SG-0501-R,{sid}\n"), "fix.csv", now)
    acc.export_evidence("2023-05", tmp_path / "ev", now)
    invoices = list(csv.DictReader((tmp_path / "ev" / "invoices.csv").open()))
    assert [(r["document"], r["replaced_by"]) for r in invoices] == [
        ("SG-0501", str(sid + 1)), ("SG-0501-R", "")]
    verdict = verify_evidence(tmp_path / "ev")
    assert verdict.ok, (verdict.hours[:5], verdict.totals)


def test_a_device_first_seen_mid_month_verifies_however_its_month_was_computed(
        tmp_path: Path) -> None:
    start, end = ms("2023-02-01T00:00"), ms("2023-03-01T00:00")
    for how in ("run", "rollup"):
        acc = make(tmp_path / how, device_yaml("incomer") + device_yaml("incomer-2"))
        load(acc, "incomer", start - HOUR_MS, end + HOUR_MS, 300, flat)
        load(acc, "incomer-2", ms("2023-02-14T09:00"), end + HOUR_MS, 300, flat)
        now = end + 2 * HOUR_MS
        if how == "run":  # the hourly job: no rows before incomer-2 was first seen
            acc.run(now, recompute_hours=24 * 28 + 2)
        else:  # a month's recompute: estimated rows before it was seen
            acc.recompute((start, end), now)
        acc.export_evidence("2023-02", tmp_path / how / "ev", now)
        verdict = verify_evidence(tmp_path / how / "ev")
        assert verdict.ok, (how, verdict.hours[:3], verdict.totals)
        n = len(acc.rows(start, end, ["incomer-2"]))
        assert n == (672 if how == "rollup" else 672 - 13 * 24 - 9)
