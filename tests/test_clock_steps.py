"""The daemon under a wall clock that steps, as NTP steps a gateway's clock.

The daemon runs as a subprocess under libfaketime (Debian's `faketime`): its wall clock reads
what a control file says (re-read at every call), while its monotonic clock stays the real
one, as it does when NTP or `date -s` steps a real machine. A Modbus simulator, in a process
of its own on the real clock, is polled every second.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from servers import free_port

from energyd.model import Quality
from energyd.store import Store

ENERGYD = [sys.executable, "-m", "energyd.cli"]
STEP_LINE = "the wall clock stepped"
YEARS_3 = 3 * 365 * 86400  # faketime's "y" is 365 days


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                   + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: `make system-deps` installs Debian's faketime")
    return found[0]


def faketime_env(control: Path) -> dict[str, str]:
    return {"LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(control),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def set_clock(control: Path, spec: str) -> None:
    tmp = control.with_suffix(".tmp")
    tmp.write_text(spec + "\n")
    tmp.replace(control)  # whole, never half written when the daemon reads it


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def health(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            status, body = get(f"http://127.0.0.1:{port}/health")
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the daemon never answered /health")


def metric(port: int, name: str) -> float:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    m = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def polls(h: dict[str, Any], what: str = "polls") -> int:
    owners = [v for k, v in h.items() if k.startswith("energyd[") and k.endswith(".poll")]
    return sum(o["devices"]["m1"][what] for o in owners)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err.decode()
    return err.decode()


@pytest.fixture
def meter() -> Any:
    proc = subprocess.Popen([*ENERGYD, "simulate", "meter", "--port", "0", "--units", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "127.0.0.1:" in line, line
        yield int(line.split("127.0.0.1:")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def config(tmp_path: Path, meter_port: int, http_port: int, extra: str = "") -> Path:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(extra + f"""
site: {{name: plant-a}}
storage: {{path: {tmp_path / "energyd.db"}}}
http: {{host: 127.0.0.1, port: {http_port}}}
devices:
  - {{name: m1, role: grid_import, driver: modbus, interval: 1s, profile: eastron_sdm630,
     modbus: {{host: 127.0.0.1, port: {meter_port}, unit: 1}}}}
alerts:
  rules:
    - {{name: quiet, type: stale, devices: [m1], multiple: 5}}
""")
    return cfg


def start(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*ENERGYD, "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def polls_over(port: int, proc: subprocess.Popen[bytes], seconds: float) -> int:
    before = polls(health(port, proc))
    time.sleep(seconds)
    return polls(health(port, proc)) - before


def test_forward_step_of_years_and_back_step_of_minutes_while_polling(
        tmp_path: Path, meter: int) -> None:
    control = tmp_path / "faketime.rc"
    set_clock(control, "+0")
    port = free_port()
    proc = start(config(tmp_path, meter, port), faketime_env(control))
    try:
        h = health(port, proc)
        assert h["status"] == "ok" and h["degraded"] == {}
        time.sleep(2)  # connected, polling
        base = polls_over(port, proc, 4)
        rss_before = rss_mb(proc.pid)
        assert 3 <= base <= 5, f"{base} polls in 4 s at a 1 s interval"

        set_clock(control, "+3y")  # NTP steps the clock three years forward
        forward = polls_over(port, proc, 4)
        rss_after = rss_mb(proc.pid)
        h = health(port, proc)
        # the hourly rollup ran at once, over the hour the clock landed in only
        assert h["rollups"]["run"].startswith(str(datetime.now(UTC).year + 3)), h["rollups"]
        assert h["rollups"]["changed"] <= 2, h["rollups"]
        print(f"polls in 4 s: {base} before, {forward} after a step of 3 years; "
              f"RSS {rss_before:.1f} MB -> {rss_after:.1f} MB")
        assert 3 <= forward <= 5, "a forward step replayed or stopped polls"
        assert rss_after < rss_before + 20
        assert h["status"] == "degraded"
        assert "forward" in h["degraded"]["clock_stepped"]["reason"]
        assert metric(port, "energyd_clock_steps_total") == 1
        assert abs(metric(port, "energyd_clock_last_step_seconds") - YEARS_3) < 5

        set_clock(control, f"+{YEARS_3 - 180}")  # and then three minutes back
        back = polls_over(port, proc, 4)
        h = health(port, proc)
        print(f"polls in 4 s after a step of 3 minutes back: {back}")
        assert 3 <= back <= 5, "a step back stalled polls"
        assert "back by 3.0 min" in h["degraded"]["clock_stepped"]["reason"]
        assert metric(port, "energyd_clock_steps_total") == 2
        assert abs(metric(port, "energyd_clock_last_step_seconds") + 180) < 5
        assert metric(port, "energyd_clock_suspect") == 0
        assert polls(h, "errors") == 0 and polls(h, "missed") == 0
        assert h["jobs_skipped"] == {}  # no slot was skipped, none replayed
    finally:
        err = stop(proc)
    steps = [line for line in err.splitlines() if STEP_LINE in line]
    assert len(steps) == 2, err  # one line per step, however many slots it jumped
    assert "missed" not in err and "skipped" not in err, err


def test_boot_with_a_wrong_clock_then_the_right_one(tmp_path: Path, meter: int) -> None:
    control = tmp_path / "faketime.rc"
    set_clock(control, "@2000-01-01 00:00:00")  # no battery-backed clock, no NTP yet
    port = free_port()
    cfg = config(tmp_path, meter, port)
    proc = start(cfg, faketime_env(control))
    try:
        h = health(port, proc)
        assert h["status"] == "degraded"
        assert "before this energyd was released" in h["degraded"]["clock_suspect"]["reason"]
        deadline = time.monotonic() + 15
        while polls(health(port, proc)) < 4:
            assert time.monotonic() < deadline, "no polls under the wrong clock"
            time.sleep(0.2)
        flagged = metric(port, "energyd_readings_clock_suspect_total")
        assert flagged > 0
    finally:
        err = stop(proc)
    assert "readings stamped now are flagged clock_suspect" in err

    # the gateway is restarted once NTP has set its clock
    proc = start(cfg)
    try:
        h = health(port, proc)
        assert "clock_suspect" not in h["degraded"]
        deadline = time.monotonic() + 15
        while polls(health(port, proc)) < 4:
            assert time.monotonic() < deadline, "no polls under the right clock"
            time.sleep(0.2)
        time.sleep(1.5)  # the stale check runs every 1.25 s here
    finally:
        err = stop(proc)

    db = tmp_path / "energyd.db"
    with Store.open(db, must_exist=True) as store:
        held = list(store.readings.readings_in(0, int(datetime(2001, 1, 1, tzinfo=UTC).timestamp()
                                                   * 1000)))
        now_ms = int(time.time() * 1000)
        good = list(store.readings.readings_in(now_ms - 600_000, now_ms + 60_000))
        assert held and all(q == Quality.CLOCK_SUSPECT for *_, q in held)
        assert store.readings.held_count() == len(held) >= flagged  # polls went on until the stop
        assert good and all(q != Quality.CLOCK_SUSPECT for *_, q in good)
        # retention, however short, leaves the held readings for review
        assert store.apply_retention(now_ms, 1000, []) > 0
        assert store.readings.held_count() == len(held)
    listed = subprocess.run([*ENERGYD, "readings", "held", "-c", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=60)
    rows = json.loads(listed.stdout)["held"]
    assert {r["device"] for r in rows} == {"m1"} and sum(r["readings"] for r in rows) == \
        len(held)
    assert all(r["first"].startswith("2000-01-01T00:00") for r in rows)
    status = subprocess.run([*ENERGYD, "status", "-c", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["store"]["held_for_review"] == len(held), status.stderr
    table = subprocess.run([*ENERGYD, "status", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert f"{len(held)} readings stamped under a suspect clock" in table.stdout
    conn = sqlite3.connect(db)
    try:
        hours = conn.execute("SELECT count(*), min(hour) FROM rollups").fetchone()
        episodes = conn.execute("SELECT rule, detail FROM alerts").fetchall()
    finally:
        conn.close()
    print(f"held readings: {len(held)}; rollup rows after the restart: {hours[0]}")
    assert hours[0] <= 2, f"{hours[0]} rollup hours written from a clock that was wrong"
    assert hours[1] is None or hours[1] >= now_ms - 3 * 3600_000
    # A stale episode may fire on a loaded machine if the first poll is late; what must not
    # happen is silence measured across the clock's correction (years, not seconds).
    silences = [json.loads(detail).get("silent_s", 0.0) for _, detail in episodes]
    assert all(s < 120 for s in silences), \
        f"a stale alert measured silence across the clock's correction: {episodes}"
    assert "silent_s" not in err


def test_a_clock_far_from_influxdbs_is_suspect(tmp_path: Path, meter: int, influxdb: Any,
                                               influxdb_database: str) -> None:
    control = tmp_path / "faketime.rc"
    set_clock(control, "+3y")  # plausible on its own, but not what the server says
    port = free_port()
    cfg = config(tmp_path, meter, port, f"""
influxdb:
  - {{name: central, api: v1, url: "{influxdb.url}", database: {influxdb_database}}}
""")
    proc = start(cfg, faketime_env(control))
    try:
        deadline = time.monotonic() + 20
        while "clock_suspect" not in health(port, proc)["degraded"]:
            assert time.monotonic() < deadline, "the server's time was never compared"
            time.sleep(0.2)
        reason = health(port, proc)["degraded"]["clock_suspect"]["reason"]
        assert reason.startswith("the clock is 1095.0 days ahead of InfluxDB 'central'"), reason
        time.sleep(2)
        flagged = metric(port, "energyd_readings_clock_suspect_total")
        assert flagged > 0
        set_clock(control, "+0")  # NTP sets it right
        deadline = time.monotonic() + 10
        while "clock_suspect" in health(port, proc)["degraded"]:
            assert time.monotonic() < deadline, "the clock was not trusted again"
            time.sleep(0.2)
        time.sleep(1)
        settled = metric(port, "energyd_readings_clock_suspect_total")
        polled = polls(health(port, proc))
        time.sleep(2)
        assert polls(health(port, proc)) > polled
        assert metric(port, "energyd_readings_clock_suspect_total") == settled
    finally:
        err = stop(proc)
    assert "the clock is plausible again" in err


def test_mqtt_under_a_wrong_clock_keeps_payload_times_and_flags_receipt_times(
        tmp_path: Path, mosquitto: Any, mqtt_topic_prefix: str) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    p = mqtt_topic_prefix
    control = tmp_path / "faketime.rc"
    set_clock(control, "@2000-01-01 00:00:00")
    port = free_port()
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"""
site: {{name: plant-a}}
storage: {{path: {tmp_path / "energyd.db"}}}
http: {{host: 127.0.0.1, port: {port}}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: {p}-energyd}}
devices:
  - {{name: air1, role: compressor, driver: mqtt, interval: 5s,
     mqtt: {{topic: {p}/air1, timestamp: ts, fields: {{active_power_kw: kw}}}}}}
  - {{name: v1, role: submeter, driver: mqtt, interval: 5s,
     mqtt: {{topic: {p}/v1, format: value, quantity: active_power_kw}}}}
""")
    proc = start(cfg, faketime_env(control))
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{p}-pub")
    measured = datetime.now(UTC).replace(microsecond=0)
    try:
        deadline = time.monotonic() + 20
        while not health(port, proc).get("mqtt", {}).get("subscribed"):
            assert time.monotonic() < deadline, "never subscribed"
            time.sleep(0.2)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        client.publish(f"{p}/air1", json.dumps({"ts": measured.isoformat(), "kw": 40.0}),
                       qos=1).wait_for_publish(5)
        client.publish(f"{p}/v1", b"6.5", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while True:
            mqtt = health(port, proc)["mqtt"]
            if mqtt["received"] == 2 and mqtt["waiting_for_commit"] == 0:
                break
            assert time.monotonic() < deadline, mqtt
            time.sleep(0.2)
        assert mqtt["refused"] == 0  # the payload's own time is not "clock skew"
    finally:
        client.loop_stop()
        client.disconnect()
        stop(proc)
    with Store.open(tmp_path / "energyd.db", must_exist=True) as store:
        rows = {d: (t, v, q) for t, d, _, v, q in store.readings.readings_in(0, 2**62)}
    assert rows["air1"] == (int(measured.timestamp() * 1000), 40.0, Quality.GOOD)
    t, v, q = rows["v1"]
    assert t < int(datetime(2000, 1, 2, tzinfo=UTC).timestamp() * 1000)
    assert (v, q) == (6.5, Quality.CLOCK_SUSPECT)
