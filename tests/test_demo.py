"""`energyd demo`: what `make demo` runs, checked on what it shows and what it stored.

`demo_run` (conftest.py) runs the console script for a bounded time at the default speed
(360x: a simulated hour every 10 s), as a newcomer would, but with `--duration` and with
forwarding to the shared InfluxDB. Within that time, well inside the two minutes the issue
allows, the view must show the polled devices, hourly rows with MWh and tCO2, and alerts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from energyd.config import load_config
from energyd.demo import SOURCE_CONFIG, demo_start
from energyd.model import Quality
from energyd.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENERGYD = Path(sys.executable).parent / "energyd"
DEVICES = [d.name for d in load_config(SOURCE_CONFIG).devices]


def store(run: Any) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{run.workdir / 'energyd.db'}?mode=ro", uri=True)


def test_the_view_shows_devices_hourly_rows_and_alerts(demo_run: Any) -> None:
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    out = demo_run.stdout

    def section(title: str) -> int:
        m = re.search(rf"^{title}\s*$", out, re.M)  # a table's title, on a line of its own
        assert m, f"no {title!r} table in:\n{out}"
        return m.start()

    devices = out[section("devices"):section("alerts")]
    for name in DEVICES:
        row = next((line for line in devices.splitlines() if line.split()[:1] == [name]),
                   None)
        assert row is not None, f"{name} missing from the devices table"
        assert re.search(r"\d+\.\d\s", row), f"{name}: no current kW in {row!r}"
        assert row.rstrip().endswith("ok"), row
    hourly = out[section(r"hourly rollups \(latest\)"):section(r"compressed air.*")]
    # hour, device, MWh, source, coverage, tCO2 location, tCO2 market
    rows = re.findall(r"^\w{3} \d\d:00\s+sub1-incomer\s+(\d+\.\d+)\s+(\w+)\s+\d+ %\s+"
                      r"(\d+\.\d+)\s+(\d+\.\d+)\s*$", hourly, re.M)
    assert rows, hourly
    mwh, source, tco2_location, tco2_market = rows[0]
    assert float(mwh) > 0 and source == "meter"
    assert float(tco2_location) > 0 and float(tco2_market) > 0
    alerts = out[section("alerts"):section(r"hourly rollups \(latest\)")]
    assert "incomer-overload" in alerts and "air-leak" in alerts
    assert "The data is in" in out and "energyd.yaml" in out


def test_the_store_holds_what_the_view_showed(demo_run: Any) -> None:
    db = store(demo_run)
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as st:
        polled = {d for d, q in st.series() if st.readings.latest(d, q) is not None}
    assert polled == set(DEVICES)
    # meter-first hours of the incomer with MWh and both tCO2 figures
    hours = db.execute("SELECT mwh, tco2_location, tco2_market, ef_location FROM rollups "
                       "WHERE device = 'sub1-incomer' AND source = 'meter'").fetchall()
    assert len(hours) >= 2
    for mwh, tco2_l, tco2_m, ef in hours:
        assert mwh > 0 and tco2_l == pytest.approx(mwh * ef) and tco2_m > 0
    episodes = {(r[0], r[1]) for r in db.execute("SELECT rule, device FROM alerts")}
    assert ("incomer-overload", "sub1-incomer") in episodes
    assert any(rule == "air-leak" for rule, _ in episodes)


def test_the_spike_and_the_leak_are_in_the_data(demo_run: Any) -> None:
    """The alerts answer to what was injected, at the simulated times it was injected."""
    tz = ZoneInfo(load_config(SOURCE_CONFIG).site.timezone)
    db = store(demo_run)
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as st:
        first_ms = min(t for sid in st.known_series.values()
                       if (t := st.readings.series_first_time(sid)) is not None)
        power = st.known_series[("sub1-incomer", "active_power_kw")]
        incomer = st.readings.series_values(power, first_ms, first_ms + 4 * 3_600_000)
    start = datetime.fromtimestamp(first_ms / 1000, UTC).replace(minute=0, second=0,
                                                                  microsecond=0)
    assert start.astimezone(tz).hour == 20 and start.astimezone(tz).weekday() < 5
    ms = int(start.timestamp() * 1000)
    hour = 3_600_000

    def peak(t0: int, t1: int) -> float:
        return max(v for t, v in incomer if t0 <= t < t1)

    assert peak(ms + hour + 600_000, ms + 2 * hour) > 1200  # the spike, hour 2
    assert peak(ms, ms + hour) < 1200  # before it
    started = db.execute("SELECT started FROM alerts WHERE rule = 'incomer-overload'"
                         ).fetchone()[0]
    assert ms + hour <= started < ms + 2 * hour
    leak = db.execute("SELECT hour, kwh FROM air_hourly WHERE device = 'air' "
                      "ORDER BY hour").fetchall()
    by_hour = dict(leak)
    assert by_hour[ms + 2 * hour] > 50  # 22:00-23:00: off shift, leaking
    # alerts within the first two minutes (at 360x, 12 simulated hours) of a run
    first_alert = db.execute("SELECT min(started) FROM alerts").fetchone()[0]
    assert first_alert - ms < 12 * hour


def test_the_dlt645_incomer_behind_its_serial_server_is_read(demo_run: Any) -> None:
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as st:
        kwh = list(st.readings.query_readings(device="sub3-incomer",
                                              quantity="active_energy_import_kwh"))
        volts = list(st.readings.query_readings(device="sub3-incomer",
                                                quantity="voltage_l1_v"))
    assert len(kwh) >= 10 and len(volts) >= 10, (len(kwh), len(volts))
    assert kwh[-1].value > kwh[0].value  # its counter rose with the simulated load
    assert all(200 < r.value < 260 for r in volts), volts[:5]


def test_the_opcua_compressor_is_read_from_its_simulated_controller(demo_run: Any) -> None:
    """air-c4 is served by an OPC UA controller on a loopback port the demo chose, read over
    a session of energyd's own: every variable of the profile stored at the controller's
    (simulated) source times, and counted in the station's hours."""
    from energyd.simulators.opcua import VARIABLES

    source = load_config(SOURCE_CONFIG).device("air-c4")
    ran = load_config(demo_run.workdir / "energyd.yaml").device("air-c4")
    assert source.driver == ran.driver == "opcua"
    assert ran.opcua.endpoint.startswith("opc.tcp://127.0.0.1:")
    assert ran.opcua.endpoint != source.opcua.endpoint  # a free port, written into the config
    with Store.open(demo_run.workdir / "energyd.db", must_exist=True) as st:
        rows = list(st.readings.readings_in(0, 2**62, device="air-c4", by_series=True))
    by_quantity: dict[str, list[tuple[int, float, int]]] = {}
    for t, _, q, v, quality in rows:
        by_quantity.setdefault(q, []).append((t, v, quality))
    assert set(by_quantity) == set(VARIABLES)
    assert {quality for r in by_quantity.values() for _, _, quality in r} == {Quality.GOOD}
    energy = by_quantity["active_energy_import_kwh"]
    # the demo runs 4.5 simulated hours: a change a simulated minute, and more
    assert len(energy) > 60
    span_h = (energy[-1][0] - energy[0][0]) / 3_600_000
    assert span_h > 3 and energy[-1][1] > energy[0][1] > 0
    members = store(demo_run).execute(
        "SELECT count(*) FROM air_hourly WHERE device = 'air-c4' AND kwh > 0").fetchone()[0]
    assert members >= 2


def test_energyd_alerts_reads_the_demo_store(demo_run: Any) -> None:
    proc = subprocess.run([str(ENERGYD), "alerts", "-c", str(demo_run.workdir / "energyd.yaml"),
                           "--json"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rules = {e["rule"] for e in json.loads(proc.stdout)}
    assert {"incomer-overload", "air-leak"} <= rules


def test_demo_start_is_a_weekday_evening_half_a_day_back() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    sunday_noon = datetime(2026, 11, 22, 12, 0, tzinfo=tz)
    assert demo_start(sunday_noon, tz) == datetime(2026, 11, 20, 20, 0, tzinfo=tz)
    wednesday = datetime(2026, 11, 18, 9, 0, tzinfo=tz)  # 12 h back is Tuesday 21:00
    assert demo_start(wednesday, tz) == datetime(2026, 11, 17, 20, 0, tzinfo=tz)
    for h in range(0, 24 * 7, 5):
        now = sunday_noon + timedelta(hours=h)
        start = demo_start(now, tz)
        assert start <= now - timedelta(hours=12) and start.astimezone(tz).weekday() < 5


def test_ctrl_c_stops_cleanly_with_the_embedded_broker(tmp_path: Path) -> None:
    """Without --duration, with amqtt instead of Mosquitto: Ctrl-C ends it, exit 0, and the
    store it names holds what was read."""
    workdir = tmp_path / "demo-data"
    proc = subprocess.Popen([str(ENERGYD), "demo", "--dir", str(workdir), "--broker", "amqtt",
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        mqtt_seen = False
        while time.monotonic() < deadline and not mqtt_seen:
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()
            if (workdir / "energyd.db").exists():
                with sqlite3.connect(f"file:{workdir / 'energyd.db'}?mode=ro", uri=True) as db:
                    try:
                        with_data = {r[0] for r in db.execute(
                            "SELECT DISTINCT s.device FROM series s JOIN layout_series l "
                            "ON l.series = s.id")}
                    except sqlite3.OperationalError:  # created, its tables not yet committed
                        continue
                mqtt_seen = {"air-c1", "sub1-incomer"} <= with_data
        assert mqtt_seen, "no readings over MQTT and Modbus within 30 s"
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "broker amqtt" in out
    assert "The data is in" in out and str(workdir) in out
    with sqlite3.connect(f"file:{workdir / 'energyd.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_bad_plant_file_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "plant.yaml"
    bad.write_text(SOURCE_CONFIG.read_text().replace("interval: 30s", "intreval: 30s", 1))
    proc = subprocess.run([str(ENERGYD), "demo", "-c", str(bad), "--dir", str(tmp_path / "d"),
                           "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "intreval" in text)
    assert f"{bad}:{line}:" in proc.stderr and "intreval" in proc.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_the_view_draws_what_the_status_api_gives(tmp_path: Path) -> None:
    """The view's rows come from `recent_activity` over the store, not from its own reads."""
    from energyd.alerts.episodes import EpisodeTracker, Observation
    from energyd.alerts.rules.conditions import Level, Verdict
    from energyd.config.loader import parse_config
    from energyd.daemon.status import recent_activity
    from energyd.demo.view import render, snapshot
    from energyd.model import Reading, to_ms

    config = parse_config(f"""
site: {{name: plant-a, timezone: Asia/Shanghai}}
storage: {{path: {tmp_path / 'energyd.db'}}}
devices:
  - {{name: incomer-1, role: grid_import, driver: modbus, interval: 10s,
     profile: eastron_sdm630, modbus: {{host: 127.0.0.1}}}}
""", "plant.yaml")
    now = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    with Store.open(config.storage.path) as st:
        st.insert_readings([Reading(now - timedelta(seconds=5), "incomer-1", "active_power_kw",
                                    812.5)])
        EpisodeTracker(st).observe([Observation(
            "incomer-overload", "threshold", "incomer-1", to_ms(now) - 60_000,
            Verdict(Level.ON, {"value": 1300.0, "limit": 1200.0}), "live")])
        activity = recent_activity(st, config)
        assert activity["readings"] == 1 and activity["backlog"] is None
        (device,) = activity["devices"]
        assert (device["device"], device["kw"]) == ("incomer-1", 812.5)
        (alert,) = activity["alerts"]
        assert (alert["rule"], alert["state"]) == ("incomer-overload", "active")
        assert activity["hourly"] == [] and activity["air"] == []
        snap = snapshot(st, config, now)
    from rich.console import Console

    console = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(snap, config=config, tz=config.site.tz, speed=360, workdir=tmp_path,
                         events=[], wall_s=1.0, influx=None, http_port=None))
    text = console.export_text()
    assert re.search(r"incomer-1\s+grid_import\s+modbus\s+812\.5\s+10:59:55\s+-\s+-\s+ok",
                     text), text
    assert re.search(r"incomer-overload\s+incomer-1\s+active", text), text
    assert "threshold: value=1300, limit=1200" in text, text
