"""Store benchmark: insert and read-back rates, and a 1,000,000-reading CSV import.

    .venv/bin/python bench/bench_store.py [--readings 1000000]

Figures printed:
- insert rate through Store.insert_readings (batches of 1,000 Readings: series resolved,
  checked against what is stored, packed into samples and committed) and, as the ceiling,
  bare sqlite3 executemany of the same samples, packed beforehand, into the same schema;
- read-back rate through Store.query_readings, next to a bare SELECT of the same samples;
- `energyd readings import` of a CSV with N readings in a child process: readings/s and the
  child's peak RSS, and as the ceiling a bare child process reading the same CSV into a plain
  SQLite table (target: >= 50% of the ceiling, peak RSS < 300 MB). The target was 200,000
  readings/s until it proved to measure the machine: the same code gave 106,000 to 230,000
  from one day to the next, and the bare ceiling itself fell to 162,000 on a slow day.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from energyd.model import Reading, to_ms  # noqa: E402
from energyd.store import Store  # noqa: E402
from energyd.store.samples import group_rows  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IMPORT_SHARE = 0.5  # of the bare import (BARE_IMPORT), at least
QUANTITIES = ["active_power_kw", "voltage_l1_v", "current_l1_a", "active_energy_import_kwh"]


def make_readings(n: int) -> list[Reading]:
    devices = [f"meter-{i:03d}" for i in range(50)]
    out = []
    per_poll = len(devices) * len(QUANTITIES)
    for i in range(n):
        poll, k = divmod(i, per_poll)
        d, q = divmod(k, len(QUANTITIES))
        out.append(Reading(T0 + timedelta(seconds=10 * poll), devices[d], QUANTITIES[q],
                           230.0 + (i % 97) * 0.1))
    return out


def bench_insert(tmp: Path, rows: list[Reading]) -> tuple[float, float]:
    with Store.open(tmp / "store.db") as store:
        t0 = time.perf_counter()
        for i in range(0, len(rows), 1000):
            store.insert_readings(rows[i:i + 1000])
        energyd_rate = len(rows) / (time.perf_counter() - t0)

    # the ceiling: the same samples, packed beforehand, into the same schema
    Store.open(tmp / "bare.db").close()
    conn = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    series: dict[tuple[str, str], int] = {}
    for r in rows:
        series.setdefault((r.device, r.quantity), len(series) + 1)
    conn.executemany("INSERT INTO series (id, device, quantity) VALUES (?, ?, ?)",
                     [(sid, d, q) for (d, q), sid in series.items()])
    batches = []
    layouts: dict[bytes, int] = {}
    for i in range(0, len(rows), 1000):
        batch = group_rows([(series[(r.device, r.quantity)], to_ms(r.time), r.value, 0)
                            for r in rows[i:i + 1000]])
        batches.append([(layouts.setdefault(key, len(layouts) + 1), t, vals, q)
                         for key, t, vals, q in batch])
    conn.executemany("INSERT INTO layouts (id, series) VALUES (?, ?)",
                     [(lid, key) for key, lid in layouts.items()])
    t0 = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO samples (layout, time, vals, quality) "
                         "VALUES (?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
    bare_rate = len(rows) / (time.perf_counter() - t0)
    conn.close()
    return energyd_rate, bare_rate


def bench_read(tmp: Path, n: int) -> tuple[float, float]:
    with Store.open(tmp / "store.db") as store:
        t0 = time.perf_counter()
        got = sum(1 for _ in store.readings.query_readings())
        energyd_rate = got / (time.perf_counter() - t0)
    assert got == n, (got, n)
    conn = sqlite3.connect(tmp / "store.db")
    t0 = time.perf_counter()
    got = 0
    for _, _, vals, _ in conn.execute(
            "SELECT id, time, vals, quality FROM samples ORDER BY layout, time"):
        for _ in array("d", vals):  # each value taken out, as a reader would
            got += 1
    bare_rate = got / (time.perf_counter() - t0)
    conn.close()
    return energyd_rate, bare_rate


def bench_import(tmp: Path, n: int) -> tuple[float, float, int]:
    csv_path = tmp / "import.csv"
    devices = [f"meter-{i:03d}" for i in range(50)]
    with csv_path.open("w") as f:
        f.write("time,device,quantity,value\n")
        per_poll = len(devices) * len(QUANTITIES)
        for i in range(n):
            poll, k = divmod(i, per_poll)
            d, q = divmod(k, len(QUANTITIES))
            t = (T0 + timedelta(seconds=10 * poll)).isoformat()
            f.write(f"{t},{devices[d]},{QUANTITIES[q]},{230.0 + (i % 97) * 0.1:.1f}\n")
    cfg = tmp / "import.yaml"
    cfg.write_text(f"storage: {{path: {tmp / 'import.db'}}}\nmqtt: {{host: 127.0.0.1}}\n"
                   "devices:\n" + "".join(
                       f"  - {{name: {d}, driver: mqtt, mqtt: {{topic: t/{d}, format: value, "
                       f"quantity: active_power_kw}}}}\n" for d in devices))
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "energyd.cli", "readings", "import", "-c", str(cfg),
                    str(csv_path)], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        print("  (note: child peak RSS not above an earlier child's; figure is a lower bound)")
    with Store.open(tmp / "import.db") as store:
        stored = store.readings.count_readings()
    return n / elapsed, peak_kb / 1024, stored


# The ceiling for the import: the same CSV read by a bare child process (the csv module,
# datetime.fromisoformat, a dict of series ids) and inserted as (series, time, value) rows in
# one transaction into a plain SQLite table keyed by series and time, synced like the store.
BARE_IMPORT = """
import csv, math, sqlite3, sys
from datetime import datetime
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE readings (series INTEGER, time INTEGER, value REAL, "
             "PRIMARY KEY (series, time)) WITHOUT ROWID")
series, rows = {}, []
with open(sys.argv[1], newline="") as f:
    lines = csv.reader(f)
    next(lines)
    for t, device, quantity, value in lines:
        v = float(value)
        if not math.isfinite(v):
            raise SystemExit(f"{value!r} is not finite")
        sid = series.setdefault((device, quantity), len(series) + 1)
        rows.append((sid, round(datetime.fromisoformat(t).timestamp() * 1000), v))
conn.execute("BEGIN")
conn.executemany("INSERT INTO readings VALUES (?, ?, ?)", rows)
conn.execute("COMMIT")
"""


def bench_bare_import(tmp: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_IMPORT, str(tmp / "import.csv"),
                    str(tmp / "bare-import.db")], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--insert-readings", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # the import goes first so that its child's peak RSS is its own
        rate, rss_mb, stored = bench_import(tmp, args.readings)
        print(f"import {args.readings:,} readings (CSV, one transaction, child process): "
              f"{rate:,.0f} readings/s, peak RSS {rss_mb:.0f} MB, stored {stored:,}")
        bare = args.readings / bench_bare_import(tmp)
        print(f"  ceiling: the same CSV into a plain SQLite table by a bare child process: "
              f"{bare:,.0f} readings/s; energyd {rate / bare:.0%} of it")
        print(f"  target: >= {IMPORT_SHARE:.0%} of the ceiling "
              f"({'met' if rate >= IMPORT_SHARE * bare else 'MISSED'}), "
              f"peak RSS < 300 MB ({'met' if rss_mb < 300 else 'MISSED'})")
        rows = make_readings(args.insert_readings)
        e, b = bench_insert(tmp, rows)
        print(f"insert {len(rows):,} readings in batches of 1,000: energyd {e:,.0f}/s, "
              f"bare sqlite3 ceiling {b:,.0f}/s ({100 * e / b:.0f}% of ceiling)")
        e, b = bench_read(tmp, len(rows))
        print(f"read back {len(rows):,} readings: energyd {e:,.0f}/s, "
              f"bare SELECT ceiling {b:,.0f}/s ({100 * e / b:.0f}% of ceiling)")


if __name__ == "__main__":
    main()
