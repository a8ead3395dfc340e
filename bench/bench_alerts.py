"""Alert evaluation benchmark: the live path against the commit it follows, and the hourly
path against the rollup it follows.

    .venv/bin/python bench/bench_alerts.py [--devices 200] [--batches 60] [--weeks 4]

A plant of --devices meters, each polled once per batch with the 21 quantities of an
Eastron SDM630, and four rules on every meter: live spike (15 min window), threshold,
stale, and the hourly spike over --weeks weeks of rollups.

1. live: each batch is committed to the SQLite store (packed into a sample per meter and
   committed with `Store.commit_samples`, what the writer and its committer do once per
   flush) and then given to the engine (`AlertEngine.on_readings`, what the reading listener
   triggers). Printed: readings/s of each, and the engine's cost as a share of the commit's
   (target: < 25 %: alerting must not be what limits a gateway); the listener's own cost in
   the writer's thread (a queue put) per batch. The first batch is printed apart: it creates
   the series and reads each meter's spike baseline from the rollups, which happens once an
   hour (one batch in 3,600 at a 1 s poll).
2. hourly: the start-up recomputation's 48 hours evaluated for every meter against
   --weeks weeks of history, timed against the same hours read back from the rollups table
   (the least any evaluation must do) and against one rollup interval (3600 s).
"""

from __future__ import annotations

import argparse
import queue
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from energyd.alerts.engine import AlertEngine  # noqa: E402
from energyd.config.loader import parse_config  # noqa: E402
from energyd.model import QUANTITIES, Reading, to_ms  # noqa: E402
from energyd.store.samples import group_rows  # noqa: E402
from energyd.store.sqlite import Store  # noqa: E402

H = 3_600_000
SDM630 = [q for q in QUANTITIES if not q.startswith(("pressure", "flow", "compressor",
                                                     "running", "loaded", "fuel"))][:21]


def config_text(db: Path, devices: int) -> str:
    devs = "\n".join(
        f"  - {{name: m{i}, role: submeter, driver: modbus, interval: 1s, "
        f"profile: eastron_sdm630, modbus: {{host: 127.0.0.1, unit: {i % 247 + 1}}}}}"
        for i in range(devices))
    return f"""
site: {{name: bench, timezone: Asia/Shanghai}}
storage: {{path: {db}}}
devices:
{devs}
alerts:
  rules:
    - {{name: spike, type: spike, factor: 1.5, min_delta_kwh: 20, window: 15m}}
    - {{name: limit, type: threshold, limit: 900, duration: 1m}}
    - {{name: stale, type: stale}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--weeks", type=int, default=4)
    args = ap.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        config = parse_config(config_text(db, args.devices), "bench.yaml")
        names = [d.name for d in config.devices]
        store = Store.open(db)
        now = datetime(2026, 6, 3, 10, tzinfo=UTC)
        # history: --weeks weeks of rollups for every meter, plus the last 48 h
        first = to_ms(now) - (args.weeks * 7 * 24 + 48) * H
        store.rollups.write_changed(
            [(name, hour, rng.uniform(0.08, 0.12), "meter", 1.0, None, None, None, None, "{}")
             for name in names for hour in range(first, to_ms(now), H)],
            {name: (first, to_ms(now)) for name in names})
        engine = AlertEngine(config, store, now_ms=lambda: to_ms(now))

        # 1. live
        commit_s = engine_s = put_s = 0.0
        inbox: queue.SimpleQueue[list[Reading]] = queue.SimpleQueue()
        counters = {n: 10_000.0 for n in names}
        total = 0
        for b in range(args.batches):
            t = now + timedelta(seconds=b)
            batch = []
            for name in names:
                counters[name] += 0.03
                for q in SDM630:
                    value = counters[name] if q == "active_energy_import_kwh" else \
                        rng.uniform(90, 110)
                    batch.append(Reading(t, name, q, value))
            total += len(batch)
            t0 = time.perf_counter()
            # the writer's flush and its committer: each meter's poll submitted on its own
            rows = store.series_rows(batch)
            store.commit_samples([s for i in range(0, len(rows), len(SDM630))
                                  for s in group_rows(rows[i:i + len(SDM630)])], [])
            t1 = time.perf_counter()
            inbox.put(batch)
            t2 = time.perf_counter()
            engine.on_readings(inbox.get())
            t3 = time.perf_counter()
            if b == 0:  # new series; the spike baselines read from the rollups, once an hour
                first = (t1 - t0, t3 - t2)
                total -= len(batch)
                continue
            commit_s += t1 - t0
            put_s += t2 - t1
            engine_s += t3 - t2
        share = engine_s / commit_s
        steady = args.batches - 1
        print(f"live: {args.devices} meters x {len(SDM630)} quantities, {args.batches} batches "
              f"(the first apart; {total} readings in the others)")
        print(f"  first batch: commit {first[0] * 1000:.1f} ms, alert engine "
              f"{first[1] * 1000:.1f} ms (the hour's spike baselines, read once an hour)")
        print(f"  commit (ceiling) : {total / commit_s:12,.0f} readings/s  "
              f"{commit_s / steady * 1000:8.2f} ms/batch")
        print(f"  alert engine     : {total / engine_s:12,.0f} readings/s  "
              f"{engine_s / steady * 1000:8.2f} ms/batch  = {share:.1%} of the commit "
              f"(target < 25%: {'ok' if share < 0.25 else 'MISSED'})")
        print(f"  listener in the writer's thread: {put_s / steady * 1e6:.1f} us/batch")

        # 2. hourly
        span = (to_ms(now) - 48 * H, to_ms(now))
        t0 = time.perf_counter()
        rows = store.rollups.rows(span[0] - (args.weeks + 1) * 7 * 24 * H, 2**62)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        events = engine.evaluate_hours(*span)
        eval_s = time.perf_counter() - t0
        print(f"hourly: 48 h x {args.devices} meters against {args.weeks} weeks "
              f"({len(rows)} rollup rows), {len(events)} events")
        print(f"  reading the rows back (floor): {read_s:8.3f} s")
        print(f"  evaluation                   : {eval_s:8.3f} s = {eval_s / read_s:.1f}x the "
              f"floor, {eval_s / 3600:.3%} of the hour between rollups "
              f"(target < 1%: {'ok' if eval_s / 3600 < 0.01 else 'MISSED'})")
        store.close()


if __name__ == "__main__":
    main()
