"""The store writer and its committer process: batches, callbacks, and nothing lost when
the committer or the daemon dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from energyd.errors import StoreError
from energyd.model import PollValues, Reading, to_ms
from energyd.store import Store
from energyd.store.writer import StoreWriter

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def poll(device: str, second: int, values: tuple[float, ...] = (1.0, 2.0)) -> list[Reading]:
    when = T0 + timedelta(seconds=second)
    quantities = ("active_power_kw", "active_energy_import_kwh")
    return [Reading(when, device, q, v) for q, v in zip(quantities, values, strict=False)]


def stored(path: Path) -> list[tuple[str, str, int, float]]:
    with Store.open(path) as store:
        return sorted((r.device, r.quantity, r.time_ms, r.value)
                      for r in store.readings.query_readings())


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a child of ours stays a zombie until reaped; a zombie has ended
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_flush_commits_readings_and_polls_and_then_calls_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    calls: list[tuple[str, int]] = []
    store = Store.open(path)
    with StoreWriter(store, on_commit=lambda n, kept: calls.append(("commit", n))) as writer:
        # a new device's series are created at the flush, the known ones resolved at submit
        writer.submit(poll("m1", 0), lambda: calls.append(("message", writer.pending)))
        writer.record_poll("m1", 1000, None)
        assert writer.pending == 2 and calls == []
        assert writer.flush_sync() == 2
        writer.submit(poll("m1", 1, (3.0, 4.0)))
        writer.record_poll("m1", 2000, "timeout")
        assert writer.flush_sync() == 2
    assert calls == [("message", 0), ("commit", 2), ("commit", 2)]
    assert stored(path) == [
        ("m1", "active_energy_import_kwh", 1772323200000, 2.0),
        ("m1", "active_energy_import_kwh", 1772323201000, 4.0),
        ("m1", "active_power_kw", 1772323200000, 1.0),
        ("m1", "active_power_kw", 1772323201000, 3.0)]
    status = store.device_status()["m1"]
    assert (status["polls"], status["errors"], status["last_error"]) == (2, 1, "timeout")
    store.close()


def test_polls_as_columns_are_stored_as_the_same_readings(tmp_path: Path) -> None:
    # a bus owner hands its polls over as columns (PollValues); what is stored, and what a
    # reading listener is given, is what the same polls as Readings give
    quantities = ("active_power_kw", "active_energy_import_kwh")
    polls = [PollValues(T0 + timedelta(seconds=s), device, quantities, [s + 0.5, 100.0 + s])
             for s in range(3) for device in ("m1", "m2")]
    kept: list[Reading] = []
    as_columns, as_readings = tmp_path / "columns.db", tmp_path / "readings.db"
    with Store.open(as_columns) as store, StoreWriter(
            store, on_commit=lambda n, got: kept.extend(got), keep_readings=lambda: True
    ) as writer:
        writer.submit_values(polls[:2])  # new series: made at the flush
        assert writer.flush_sync() == 4
        writer.submit_values(polls[2:])  # known now: packed as they are
        assert writer.pending == 8
        assert writer.flush_sync() == 8
    with Store.open(as_readings) as store, StoreWriter(store) as writer:
        for p in polls:
            writer.submit(p.readings())
    assert stored(as_columns) == stored(as_readings) and len(stored(as_columns)) == 12
    assert kept == [r for p in polls for r in p.readings()]
    assert kept[0] == Reading(T0, "m1", "active_power_kw", 0.5)


def test_poll_values_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="m1/active_power_kw: a value is not finite"):
        PollValues(T0, "m1", ("active_power_kw",), [float("nan")])
    with pytest.raises(ValueError, match="2 quantities for 1 values"):
        PollValues(T0, "m1", ("active_power_kw", "frequency_hz"), [1.0])
    with pytest.raises(ValueError, match="timezone-aware"):
        PollValues(datetime(2026, 3, 1), "m1", ("active_power_kw",), [1.0])


async def test_the_committer_starts_with_the_writer_not_at_its_first_flush(
        tmp_path: Path) -> None:
    # a backlog after a restart is committed at once, not after the committer's start-up
    with Store.open(tmp_path / "s.db") as store:
        writer = StoreWriter(store, flush_interval=3600)
        task = asyncio.create_task(writer.run())
        try:
            for _ in range(100):
                if writer.committer_pid is not None:
                    break
                await asyncio.sleep(0.05)
            pid = writer.committer_pid
            assert pid is not None and not gone(pid, 0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert gone(pid, 10)  # and it ends with the writer


def test_a_dead_committer_loses_nothing_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    called: list[int] = []
    with Store.open(path) as store, StoreWriter(store) as writer:
        writer.submit(poll("m1", 0))
        writer.flush_sync()
        first = writer.committer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert gone(first, 5)
        writer.submit(poll("m1", 1), lambda: called.append(1))
        writer.submit(poll("m2", 1))
        with pytest.raises(StoreError, match="committer process ended .*the batch is kept"):
            writer.flush_sync()
        assert writer.pending == 4 and called == []  # not acknowledged: not on disk
        assert writer.flush_sync() == 4
        assert called == [1]
        assert writer.committer_pid not in (None, first)
    assert [(d, q[:6], v) for d, q, _, v in stored(path)] == [
        ("m1", "active", 2.0), ("m1", "active", 2.0), ("m1", "active", 1.0),
        ("m1", "active", 1.0), ("m2", "active", 2.0), ("m2", "active", 1.0)]


def test_the_committer_ends_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """No orphan: a SIGKILLed daemon closes the pipe and its committer ends with it; what
    the committer had answered for is on disk."""
    script = f"""
import sys, time
from datetime import UTC, datetime
from energyd.model import Reading, to_ms
from energyd.store import Store
from energyd.store.writer import StoreWriter
store = Store.open({str(tmp_path / "s.db")!r})
writer = StoreWriter(store)
writer.submit([Reading(datetime(2026, 3, 1, tzinfo=UTC), "m1", "active_power_kw", 7.5)])
writer.flush_sync()
print(writer.committer_pid, flush=True)
time.sleep(60)
"""
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    committer = int(daemon.stdout.readline())
    daemon.kill()
    daemon.wait(5)
    assert gone(committer, 5), "the committer outlived its daemon"
    assert stored(tmp_path / "s.db") == [("m1", "active_power_kw", 1772323200000, 7.5)]


def test_the_committer_does_not_take_a_terminal_interrupt(tmp_path: Path) -> None:
    """Ctrl-C and systemd's stop signal the whole group; the daemon decides when to stop."""
    with Store.open(tmp_path / "s.db") as store, StoreWriter(store) as writer:
        writer.submit(poll("m1", 0))
        writer.flush_sync()
        pid = writer.committer_pid
        assert pid is not None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(pid, sig)
        time.sleep(0.3)
        writer.submit(poll("m1", 1))
        assert writer.flush_sync() == 2
        assert writer.committer_pid == pid
    assert gone(pid, 5)


def test_the_committer_is_given_none_of_the_daemons_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENERGYD_TEST_INFLUX_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with Store.open(tmp_path / "s.db") as store, StoreWriter(store) as writer:
        writer.submit(poll("m1", 0))
        writer.flush_sync()
        environ = Path(f"/proc/{writer.committer_pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0] for e in environ if e}
    assert b"PYTHONPATH" in names
    assert b"ENERGYD_TEST_INFLUX_TOKEN" not in names and b"CREDENTIALS_DIRECTORY" not in names
    assert not any(b"s3cr3t" in e for e in environ)


def test_a_replay_is_ignored_and_a_conflict_kept_apart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    found: list[dict[str, int]] = []
    with Store.open(path) as store, StoreWriter(store, on_conflicts=found.append) as writer:
        writer.submit(poll("m1", 0))
        writer.submit(poll("m2", 0))
        writer.flush_sync()
        writer.submit(poll("m1", 0))  # a replay: the same values
        writer.submit(poll("m1", 0, (1.0, 9.0)))  # the counter differs: a conflict
        writer.submit(poll("m2", 0, (7.0, 8.0)))  # both differ
        writer.submit(poll("m2", 1, (5.0, 6.0)))
        writer.submit(poll("m2", 1, (5.5, 6.0)))  # two in one batch: the first stands
        writer.flush_sync()
        writer.submit(poll("m1", 0, (1.0, 9.0)))  # the same conflict again: kept once
        writer.flush_sync()
        assert found == [{"m1": 1, "m2": 3}]
        assert writer.conflicts == {"m1": 1, "m2": 3}
        assert store.readings.conflict_counts() == {"m1": 1, "m2": 3}
        assert [(c.device, c.quantity, c.time_ms - to_ms(T0), c.value, c.stored)
                for c in store.readings.conflicts()] == [
            ("m1", "active_energy_import_kwh", 0, 9.0, 2.0),
            ("m2", "active_energy_import_kwh", 0, 8.0, 2.0),
            ("m2", "active_power_kw", 0, 7.0, 1.0),
            ("m2", "active_power_kw", 1000, 5.5, 5.0)]
        assert [c.device for c in store.readings.conflicts("m1")] == ["m1"]
    assert stored(path) == [
        ("m1", "active_energy_import_kwh", to_ms(T0), 2.0),
        ("m1", "active_power_kw", to_ms(T0), 1.0),
        ("m2", "active_energy_import_kwh", to_ms(T0), 2.0),
        ("m2", "active_energy_import_kwh", to_ms(T0) + 1000, 6.0),
        ("m2", "active_power_kw", to_ms(T0), 1.0),
        ("m2", "active_power_kw", to_ms(T0) + 1000, 5.0)]


def test_a_reading_held_by_another_layout_is_not_stored_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store, StoreWriter(store) as writer:
        writer.submit(poll("m1", 0))  # power and energy in one sample
        writer.submit(poll("m1", 1))
        writer.flush_sync()
        # power alone at the same times: a replay, then a conflict
        writer.submit([Reading(T0, "m1", "active_power_kw", 1.0)])
        writer.submit([Reading(T0 + timedelta(seconds=1), "m1", "active_power_kw", 4.0)])
        # power, energy and voltage: the first two are held (one differs), voltage is new
        when = T0 + timedelta(seconds=1)
        writer.submit([Reading(when, "m1", "active_power_kw", 1.0),
                       Reading(when, "m1", "active_energy_import_kwh", 3.0),
                       Reading(when, "m1", "voltage_l1_v", 230.0)])
        writer.flush_sync()
        assert writer.conflicts == {"m1": 2}
        assert [(c.quantity, c.time_ms - to_ms(T0), c.value, c.stored)
                for c in store.readings.conflicts()] == [
            ("active_energy_import_kwh", 1000, 3.0, 2.0),
            ("active_power_kw", 1000, 4.0, 1.0)]
        assert store.readings.count_readings() == 5  # nothing stored twice, whatever a reader asks
        after = [(r.quantity, r.value) for r in store.readings.readings_after(0, 100)]
        assert sorted(after) == [("active_energy_import_kwh", 2.0),
                                 ("active_energy_import_kwh", 2.0),
                                 ("active_power_kw", 1.0), ("active_power_kw", 1.0),
                                 ("voltage_l1_v", 230.0)]


def test_a_conflict_between_layouts_within_one_flush_is_found(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store, StoreWriter(store) as writer:
        writer.submit(poll("m1", 0))
        writer.submit([Reading(T0, "m1", "active_power_kw", 1.0)])  # both layouts known now
        writer.flush_sync()
        writer.submit(poll("m1", 5))  # the pair, later than either layout held
        writer.submit([Reading(T0 + timedelta(seconds=5), "m1", "active_power_kw", 7.0)])
        writer.flush_sync()
        assert [(c.time_ms - to_ms(T0), c.value, c.stored) for c in store.readings.conflicts()] == [
            (5000, 7.0, 1.0)]
        assert store.readings.count_readings() == 4
