"""The monthly report as one HTML document: rendered in headless Chromium, its figures are the
JSON report's, its heat map has a cell per hour of the month, and it loads nothing.

Screenshots are written under the test's tmp dir and copied to build/ (report.png,
demo-report.png) for people to look at."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import CliRunner

from energyd.accounting.report import build_report
from energyd.accounting.report_html import read_manifest, render_html, report_series
from energyd.accounting.rollup import RollupRow
from energyd.cli import cli
from tests.chromium import open_page
from tests.test_accounting_evidence import month_with_everything

BUILD = Path(__file__).resolve().parents[1] / "build"
ENERGYD = Path(sys.executable).parent / "energyd"
HOUR = 3_600_000

# what the tests read from the page, in the browser
PAGE = {
    "totals": "Object.fromEntries([...document.querySelectorAll('#totals [data-key]')]"
              ".map(e => [e.dataset.key.slice(7), e.textContent]))",
    "status": "document.querySelector('[data-key=status]').textContent",
    "hours": "document.querySelector('[data-key=\"period.hours\"]').textContent",
    "heat": "[...document.querySelectorAll('svg.heat')].map(s => [s.dataset.device, "
            "[...s.querySelectorAll('rect.hour')].map(r => r.dataset.hour)])",
    "devices": "[...document.querySelectorAll('table.devices tr[data-device]')].map(r => "
               "[...r.cells].map(c => c.textContent))",
    "manifest": "[...document.querySelectorAll('#evidence td.hash')].map(c => "
                "[c.textContent, c.previousElementSibling.textContent])",
    "resources": "performance.getEntriesByType('resource').map(e => e.name)",
    "alerts": "[...document.querySelectorAll('#alerts tr.alert')].map(r => "
              "[...r.cells].map(c => c.textContent))",
    "alerted": "document.querySelectorAll('rect.hour.alerted').length",
    "episodes": "document.querySelectorAll('#hourly rect.episode').length",
    "text": "document.body.innerText",
}


def _flat(totals: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in totals.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _no_external_reference(text: str) -> None:
    for pattern in (r"https?:", r"\bsrc\s*=", r"\bhref\s*=", r"<script", r"<link", r"@import",
                    r"url\("):
        assert not re.search(pattern, text, re.I), pattern


def test_the_html_report_in_chromium_is_the_json_report_and_loads_nothing(
        tmp_path: Path) -> None:
    cfg, _ = month_with_everything(tmp_path)
    folder, out = tmp_path / "evidence", tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                                   "--format", "html", "-o", str(out),
                                   "--evidence", str(folder)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    html = out.read_text(encoding="utf-8")
    _no_external_reference(html)

    page = open_page(out, tmp_path / "chromium-profile", PAGE, pdf=True)
    # the one request is the document itself; nothing else was asked for
    assert page.requests == [out.resolve().as_uri()]
    assert page.values["resources"] == []
    # the totals as the JSON report has them, every one of them
    shown = {k: json.loads(v) for k, v in page.values["totals"].items()}
    expected = _flat(report["totals"])
    expected.pop("tco2_null", None)
    assert shown == expected
    assert shown["purchased_mwh"] > 0 and shown["scope2_market_tco2"] > 0
    assert page.values["status"] == report["status"]
    # Shanghai's March: 744 hours, one cell each, each hour of the month once, per grid meter
    assert report["period"]["hours"] == 744 and page.values["hours"] == "744"
    start = datetime.fromisoformat(report["period"]["start"].replace("Z", "+00:00"))
    month = [datetime.fromtimestamp(start.timestamp() + 3600 * i, UTC).strftime(
        "%Y-%m-%dT%H:%MZ") for i in range(744)]
    heat = dict(page.values["heat"])
    assert sorted(heat) == ["incomer", "incomer-2"]
    for hours in heat.values():
        assert hours == month
    # the devices' figures, the JSON's
    rows = {r[0]: r for r in page.values["devices"]}
    for d in report["devices"]:
        assert json.loads(rows[d["device"]][2]) == d["mwh"]
        assert json.loads(rows[d["device"]][5]) == d["by_source"]["invoice"]
        assert json.loads(rows[d["device"]][11]) == d["tco2_market"]
    # the counter events, as the month's rows (rollups.csv) have them: the meter restarted
    kinds: dict[str, int] = {}
    with open(folder / "rollups.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["device"] == "incomer":
                for e in json.loads(r["detail"]).get("events", ()):
                    kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    assert kinds
    assert rows["incomer"][12] == ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    assert rows["incomer-2"][12] == "none"
    # the evidence written with it, by hash
    assert sorted(map(tuple, page.values["manifest"])) == sorted(
        read_manifest(folder / "MANIFEST.sha256"))
    text = page.values["text"]
    for needle in ("SG-0315", "GEC-1", "CN-national", "Scope 2 by day"):
        assert needle in text
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 50_000
    # printed to PDF by the browser: A4 pages, several of them
    (tmp_path / "report.pdf").write_bytes(page.pdf)
    assert page.pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b", page.pdf)) >= 3
    boxes = re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", page.pdf)
    assert boxes and all(round(float(w)) == 595 and round(float(h)) == 842  # A4, in points
                         for w, h in boxes)
    BUILD.mkdir(exist_ok=True)
    shutil.copy(shot, BUILD / "report.png")
    (BUILD / "report.pdf").write_bytes(page.pdf)


def test_verify_html_gives_the_verifier_the_same_document(tmp_path: Path) -> None:
    cfg, _ = month_with_everything(tmp_path)
    folder = tmp_path / "evidence"
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                                   "--format", "html", "-o", str(tmp_path / "a.html"),
                                   "--evidence", str(folder)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["verify", str(folder), "--html", str(tmp_path / "b.html")])
    assert res.exit_code == 0, res.output
    a = (tmp_path / "a.html").read_text(encoding="utf-8")
    b = (tmp_path / "b.html").read_text(encoding="utf-8")
    assert "hours and the totals recomputed from the folder equal the report" in b

    def figures(html: str) -> list[str]:
        return re.findall(r"data-key=([\w.]+)>([^<]*)<", html)

    assert figures(a) == figures(b) and len(figures(a)) > 10
    # the same hours by the same sources, from rollups.csv instead of the store
    assert re.findall(r'<rect class="hour [^"]*', a) == re.findall(r'<rect class="hour [^"]*', b)
    # a file that cannot be written is named
    nowhere = tmp_path / "no-such-dir" / "r.html"
    res = CliRunner().invoke(cli, ["report", "-c", str(cfg), "--month", "2023-03",
                                   "--format", "html", "-o", str(nowhere)])
    assert res.exit_code == 1 and f"{nowhere}: cannot write the report" in res.output
    # a folder that does not match its manifest gets no document
    (folder / "report.json").write_text("{}")
    res = CliRunner().invoke(cli, ["verify", str(folder), "--html", str(tmp_path / "c.html")])
    assert res.exit_code == 2 and not (tmp_path / "c.html").exists()


def _month_rows(tz: str, first: str, last: str) -> tuple[dict[str, Any], list[RollupRow]]:
    zone = ZoneInfo(tz)
    start = int(datetime.fromisoformat(first).replace(tzinfo=zone).timestamp() * 1000)
    end = int(datetime.fromisoformat(last).replace(tzinfo=zone).timestamp() * 1000)
    hours = list(range(start, end, HOUR))
    rows = [RollupRow("main", h, 0.5, "meter" if i % 50 else "estimated", 1.0, 0.2, 0.25, 0.4,
                      "F", {"kwh": {"meter": 500.0} if i % 50 else {"estimated": 500.0},
                            "scope": 2, "factor": {"id": "F", "value": 0.4, "source": "S"}})
            for i, h in enumerate(hours) if i != 7]  # one hour without a rollup
    report = build_report(site={"name": "<b>plant & co</b>", "grid_region": "X"},
                          month=first[:7], timezone=tz, hours=hours,
                          devices=[("main", "grid_import")], rows=rows, findings=[],
                          certificates=[], complete=True)
    return report, rows


def test_a_dst_month_has_its_real_hours_in_the_heat_map_and_the_days_add_up() -> None:
    for first, last, n, day, cells in (("2026-03-01", "2026-04-01", 743, "2026-03-29", 23),
                                       ("2026-10-01", "2026-11-01", 745, "2026-10-25", 25)):
        report, rows = _month_rows("Europe/Berlin", first, last)
        series = report_series(report, rows)
        html = render_html(report, series)
        assert report["period"]["hours"] == n
        assert html.count('<rect class="hour ') == n
        assert html.count('<rect class="hour missing') == 1
        days = {d["date"]: d for d in series["days"]}
        assert len(days) == 31
        # the clock-change day has its real hours, each by its own UTC start
        local = [datetime.fromtimestamp(r.hour / 1000, ZoneInfo("Europe/Berlin")) for r in rows]
        assert sum(1 for t in local if t.date().isoformat() == day) == cells
        total = sum(sum(d["mwh_by_source"].values()) for d in days.values())
        assert round(total, 6) == report["totals"]["purchased_mwh"]
        estimated = sum(d["mwh_by_source"]["estimated"] for d in days.values())
        assert round(estimated, 6) == report["totals"]["purchased_by_source_mwh"]["estimated"]
        # text from data is escaped
        assert "<b>plant" not in html and "&lt;b&gt;plant &amp; co&lt;/b&gt;" in html
    # the repeated hour of October is drawn as two half cells side by side
    hour = re.findall(r'<rect class="hour [^"]*" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)"',
                      html)
    halves = [h for h in hour if float(h[2]) < 15]
    assert len(halves) == 2 and halves[0][1] == halves[1][1] and halves[0][0] != halves[1][0]


def test_the_demo_report_shows_the_overload_hour_and_the_air_leak(
        demo_run: Any, tmp_path: Path) -> None:
    import subprocess

    from energyd.store import Store

    cfg = demo_run.workdir / "energyd.yaml"
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as st:
        first_ms = min(t for sid in st.known_series.values()
                       if (t := st.readings.series_first_time(sid)) is not None)
    from energyd.config import load_config

    tz = ZoneInfo(load_config(cfg).site.timezone)
    month = datetime.fromtimestamp(first_ms / 1000, tz).strftime("%Y-%m")
    out = tmp_path / "demo.html"
    proc = subprocess.run([str(ENERGYD), "report", "-c", str(cfg), "--month", month,
                           "--format", "html", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    _no_external_reference(out.read_text(encoding="utf-8"))
    page = open_page(out, tmp_path / "chromium-profile", PAGE)
    assert page.requests == [out.resolve().as_uri()]
    rules = {r[0]: r[2] for r in page.values["alerts"]}
    assert "air-leak" in rules and rules["incomer-overload"] == "sub1-incomer"
    # the overload hour is outlined on the incomer's heat map, and shaded on the hourly chart
    assert page.values["alerted"] >= 1
    assert page.values["episodes"] >= 2
    shot = tmp_path / "demo-report.png"
    shot.write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    BUILD.mkdir(exist_ok=True)
    shutil.copy(shot, BUILD / "demo-report.png")
