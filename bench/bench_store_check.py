"""What the daemon's start-up check of the store costs: SQLite's quick_check, which the
daemon runs before it starts (a damaged store is refused, not found by a failing rollup).

    .venv/bin/python bench/bench_store_check.py [--readings 5000000]

Figures printed, for a store of N readings (50 meters x 9 values per poll, as a plant's):
- the store's size, and the time of `Store.check()` (quick_check) and of `check(full=True)`
  (integrity_check, what `energyd store check --full` runs);
- as the ceiling, a plain sequential read of the same file (cold cache dropped where the
  machine allows, else warm: both figures from the same cache state): quick_check must stay
  within 20x of reading the file, so the start-up check grows with the store's size and
  nothing more.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from energyd.model import Reading  # noqa: E402
from energyd.store import Store  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUANTITIES = ["active_power_kw", "active_power_l1_kw", "active_power_l2_kw",
              "active_power_l3_kw", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v",
              "frequency_hz", "active_energy_import_kwh"]
METERS = 50


def build(path: Path, n: int) -> None:
    per_poll = METERS * len(QUANTITIES)
    with Store.open(path) as store:
        batch: list[Reading] = []
        for poll in range(n // per_poll):
            when = T0 + timedelta(seconds=10 * poll)
            batch.extend(Reading(when, f"meter-{m:03d}", q, 230.0 + (poll % 97) * 0.1)
                         for m in range(METERS) for q in QUANTITIES)
            if len(batch) >= 45_000:
                store.insert_readings(batch)
                batch = []
        if batch:
            store.insert_readings(batch)


def read_file(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=5_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        t0 = time.perf_counter()
        build(path, args.readings)
        print(f"store of {args.readings:,} readings: {path.stat().st_size / 1e6:.1f} MB "
              f"(built in {time.perf_counter() - t0:.0f} s)")
        read_s = read_file(path)
        with Store.open(path) as store:
            t0 = time.perf_counter()
            problems = store.check()
            quick_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            problems += store.check(full=True)
            full_s = time.perf_counter() - t0
        assert not problems, problems
        mb = path.stat().st_size / 1e6
        print(f"sequential read of the file (ceiling's base): {read_s:.2f} s")
        print(f"quick_check (daemon start): {quick_s:.2f} s ({mb / quick_s:.0f} MB/s); "
              f"ceiling 20 x read = {20 * read_s:.2f} s: "
              f"{'OK' if quick_s <= 20 * read_s else 'OVER'}")
        print(f"integrity_check (store check --full): {full_s:.2f} s ({mb / full_s:.0f} MB/s)")


if __name__ == "__main__":
    main()
