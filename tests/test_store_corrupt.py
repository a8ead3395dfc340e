"""A damaged store, an empty file and a file that is no store: refused with a clear message
and the command to recover, never overwritten; `energyd store check` and `recover`."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from energyd.errors import StoreCorrupt, StoreError
from energyd.model import Reading
from energyd.store import Store
from energyd.store.repair import check_file, recover

ENERGYD = [sys.executable, "-m", "energyd.cli"]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
READINGS = 40_000


def energyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENERGYD, *args], capture_output=True, text=True, timeout=60)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(tmp_path: Path, db: Path) -> str:
    cfg = tmp_path / f"{db.stem}.yaml"
    cfg.write_text(f"storage: {{path: {db}}}\nhttp: {{enabled: false}}\n")
    return str(cfg)


def damaged_store(path: Path) -> None:
    """A store whose one leaf page of readings (a table page in the middle of the file) is
    overwritten, as a bad sector or a torn write would leave it."""
    with Store.open(path) as store:
        store.insert_readings([Reading(T0 + timedelta(seconds=i), "m1", q, float(i))
                               for i in range(READINGS // 2)
                               for q in ("active_power_kw", "active_energy_import_kwh")])
    data = path.read_bytes()
    leaves = [n for n in range(1, len(data) // 4096) if data[n * 4096] == 0x0D]
    victim = leaves[len(leaves) // 2]
    with open(path, "r+b") as f:
        f.seek(victim * 4096)
        f.write(b"\xff" * 4096)


def test_a_damaged_store_is_refused_at_start_and_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    damaged_store(db)
    before = digest(db)
    cfg = config(tmp_path, db)

    run = energyd("run", "-c", cfg)
    assert run.returncode == 1
    assert "damaged" in run.stderr and "energyd store recover" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr

    status = energyd("status", "-c", cfg)
    assert "Traceback" not in status.stderr + status.stdout
    if status.returncode != 0:
        assert "energyd store check" in status.stderr

    export = energyd("readings", "export", "-c", cfg, "--from", "2026-03-01T00:00:00+00:00",
                     "--to", "2026-03-02T00:00:00+00:00")
    assert export.returncode == 1
    assert "Traceback" not in export.stderr
    assert "the export stopped after" in export.stderr and "incomplete" in export.stderr
    written = len(export.stdout.splitlines()) - 1
    assert f"after {written:,} readings" in export.stderr

    check = energyd("store", "check", "-c", cfg)
    assert check.returncode == 1 and "damaged" in check.stderr
    assert digest(db) == before


@pytest.mark.parametrize("shell", [True, False], ids=["sqlite3-shell-first", "table-copy"])
def test_recover_copies_what_can_be_read_into_a_new_store(tmp_path: Path, shell: bool) -> None:
    db = tmp_path / "e.db"
    damaged_store(db)
    before = digest(db)
    new = tmp_path / "recovered.db"
    args = ["store", "recover", "-c", config(tmp_path, db), "--to", str(new)]
    out = energyd(*args, *([] if shell else ["--no-shell"]))
    assert out.returncode == 0, out.stderr
    assert "lost on damaged pages: samples" in out.stdout or "lost_and_found" in out.stdout
    assert digest(db) == before
    with Store.open(new, must_exist=True) as store:
        assert store.check(full=True) == []
        kept = store.readings.count_readings()
    # one page of readings is gone, the rest is there
    assert READINGS * 0.9 < kept < READINGS
    assert energyd("store", "check", "-c", config(tmp_path, new)).returncode == 0
    # recovery never writes over a file
    again = energyd(*args)
    assert again.returncode == 1 and "already exists" in again.stderr
    with Store.open(new, must_exist=True) as store:
        assert store.readings.count_readings() == kept


def test_an_intact_store_checks_clean(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with Store.open(db) as store:
        store.insert_readings([Reading(T0, "m1", "active_power_kw", 1.0)])
    out = energyd("store", "check", "-c", config(tmp_path, db), "--full")
    assert out.returncode == 0 and "intact" in out.stdout
    assert check_file(db, full=True) == []


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 100],
                         ids=["empty", "not-sqlite"])
def test_an_empty_file_or_another_file_is_not_made_into_a_store(
        tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "e.db"
    db.write_bytes(content)
    cfg = config(tmp_path, db)
    for args in (["run", "-c", cfg], ["status", "-c", cfg],
                 ["readings", "export", "-c", cfg, "--from", "2026-03-01T00:00:00+00:00",
                  "--to", "2026-03-02T00:00:00+00:00"]):
        out = energyd(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert ("empty" if not content else "not an SQLite database") in out.stderr
        assert "energyd store recover" in out.stderr
    csv = tmp_path / "in.csv"
    csv.write_text("time,device,quantity,value\n2026-03-01T00:00:00+00:00,m1,active_power_kw,1\n")
    out = energyd("readings", "import", "-c", cfg, str(csv))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert db.read_bytes() == content
    with pytest.raises(StoreCorrupt):
        Store.open(db)
    assert check_file(db) != []


def test_another_programs_database_is_not_taken_for_a_store(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a)")
    before = digest(db)
    with pytest.raises(StoreError, match="not an energyd store"):
        Store.open(db)
    assert digest(db) == before


def test_a_new_store_appears_whole(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "e.db"
    with Store.open(db) as store:
        assert store.check() == []
    assert sorted(p.name for p in db.parent.iterdir()) == ["e.db"]
    with open(db, "rb") as f:
        assert f.read(16) == b"SQLite format 3\0"


def test_recover_refuses_to_write_over_the_store_itself(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    Store.open(db).close()
    with pytest.raises(StoreError, match="already exists"):
        recover(db, db)


async def test_a_rollup_that_meets_a_damaged_store_waits_for_the_next_hour(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from energyd.clock import RealClock
    from energyd.config.loader import parse_config
    from energyd.daemon import rollups
    from energyd.daemon.context import Context
    from energyd.daemon.metrics import Metrics
    from energyd.daemon.scheduler import Scheduler
    from energyd.store.writer import StoreWriter

    caplog.set_level(logging.INFO, logger="energyd")
    db = tmp_path / "e.db"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with Store.open(db) as store:
        store.insert_readings([
            Reading(now - timedelta(hours=6) + timedelta(seconds=i), "m1", q, float(i))
            for i in range(0, 6 * 3600, 2)
            for q in ("active_power_kw", "active_energy_import_kwh")])
    data = db.read_bytes()
    with open(db, "r+b") as f:
        pages = len(data) // 4096
        for n in range(pages // 2, pages):  # past the small tables made first
            if data[n * 4096] == 0x0D:  # the samples' leaf pages: readings lie there
                f.seek(n * 4096)
                f.write(b"\xff" * 4096)
    config = parse_config(
        f"storage: {{path: {db}}}\nhttp: {{enabled: false}}\nmqtt: {{host: 127.0.0.1}}\n"
        "devices:\n"
        "  - {name: m1, role: grid_import, driver: mqtt,\n"
        "     mqtt: {topic: t/m1, format: value, quantity: active_energy_import_kwh}}\n",
        "e.yaml")
    clock = RealClock()
    store = Store.open(db)
    writer = StoreWriter(store)
    scheduler = Scheduler(clock)
    ctx = Context(config, clock, store, writer, Metrics(), scheduler)
    (component,) = rollups.build(ctx)
    scheduler.start()
    task = asyncio.create_task(component.run())
    try:
        await asyncio.sleep(2.0)
        # it did not end (which would have its supervisor restart it, and fail again)
        assert not task.done(), task.exception() if task.done() else None
        assert "store_corrupt" in ctx.degraded.snapshot()
        failures = [r for r in caplog.records if "hourly rollup failed" in r.getMessage()]
        assert len(failures) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        scheduler.shutdown()
        writer.close()
        store.close()
