"""Forwarding through the v2 write API (influxdb-client, synchronous) to a real
VictoriaMetrics, which stores each field as the metric `<measurement>_<field>` with the
tags as labels; and the v2 client against InfluxDB 1.6, which has no v2 API."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from servers import VictoriaMetricsServer

from energyd.config.schema import InfluxDB
from energyd.daemon.metrics import Metrics
from energyd.errors import SinkRetryable
from energyd.model import Reading, from_ms
from energyd.sinks import Encoder, Forwarder, make_transport
from energyd.sinks.forwarder import backlog as sink_backlog
from energyd.store.sqlite import READINGS, STREAMS, Store

T0 = 1_700_000_000_123
ROLES = {"inc1": "grid_import", "pv1": "generation"}
QUANTITIES = ("active_power_kw", "power_factor", "active_energy_import_kwh")


def polls(devices, count: int, *, start: int = T0, step: int = 1000) -> list[Reading]:
    # VictoriaMetrics keeps about 12 significant digits: values a meter gives, not 0.1+0.2
    return [Reading(from_ms(start + k * step), device, q, round(d * 1000 + k + i / 8 - 0.3, 4))
            for k in range(count) for d, device in enumerate(devices)
            for i, q in enumerate(QUANTITIES)]


def v2_sink(url: str, **options) -> InfluxDB:
    return InfluxDB(name="cloud", api="v2", url=url, org="plant", bucket="energy", **options)


def forwarder(store: Store, config: InfluxDB, site: str, **options) -> Forwarder:
    options.setdefault("chunk_size", config.chunk_size)
    return Forwarder(config.name, store, make_transport(config),
                     encoder=Encoder(site, ROLES), **options)


def exported(vm: VictoriaMetricsServer, site: str, measurement: str = "energy_reading",
             extra: str = ""):
    """{(device, field): [(time_ms, value), ...]} for one site, as VictoriaMetrics exports it."""
    vm.force_flush()
    out = {}
    for series in vm.export(f'{{__name__=~"{measurement}_.*",site="{site}"{extra}}}'):
        labels = series["metric"]
        field = labels.pop("__name__")[len(measurement) + 1:]
        key = (labels["device"], field)
        assert key not in out, f"two series for {key}: {labels}"
        out[key] = (labels, sorted(zip(series["timestamps"], series["values"], strict=True)))
    return out


def expected(store: Store):
    out: dict = {}
    for r in store.readings.query_readings():
        out.setdefault((r.device, r.quantity), []).append((r.time_ms, r.value))
    return out


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "energyd.db") as s:
        yield s


@pytest.fixture
def site() -> str:
    return f"site_{uuid.uuid4().hex[:10]}"


def test_readings_and_rollups_read_back_equal(victoria_metrics, store, site):
    store.insert_readings(polls(["inc1", "pv1"], 50))
    store.rollups.write_changed([("inc1", 1_699_999_200_000, 2.25, "meter_interpolated", 0.5,
                                  1.372725, 1.2, 0.6101, None, "{}")], {})
    fwd = forwarder(store, v2_sink(victoria_metrics.url, chunk_size=9), site)
    assert fwd.drain(timeout=30) == 300 + 1

    got = exported(victoria_metrics, site)
    assert {k: v for k, (_, v) in got.items()} == expected(store)
    for (device, _), (labels, _) in got.items():
        assert labels == {"site": site, "device": device, "role": ROLES[device]}
    hourly = exported(victoria_metrics, site, "energy_hourly", ',source="meter_interpolated"')
    assert {k: v for k, (_, v) in hourly.items()} == {
        ("inc1", "mwh"): [(1_699_999_200_000, 2.25)],
        ("inc1", "coverage"): [(1_699_999_200_000, 0.5)],
        ("inc1", "tco2_location"): [(1_699_999_200_000, 1.372725)],
        ("inc1", "tco2_market"): [(1_699_999_200_000, 1.2)],
        ("inc1", "ef_location"): [(1_699_999_200_000, 0.6101)],
    }
    assert hourly["inc1", "mwh"][0]["source"] == "meter_interpolated"
    # the hour's other sources are zeroed, so a sum over sources counts it once
    zeroed = victoria_metrics.export(
        f'{{__name__="energy_hourly_mwh",site="{site}",source!="meter_interpolated"}}')
    assert sorted(s["metric"]["source"] for s in zeroed) == ["estimated", "invoice", "meter"]
    assert all(s["values"] == [0] for s in zeroed)
    assert all(sink_backlog(store, "cloud", s).count == 0 for s in STREAMS)


def test_outage_during_ingestion_loses_nothing_and_duplicates_nothing(
        victoria_metrics_private, store, site):
    vm = victoria_metrics_private
    metrics = Metrics()
    fwd = forwarder(store, v2_sink(vm.url, chunk_size=30, timeout=1.0), site,
                    interval=0.05, backoff_max=0.3, metrics=metrics)
    thread = threading.Thread(target=fwd.run, daemon=True)
    thread.start()
    produced = 0
    started = time.monotonic()
    outage = None
    try:
        while (elapsed := time.monotonic() - started) < 3.5:
            store.insert_readings(polls(["inc1", "pv1", "sub9"], 1, start=T0 + produced * 1000))
            produced += 1
            if outage is None and elapsed > 0.8:
                vm.stop()
                outage = time.monotonic()
            elif outage is not None and vm.proc is None and time.monotonic() - outage > 1.2:
                assert sink_backlog(store, "cloud").count > 0
                vm.start()
            time.sleep(0.01)
        deadline = time.monotonic() + 20
        while sink_backlog(store, "cloud").count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fwd.stop()
        thread.join(5)
        fwd.close()
    assert sink_backlog(store, "cloud").count == 0
    assert metrics.sink_errors.labels("cloud", "connection")._value.get() > 0
    got = {k: v for k, (_, v) in exported(vm, site).items()}
    want = expected(store)
    assert got == want  # every reading, each timestamp exactly once per series
    assert all(len(v) == produced for v in want.values())


def test_v2_against_a_server_without_the_v2_api_blocks_without_losing_data(
        influxdb, store, caplog, monkeypatch):
    token = "tok-3f9a-never-in-a-message"
    monkeypatch.setenv("ENERGYD_TEST_INFLUX_TOKEN", token)
    config = v2_sink(influxdb.url, token_env="ENERGYD_TEST_INFLUX_TOKEN")
    assert config.token is not None and token not in repr(config)
    store.insert_readings(polls(["inc1"], 4))
    fwd = forwarder(store, config, "s")
    with pytest.raises(SinkRetryable) as err:
        fwd.step()
    message = str(err.value)
    assert "HTTP 404" in message and "cloud" in message and token not in message
    assert store.cursors.rejected_count() == 0 and sink_backlog(store, "cloud").count == 12
    assert store.cursors.position("cloud", READINGS) == 0
    caplog.set_level("DEBUG")
    fwd.backoff_max = 0.05
    thread = threading.Thread(target=fwd.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "HTTP 404" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    fwd.stop()
    thread.join(5)
    fwd.close()
    assert "HTTP 404" in caplog.text and token not in caplog.text
    assert json.dumps(fwd.health()).find(token) == -1
