"""The daemon's lifecycle as systemd sees it: ready, health, reload, watchdog, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helper import RunningDaemon
from servers import free_port

from energyd.alerts.outbox import Outbox
from energyd.model import Reading
from energyd.store import READINGS, Store

ENERGYD = [sys.executable, "-m", "energyd.cli"]


def write_config(path: Path, db: Path, port: int, site: str = "plant-a") -> Path:
    path.write_text(f"site: {{name: {site}}}\nstorage: {{path: {db}}}\n"
                    f"http: {{host: 127.0.0.1, port: {port}}}\n")
    return path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_health(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> dict:
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


def start(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*ENERGYD, "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, time.monotonic() - t0, err.decode()


def test_zero_devices_runs_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start(write_config(tmp_path / "e.yaml", tmp_path / "e.db", port))
    try:
        health = wait_health(port, proc)
        assert health["status"] == "ok"
        assert health["devices"] == 0 and health["site"] == "plant-a"
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"energyd_up 1.0" in metrics
        assert get(f"http://127.0.0.1:{port}/nowhere")[0] == 404
    finally:
        code, took, err = stop(proc)
    assert code == 0, err
    assert took < 5, f"stopping took {took:.1f} s"
    assert "energyd stopped" in err


def test_sighup_reloads_a_good_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "e.yaml", tmp_path / "e.db", port)
    proc = start(cfg)
    try:
        wait_health(port, proc)
        cfg.write_text(cfg.read_text() + "devices: [{name: x, drivr: modbus}]\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        health = wait_health(port, proc)
        assert health["site"] == "plant-a"  # the running configuration stays

        write_config(cfg, tmp_path / "e.db", port, site="plant-b")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while wait_health(port, proc)["site"] != "plant-b":
            assert time.monotonic() < deadline, "the new configuration was not taken"
            time.sleep(0.1)
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "reload refused, the running configuration stays" in err
    assert "drivr" in err and "unknown key" in err
    assert "configuration reloaded" in err


def test_systemd_notify_ready_and_watchdog(tmp_path: Path) -> None:
    port = free_port()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    proc = start(write_config(tmp_path / "e.yaml", tmp_path / "e.db", port),
                 env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m and "STATUS=polling 0 devices" in m for m in messages)
        assert sum("WATCHDOG=1" in m for m in messages) >= 2
    finally:
        code, _, err = stop(proc)
        sock.settimeout(2)
        tail = []
        try:
            while True:
                tail.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        sock.close()
    assert code == 0, err
    assert any("STOPPING=1" in m for m in tail)


def test_status_shows_devices_store_and_backlog(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    cfg = tmp_path / "e.yaml"
    cfg.write_text(
        f"storage: {{path: {db}}}\nmqtt: {{host: 127.0.0.1}}\n"
        "devices:\n"
        "  - {name: m1, role: grid_import, driver: mqtt,\n"
        "     mqtt: {topic: t/m1, format: value, quantity: active_power_kw}}\n"
        "influxdb: {api: v1, url: 'http://127.0.0.1:9', database: energy}\n")
    now = datetime.now(UTC).replace(microsecond=0)
    with Store.open(db) as store:
        store.insert_readings([Reading(now - timedelta(seconds=60 - i), "m1",
                                       "active_power_kw", float(i)) for i in range(6)])
        store.commit_samples([], [("m1", int(now.timestamp() * 1000), "timeout after 1.0 s")])
        first = store.readings.readings_after(0, 2)
        store.cursors.move("influxdb", READINGS, first[-1].id)
        Outbox(store).add(["ops"], [{"event": "start", "rule": "spike", "device": "m1"}])
    result = subprocess.run([*ENERGYD, "status", "-c", str(cfg), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    (device,) = payload["devices"]
    assert device["device"] == "m1"
    assert device["last_reading"] == (now - timedelta(seconds=55)).isoformat()
    assert device["last_error"] == "timeout after 1.0 s" and device["errors"] == 1
    assert device["last_poll"] == now.isoformat()
    (sink,) = payload["sinks"]
    assert sink["readings"]["backlog"] == 4
    assert sink["readings"]["oldest_unsent"] == (now - timedelta(seconds=58)).isoformat()
    assert payload["store"]["readings"] == 6
    assert payload["alerts_undelivered"] == {"ops": 1}
    table = subprocess.run([*ENERGYD, "status", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0 and "m1" in table.stdout and "ops: 1" in table.stdout


@pytest.mark.parametrize("flag", ["run", "status", "check-config"])
def test_bad_config_stops_every_command_with_exit_2(tmp_path: Path, flag: str) -> None:
    cfg = tmp_path / "e.yaml"
    cfg.write_text("site: {name: x, timezone: Mars/Olympus}\n")
    result = subprocess.run([*ENERGYD, flag, "-c", str(cfg)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert f"{cfg}:1: site.timezone: unknown time zone 'Mars/Olympus'" in result.stderr


async def test_stop_commits_every_reading_that_was_read(tmp_path: Path) -> None:
    """A source that reads right up to the stop: everything it handed over is in the store."""
    import asyncio

    submitted: list[Reading] = []

    class Source:
        name = "test-source"

        def __init__(self, ctx):  # type: ignore[no-untyped-def]
            self.ctx = ctx

        async def run(self) -> None:
            i = 0
            while True:
                r = Reading(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i), "m1",
                            "active_power_kw", float(i))
                self.ctx.writer.submit([r])
                submitted.append(r)
                i += 1
                await asyncio.sleep(0.002)

    running = RunningDaemon(f"storage: {{path: {tmp_path / 'e.db'}, flush_interval: 10s}}\n"
                            "http: {enabled: false}\n",
                            builders=[lambda ctx: [Source(ctx)]], stop_timeout=5)
    async with running:
        await asyncio.sleep(0.5)
    assert running.exit_code == 0
    # flush_interval is 10 s, so only the final flush at the stop can have committed them
    assert len(submitted) > 50
    with Store.open(tmp_path / "e.db") as store:
        assert store.readings.count_readings() == len(submitted)


def test_reload_that_cannot_build_keeps_the_running_configuration(tmp_path: Path) -> None:
    """A file that passes the schema but names a broken factor table must not stop the
    daemon on SIGHUP: the running configuration stays."""
    port = free_port()
    factors = tmp_path / "factors.yaml"
    root = Path(__file__).resolve().parent.parent
    factors.write_text((root / "config" / "emission-factors.yaml").read_text())
    cfg = write_config(tmp_path / "e.yaml", tmp_path / "e.db", port)
    cfg.write_text(cfg.read_text() + f"accounting: {{emission_factors: {factors}}}\n")
    proc = start(cfg)
    try:
        wait_health(port, proc)
        factors.write_text("factors:\n  - {id: x, value: [\n")  # YAML syntax error
        cfg.write_text(cfg.read_text().replace("plant-a", "plant-b"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        health = wait_health(port, proc)
        assert health["site"] == "plant-a"
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "reload refused, the running configuration stays" in err
    assert str(factors) in err


def test_start_with_a_broken_factor_table_exits_2_naming_it(tmp_path: Path) -> None:
    factors = tmp_path / "factors.yaml"
    factors.write_text("factors:\n  - {id: x, value: [\n")
    cfg = write_config(tmp_path / "e.yaml", tmp_path / "e.db", free_port())
    cfg.write_text(cfg.read_text() + f"accounting: {{emission_factors: {factors}}}\n")
    result = subprocess.run([*ENERGYD, "run", "-c", str(cfg)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{factors}:3: ")
