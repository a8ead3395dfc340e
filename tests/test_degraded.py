"""Degraded states in /health and `energyd status`: a sink that fails, and the store writer's
bound on what it holds while commits fail."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from servers import InfluxDBServer, free_port
from test_daemon import get

from energyd.daemon.degraded import Degraded
from energyd.model import QUANTITIES, Reading
from energyd.store import Store
from energyd.store.writer import Batch, StoreWriter

ENERGYD = [sys.executable, "-m", "energyd.cli"]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def health(port: int) -> dict:
    status, body = get(f"http://127.0.0.1:{port}/health")
    assert status == 200, body
    return json.loads(body)


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def test_an_influxdb_outage_is_the_sink_failing_state_in_health_and_status(
        tmp_path: Path, influxdb_private: InfluxDBServer) -> None:
    influxdb_private.create_database("energy")
    sim_port, http_port = free_port(), free_port()
    cfg = tmp_path / "e.yaml"
    cfg.write_text(
        f"site: {{name: plant-a}}\nstorage: {{path: {tmp_path / 'e.db'}, flush_interval: 0.2}}\n"
        f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
        f"influxdb: {{name: central, api: v1, url: '{influxdb_private.url}', database: energy,"
        f" timeout: 1, backoff_max: 1}}\n"
        f"devices:\n  - {{name: m1, driver: modbus, profile: eastron_sdm630, interval: 0.5, "
        f"modbus: {{transport: tcp, host: 127.0.0.1, port: {sim_port}, unit: 1}}}}\n")
    sim = subprocess.Popen([*ENERGYD, "simulate", "meter", "--port", str(sim_port)],
                           stderr=subprocess.DEVNULL)
    daemon = subprocess.Popen([*ENERGYD, "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: health(http_port)["committed_readings"] > 0, 30, "readings")
        assert health(http_port)["status"] == "ok"
        influxdb_private.stop()
        state = wait_for(lambda: health(http_port)["degraded"].get("sink_failing"), 20,
                         "the sink_failing state")
        assert state["reason"].startswith("central: ")
        assert health(http_port)["status"] == "degraded"
        out = subprocess.run([*ENERGYD, "status", "-c", str(cfg), "--json"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert "sink_failing" in status["daemon"]["degraded"]
        (sink,) = status["sinks"]
        assert sink["last_error"], sink
        table = subprocess.run([*ENERGYD, "status", "-c", str(cfg)], capture_output=True,
                               text=True, timeout=30)
        assert table.returncode == 0 and "sink_failing" in table.stdout
        influxdb_private.start()
        wait_for(lambda: not health(http_port)["degraded"], 30, "the sink's recovery")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
    assert "Traceback" not in err.decode()


def test_status_says_when_the_daemon_does_not_answer(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    Store.open(db).close()
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"storage: {{path: {db}}}\nhttp: {{port: {free_port()}}}\n")
    out = subprocess.run([*ENERGYD, "status", "-c", str(cfg), "--json"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    daemon = json.loads(out.stdout)["daemon"]
    assert daemon["status"] == "not answering" and daemon["error"]


def test_degraded_states_log_once_each_way_and_merge_their_sources(caplog) -> None:  # type: ignore[no-untyped-def]
    d = Degraded()
    with caplog.at_level("INFO", logger="energyd.daemon.degraded"):
        for attempt in range(50):
            d.set("disk_full", f"attempt {attempt}")
        d.set("sink_failing", "HTTP 503", source="a", quiet=True)
        d.set("sink_failing", "refused", source="b", quiet=True)
        snap = d.snapshot()
        assert snap["disk_full"]["reason"] == "attempt 49"
        assert snap["sink_failing"]["reason"] == "a: HTTP 503; b: refused"
        d.clear("sink_failing", source="a", quiet=True)
        assert d.active("sink_failing")
        d.clear("disk_full")
        d.clear("disk_full")
    assert [r.getMessage().split(" after")[0] for r in caplog.records] == [
        "degraded: disk_full: attempt 0", "recovered: disk_full"]
    assert list(d.snapshot()) == ["sink_failing"]


def _poll(device: str, second: int) -> list[Reading]:
    when = T0 + timedelta(seconds=second)
    return [Reading(when, device, q, float(second))
            for q in ("active_power_kw", "voltage_l1_v", "active_energy_import_kwh")]


def test_what_is_held_is_bounded_gauges_first_then_counters_thinned(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        writer = StoreWriter(store, max_pending=1_000)
        writer.submit(_poll("m1", 0))
        writer.flush_sync()  # the series exist now
        for second in range(1, 1001):
            writer.submit(_poll("m1", second))
            writer.record_poll("m1", second * 1000, None if second % 3 else "timeout")
        batch = writer._batch
        writer._bound(batch)
        # 3000 held: gauges shed oldest first down to 750, the 1000 counters all kept
        assert len(batch) == 1000 and writer.shed == 2000 and writer.thinned == 0
        names = {sid: q for (_, q), sid in store.known_series.items()}
        t0 = int(T0.timestamp() * 1000)
        assert sorted(batch.times) == [t0 + s * 1000 for s in range(1, 1001)]
        assert {names[s] for s in batch.series} == {"active_energy_import_kwh"}
        # counters alone past twice the bound: every other one goes, first and last stay
        for second in range(1001, 2600):
            writer.submit([_poll("m1", second)[2]])
        writer._bound(batch)
        assert writer.thinned == 1299 and len(batch) == 1300
        assert batch.times[0] == t0 + 1000 and batch.times[-1] == t0 + 2599 * 1000
        assert not any(QUANTITIES[names[s]].sheddable for s in batch.series)
        # the polls, folded, still count every poll and error
        folded = Batch()
        folded.polls = list(batch.polls)
        folded.fold_polls()
        assert sum(p[3] for p in folded.polls) == 1000
        assert sum(p[4] for p in folded.polls) == 333
        writer.flush_sync()
        status = store.device_status()["m1"]
        assert (status["polls"], status["errors"]) == (1000, 333)
        assert status["last_error"] == "timeout" and status["last_poll"] == 1_000_000
        kept = list(store.readings.query_readings(quantity="active_energy_import_kwh"))
        assert len(kept) == 1 + 1300
        writer.close()


def test_what_was_held_is_committed_in_slices_and_acknowledged_at_the_end(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import energyd.store.writer as writer_module

    monkeypatch.setattr(writer_module, "COMMIT_MAX", 100)
    acknowledged: list[int] = []
    with Store.open(tmp_path / "s.db") as store:
        writer = StoreWriter(store)
        writer.submit(_poll("m1", 0))
        writer.flush_sync()
        for second in range(1, 334):
            writer.submit(_poll("m1", second), lambda s=second: acknowledged.append(s))
        assert writer.pending == 999
        first = writer.flush_sync()
        assert first == 102 and writer.pending == 999 - 102  # whole calls: 34 polls of 3
        assert acknowledged == []  # the messages' readings are not all on disk yet
        writer.close()
        assert writer.pending == 0 and acknowledged == list(range(1, 334))
        assert store.readings.count_readings() == 3 + 999
