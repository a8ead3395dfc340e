"""A gateway's store meeting a full disk: the daemon says so, holds what it reads within a
bound, logs the state once on the way in and once on recovery, and loses nothing committed.

Setup (needs root, as CI has): the store lives on a tmpfs of 32 MB that the test mounts
under its temporary directory and unmounts at the end. The disk is filled by a file that
takes every free byte; removing it is the recovery. The daemon and a simulated meter
gateway (10 units behind one TCP port) run as processes of their own, as in production; a
sink forwards to InfluxDB meanwhile (its cursor cannot be moved on a full disk either).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import InfluxDBServer, free_port
from test_daemon import get

from energyd.model import QUANTITIES
from energyd.store import Store

ENERGYD = [sys.executable, "-m", "energyd.cli"]
UNITS = 10
INTERVAL = 0.2
PENDING_LIMIT = 5_000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "32m") -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem holding `path`."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())


def health(port: int) -> dict:
    status, body = get(f"http://127.0.0.1:{port}/health")
    assert status == 200, body
    return json.loads(body)


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, AssertionError):  # not answering, or 503 while it reloads
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def counter_times(db: Path) -> dict[str, list[int]]:
    with Store.open(db, must_exist=True) as store:
        out: dict[str, list[int]] = {}
        for r in store.readings.query_readings():
            if not QUANTITIES[r.quantity].sheddable:
                out.setdefault(f"{r.device}/{r.quantity}", []).append(r.time_ms)
        return out


@needs_root
def test_a_full_disk_is_a_named_state_with_bounded_memory_and_logs_and_nothing_lost(
        tmp_path: Path, influxdb: InfluxDBServer, influxdb_database: str) -> None:
    disk = tmp_path / "small"
    sim_port, http_port = free_port(), free_port()
    with small_filesystem(disk):
        db = disk / "energyd.db"
        devices = "".join(
            f"  - {{name: m{u}, driver: modbus, profile: eastron_sdm630, interval: {INTERVAL}, "
            f"modbus: {{transport: tcp, host: 127.0.0.1, port: {sim_port}, unit: {u}, "
            f"timeout: 0.5}}}}\n" for u in range(1, UNITS + 1))
        cfg = tmp_path / "e.yaml"
        cfg.write_text(f"site: {{name: plant-a}}\n"
                       f"storage: {{path: {db}, flush_interval: 0.2, "
                       f"pending_limit: {PENDING_LIMIT}}}\n"
                       f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
                       f"influxdb: {{name: central, api: v1, url: '{influxdb.url}', "
                       f"database: {influxdb_database}}}\ndevices:\n{devices}")
        sim = subprocess.Popen([*ENERGYD, "simulate", "meter", "--port", str(sim_port),
                                "--units", f"1-{UNITS}"], stderr=subprocess.DEVNULL)
        log_path = tmp_path / "daemon.log"
        with open(log_path, "wb") as log_file:
            daemon = subprocess.Popen([*ENERGYD, "run", "-c", str(cfg)], stdout=log_file,
                                      stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: health(http_port)["committed_readings"] > 5000, 30,
                     "readings committed")
            filler = disk / "filler"
            fill(filler)
            full_at = time.monotonic()
            lines_before = len(log_path.read_text().splitlines())

            state = wait_for(lambda: health(http_port)["degraded"].get("disk_full"), 15,
                             "the disk_full state")
            assert "full" in state["reason"]
            assert health(http_port)["status"] == "degraded"
            committed_at_full = health(http_port)["committed_readings"]
            # the status command says so too (it reads the store, which a full disk allows)
            out = subprocess.run([*ENERGYD, "status", "-c", str(cfg), "--json"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            assert "disk_full" in status["daemon"]["degraded"]
            assert status["store"]["disk_free_bytes"] < 64 * 1024
            out = subprocess.run([*ENERGYD, "status", "-c", str(cfg)], capture_output=True,
                                 text=True, timeout=30)
            assert out.returncode == 0 and "disk_full" in out.stdout, out.stderr

            # held readings stay within the bound while the meters go on being read
            rss_start = rss_kb(daemon.pid)
            peak = 0
            while time.monotonic() - full_at < 20:
                h = health(http_port)
                peak = max(peak, h["pending_readings"])
                time.sleep(0.25)
            h = health(http_port)
            read_per_flush_interval = UNITS * 40 * 2  # 10 units x ~40 values, 0.2 s / 0.2 s
            assert peak <= PENDING_LIMIT + read_per_flush_interval * 3, peak
            assert h["shed_readings"] > 0
            assert h["committed_readings"] == committed_at_full  # nothing went in meanwhile
            rss_growth_mb = (rss_kb(daemon.pid) - rss_start) / 1024
            assert rss_growth_mb < 15, rss_growth_mb
            full_lines = log_path.read_text().splitlines()[lines_before:]
            # the figures, for `pytest -s`
            print(f"disk full for 20 s: {len(full_lines)} log lines, peak held "
                  f"{peak:,} readings (limit {PENDING_LIMIT:,}), {h['shed_readings']:,} "
                  f"gauge readings shed, RSS {rss_growth_mb:+.1f} MB")
            assert len(full_lines) <= 3, "\n".join(full_lines)
            assert sum("degraded: disk_full" in line for line in full_lines) == 1
            assert not any("Traceback" in line for line in full_lines)

            # a reload while the disk is full keeps what is held
            held = health(http_port)["pending_readings"]
            daemon.send_signal(signal.SIGHUP)
            wait_for(lambda: health(http_port)["committed_readings"] == 0, 15,
                     "the reloaded configuration")
            assert health(http_port)["pending_readings"] >= held
            assert "disk_full" in health(http_port)["degraded"]

            filler.unlink()
            wait_for(lambda: not health(http_port)["degraded"], 30, "recovery")
            assert health(http_port)["status"] == "ok"
            wait_for(lambda: health(http_port)["committed_readings"] > committed_at_full, 10,
                     "commits after recovery")
            time.sleep(1.0)
            committed_in_all = health(http_port)["committed_readings"] + committed_at_full
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
        text = log_path.read_text()
        assert text.count("recovered: disk_full") == 1, text[-3000:]
        assert text.count("degraded: disk_full") == 1
        assert "Traceback" not in text, text[-3000:]

        # every reading the daemon said it committed is in the store
        with Store.open(db, must_exist=True) as store:
            assert store.readings.count_readings() >= committed_in_all
        # counters were never shed: every poll's counter readings, through the full disk
        times = counter_times(db)
        assert times
        for series, ts in times.items():
            gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
            assert max(gaps) < 2000, (series, max(gaps))
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
