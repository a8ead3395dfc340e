"""CSV import and export: whole file or nothing, bad rows by line, kill -9 safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from energyd.model import Quality, Reading
from energyd.store import Store

T0 = datetime(2026, 1, 5, tzinfo=UTC)
ENERGYD = [sys.executable, "-m", "energyd.cli"]


def config(tmp_path: Path, devices: tuple[str, ...] = ("m1", "m2")) -> Path:
    lines = [f"storage: {{path: {tmp_path / 'energyd.db'}}}", "mqtt: {host: 127.0.0.1}",
             "devices:"]
    lines += [f"  - {{name: {d}, driver: mqtt, "
              f"mqtt: {{topic: t/{d}, format: value, quantity: active_power_kw}}}}"
              for d in devices]
    path = tmp_path / "energyd.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(n: int, device: str = "m1") -> str:
    out = ["time,device,quantity,value"]
    for i in range(n):
        t = (T0 + timedelta(seconds=10 * i)).isoformat()
        out.append(f"{t},{device},active_energy_import_kwh,{1000 + i * 0.25}")
    return "\n".join(out) + "\n"


def energyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENERGYD, *args], capture_output=True, text=True, timeout=120)


def count(tmp_path: Path) -> int:
    with Store.open(tmp_path / "energyd.db") as store:
        return store.readings.count_readings()


def test_import_then_export_round_trips(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    src = tmp_path / "in.csv"
    src.write_text(csv_rows(100).replace("2026-01-05T00:00:00+00:00",
                                         "2026-01-05T09:00:00+09:00"))  # same instant, JST
    result = energyd("readings", "import", "-c", str(cfg), str(src))
    assert result.returncode == 0, result.stderr
    assert "100 rows, 100 new readings" in result.stdout
    again = energyd("readings", "import", "-c", str(cfg), str(src))
    assert "0 new readings stored (100 already stored with the same value)" in again.stdout
    out = energyd("readings", "export", "-c", str(cfg), "--from", "2026-01-05T00:00:00+00:00",
                  "--to", "2026-01-05T00:05:00+00:00")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "time,device,quantity,value,quality"
    assert len(lines) == 1 + 30  # 5 minutes at 10 s, end exclusive
    assert lines[1] == "2026-01-05T00:00:00.000+00:00,m1,active_energy_import_kwh,1000.0,imported"
    assert lines[-1].endswith(",m1,active_energy_import_kwh,1007.25,imported")
    with Store.open(tmp_path / "energyd.db") as store:
        first = next(store.readings.query_readings(device="m1"))
        assert first.quality == Quality.IMPORTED


def test_bad_rows_reported_by_line_and_nothing_imported(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with Store.open(tmp_path / "energyd.db") as store:  # data already there must stay
        store.insert_readings([Reading(T0, "m2", "active_power_kw", 5.0)])
    rows = csv_rows(10).splitlines()
    rows[3] = "2026-01-05T00:00:20,m1,active_energy_import_kwh,1"  # no offset (line 4)
    rows[5] = rows[5].replace("m1", "m9")  # unknown device (line 6)
    rows[7] = rows[7].replace("active_energy_import_kwh", "energy")  # unknown quantity (line 8)
    rows[8] = rows[8].rsplit(",", 1)[0] + ",nan"  # not finite (line 9)
    rows[9] = rows[9].rsplit(",", 1)[0] + ",12kW"  # not a number (line 10)
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(rows) + "\n")
    result = energyd("readings", "import", "-c", str(cfg), str(src))
    assert result.returncode == 2
    err = result.stderr
    assert f"{src}:4: time '2026-01-05T00:00:20' has no UTC offset" in err
    assert f"{src}:6: device 'm9' is not in the configuration" in err
    assert f"{src}:8: unknown quantity 'energy'" in err
    assert f"{src}:9: value 'nan' is not finite" in err
    assert f"{src}:10: value '12kW' is not a number" in err
    assert "nothing was imported" in err
    assert count(tmp_path) == 1


def test_wrong_header_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    src = tmp_path / "h.csv"
    src.write_text("timestamp,meter,value\n2026-01-05T00:00:00Z,m1,1\n")
    result = energyd("readings", "import", "-c", str(cfg), str(src))
    assert result.returncode == 2
    assert f"{src}:1: header must be time,device,quantity,value" in result.stderr


def test_sigkill_during_import_leaves_nothing_half_imported(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    n = 600_000
    src = tmp_path / "big.csv"
    src.write_text(csv_rows(n))
    proc = subprocess.Popen([*ENERGYD, "readings", "import", "-c", str(cfg), str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wal = Path(str(tmp_path / "energyd.db") + "-wal")
    deadline = time.monotonic() + 60
    # kill once the import has written part of its transaction to the WAL
    while time.monotonic() < deadline and (not wal.exists() or wal.stat().st_size < 2_000_000):
        assert proc.poll() is None, "import finished before it could be interrupted"
        time.sleep(0.005)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert wal.stat().st_size >= 2_000_000  # the partial transaction was really on disk
    assert count(tmp_path) == 0
    with Store.open(tmp_path / "energyd.db") as store:
        assert store.check(full=True) == []
    # and the same file then goes in whole
    result = energyd("readings", "import", "-c", str(cfg), str(src))
    assert result.returncode == 0, result.stderr
    assert count(tmp_path) == n


@pytest.mark.parametrize("bad", ["yesterday", "2026-01-05T00:00:00"])
def test_export_needs_times_with_offsets(tmp_path: Path, bad: str) -> None:
    result = energyd("readings", "export", "-c", str(config(tmp_path)), "--from", bad,
                     "--to", "2026-01-06T00:00:00+00:00")
    assert result.returncode == 2
    assert "--from" in result.stderr


def test_a_replayed_import_is_harmless_and_a_conflicting_one_reported(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    src = tmp_path / "in.csv"
    src.write_text(csv_rows(50))
    assert energyd("readings", "import", "-c", str(cfg), str(src)).returncode == 0
    # the export (with its quality column) imported again: nothing new, nothing conflicting
    exported = tmp_path / "out.csv"
    out = energyd("readings", "export", "-c", str(cfg), "--from", "2026-01-05T00:00:00Z",
                  "--to", "2026-01-06T00:00:00Z", "-o", str(exported))
    assert out.returncode == 0, out.stderr
    again = energyd("readings", "import", "-c", str(cfg), str(exported))
    assert again.returncode == 0, again.stderr
    assert "50 rows, 0 new readings stored (50 already stored with the same value)" in again.stdout
    assert "conflict" not in again.stderr
    # two rows with other values for stored times, one new row: the stored values stand
    rows = csv_rows(51).splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",999.5"
    rows[7] = rows[7].rsplit(",", 1)[0] + ",0"
    src.write_text("\n".join(rows) + "\n")
    # a conflicting import replayed reports them again and keeps them once
    for new, present in ((1, 48), (0, 49)):
        result = energyd("readings", "import", "-c", str(cfg), str(src))
        assert result.returncode == 0, result.stderr
        assert (f"51 rows, {new} new readings stored ({present} already stored with the same "
                "value)") in result.stdout
        assert "2 rows have another value than the store holds" in result.stderr
        assert "999.5 (stored 1000.5)" in result.stderr
    with Store.open(tmp_path / "energyd.db") as store:
        values = [r.value for r in store.readings.query_readings(device="m1")]
        assert values == [1000 + i * 0.25 for i in range(51)]
        assert store.readings.conflict_counts() == {"m1": 2}
    listed = energyd("readings", "conflicts", "-c", str(cfg), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(c["value"], c["stored"], c["quality"]) for c in json.loads(listed.stdout)] == [
        (999.5, 1000.5, "imported"), (0.0, 1001.5, "imported")]
    status = energyd("status", "-c", str(cfg), "--json")
    assert status.returncode == 0, status.stderr
    payload = json.loads(status.stdout)
    assert {d["device"]: d["conflicts"] for d in payload["devices"]}["m1"] == 2
    assert payload["store"]["conflicts"] == {"m1": 2}
