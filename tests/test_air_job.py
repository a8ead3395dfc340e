"""The hourly air job: rows in air_hourly per compressor and station, seq bumped on change only;
and the station simulator's physics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import stored

from energyd.clock import ManualClock
from energyd.config.schema import Config
from energyd.daemon.air import DEFAULT_STATION, compute_hours, stations
from energyd.model import Reading, to_ms
from energyd.simulators.air import LOADED, OFF, UNLOADED, AirSystem
from energyd.simulators.compressor import CompressorStation
from energyd.store.sqlite import AIR, Store

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)  # a Monday
H = to_ms(T0)


def _config(tmp_path: Path) -> Config:
    sim = CompressorStation(broker=("127.0.0.1", 1), station="air1", compressors=2)
    return Config.model_validate({
        "storage": {"path": str(tmp_path / "e.db")},
        "mqtt": {},
        "devices": [
            *sim.device_entries(),
            {"name": "screw9", "role": "compressor", "driver": "mqtt",
             "mqtt": {"topic": "x/screw9", "fields": {"flow_m3_min": "f"}}},
            {"name": "hall", "driver": "mqtt",
             "mqtt": {"topic": "x/hall", "format": "value", "quantity": "active_power_kw"}},
        ],
    })


def _feed(store: Store, device: str, kw: float, flow: float, minutes: range) -> None:
    rows = []
    for m in minutes:
        t = T0 + timedelta(minutes=m)
        rows += [Reading(t, device, "active_energy_import_kwh", 1000 + kw * m / 60),
                 Reading(t, device, "flow_m3_min", flow),
                 Reading(t, device, "compressor_state", LOADED if flow else UNLOADED)]
    store.insert_readings(rows)


def _rows(store: Store) -> dict[str, tuple]:
    return {d: (kwh, m3, sp, share, json.loads(detail), seq) for d, kwh, m3, sp, share, detail,
            seq in stored(store, "SELECT device, kwh, m3, specific_power, loaded_share, "
                                "detail, seq FROM air_hourly WHERE hour = ?", (H,))}


def test_stations_group_compressors(tmp_path):
    assert stations(_config(tmp_path)) == {"air1": ["air1-c1", "air1-c2"],
                                           DEFAULT_STATION: ["screw9"]}


def test_job_writes_rows_and_bumps_seq_only_on_change(store: Store, tmp_path):
    config = _config(tmp_path)
    _feed(store, "air1-c1", 60.0, 10.0, range(-5, 66))  # 6 kW per m3/min
    _feed(store, "air1-c2", 33.0, 5.0, range(-5, 66))  # 6.6
    assert compute_hours(store, config, H, H + 3_600_000) == 3
    rows = _rows(store)
    assert set(rows) == {"air1-c1", "air1-c2", "air1"}
    assert rows["air1-c1"][:4] == pytest.approx((60.0, 600.0, 6.0, 1.0))
    assert rows["air1-c2"][:4] == pytest.approx((33.0, 300.0, 6.6, 1.0))
    assert rows["air1"][:4] == pytest.approx((93.0, 900.0, 60 * 93 / 900, 1.0))
    assert rows["air1"][4] == {"compressors": ["air1-c1", "air1-c2"]}
    seqs = {d: r[5] for d, r in rows.items()}
    assert store.cursors.backlog("influx", AIR).count == 3

    # the same data again: nothing changes, nothing is forwarded again
    assert compute_hours(store, config, H, H + 3_600_000) == 0
    assert {d: r[5] for d, r in _rows(store).items()} == seqs

    # a late reading changes c2's hour: c2 and the station get a new seq, c1 does not
    store.insert_readings([Reading(T0 + timedelta(minutes=30, seconds=30), "air1-c2",
                                   "flow_m3_min", 8.0)])
    assert compute_hours(store, config, H, H + 3_600_000) == 2
    after = _rows(store)
    assert after["air1-c1"][5] == seqs["air1-c1"]
    assert after["air1-c2"][5] > max(seqs.values())
    assert after["air1"][5] > max(seqs.values())
    assert after["air1-c2"][1] > 300.0


def test_air_system_follows_shifts_and_shows_a_leak_off_shift():
    system = AirSystem.build(4, seed=3)
    assert system.capacity_m3_min == 40.0
    monday_noon = datetime(2026, 3, 2, 12, tzinfo=UTC)
    sunday_3am = datetime(2026, 3, 1, 3, tzinfo=UTC)
    assert system.in_production(monday_noon) and not system.in_production(sunday_3am)
    assert system.demand(sunday_3am) == pytest.approx(0.12 * 40)
    assert 20 < system.demand(monday_noon) < 28
    system.inject_leak(6.0)
    assert system.demand(sunday_3am) == pytest.approx(0.12 * 40 + 6.0)

    # an hour of production, second by second: the cascade loads and unloads, pressure holds
    clock = ManualClock(monday_noon)
    states: set[int] = set()
    delivered = 0.0
    for _ in range(3600):
        system.step(clock.advance(1), 1.0)
        states |= {c.state for c in system.compressors}
        delivered += sum(c.flow_m3_min for c in system.compressors) / 60
        assert 6.0 < system.pressure_bar < 8.0
    assert {LOADED, UNLOADED} <= states
    demand_m3 = system.demand(clock.now()) * 60
    assert delivered == pytest.approx(demand_m3, rel=0.1)  # supply follows demand
    lead = system.compressors[0]
    assert lead.loaded_h > 0.9 and lead.running_h >= lead.loaded_h
    kwh = sum(c.energy_kwh for c in system.compressors)
    assert 5.0 < 60 * kwh / delivered < 8.0  # a plausible kW per m3/min


def test_idle_compressors_stop_after_idle_off():
    system = AirSystem.build(3, seed=1)
    night = datetime(2026, 3, 1, 2, tzinfo=UTC)
    clock = ManualClock(night)
    for _ in range(1800):
        system.step(clock.advance(1), 1.0)
    assert system.compressors[-1].state == OFF  # the trim unit is not needed at night
    assert system.compressors[-1].power_kw == 0.0
