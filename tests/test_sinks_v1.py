"""Forwarding to a real InfluxDB 1.x through the v1 `/write` API (tests/servers.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import altered
from conftest import stored as table_rows
from servers import InfluxDBServer, free_port

from energyd.config.schema import Config, InfluxDB
from energyd.daemon import forwarding, housekeeping
from energyd.daemon.app import Daemon
from energyd.daemon.forwarding import rejection_reporter
from energyd.daemon.metrics import Metrics
from energyd.errors import SinkRetryable
from energyd.model import Reading, from_ms
from energyd.sinks import Encoder, Forwarder, make_transport
from energyd.sinks.forwarder import GAP, LIVE
from energyd.sinks.forwarder import backlog as sink_backlog
from energyd.store.sqlite import AIR, ALERTS, READINGS, ROLLUPS, STREAMS, Store

T0 = 1_700_000_000_123  # sub-second digits catch a precision mix-up
ROLES = {"inc1": "grid_import", "pv1": "generation", "sub1": "submeter"}
QUANTITIES = ("active_power_kw", "voltage_l1_v", "active_energy_import_kwh")


def polls(devices, count: int, *, start: int = T0, step: int = 1000,
          quantities=QUANTITIES) -> list[Reading]:
    return [Reading(from_ms(start + k * step), device, q, d * 1000 + k + i / 8)
            for k in range(count) for d, device in enumerate(devices)
            for i, q in enumerate(quantities)]


def sink(url: str, database: str, **options) -> InfluxDB:
    return InfluxDB(name=options.pop("name", "central"), api="v1", url=url, database=database,
                    **options)


def forwarder(store: Store, config: InfluxDB, *, site: str = "plant", **options) -> Forwarder:
    options.setdefault("chunk_size", config.chunk_size)
    # as the daemon does (daemon/forwarding.py): refused points become an alert episode
    options.setdefault("report", rejection_reporter(config.name, store,
                                                    metrics=options.get("metrics")))
    return Forwarder(config.name, store, make_transport(config),
                     encoder=Encoder(site, ROLES, gateway="gw1"), **options)


def stored(store: Store) -> dict[tuple[str, int], dict[str, float]]:
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in store.readings.query_readings():
        out.setdefault((r.device, r.time_ms), {})[r.quantity] = r.value
    return out


def influx_points(server: InfluxDBServer, db: str, measurement: str = "energy_reading"):
    """{(device, time_ms): (tags, fields)} as InfluxDB answers SELECT * GROUP BY *."""
    result = server.query(f'SELECT * FROM "{measurement}" GROUP BY *', db=db, epoch="ms")
    out = {}
    for series in result["results"][0].get("series", []):
        tags = {k: v for k, v in series["tags"].items() if v}
        for row in series["values"]:
            fields = {c: v for c, v in zip(series["columns"][1:], row[1:], strict=True)
                      if v is not None}
            key = (tags["device"], row[0])
            assert key not in out, f"two series hold {key}"
            out[key] = (tags, fields)
    return out


def hourly_by_source(server: InfluxDBServer, db: str) -> dict[str, tuple[dict, dict]]:
    result = server.query('SELECT * FROM "energy_hourly" GROUP BY *', db=db, epoch="ms")
    out = {}
    for series in result["results"][0].get("series", []):
        tags = {k: v for k, v in series["tags"].items() if v}
        (row,) = series["values"]
        out[tags["source"]] = (tags, {c: v for c, v in zip(series["columns"][1:], row[1:],
                                                            strict=True) if v is not None})
    return out


def test_an_hour_recomputed_under_another_source_is_not_counted_twice(
        influxdb, influxdb_database, store):
    add_table_rows(store)
    fwd = forwarder(store, sink(influxdb.url, influxdb_database))
    fwd.drain(timeout=30)
    # the statement arrives: the hour is now sourced from the invoice, with another value
    [row] = store.rollups.rows(0, 2**62, ["inc1"])
    store.rollups.write_changed([(*row[:2], 1.75, "invoice", *row[4:])], {})
    assert fwd.drain(timeout=30) == 1
    total = influxdb.query("SELECT sum(mwh) FROM energy_hourly WHERE device = 'inc1'",
                           db=influxdb_database)["results"][0]["series"][0]["values"][0][1]
    assert total == 1.75
    assert hourly_by_source(influxdb, influxdb_database)["meter"][1]["mwh"] == 0


def add_table_rows(store: Store) -> None:
    store.rollups.write_changed([("inc1", 1_699_999_200_000, 1.5, "meter", 1.0, 0.91515, None,
                                  0.6101, "CN-2022", "{}")], {})
    altered(store, "INSERT INTO alerts (rule, device, state, started, ended, detail, seq) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [("night_load", "sub1", "resolved", T0, T0 + 60_000,
              json.dumps({"value": 42, "threshold": 30.5, "message": "load at night"}))],
            numbered=True)
    store.air.write_changed([("comp1", 1_699_999_200_000, 55.0, 480.25, 6.87, None, "{}")])


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "energyd.db") as s:
        yield s


def test_readings_rollups_alerts_and_air_read_back_equal(influxdb, influxdb_database, store):
    readings = polls(["inc1", "pv1", "sub1"], 40)
    store.insert_readings(readings)
    add_table_rows(store)
    metrics = Metrics()
    # small chunks: many writes, a poll split across two chunks, and a backlog gap
    fwd = forwarder(store, sink(influxdb.url, influxdb_database, chunk_size=7),
                    metrics=metrics)
    assert fwd.drain(timeout=30) == len(readings) + 3

    got = influx_points(influxdb, influxdb_database)
    expected = stored(store)
    assert {k: fields for k, (_, fields) in got.items()} == expected
    for (device, _), (tags, _) in got.items():
        assert tags == {"site": "plant", "gateway": "gw1", "device": device,
                        "role": ROLES[device]}

    hourly = hourly_by_source(influxdb, influxdb_database)
    assert hourly == {
        "meter": ({"site": "plant", "gateway": "gw1", "device": "inc1", "role": "grid_import",
                   "source": "meter"},
                  {"mwh": 1.5, "coverage": 1.0, "tco2_location": 0.91515,
                   "ef_location": 0.6101}),
        **{other: ({"site": "plant", "gateway": "gw1", "device": "inc1", "role": "grid_import",
                    "source": other}, {"mwh": 0, "tco2_location": 0, "tco2_market": 0})
           for other in ("meter_interpolated", "invoice", "estimated")}}
    air = influx_points(influxdb, influxdb_database, "energy_air_hourly")
    assert air == {("comp1", 1_699_999_200_000): (
        {"site": "plant", "gateway": "gw1", "device": "comp1"},
        {"kwh": 55.0, "m3": 480.25, "specific_power": 6.87})}
    alert = influxdb.query('SELECT "state", "text", "value", "threshold" FROM energy_alert',
                           db=influxdb_database, epoch="ms")["results"][0]["series"][0]
    assert alert["values"] == [[T0, "active", "night_load active on sub1: load at night", 42, 30.5],
                               [T0 + 60_000, "resolved",
                                "night_load resolved on sub1: load at night", 42, 30.5]]

    for stream in STREAMS:
        assert sink_backlog(store, "central", stream).count == 0
    positions = store.cursors.positions("central")
    assert GAP not in positions and LIVE not in positions
    assert positions[READINGS] == store.readings.last_reading_id()
    sent = {s: metrics.sink_sent.labels("central", s)._value.get() for s in STREAMS}
    assert sent == {READINGS: len(readings), ROLLUPS: 1, ALERTS: 1, AIR: 1}

    # nothing new: nothing sent, and a replay from zero overwrites instead of adding
    assert fwd.drain(timeout=5) == 0
    store.cursors.commit("central", {READINGS: 0, ROLLUPS: 0, ALERTS: 0, AIR: 0})
    again = forwarder(store, sink(influxdb.url, influxdb_database, chunk_size=500))
    assert again.drain(timeout=30) == len(readings) + 3
    assert influx_points(influxdb, influxdb_database) == got


def test_poisoned_point_is_isolated_while_the_rest_arrives(influxdb, influxdb_database, store):
    db = influxdb_database
    far = T0 + 30 * 86400_000  # another shard, where the field already exists as a string
    influxdb.write(db, f'energy_reading,device=other active_power_kw="oops" {far - 1}',
                   precision="ms")
    good = polls(["inc1", "pv1"], 30)
    poisoned = polls(["sub1"], 1, start=far)  # the one poll in that shard
    store.insert_readings(good[:40] + poisoned + good[40:])
    metrics = Metrics()
    fwd = forwarder(store, sink(influxdb.url, db, chunk_size=8, name="central"),
                    metrics=metrics)
    fwd.drain(timeout=30)

    got = {k: v for k, v in influx_points(influxdb, db).items() if k[0] != "other"}
    expected = stored(store)
    bad_key = ("sub1", far)
    assert {k: f for k, (_, f) in got.items()} == {k: v for k, v in expected.items()
                                                   if k != bad_key}
    rejected = table_rows(store, "SELECT stream, item, message FROM rejected WHERE sink = ?",
                          ("central",))
    ids = set(store.readings.poll_reading_ids("sub1", far, 0, store.readings.last_reading_id()))
    assert {(stream, item) for stream, item, _ in rejected} == {(READINGS, i) for i in ids}
    assert len(ids) == len(QUANTITIES)
    assert all("field type conflict" in message for _, _, message in rejected)
    assert metrics.sink_rejected.labels("central", READINGS)._value.get() == len(ids)
    assert sink_backlog(store, "central").count == 0

    # the rejection is an alert episode, forwarded like any alert
    [(rule, device, state, detail)] = table_rows(
        store, "SELECT rule, device, state, detail FROM alerts")
    assert (rule, device, state) == ("sink_rejected", "central", "active")
    assert json.loads(detail)["items"] == len(ids)
    fwd.drain(timeout=10)
    [series] = influxdb.query("SELECT * FROM energy_alert GROUP BY *", db=db)["results"][0][
        "series"]
    assert series["tags"]["rule"] == "sink_rejected" and series["tags"]["device"] == "central"
    text = series["values"][0][series["columns"].index("text")]
    assert "field type conflict" in text


def test_outage_during_ingestion_loses_nothing_and_duplicates_nothing(influxdb_private, store):
    server = influxdb_private
    server.create_database("plant")
    metrics = Metrics()
    fwd = forwarder(store, sink(server.url, "plant", chunk_size=40, timeout=1.0),
                    interval=0.05, backoff_max=0.3, metrics=metrics)
    thread = threading.Thread(target=fwd.run, daemon=True)
    thread.start()
    devices = ["inc1", "pv1", "sub1", "dev4"]
    produced = 0
    started = time.monotonic()
    outage = None
    try:
        while (elapsed := time.monotonic() - started) < 4.0:
            store.insert_readings(polls(devices, 1, start=T0 + produced * 1000))
            produced += 1
            if outage is None and elapsed > 1.0:
                server.stop()
                outage = time.monotonic()
            elif outage is not None and server.proc is None and time.monotonic() - outage > 1.5:
                assert sink_backlog(store, "central").count > 0  # it piled up in the store
                server.start()
            time.sleep(0.01)
        deadline = time.monotonic() + 20
        while sink_backlog(store, "central").count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fwd.stop()
        thread.join(5)
        fwd.close()
    assert sink_backlog(store, "central").count == 0
    assert metrics.sink_errors.labels("central", "connection")._value.get() > 0

    expected_times = [T0 + k * 1000 for k in range(produced)]
    for device in devices:
        for q in QUANTITIES:
            rows = server.query(f'SELECT "{q}" FROM energy_reading WHERE device = \'{device}\'',
                                db="plant", epoch="ms")["results"][0]["series"][0]["values"]
            assert [t for t, _ in rows] == expected_times  # each exactly once
    got = influx_points(server, "plant")
    assert {k: f for k, (_, f) in got.items()} == stored(store)


def test_newest_readings_go_first_and_the_backlog_drains_at_a_bounded_rate(
        influxdb, influxdb_database, store):
    db = influxdb_database
    devices = [f"m{i}" for i in range(5)]
    backlog = polls(devices, 120)  # 600 points
    store.insert_readings(backlog)
    rate = 300.0
    fwd = forwarder(store, sink(influxdb.url, db, chunk_size=20), interval=0.05,
                    max_points_per_second=rate)
    thread = threading.Thread(target=fwd.run, daemon=True)
    started = time.monotonic()
    thread.start()

    def count() -> int:
        res = influxdb.query("SELECT count(active_power_kw) FROM energy_reading", db=db)
        series = res["results"][0].get("series")
        return series[0]["values"][0][1] if series else 0

    try:
        time.sleep(0.3)
        live_t = T0 + 500 * 1000
        store.insert_readings(polls(["m0"], 1, start=live_t))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            res = influxdb.query(f"SELECT * FROM energy_reading WHERE time = {live_t}ms",
                                 db=db)["results"][0]
            if res.get("series"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the newest reading did not arrive while the backlog drained")
        elapsed = time.monotonic() - started
        sent = count()
        assert fwd.gap is not None and sink_backlog(store, "central").count > 0
        # the backlog at the rate, plus the first live chunk and one chunk of burst
        assert sent <= rate * elapsed + 2 * 20 + 1
        deadline = time.monotonic() + 10
        while sink_backlog(store, "central").count and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.monotonic() - started
    finally:
        fwd.stop()
        thread.join(5)
        fwd.close()
    assert sink_backlog(store, "central").count == 0 and fwd.gap is None
    assert drained >= (len(backlog) / 3 - 40) / rate  # the bound held to the end
    assert {k: f for k, (_, f) in influx_points(influxdb, db).items()} == stored(store)


def test_password_never_appears_in_errors_or_logs(tmp_path, monkeypatch, caplog, store):
    secret = "pa55-w0rd-that-must-not-leak"
    monkeypatch.setenv("ENERGYD_TEST_INFLUX_PASSWORD", secret)
    config = InfluxDB(name="central", api="v1", url=f"http://127.0.0.1:{free_port()}",
                      database="plant", username="energyd",
                      password_env="ENERGYD_TEST_INFLUX_PASSWORD", timeout=0.5)
    assert config.password is not None and secret not in repr(config)
    store.insert_readings(polls(["inc1"], 3))
    fwd = forwarder(store, config, interval=0.05, backoff_max=0.05)
    with pytest.raises(SinkRetryable) as err:
        fwd.step()
    assert "central" in str(err.value) and secret not in str(err.value)
    caplog.set_level("DEBUG")
    thread = threading.Thread(target=fwd.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "retrying" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    fwd.stop()
    thread.join(5)
    fwd.close()
    assert "retrying" in caplog.text
    assert secret not in caplog.text
    assert sink_backlog(store, "central").count == 9 and store.cursors.rejected_count() == 0


async def test_daemon_runs_one_forwarder_per_sink(influxdb, tmp_path):
    for db in ("central_a", "central_b"):
        influxdb.create_database(db)
    config = Config.model_validate({
        "site": {"name": "plant"},
        "storage": {"path": str(tmp_path / "energyd.db"), "flush_interval": 0.05},
        "http": {"enabled": False},
        "influxdb": [{"name": "a", "api": "v1", "url": influxdb.url, "database": "central_a",
                      "interval": 0.1},
                     {"name": "b", "api": "v1", "url": influxdb.url, "database": "central_b",
                      "interval": 0.1}],
    })
    daemon = Daemon(config, builders=[housekeeping.build, forwarding.build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        ctx = daemon.context
        assert sorted(c for c in ctx.health if c.startswith("sink:")) == ["sink:a", "sink:b"]
        ctx.writer.submit(polls(["inc1"], 5, start=int(datetime.now(UTC).timestamp() * 1000)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(ctx.store.cursors.position(s) and not sink_backlog(ctx.store, s).count
                   for s in "ab"):
                break
            await asyncio.sleep(0.05)
        for db in ("central_a", "central_b"):
            assert len(influx_points(influxdb, db)) == 5
        assert ctx.health["sink:a"]()["state"] == "ok"
        assert daemon.metrics.sink_sent.labels("b", READINGS)._value.get() == 15
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
        for db in ("central_a", "central_b"):
            influxdb.drop_database(db)


def test_forward_command_sends_the_backlog_once_and_reports_each_sink(
        influxdb, influxdb_database, tmp_path):
    from click.testing import CliRunner

    from energyd.cli import cli

    db_path = tmp_path / "energyd.db"
    with Store.open(db_path) as s:
        s.insert_readings(polls(["inc1", "pv1"], 10))
    config = tmp_path / "energyd.yaml"
    config.write_text(f"""\
site: {{name: plant}}
storage: {{path: {db_path}}}
influxdb:
  - {{name: central, api: v1, url: "{influxdb.url}", database: {influxdb_database}}}
  - {{name: away, api: v1, url: "http://127.0.0.1:{free_port()}", database: x, timeout: 0.5}}
""")
    result = CliRunner().invoke(cli, ["forward", "-c", str(config), "--timeout", "2"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("central (v1") and "60 items sent; 0 readings unsent" in line
               for line in lines), result.output
    assert any(line.startswith("away (v1") and "failed: away" in line
               and "60 readings unsent" in line for line in lines), result.output
    assert len(influx_points(influxdb, influxdb_database)) == 20

    only = CliRunner().invoke(cli, ["forward", "-c", str(config), "--sink", "central", "--json"])
    assert only.exit_code == 0, only.output
    assert json.loads(only.output)[0]["forwarded"] == 0
    bad = CliRunner().invoke(cli, ["forward", "-c", str(config), "--sink", "nope"])
    assert bad.exit_code == 2 and "no influxdb sink named nope" in bad.output


def test_a_connection_closed_while_idle_is_reopened_without_an_error(influxdb_private, store):
    server = influxdb_private
    server.create_database("plant")
    fwd = forwarder(store, sink(server.url, "plant"))
    store.insert_readings(polls(["inc1"], 2))
    assert fwd.step().sent == 6
    server.restart()  # the kept-alive connection is gone
    store.insert_readings(polls(["inc1"], 2, start=T0 + 10_000))
    assert fwd.step().sent == 6
    fwd.close()
    assert len(influx_points(server, "plant")) == 4
