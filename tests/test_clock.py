"""Time that survives the wall clock: the watch, the degraded states, the scheduler, and what
the store and the MQTT mapping do with readings stamped under a suspect clock.

The daemon itself under a stepping clock is in test_clock_steps.py (libfaketime).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from energyd.clock import EARLIEST_PLAUSIBLE, STEPPED_FOR, ClockWatch, ManualClock
from energyd.config.loader import load_config
from energyd.daemon import scheduler as scheduler_module
from energyd.daemon.degraded import Degraded
from energyd.daemon.scheduler import Scheduler
from energyd.drivers.mqtt.client import PayloadMapper, Rejected
from energyd.model import Quality, Reading, to_ms
from energyd.store import Store


class Clocks:
    """A wall and a monotonic clock moved by hand."""

    def __init__(self, wall: float):
        self.wall, self.mono = wall, 1000.0

    def tick(self, seconds: float, *, wall_extra: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + wall_extra


NOW = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()


def watch(clocks: Clocks, **kw: object) -> ClockWatch:
    return ClockWatch(wall=lambda: clocks.wall, monotonic=lambda: clocks.mono, **kw)  # type: ignore[arg-type]


def test_a_step_is_told_from_drift_both_ways() -> None:
    c = Clocks(NOW)
    w = watch(c)
    for _ in range(100):  # NTP slewing: 0.5 ms a second, never a step
        c.tick(1.0, wall_extra=0.0005)
        assert w.look() is None
    c.tick(1.0, wall_extra=3 * 365 * 86400)
    step = w.look()
    assert step is not None and step.seconds == pytest.approx(3 * 365 * 86400)
    assert "forward by 1095.0 days" in step.describe()
    assert w.look() is None  # a step is seen once
    assert w.stepped_recently()
    c.tick(1.0, wall_extra=-180)
    step = w.look()
    assert step is not None and step.seconds == pytest.approx(-180)
    assert "back by 3.0 min" in step.describe()
    assert w.steps == 2
    c.tick(STEPPED_FOR + 1)
    assert w.look() is None and not w.stepped_recently()


def test_a_time_before_the_release_or_far_from_a_server_is_suspect() -> None:
    c = Clocks(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    w = watch(c)
    reason = w.suspect()
    assert reason is not None and "2000-01-01" in reason and "before this energyd" in reason
    assert w.suspect(EARLIEST_PLAUSIBLE - timedelta(seconds=1)) is not None
    assert w.suspect(EARLIEST_PLAUSIBLE) is None
    c.wall = NOW
    assert w.suspect() is None
    w.reference(datetime.fromtimestamp(NOW + 86400 * 2, tz=UTC), "InfluxDB")
    assert w.suspect() == "the clock is 2.0 days behind InfluxDB"
    w.reference(datetime.fromtimestamp(NOW + 2, tz=UTC), "InfluxDB")
    assert w.suspect() is None


def test_degraded_states_are_named_held_or_lapse() -> None:
    mono = [0.0]
    d = Degraded(monotonic=lambda: mono[0], wall=lambda: NOW)
    since = datetime.fromtimestamp(NOW, UTC).isoformat(timespec="seconds")
    assert not d and d.snapshot() == {}
    assert d.set("clock_stepped", "stepped forward", lasts=900, quiet=True)
    assert d.set("disk_full", "no space left on /var/lib/energyd")
    assert not d.set("disk_full", "still no space")  # renewed, not entered again
    assert d.snapshot() == {"clock_stepped": {"reason": "stepped forward", "since": since},
                            "disk_full": {"reason": "still no space", "since": since}}
    mono[0] = 901
    assert list(d.snapshot()) == ["disk_full"] and not d.active("clock_stepped")
    assert d.clear("disk_full") and not d.clear("disk_full")
    assert not d


async def test_a_stalled_loop_skips_slots_and_never_makes_them_up() -> None:
    sched = Scheduler(ManualClock(datetime(2026, 6, 1, tzinfo=UTC)))
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def job() -> None:
        runs.append(loop.time())

    # a ManualClock's seconds take no wall time: one clock-second interval is 1 ms of wall
    sched.start()
    sched.every(0.0, job, name="tick", first_delay=0.0)
    await asyncio.sleep(0.05)
    before = len(runs)
    assert before >= 5
    time.sleep(0.3)  # the event loop stalls for 300 slots
    await asyncio.sleep(0.02)
    sched.shutdown()
    after = len(runs) - before
    assert after < 40, f"{after} runs after the stall: missed slots were made up"
    assert sched.missed["tick"] >= 250


async def test_hourly_runs_once_across_a_forward_step_and_waits_after_a_step_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "HOURLY_NAP", 0.01)
    clock = ManualClock(datetime(2026, 6, 1, 9, 4, 50, tzinfo=UTC))
    sched = Scheduler(clock)
    runs: list[datetime] = []

    async def job() -> None:
        runs.append(clock.now())

    sched.start()
    sched.hourly(job, name="rollup", delay=300)
    await asyncio.sleep(0.05)
    assert runs == []
    clock.set(datetime(2026, 6, 1, 9, 5, 1, tzinfo=UTC))  # the mark passes
    await asyncio.sleep(0.05)
    assert len(runs) == 1
    clock.set(datetime(2029, 6, 1, 9, 30, tzinfo=UTC))  # years forward: once, not per hour
    await asyncio.sleep(0.05)
    assert len(runs) == 2
    clock.set(datetime(2029, 6, 1, 8, 0, tzinfo=UTC))  # back an hour and a half
    await asyncio.sleep(0.05)
    assert len(runs) == 2
    clock.set(datetime(2029, 6, 1, 8, 5, 0, tzinfo=UTC))  # the new time's next mark
    await asyncio.sleep(0.05)
    sched.shutdown()
    assert len(runs) == 3


def test_the_store_holds_suspect_readings_out_of_accounting_and_retention(
        tmp_path: Path) -> None:
    t2000 = datetime(2000, 1, 1, tzinfo=UTC)
    t2026 = datetime(2026, 6, 1, tzinfo=UTC)
    with Store.open(tmp_path / "s.db") as store:
        store.insert_readings(
            [Reading(t2000 + timedelta(minutes=i), "m1", "active_energy_import_kwh",
                     100.0 + i, Quality.CLOCK_SUSPECT) for i in range(3)]
            + [Reading(t2026 + timedelta(minutes=i), "m1", "active_energy_import_kwh",
                       200.0 + i) for i in range(3)])
        sid = store.known_series[("m1", "active_energy_import_kwh")]
        assert store.readings.series_first_time(sid) == to_ms(t2026)
        assert store.readings.series_time_before(sid, to_ms(t2026)) is None
        assert store.readings.series_time_from(sid, 0) == to_ms(t2026)
        assert [v for _, v in store.readings.series_values(sid, 0, to_ms(t2026) + 3600_000)] == \
            [200.0, 201.0, 202.0]
        assert store.readings.held_count() == 3
        gone = store.apply_retention(to_ms(t2026 + timedelta(days=400)), 86400_000, [])
        assert gone == 3
        kept = list(store.readings.readings_in(0, 2**62))
        assert [(v, q) for _, _, _, v, q in kept] == [(100.0, 5), (101.0, 5), (102.0, 5)]


def test_mqtt_takes_a_payloads_own_time_while_the_local_clock_is_known_wrong(
        tmp_path: Path) -> None:
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"""
site: {{name: plant-a}}
storage: {{path: {tmp_path / "e.db"}}}
mqtt: {{host: 127.0.0.1}}
devices:
  - {{name: air1, role: compressor, driver: mqtt, interval: 5s,
     mqtt: {{topic: plant/air1, timestamp: ts, fields: {{active_power_kw: kw}}}}}}
""")
    mapper = PayloadMapper(load_config(cfg))
    payload = json.dumps({"ts": "2026-06-01T12:00:00Z", "kw": 40.0}).encode()
    wrong = datetime(2000, 1, 1, tzinfo=UTC)
    with pytest.raises(Rejected) as refused:
        mapper.map("plant/air1", payload, wrong)
    assert refused.value.reason == "clock_skew"
    (r,) = mapper.map("plant/air1", payload, wrong, check_skew=False)
    assert r.time == datetime(2026, 6, 1, 12, tzinfo=UTC) and r.value == 40.0


def test_silence_is_measured_on_the_monotonic_clock(tmp_path: Path) -> None:
    from energyd.alerts.engine import AlertEngine

    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"""
site: {{name: plant-a}}
storage: {{path: {tmp_path / "e.db"}}}
devices:
  - {{name: m1, role: grid_import, driver: modbus, interval: 10s, profile: eastron_sdm630,
     modbus: {{host: 127.0.0.1}}}}
alerts:
  rules:
    - {{name: quiet, type: stale, devices: [m1], multiple: 3}}
""")
    config = load_config(cfg)
    t2000 = datetime(2000, 1, 1, tzinfo=UTC)
    with Store.open(tmp_path / "e.db") as store:
        # the last reading before the restart was stamped by a clock set to 2000
        store.insert_readings([Reading(t2000, "m1", "active_power_kw", 5.0,
                                       Quality.CLOCK_SUSPECT)])
        wall = [to_ms(datetime(2026, 6, 1, tzinfo=UTC))]
        mono = [500.0]
        engine = AlertEngine(config, store, now_ms=lambda: wall[0], monotonic=lambda: mono[0])
        assert engine.check_stale() == []  # not silent since 2000: since the start at most
        for i in range(5):  # polls go on while the wall clock steps years forward
            mono[0] += 10
            wall[0] += 10_000 + (3 * 365 * 86400_000 if i == 2 else 0)
            engine.on_readings([Reading(datetime.fromtimestamp(wall[0] / 1000, tz=UTC), "m1",
                                        "active_power_kw", 5.0)])
            assert engine.check_stale() == []
        mono[0] += 31  # then the meter falls silent for 31 s of real time
        wall[0] -= 180_000  # while the wall clock steps back three minutes
        (event,) = engine.check_stale()
        assert event.kind == "start" and event.episode.device == "m1"
        assert event.episode.detail["start"]["silent_s"] == 31.0


def test_held_readings_go_with_retention_only_once_reviewed(tmp_path: Path) -> None:
    t2000 = datetime(2000, 1, 1, tzinfo=UTC)
    t2026 = datetime(2026, 6, 1, tzinfo=UTC)
    with Store.open(tmp_path / "s.db") as store:
        store.insert_readings([Reading(t2000, "m1", "active_power_kw", 1.0,
                                       Quality.CLOCK_SUSPECT),
                               Reading(t2000, "m1", "voltage_l1_v", 230.0,
                                       Quality.CLOCK_SUSPECT)])
        store.insert_readings([Reading(t2026, "m1", "active_power_kw", 2.0)])
        assert [(d, q, n) for d, q, n, _, _ in store.readings.held()] == \
            [("m1", "active_power_kw", 1), ("m1", "voltage_l1_v", 1)]
        now = to_ms(t2026 + timedelta(days=1))
        assert store.apply_retention(now, 3600_000, []) == 1  # the 2026 reading only
        assert store.readings.mark_held_reviewed() == 2
        # a reading held after the review waits for a review of its own
        store.insert_readings([Reading(t2000 + timedelta(hours=1), "m1", "active_power_kw",
                                       3.0, Quality.CLOCK_SUSPECT)])
        assert store.readings.held_count() == 1
        assert store.apply_retention(now, 3600_000, []) == 2
        assert [v for _, _, _, v, _ in store.readings.readings_in(0, 2**62)] == [3.0]


async def test_hourly_jobs_look_at_the_clock_at_once_when_told_it_stepped() -> None:
    clock = ManualClock(datetime(2026, 6, 1, 9, 4, 50, tzinfo=UTC))
    sched = Scheduler(clock)  # the nap is a minute: only the word of a step wakes it early
    runs: list[datetime] = []

    async def job() -> None:
        runs.append(clock.now())

    sched.start()
    sched.hourly(job, name="rollup", delay=300)
    await asyncio.sleep(0.02)
    clock.set(datetime(2029, 6, 1, 9, 30, tzinfo=UTC))
    await asyncio.sleep(0.05)
    assert runs == []  # still napping
    sched.clock_stepped()
    await asyncio.sleep(0.05)
    sched.shutdown()
    assert runs == [datetime(2029, 6, 1, 9, 30, tzinfo=UTC)]
