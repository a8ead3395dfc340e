"""MQTT acquisition throughput: QoS 1 JSON messages per second into the store.

    .venv/bin/python bench/bench_mqtt.py [--rounds 3] [--per-device 400] [--live-seconds 10]

Starts its own Mosquitto (tests/servers.py) on a loopback port. 50 simulated compressors
(5 stations of 10) and 10 meters publish JSON at QoS 1.

1. Drain (the subscriber's own ceiling, free of the publishers' cost): the sessions of a
   bare paho subscriber and of energyd are created, then every device publishes
   `--per-device` messages while both are away; the broker queues them. Then the bare
   subscriber (paho, MQTT 5, Receive Maximum as energyd's, a counter in on_message and
   nothing else) drains its queue, then energyd (the real Daemon: mapping, the store
   writer with SQLite synchronous=FULL, acknowledgement after commit) drains its own.
   Reported: messages/s, CPU seconds per 10,000 messages (this process and energyd's store
   committer process; the broker excluded), and energyd's rate as a share of the bare one.
   `--rounds` rounds alternate the two, so load from elsewhere falls on both alike, and
   each round's share is energyd's rate over the bare rate of the same round.
   Target: >= 50 % in every round (not only the median), nothing lost.
2. Live: a publisher process offers `--live-rate` messages/s across the 60 devices for
   `--live-seconds`; energyd keeps up and stores every acknowledged message.

Nothing lost means: for every device, the set of timestamps the broker acknowledged to
the publisher equals the set stored, and the store holds exactly messages x fields rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import paho.mqtt.client as paho  # noqa: E402
from _proc import cpu_seconds  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from servers import MosquittoServer  # noqa: E402

from energyd.config.schema import Config  # noqa: E402
from energyd.daemon.app import Daemon  # noqa: E402
from energyd.model import to_ms  # noqa: E402
from energyd.simulators.compressor import FIELDS, CompressorStation, Publisher  # noqa: E402
from energyd.store.sqlite import Store  # noqa: E402

STATIONS = 5
PER_STATION = 10
METERS = 10
METER_FIELDS = {
    "active_power_kw": "p.total", "active_power_l1_kw": "p.l1", "active_power_l2_kw": "p.l2",
    "active_power_l3_kw": "p.l3", "voltage_l1_v": "u.l1", "voltage_l2_v": "u.l2",
    "voltage_l3_v": "u.l3", "power_factor": "pf", "frequency_hz": "f",
    "active_energy_import_kwh": "e.import",
}
RECEIVE_MAXIMUM = int(os.environ.get("BENCH_RECEIVE_MAXIMUM", "10000"))  # energyd's default
START = datetime(2026, 3, 2, 8, tzinfo=UTC)


class BenchBroker(MosquittoServer):
    """The fixtures' Mosquitto with queues large enough to hold the whole drain backlog."""

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_path, "a") as f:
            f.write("max_queued_messages 0\nmax_queued_bytes 0\n")


def devices_config(prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in range(1, STATIONS + 1):
        station = f"s{s}"
        out.append({"name": station, "role": "compressor", "driver": "mqtt",
                    "mqtt": {"topic": f"{prefix}/{station}/+/telemetry", "device_level": 2,
                             "devices": [f"{station}-c{i}" for i in range(1, PER_STATION + 1)],
                             "timestamp": "ts", "fields": dict(FIELDS)}})
    for m in range(1, METERS + 1):
        out.append({"name": f"meter{m}", "role": "submeter", "driver": "mqtt",
                    "mqtt": {"topic": f"{prefix}/meters/meter{m}", "timestamp": "ts",
                             "fields": dict(METER_FIELDS)}})
    return out


def meter_payload(ts: int, n: int, m: int) -> bytes:
    p = 100.0 + m + (n % 17)
    return json.dumps({"ts": ts, "seq": n, "p": {"total": p, "l1": p / 3, "l2": p / 3,
                                                  "l3": p / 3},
                       "u": {"l1": 230.1, "l2": 229.8, "l3": 231.0}, "pf": 0.93, "f": 50.01,
                       "e": {"import": 1000.0 + n * 0.03}}).encode()


class Fleet:
    """50 compressors and 10 meters; `publish(count)` sends `count` messages per device with
    timestamps 1 s of plant time apart."""

    def __init__(self, broker: tuple[str, int], prefix: str, client: str):
        self.stations = [CompressorStation(broker=broker, station=f"s{s}",
                                           compressors=PER_STATION, topic_prefix=f"{prefix}/s{s}",
                                           client_id=f"{client}-s{s}", seed=s)
                         for s in range(1, STATIONS + 1)]
        for st in self.stations:
            st.publisher.client.max_inflight_messages_set(2000)
        self.meters = Publisher(broker, f"{client}-meters", max_inflight=2000)
        self.prefix = prefix
        self.meter_seq = 0
        self.t = START

    def start(self) -> None:
        for st in self.stations:
            st.publisher.start()
        self.meters.start()

    def publish_tick(self) -> None:
        self.t += timedelta(seconds=1)
        for st in self.stations:
            st.system.step(self.t, 1.0)
            st.publish_once(self.t)
        self.meter_seq += 1
        ts = to_ms(self.t)
        for m in range(1, METERS + 1):
            self.meters.publish(f"{self.prefix}/meters/meter{m}",
                                meter_payload(ts, self.meter_seq, m), 1,
                                record=(f"meter{m}", self.meter_seq, ts))

    async def wait_acked(self) -> None:
        for st in self.stations:
            await st.wait_acked(120)
        await self.meters.wait_acked(120)

    def stop(self) -> None:
        for st in self.stations:
            st.publisher.stop()
        self.meters.stop()

    def acked(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for st in self.stations:
            out.update(st.acked)
        out.update(self.meters.acked)
        return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class BareSubscriber:
    def __init__(self, broker: tuple[str, int], client_id: str, topic: str):
        self.count = 0
        self.done = threading.Event()
        self.target = 0
        self.connected = threading.Event()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=MQTTProtocolVersion.MQTTv5)
        c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe(topic, qos=1),
                                                self.connected.set())
        c.on_message = self._on_message
        self.broker = broker

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.connected.clear()
        self.client.connect(*self.broker, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        self.connected.wait(10)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def energyd_config(broker: MosquittoServer, db: Path, prefix: str) -> Config:
    """energyd for one phase: a session of its own (`bench-energyd-<prefix>`)."""
    return Config.model_validate({
        "storage": {"path": str(db)},
        "http": {"enabled": False},
        # the hourly air job's start-up recomputation is not what is measured here
        "accounting": {"recompute_hours": 0},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"bench-energyd-{prefix}",
                 "max_inflight": RECEIVE_MAXIMUM,
                 "max_message_age": "3650d"},  # the messages' times are fixed, in the past
        "devices": devices_config(prefix),
    })


async def run_energyd_until(config: Config, done: Any, timeout: float) -> tuple[float, float, Any]:
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await daemon.ready.wait()
    comp = _component(daemon)
    writer = daemon.context.writer

    def energyd_cpu() -> float:  # the daemon's and its store committer's
        pid = writer.committer_pid
        return _cpu() + (cpu_seconds(pid) if pid is not None else 0.0)

    t0, c0 = time.perf_counter(), energyd_cpu()
    deadline = time.monotonic() + timeout
    while not done(comp) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - t0, energyd_cpu() - c0
    daemon.stop()
    await task
    return elapsed, cpu, comp


def _component(daemon: Daemon) -> Any:
    from energyd.daemon.subscriptions import MqttComponent
    ctx = daemon.context
    assert ctx is not None
    return next(h.__self__ for h in ctx.commit_listeners
                if isinstance(getattr(h, "__self__", None), MqttComponent))


def fill_history(db: Path, samples: int) -> None:
    """Earlier samples of every series the fleet publishes, before START."""
    from energyd.model import Reading
    with Store.open(db) as store:
        for first in range(0, samples, 200):
            batch = []
            for k in range(first, min(samples, first + 200)):
                when = START - timedelta(seconds=samples - k)
                for s in range(1, STATIONS + 1):
                    for i in range(1, PER_STATION + 1):
                        batch += [Reading(when, f"s{s}-c{i}", q, 1.0) for q in FIELDS]
                for m in range(1, METERS + 1):
                    batch += [Reading(when, f"meter{m}", q, 1.0) for q in METER_FIELDS]
            store.insert_readings(batch)


def check_store(dbs: list[Path], acked: dict[str, dict[int, int]]) -> tuple[int, int, int]:
    """(messages acknowledged by the broker, messages missing from the stores, rows)."""
    stored: dict[str, set[int]] = {}
    rows = 0
    for db in dbs:
        with Store.open(db) as store:
            rows += store.readings.count_readings()
            for device in acked:
                stored.setdefault(device, set()).update(
                    r.time_ms for r in store.readings.query_readings(device=device,
                                                            quantity="active_power_kw"))
    missing = sum(1 for device, seqs in acked.items() for t in seqs.values()
                  if t not in stored[device])
    return sum(len(v) for v in acked.values()), missing, rows


def _live_publisher(port: int, prefix: str, rate: float, seconds: float, out: Any) -> None:
    async def main() -> None:
        fleet = Fleet(("127.0.0.1", port), prefix, "bench-live")
        fleet.start()
        devices = STATIONS * PER_STATION + METERS
        period = devices / rate
        t0 = time.monotonic()
        ticks = 0
        while time.monotonic() - t0 < seconds:
            fleet.publish_tick()
            ticks += 1
            delay = t0 + ticks * period - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        offered = ticks * devices / (time.monotonic() - t0)
        await fleet.wait_acked()
        fleet.stop()
        out.put((offered, fleet.acked()))
    asyncio.run(main())


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-device", type=int, default=400, help="messages per device per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=1000,
                    help="earlier samples per series in each store before a round")
    ap.add_argument("--live-seconds", type=float, default=10.0)
    ap.add_argument("--live-rate", type=float, default=3000.0,
                    help="messages/s offered in the live phase")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    devices = STATIONS * PER_STATION + METERS
    total = devices * args.per_device
    fields = STATIONS * PER_STATION * len(FIELDS) + METERS * len(METER_FIELDS)

    with tempfile.TemporaryDirectory(prefix="energyd-bench-") as tmp, \
            BenchBroker(Path(tmp) / "mosquitto") as broker:
        addr = (broker.host, broker.port)
        print(f"mosquitto on {broker.host}:{broker.port}; {STATIONS * PER_STATION} compressors "
              f"+ {METERS} meters, JSON, QoS 1; {os.cpu_count()} CPUs")

        # --- 1. drain, in rounds: bare and energyd alternate, so load from elsewhere on
        # the machine falls on both alike; every round's share must reach the target --------
        prefix = "drain"
        # A store per round, each first filled with `--history` earlier samples of every
        # series: rounds compare like with like, and a store that already holds history is
        # what a gateway has (an insert costs more in a grown index than in an empty one).
        dbs = [Path(tmp) / f"drain{rnd}.db" for rnd in range(1, args.rounds + 1)]
        t0 = time.perf_counter()
        for db in dbs:
            fill_history(db, args.history)
        if args.history:
            print(f"each store filled with {args.history} earlier samples per series "
                  f"({args.history * fields:,} rows) in {time.perf_counter() - t0:.0f} s")
        config = energyd_config(broker, dbs[0], prefix)
        bare = BareSubscriber(addr, "bench-bare", f"{prefix}/#")
        bare.connect()
        bare.disconnect()
        # energyd's session: connect once and leave (as after an earlier run)
        await run_energyd_until(
            config, lambda c: c.subscriber is not None and c.subscriber.subscribed, 10)
        fleet = Fleet(addr, prefix, "bench-drain")
        fleet.start()
        print(f"\n{'drain round':<28}{'messages':>10}{'msg/s':>10}{'CPU s/10k':>11}"
              f"{'broker CPU':>13}")
        bare_rates, e_rates, bare_cpus, e_cpus = [], [], [], []
        drained = 0
        for rnd in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            for _ in range(args.per_device):
                fleet.publish_tick()
                if fleet.meter_seq % 50 == 0:
                    await asyncio.sleep(0)  # let paho's threads send
            await fleet.wait_acked()
            pub_s = time.perf_counter() - t0

            bare.target, bare.count = total, 0
            bare.done.clear()
            b0, c0, t0 = cpu_seconds(broker.proc.pid), _cpu(), time.perf_counter()
            bare.connect()
            bare.done.wait(300)
            bare_s, bare_cpu = time.perf_counter() - t0, _cpu() - c0
            bare_broker = cpu_seconds(broker.proc.pid) - b0
            bare.disconnect()
            bare_rates.append(bare.count / bare_s)
            bare_cpus.append(bare_cpu / bare.count * 1e4)

            drained += total
            config = energyd_config(broker, dbs[rnd - 1], prefix)
            b0 = cpu_seconds(broker.proc.pid)
            e_s, e_cpu, comp = await run_energyd_until(config,
                                                       lambda c: c.acked >= total, 300)
            e_broker = cpu_seconds(broker.proc.pid) - b0
            e_rates.append(comp.acked / e_s)
            e_cpus.append(e_cpu / max(1, comp.acked) * 1e4)
            print(f"{rnd}: published {total} ({total / pub_s:,.0f}/s), queued for both")
            print(f"   {'bare paho (ceiling)':<25}{bare.count:>10}{bare_rates[-1]:>10,.0f}"
                  f"{bare_cpus[-1]:>11.2f}{bare_broker / bare.count * 1e4:>13.2f}")
            print(f"   {'energyd into the store':<25}{comp.acked:>10}{e_rates[-1]:>10,.0f}"
                  f"{e_cpus[-1]:>11.2f}{e_broker / max(1, comp.acked) * 1e4:>13.2f}")
            print(f"   energyd / bare = {e_rates[-1] / bare_rates[-1]:.0%}")
        fleet.stop()
        acked = fleet.acked()
        sent, missing, rows = check_store(dbs, acked)
        bare_rate, e_rate = statistics.median(bare_rates), statistics.median(e_rates)
        shares = [e / bare for e, bare in zip(e_rates, bare_rates, strict=True)]
        share = min(shares)
        print(f"{'median':<28}{'':>10}{'':>10}")
        print(f"   {'bare paho (ceiling)':<25}{'':>10}{bare_rate:>10,.0f}"
              f"{statistics.median(bare_cpus):>11.2f}")
        print(f"   {'energyd into the store':<25}{'':>10}{e_rate:>10,.0f}"
              f"{statistics.median(e_cpus):>11.2f}")
        expected_rows = args.rounds * (args.per_device + args.history) * fields
        # a message taken after a round's energyd began to stop is sent again to the next
        # round's energyd (and store): more rows than messages is fine, fewer is a loss
        lost_ok = missing == 0 and rows >= expected_rows and sent == drained
        print(f"energyd / bare per round: {', '.join(f'{s:.0%}' for s in shares)} "
              f"(target >= 50% in every round; median rates {e_rate / bare_rate:.0%})")
        print(f"broker acknowledged {sent}, missing in store {missing}, rows {rows} "
              f"(expected {expected_rows})")

        # --- 2. live ------------------------------------------------------------------------
        if args.live_seconds > 0:
            prefix = "live"
            db = Path(tmp) / "live.db"
            config = energyd_config(broker, db, prefix)
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            daemon = Daemon(config)
            task = asyncio.create_task(daemon.run(handle_signals=False))
            await daemon.ready.wait()
            comp = _component(daemon)
            while not (comp.subscriber and comp.subscriber.connected):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            proc = ctx.Process(target=_live_publisher,
                               args=(broker.port, prefix, args.live_rate, args.live_seconds, out))
            c0, t0 = _cpu(), time.perf_counter()
            proc.start()
            offered, live_acked = await asyncio.to_thread(out.get, True, args.live_seconds + 120)
            proc.join(30)
            want = sum(len(v) for v in live_acked.values())
            while comp.acked < want and time.perf_counter() - t0 < args.live_seconds + 120:
                await asyncio.sleep(0.02)
            live_s, live_cpu = time.perf_counter() - t0, _cpu() - c0
            lag = live_s - args.live_seconds
            daemon.stop()
            await task
            sent_l, missing_l, rows_l = check_store([db], live_acked)
            print()
            print(f"live: offered {offered:,.0f} msg/s for {args.live_seconds:.0f} s; energyd "
                  f"stored all {sent_l} acknowledged messages {lag:.2f} s after the last was "
                  f"sent" if missing_l == 0 else f"live: {missing_l} of {sent_l} missing")
            print(f"live: energyd CPU {live_cpu / max(1, sent_l) * 1e4:.2f} s per 10k messages")
            lost_ok = lost_ok and missing_l == 0
        print()
        worst = shares.index(share)
        print("RESULT:", "PASS" if share >= 0.5 and lost_ok else "FAIL",
              f"(lowest round {worst + 1}: energyd {e_rates[worst]:,.0f} msg/s = {share:.0%} "
              f"of bare {bare_rates[worst]:,.0f} msg/s; nothing lost: {lost_ok})")


if __name__ == "__main__":
    asyncio.run(main())
