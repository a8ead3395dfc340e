"""Alerts in the running daemon, end to end: the Modbus meter simulator polled over TCP, its
`spike` fault switched on and off, then the simulator stopped; the alerts reach Mosquitto
and a local webhook receiver, the store keeps the episodes for `energyd alerts`, and a
restarted daemon neither repeats nor forgets them. A second test runs a plant on an
accelerated clock so that the hourly rollup, not the live path, reports the spike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from daemon_helper import RunningDaemon
from test_alerts_dispatch import Receiver, Subscriber

from energyd.alerts.episodes import load_episodes
from energyd.cli import cli
from energyd.clock import AcceleratedClock
from energyd.model import to_ms
from energyd.simulators import MeterSimulator, SimulatedMeter
from energyd.store.sqlite import Store

H = 3_600_000
INTERVAL = 1.0


def seed_history(db: Path, meter: SimulatedMeter, around: datetime, hours: int = 2,
                 weeks: int = 4) -> None:
    """Rollup rows of what the simulated meter drew in the same hours of the past weeks
    (the accounting job writes such rows; here they stand for four weeks of operation)."""
    first = to_ms(around) - to_ms(around) % H - H
    rows = []
    for k in range(1, weeks + 1):
        for j in range(hours + 1):
            hour = first + j * H - k * 7 * 24 * H
            t0 = datetime.fromtimestamp(hour / 1000, UTC)
            kwh = sum(meter.power_kw(t0 + timedelta(minutes=m)) for m in range(0, 60, 5)) / 12
            rows.append(("incomer-1", hour, kwh / 1000, "meter", 1.0, None, None, None, None,
                         "{}"))
    with Store.open(db) as store:
        store.rollups.write_changed(rows, {"incomer-1": (min(r[1] for r in rows),
                                                         max(r[1] for r in rows) + H)})


def write_config(tmp_path: Path, *, port: int, mqtt_port: int, topic: str, hook: str,
                 rules: str, interval: float = INTERVAL, extra: str = "") -> Path:
    path = tmp_path / "energyd.yaml"
    path.write_text(f"""
site: {{name: plant-a, timezone: UTC}}
storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.2}}
http: {{enabled: false}}
devices:
  - {{name: incomer-1, role: grid_import, driver: modbus, interval: {interval},
     profile: eastron_sdm630, rated_power_kw: 1000,
     modbus: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 0.5}}}}
alerts:
  rules:
{rules}
  channels:
    - {{type: mqtt, topic: {topic}, broker: {{host: 127.0.0.1, port: {mqtt_port},
       client_id: {topic.replace('/', '-')}}}}}
    - {{type: webhook, url: '{hook}', timeout: 1s, retries: 2, backoff: 0.1}}
    - {{type: log}}
{extra}
""")
    return path


async def wait_for(messages: Subscriber, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in list(messages.messages):
            payload = json.loads(m.payload)
            if predicate(payload):
                return payload
        await asyncio.sleep(0.02)
    raise AssertionError(f"no such alert event within {timeout} s: "
                         f"{[json.loads(m.payload) for m in messages.messages]}")


def events(messages: Subscriber) -> list[tuple[str, str]]:
    return [(p["event"], p["rule"]) for p in (json.loads(m.payload) for m in messages.messages)]


LIVE_RULES = """
    - {name: incomer-spike, type: spike, devices: [incomer-1], factor: 1.5, min_delta_kwh: 20,
       window: 1s}
    - {name: incomer-stale, type: stale, devices: [incomer-1], multiple: 3}
"""


async def alert_points(influxdb: Any, db: str, n: int, timeout: float) -> list[dict[str, Any]]:
    """energy_alert points in InfluxDB, once there are `n` of them."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(
            influxdb.query, "SELECT * FROM energy_alert", db, epoch="ms")
        series = result["results"][0].get("series", [])
        points = [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]
        if len(points) >= n or time.monotonic() > deadline:
            return points
        await asyncio.sleep(0.2)


async def test_live_spike_and_a_stopped_simulator(tmp_path, mosquitto, mqtt_topic_prefix,
                                                  influxdb, influxdb_database):
    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/events", mqtt_topic_prefix + "-s")
    with Receiver() as hook:
        sim = await MeterSimulator(units=[1], base_kw=200.0).start()
        try:
            meter = sim.unit(1)
            seed_history(tmp_path / "energyd.db", meter, datetime.now(UTC))
            cfg = write_config(tmp_path, port=sim.port, mqtt_port=mosquitto.port,
                               topic=mqtt_topic_prefix, hook=hook.url, rules=LIVE_RULES,
                               extra=f"influxdb: {{api: v1, url: '{influxdb.url}', "
                                     f"database: {influxdb_database}}}")
            async with RunningDaemon(cfg) as daemon:
                await asyncio.sleep(2.5)  # normal load: several polls, no alert
                assert events(sub) == []
                assert daemon.context is not None
                assert daemon.context.store.readings.count_readings() > 0

                switched = time.time()
                meter.faults.spike = 3.0
                start = await wait_for(sub, lambda p: p["event"] == "start", 5)
                arrived = time.time() - switched
                started = datetime.fromisoformat(start["started"]).timestamp()
                # the first poll after the switch fires it: within one poll interval
                assert started - switched <= INTERVAL + 0.5  # (slack: a busy CI machine)
                assert arrived <= INTERVAL + 1.0  # plus the commit and the dispatch
                print(f"spike: first spiked reading {started - switched:.3f} s after the "
                      f"switch, event at the broker after {arrived:.3f} s")
                assert start["rule"] == "incomer-spike" and start["type"] == "spike"
                assert start["figures"]["kw"] > 1.5 * start["figures"]["baseline_kw"]
                # one tracker: the alert engine's is the daemon's, which the hourly rollup's
                # reconciliation and the forwarders' refused points feed too
                alerting = daemon.context.health["alerts"].__self__
                assert alerting.engine.tracker is daemon.context.episodes
                assert [e.rule for e in daemon.context.episodes.active] == ["incomer-spike"]

                await asyncio.sleep(1.5)  # the spike goes on: nothing is repeated
                meter.faults.spike = 1.0
                normal = time.time()
                end = await wait_for(sub, lambda p: p["event"] == "end", 5)
                # the spike's last poll leaves the 1 s window within the next poll or two
                assert datetime.fromisoformat(end["ended"]).timestamp() - normal \
                    <= 2 * INTERVAL + 0.5
                assert events(sub) == [("start", "incomer-spike"), ("end", "incomer-spike")]

                await sim.stop()  # the meter goes away
                stopped = time.time()
                stale = await wait_for(sub, lambda p: p["rule"] == "incomer-stale", 8)
                print(f"stale: event {time.time() - stopped:.3f} s after the simulator stopped")
                assert stale["event"] == "start" and stale["figures"]["reason"] == "silent"
                assert 3 * INTERVAL - 1.0 <= time.time() - stopped <= 3 * INTERVAL + 3.0
            assert events(sub) == [("start", "incomer-spike"), ("end", "incomer-spike"),
                                   ("start", "incomer-stale")]

            # restarted with the meter still away: the stale episode is known, not repeated
            async with RunningDaemon(cfg):
                await asyncio.sleep(3.5 * INTERVAL)
                # the store's rows reach InfluxDB as energy_alert points (Grafana annotations)
                points = await alert_points(influxdb, influxdb_database, 3, 10)
            assert len(events(sub)) == 3
            assert sorted((p["rule"], p["state"]) for p in points) == [
                ("incomer-spike", "active"), ("incomer-spike", "resolved"),
                ("incomer-stale", "active")]
            spike_point = next(p for p in points if p["rule"] == "incomer-spike")
            assert spike_point["device"] == "incomer-1" and spike_point["kw"] > 0
            assert "spike: kw=" in spike_point["text"]
        finally:
            await sim.stop()
            sub.close()
        with Store.open(tmp_path / "energyd.db") as store:
            episodes = {(e.rule, e.state) for e in load_episodes(store)}
        assert episodes == {("incomer-spike", "resolved"), ("incomer-stale", "active")}
        # the webhook got the same three events, in order
        posted = [json.loads(body) for _, body, _ in hook.requests]
        assert [(p["event"], p["rule"]) for p in posted] == events(sub)

    result = CliRunner().invoke(cli, ["alerts", "-c", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [(r["rule"], r["state"]) for r in listed] == [("incomer-stale", "active"),
                                                        ("incomer-spike", "resolved")]
    assert listed[1]["ended"] is not None and listed[1]["figures"]["baseline_kw"] > 0
    table = CliRunner().invoke(cli, ["alerts", "-c", str(cfg)])
    assert table.exit_code == 0, table.output
    assert "resolved" in table.output and "active" in table.output and "(spike)" in table.output


HOURLY_RULES = """
    - {name: incomer-spike, type: spike, devices: [incomer-1], factor: 1.5, min_delta_kwh: 20,
       window: 0}
"""


async def test_a_spike_is_reported_at_the_hours_rollup_and_once_after_a_restart(
        tmp_path, mosquitto, mqtt_topic_prefix):
    # one simulated hour per 3 wall seconds; the meter is polled every simulated minute
    start = datetime(2026, 6, 3, 9, 50, tzinfo=UTC)  # a Wednesday morning
    clock = AcceleratedClock(1200, start)
    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/events", mqtt_topic_prefix + "-s")
    with Receiver() as hook:
        sim = await MeterSimulator(units=[1], base_kw=200.0, clock=clock).start()
        try:
            meter = sim.unit(1)
            seed_history(tmp_path / "energyd.db", meter, start, hours=4)
            cfg = write_config(tmp_path, port=sim.port, mqtt_port=mosquitto.port,
                               topic=mqtt_topic_prefix, hook=hook.url, rules=HOURLY_RULES,
                               interval=60, extra="accounting: {rollup_delay: 60s}")
            async with RunningDaemon(cfg, clock=clock) as daemon:
                # 10:00-11:00 runs at 3x its load: set at 10:00, cleared at 11:00
                await asyncio.sleep(clock.real_seconds((start.replace(minute=0) + timedelta(
                    hours=1) - clock.now()).total_seconds()))
                meter.faults.spike = 3.0
                await asyncio.sleep(clock.real_seconds(3600))
                meter.faults.spike = 1.0
                fired = await wait_for(sub, lambda p: p["event"] == "start", 6)
                # reported at the rollup of the hour, a few simulated minutes after it ended
                assert fired["started"] == "2026-06-03T10:00:00+00:00"
                assert fired["source"] == "hourly"
                assert fired["figures"]["kwh"] > 1.5 * fired["figures"]["baseline_kwh"]
                ended = await wait_for(sub, lambda p: p["event"] == "end", 6)
                assert ended["ended"] == "2026-06-03T11:00:00+00:00"
                assert daemon.context is not None
            # restarted: the start-up recomputation sees the spike's hour again
            async with RunningDaemon(cfg, clock=clock):
                await asyncio.sleep(2.0)
            assert events(sub) == [("start", "incomer-spike"), ("end", "incomer-spike")]
            with Store.open(tmp_path / "energyd.db") as store:
                hour = to_ms(start.replace(hour=10, minute=0))
                rows = store.rollups.energy(hour, hour + H, ["incomer-1"])
                assert rows and rows[0][3] == "meter"  # the accounting job wrote the hour
                assert len(load_episodes(store)) == 1
            assert [json.loads(b)["event"] for _, b, _ in hook.requests] == ["start", "end"]
        finally:
            with contextlib.suppress(Exception):
                await sim.stop()
            sub.close()


async def test_a_night_leak_on_the_compressor_station_fires_off_shift_load(
        tmp_path, mosquitto, mqtt_topic_prefix):
    from energyd.simulators.compressor import CompressorStation

    # Tuesday 21:00 UTC, the last production hour; one simulated hour per 2 wall seconds
    start = datetime(2026, 6, 2, 21, 0, tzinfo=UTC)
    clock = AcceleratedClock(1800, start)
    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/events", mqtt_topic_prefix + "-s")
    station = CompressorStation(broker=("127.0.0.1", mosquitto.port), station="air1",
                                compressors=4, clock=clock, rate=1 / 60, leak=8.0, seed=3,
                                topic_prefix=f"{mqtt_topic_prefix}/plant",
                                client_id=mqtt_topic_prefix.replace("/", "-") + "-sim")
    path = tmp_path / "energyd.yaml"
    path.write_text(f"""
site: {{name: plant-a, timezone: UTC}}
storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.2}}
http: {{enabled: false}}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: {mqtt_topic_prefix.replace('/', '-')}}}
devices: {json.dumps(station.device_entries())}
accounting: {{rollup_delay: 60s}}
alerts:
  rules:
    - {{name: air-leak, type: off_shift, role: compressor, aggregate: true, margin_kwh: 55,
       production_hours: ["Mon-Fri 06:00-22:00"]}}
  channels:
    - {{type: mqtt, topic: {mqtt_topic_prefix}}}
""")
    try:
        async with RunningDaemon(path, clock=clock), station:
            # the leak runs through the night's first hour; then it is fixed at 23:00
            await asyncio.sleep(clock.real_seconds((start + timedelta(hours=2)
                                                    - clock.now()).total_seconds()))
            station.inject_leak(0.0)
            fired = await wait_for(sub, lambda p: p["event"] == "start", 4)
            assert fired["rule"] == "air-leak" and fired["device"] == "compressor"
            assert fired["started"] == "2026-06-02T22:00:00+00:00"
            assert fired["figures"]["kwh"] > 55  # the whole station's energy in that hour
            ended = await wait_for(sub, lambda p: p["event"] == "end", 5)
            assert ended["ended"] == "2026-06-02T23:00:00+00:00"
            assert ended["end_figures"]["kwh"] < 55
    finally:
        sub.close()
    assert events(sub) == [("start", "air-leak"), ("end", "air-leak")]
