"""Forwarding a backlog of 1,000,000 readings to InfluxDB 1.x, against the server's ceiling.

    .venv/bin/python bench/bench_forward.py [--readings N] [--gzip]

Starts its own influxd (tests/servers.py) on a loopback port, fills a store with N readings
(50 devices x 10 quantities per poll, so N/10 points), then in the same run:
  ceiling    the same points as pre-encoded line protocol, POSTed in chunks of 5000 points
             to /write on one keep-alive connection: what the server takes at best
  energyd    a fresh process runs the sink's Forwarder over the store until the backlog is
             empty (reading the store, encoding, writing, committing each cursor)
Each run starts once the server is idle again, and goes to a database of its own, checked
afterwards to hold every point. The two alternate (--rounds, 5 by default) and their medians
are compared (each round's own ratio is printed too): on a shared 2-core machine the server's
rate alone moves by a third from one run to the next, and the median keeps one lucky or
unlucky run from deciding.
Targets: energyd >= 50% of the ceiling's points/s, its peak RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from _proc import cpu_seconds  # noqa: E402

DEVICES = 50
QUANTITIES = ["active_power_kw", "reactive_power_kvar", "power_factor", "frequency_hz",
              "voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a", "current_l2_a",
              "active_energy_import_kwh"]
T0 = 1_700_000_000_000
CHUNK = 5000


def meter_value(poll: int, device: int, quantity: int) -> float:
    """A value as energyd stores a meter's: a float32 register carries about 7 significant
    digits and the decoder keeps those (drivers/planner.py), so the text the forwarder writes
    is as long as a real reading's, not the 17 digits of an arbitrary double."""
    return float(f"{230.0 + poll * 0.001 + quantity + device / 7:.7g}")


def fill(store_path: Path, n: int) -> int:
    from energyd.store.sqlite import Store

    polls = n // (DEVICES * len(QUANTITIES))
    with Store.open(store_path) as store:
        for start in range(0, polls, 200):
            rows = [(T0 + p * 10_000 + d, f"meter{d:02d}", q, meter_value(p, d, i), 0)
                    for p in range(start, min(polls, start + 200))
                    for d in range(DEVICES) for i, q in enumerate(QUANTITIES)]
            store.import_rows(rows)
        return store.readings.count_readings()


def sink(url: str, database: str, use_gzip: bool):
    from energyd.config.schema import InfluxDB

    return InfluxDB(name="bench", api="v1", url=url, database=database, chunk_size=CHUNK,
                    gzip=use_gzip)


def encoder():
    from energyd.sinks import Encoder

    return Encoder("bench", {f"meter{d:02d}": "submeter" for d in range(DEVICES)})


def ceiling_bodies(store_path: Path, use_gzip: bool) -> list[bytes]:
    from energyd.sinks.lineprotocol import body
    from energyd.store.sqlite import Store
    from energyd.store.streams import Streams

    enc = encoder()
    bodies = []
    with Store.open(store_path) as store:
        names = Streams(store).readings.series_names()
        after = 0
        while True:
            rows, after, _ = store.readings.reading_chunk(after, 2**62, CHUNK * len(QUANTITIES))
            if not rows:
                return bodies
            data = body(enc.readings(rows, names))
            bodies.append(gzip.compress(data, compresslevel=1) if use_gzip else data)


def post_all(server, database: str, bodies: list[bytes], use_gzip: bool) -> float:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    started = time.perf_counter()
    for data in bodies:
        conn.request("POST", f"/write?db={database}&precision=ms", body=data, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            raise RuntimeError(f"ceiling write failed: HTTP {resp.status}")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def child(store_path: str, url: str, database: str, use_gzip: bool) -> None:
    """The energyd side, alone in its process so that its peak RSS is its own."""
    from energyd.daemon.app import tune_gc
    from energyd.sinks import Forwarder, make_transport
    from energyd.sinks.forwarder import GAP, LIVE
    from energyd.sinks.forwarder import backlog as sink_backlog
    from energyd.store.sqlite import READINGS, Store

    cfg = sink(url, database, use_gzip)
    with Store.open(store_path) as store:
        store.cursors.commit(cfg.name, {READINGS: 0, GAP: None, LIVE: None})  # all unsent
        forwarder = Forwarder(cfg.name, store, make_transport(cfg), encoder=encoder(),
                              chunk_size=cfg.chunk_size)
        tune_gc()  # as the daemon runs its forwarders
        started, cpu = time.perf_counter(), time.process_time()
        readings = forwarder.drain(timeout=3600)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        backlog = sink_backlog(store, cfg.name).count
        forwarder.close()
    print(json.dumps({"readings": readings, "seconds": elapsed, "cpu": cpu,
                      "backlog_after": backlog,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def points_in(server, database: str) -> int:
    result = server.query("SELECT count(active_power_kw) FROM energy_reading", db=database)
    series = result["results"][0].get("series") or [{"values": [[0, 0]]}]
    return series[0]["values"][0][1]


def settle(pid: int, limit: float = 20.0) -> float:
    """Wait until the server is idle (under 5 % of a core for half a second): after a run it
    keeps compacting what it was sent, and that must not fall on the next run's clock."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            break
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="ceiling and energyd alternate this many times; medians compared")
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies on both sides")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "URL", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.gzip)
        return 0

    from servers import InfluxDBServer

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start "
          "(the server and energyd share them: other load lowers both figures)")
    with tempfile.TemporaryDirectory(prefix="energyd-bench-") as tmp, \
            InfluxDBServer(Path(tmp) / "influxdb") as server:
        store_path = Path(tmp) / "energyd.db"
        t = time.perf_counter()
        n = fill(store_path, args.readings)
        points = n // len(QUANTITIES)
        print(f"store: {n:,} readings = {points:,} points "
              f"({DEVICES} devices x {len(QUANTITIES)} quantities), "
              f"filled in {time.perf_counter() - t:.1f} s; gzip {'on' if args.gzip else 'off'}")
        bodies = ceiling_bodies(store_path, args.gzip)
        ceilings, runs, ok = [], [], True
        for r in range(1, args.rounds + 1):
            db = f"ceiling{r}"
            server.create_database(db)
            settle(server.proc.pid)
            influx_cpu = cpu_seconds(server.proc.pid)
            seconds = post_all(server, db, bodies, args.gzip)
            influx_cpu = cpu_seconds(server.proc.pid) - influx_cpu
            ceilings.append(points / seconds)
            ok &= points_in(server, db) == points
            print(f"round {r} ceiling (bare bulk POST, {CHUNK} points/request): {seconds:6.2f} s "
                  f"{points / seconds:9,.0f} points/s   influxd {influx_cpu:.2f} s CPU")

            db = f"energyd{r}"
            server.create_database(db)
            settle(server.proc.pid)
            influx_cpu = cpu_seconds(server.proc.pid)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(store_path), server.url, db]
                + (["--gzip"] if args.gzip else []),
                check=True, capture_output=True, text=True)
            influx_cpu = cpu_seconds(server.proc.pid) - influx_cpu
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(result)
            got = points_in(server, db)
            ok &= got == points and result["backlog_after"] == 0
            print(f"round {r} energyd (store -> Forwarder -> /write):       "
                  f"{result['seconds']:6.2f} s {points / result['seconds']:9,.0f} points/s   "
                  f"influxd {influx_cpu:.2f} s CPU, energyd {result['cpu']:.2f} s CPU, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB; {got:,} points arrived; "
                  f"this round {points / result['seconds'] / ceilings[-1]:.0%} of its ceiling")
        ceiling = statistics.median(ceilings)
        best = statistics.median(points / r["seconds"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        share = best / ceiling
        print(f"median of {args.rounds}: energyd {best:,.0f} points/s "
              f"({best * len(QUANTITIES):,.0f} readings/s), ceiling {ceiling:,.0f} points/s")
        print(f"energyd / ceiling: {share:.0%} (target >= 50%)   "
              f"peak RSS of the forwarding process: {rss:.0f} MB (target < 200 MB)")
        ok = ok and share >= 0.5 and rss < 200
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
