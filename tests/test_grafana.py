"""Every query in deploy/grafana/ against a real InfluxDB 1.x that energyd filled.

The data comes from `energyd demo` (the `demo_run` fixture in conftest.py): the daemon polls
the Modbus meter simulators and the MQTT compressor station with an accelerated clock, rolls
hours up, raises the spike and leak alerts, and forwards all of it through the v1 sink.
Each panel query, template-variable query and annotation query is then substituted as
Grafana's InfluxDB data source does ($timeFilter, $__interval, template variables as regular
expressions) and must answer without error and with at least one non-null value.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from energyd.store import Store

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
INTERVAL = "1m"  # what Grafana would pick for a few hours on a wide panel


def regex_escape(value: str) -> str:
    # the characters Grafana's regex escaping (kbn.regexEscape) escapes
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def substitute(query: str, variables: dict[str, list[str]], start_ms: int, end_ms: int) -> str:
    q = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    q = q.replace("$__interval", INTERVAL)
    for name in sorted(variables, key=len, reverse=True):
        values = [regex_escape(v) for v in variables[name]]
        text = values[0] if len(values) == 1 else "(" + "|".join(values) + ")"
        q = q.replace("${" + name + "}", text).replace("[[" + name + "]]", text)
        q = re.sub(r"\$" + re.escape(name) + r"\b", lambda _m, t=text: t, q)
    unresolved = re.findall(r"\$\{?\w+|\[\[\w+\]\]", q)
    assert not unresolved, f"unresolved {unresolved} in {q}"
    return q


def panels(items: list[dict]) -> list[dict]:
    out = []
    for p in items:
        out.append(p)
        out.extend(panels(p.get("panels", [])))
    return out


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(kind, name, InfluxQL) in Grafana's order: variables first, they feed the rest."""
    found = [("variable", v["name"], v["query"]) for v in dashboard["templating"]["list"]
             if v["type"] == "query"]
    found += [("annotation", a["name"], a["query"]) for a in dashboard["annotations"]["list"]
              if a.get("query")]
    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            found.append(("panel", f"{p['title']} [{t['refId']}]", t["query"]))
    return found


def answer(influx: Any, database: str, q: str) -> tuple[str | None, list[list[Any]]]:
    result = influx.query(q, database, check=False)
    first = (result.get("results") or [{}])[0]
    error = result.get("error") or first.get("error")
    rows = [row for series in first.get("series", []) for row in series.get("values", [])]
    return error, rows


@pytest.fixture(scope="module")
def filled(demo_run: Any) -> tuple[Any, str, int, int]:
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as store:
        times = [r.time_ms for r in store.readings.query_readings(quantity="active_power_kw")]
    start_ms, end_ms = min(times), max(times)
    return demo_run.influx, demo_run.database, start_ms - 3_600_000, end_ms + 3_600_000


def test_energyd_filled_every_measurement(filled: tuple[Any, str, int, int]) -> None:
    influx, database, _, _ = filled
    measurements = {row[0] for row in answer(influx, database, "SHOW MEASUREMENTS")[1]}
    assert {"energy_reading", "energy_hourly", "energy_air_hourly",
            "energy_alert"} <= measurements


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_answers_with_rows(path: Path, filled: tuple[Any, str, int, int]) -> None:
    influx, database, start_ms, end_ms = filled
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    variables: dict[str, list[str]] = {}
    failures = []
    checked = 0
    for kind, name, query in queries(dashboard):
        q = substitute(query, variables, start_ms, end_ms)
        error, rows = answer(influx, database, q)
        checked += 1
        if kind == "variable":
            # single-value variables take the first answer, as Grafana does
            values = [str(r[1]) for r in rows]
            var = next(v for v in dashboard["templating"]["list"] if v["name"] == name)
            variables[name] = values if var.get("multi") or var.get("includeAll") \
                else values[:1]
        values = [v for r in rows for v in r[1:] if v is not None]
        if error or not values:
            failures.append(f"{kind} {name!r}: {error or 'no rows'}\n    {q}")
    print(f"\n{path.name}: {checked} queries answered")
    assert not failures, "\n".join(failures)
    assert checked >= 5


def test_dashboards_cover_the_issue() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {"energyd: plant overview", "energyd: meter detail",
                      "energyd: compressed air", "energyd: carbon", "energyd: data quality"}
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        names = [v["name"] for v in d["templating"]["list"]]
        assert "site" in names, path.name
        assert any(a.get("query", "").find('FROM "energy_alert"') > 0
                   for a in d["annotations"]["list"]), f"{path.name}: no alert annotations"
        for p in panels(d["panels"]):
            for t in p.get("targets", []):
                assert t["rawQuery"] is True and t["datasource"]["type"] == "influxdb"
                assert "$timeFilter" in t["query"], f"{path.name}: {p['title']}"


def test_dashboard_files_match_their_source() -> None:
    proc = subprocess.run([sys.executable, str(GRAFANA / "build_dashboards.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioning_files() -> None:
    yaml = YAML(typ="safe")
    ds = yaml.load((GRAFANA / "provisioning/datasources/energyd.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["dbName"] == "energy"
    # the password comes from Grafana's environment, never from the file
    assert source["secureJsonData"]["password"].startswith("$")
    prov = yaml.load((GRAFANA / "provisioning/dashboards/energyd.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_substitution_is_grafanas() -> None:
    q = substitute('SELECT 1 FROM m WHERE "site" =~ /^$site$/ AND "device" =~ /^$device$/ '
                   "AND $timeFilter GROUP BY time($__interval)",
                   {"site": ["plant.a"], "device": ["a-1", "b/2"]}, 1000, 2000)
    assert q == ('SELECT 1 FROM m WHERE "site" =~ /^plant\\.a$/ AND "device" =~ /^(a-1|b\\/2)$/ '
                 "AND time >= 1000ms and time <= 2000ms GROUP BY time(1m)")
    with pytest.raises(AssertionError):
        substitute("SELECT 1 FROM m WHERE x =~ /^$unknown$/", {}, 0, 1)
