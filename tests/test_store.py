"""The store: round trips, idempotent inserts, migrations, quota shedding, retention."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import stored

from energyd.errors import StoreError
from energyd.model import Quality, Reading, to_ms
from energyd.store import READINGS, Store
from energyd.store.schema import MIGRATIONS, SCHEMA_VERSION

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def readings(device: str, quantity: str, n: int, step_s: float = 10, start: datetime = T0,
             value: float = 1.0) -> list[Reading]:
    return [Reading(start + timedelta(seconds=i * step_s), device, quantity, value + i)
            for i in range(n)]


def test_insert_and_read_back(store: Store) -> None:
    assert store.insert_readings(readings("m1", "active_power_kw", 5)) == 5
    assert store.insert_readings(readings("m1", "active_energy_import_kwh", 3)) == 3
    got = list(store.readings.query_readings(device="m1", quantity="active_power_kw"))
    assert [r.value for r in got] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert got[0].to_reading() == Reading(T0, "m1", "active_power_kw", 1.0, Quality.GOOD)
    window = list(store.readings.query_readings(start_ms=to_ms(T0 + timedelta(seconds=10)),
                                       end_ms=to_ms(T0 + timedelta(seconds=30))))
    assert sorted((r.quantity, r.value) for r in window) == [
        ("active_energy_import_kwh", 2.0), ("active_energy_import_kwh", 3.0),
        ("active_power_kw", 2.0), ("active_power_kw", 3.0)]


def test_the_read_api_the_other_layers_use(store: Store) -> None:
    assert store.readings.last_reading_id() == 0
    store.insert_readings(readings("m1", "active_power_kw", 4))  # t0, +10, +20, +30 s
    store.insert_readings(readings("m2", "active_power_kw", 2, start=T0 + timedelta(
        seconds=5)))
    sid = store.known_series[("m1", "active_power_kw")]
    t = [to_ms(T0 + timedelta(seconds=10 * i)) for i in range(4)]
    assert store.readings.series_time_before(sid, t[2]) == t[1]
    assert store.readings.series_time_before(sid, t[0]) is None
    assert store.readings.series_time_from(sid, t[1] + 1) == t[2]
    assert store.readings.series_time_from(sid, t[3] + 1) is None
    assert store.readings.series_first_time(sid) == t[0]
    assert store.readings.series_values(sid, t[1], t[2]) == [(t[1], 2.0), (t[2], 3.0)]
    top = store.readings.last_reading_id()
    assert [(s_, v) for s_, _, v in store.readings.reading_chunk(0, top, 4)[0]] == [
        (sid, 1.0), (sid, 2.0), (sid, 3.0), (sid, 4.0)]
    m2 = store.known_series[("m2", "active_power_kw")]
    m1_done = store.readings.readings_after(0, 4)[-1].id  # ids grow but are not dense
    assert store.readings.count_after(m1_done) == 2 and store.readings.count_after(0) == 6
    assert store.readings.count_after(0, at_least=1) == 2  # one reading per sample here
    assert store.readings.earliest_by_series(m1_done, top) == {m2: to_ms(T0 + timedelta(seconds=5))}
    assert store.readings.earliest_by_series(0, m1_done) == {sid: t[0]}
    first_m2 = store.readings.readings_after(m1_done, 1)[0].id
    assert store.readings.poll_reading_ids("m2", to_ms(T0 + timedelta(seconds=5)), 0, top) == [
        first_m2]
    assert [(d, v) for _, d, _, v, _ in store.readings.readings_in(t[0], t[2])] == [
        ("m1", 1.0), ("m2", 1.0), ("m1", 2.0), ("m2", 2.0)]
    assert [(d, v) for _, d, _, v, _ in store.readings.readings_in(t[0], t[2], by_series=True)] == [
        ("m1", 1.0), ("m1", 2.0), ("m2", 1.0), ("m2", 2.0)]
    assert [v for *_, v, _ in store.readings.readings_in(t[0], t[2], device="m2")] == [1.0, 2.0]


def test_same_series_and_time_is_stored_once(store: Store) -> None:
    batch = readings("m1", "active_power_kw", 4)
    assert store.insert_readings(batch) == 4
    assert store.insert_readings(batch) == 0
    assert store.readings.count_readings() == 4


def test_committed_readings_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with Store.open(path) as store:
        store.insert_readings(readings("m1", "active_power_kw", 3))
    with Store.open(path) as store:
        assert store.readings.count_readings() == 3
        assert stored(store, "PRAGMA journal_mode")[0][0] == "wal"


def test_paging_past_batch_size_keeps_order(store: Store) -> None:
    store.insert_readings(readings("m1", "active_power_kw", 25))
    got = [r.value for r in store.readings.query_readings(device="m1", batch=7)]
    assert got == [float(i + 1) for i in range(25)]


def test_cursor_and_backlog(store: Store) -> None:
    store.insert_readings(readings("m1", "active_power_kw", 10))
    assert store.cursors.backlog("influx", READINGS).count == 10
    first = store.readings.readings_after(0, 4)
    store.cursors.move("influx", READINGS, first[-1].id)
    backlog = store.cursors.backlog("influx", READINGS)
    assert backlog.count == 6
    assert backlog.oldest_ms == to_ms(T0 + timedelta(seconds=40))
    assert store.cursors.position("other", READINGS) == 0


def test_migrates_an_old_store_and_refuses_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO series (device, quantity) VALUES ('m1', 'active_power_kw')")
    conn.execute("INSERT INTO readings (series, time, value) VALUES (1, 1000, 5.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Store.open(path) as store:
        assert stored(store, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
        # nothing lost on the way
        assert [r.value for r in store.readings.query_readings()] == [5.0]

    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this energyd"):
        Store.open(path)


def test_quota_sheds_gauges_oldest_first_and_never_counters(store: Store) -> None:
    for i in range(4):
        start = T0 + timedelta(days=i)
        store.insert_readings(readings("m1", "active_power_kw", 5000, start=start))
        store.insert_readings(readings("m1", "voltage_l1_v", 5000, start=start))
        store.insert_readings(readings("m1", "active_energy_import_kwh", 5000, start=start))
    counters_before = len(list(store.readings.query_readings(quantity="active_energy_import_kwh")))
    store.quota = store.size_bytes() * 3 // 4
    shed = store.enforce_quota(batch=2000)
    assert shed > 0
    assert store.size_bytes() <= store.quota
    counters = list(store.readings.query_readings(quantity="active_energy_import_kwh"))
    assert len(counters) == counters_before == 20000
    power = list(store.readings.query_readings(quantity="active_power_kw"))
    assert 0 < len(power) < 20000
    # the oldest went first: what is left is the newest
    assert max(r.time_ms for r in power) == to_ms(T0 + timedelta(days=3, seconds=49990))

    # with only counters left the store stays over quota rather than lose energy data
    store.quota = 1
    store.enforce_quota()
    assert len(list(store.readings.query_readings(quantity="active_energy_import_kwh"))) == 20000
    assert not list(store.readings.query_readings(quantity="active_power_kw"))


def test_retention_keeps_what_a_sink_has_not_forwarded(store: Store) -> None:
    store.insert_readings(readings("m1", "active_power_kw", 10, step_s=86400))
    sent = store.readings.readings_after(0, 3)
    store.cursors.move("influx", READINGS, sent[-1].id)
    now = to_ms(T0 + timedelta(days=10))
    gone = store.apply_retention(now, retention_ms=5 * 86400_000, sinks=["influx"])
    assert gone == 3  # days 0-4 are old, but only 0-2 were forwarded
    assert store.readings.count_readings() == 7
    gone = store.apply_retention(now, retention_ms=5 * 86400_000, sinks=[])
    assert gone == 2


def test_conflicts_are_kept_as_long_as_readings(store: Store) -> None:
    store.insert_readings(readings("m1", "active_power_kw", 10, step_s=86400))
    store.import_rows([(to_ms(T0 + timedelta(days=d)), "m1", "active_power_kw", -1.0, 0)
                       for d in (1, 8)])
    assert store.readings.conflict_counts() == {"m1": 2}
    store.apply_retention(to_ms(T0 + timedelta(days=10)), 5 * 86400_000, sinks=[])
    assert [c.time_ms for c in store.readings.conflicts()] == [to_ms(T0 + timedelta(days=8))]


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "e.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.insert_readings(readings("m1", "active_power_kw", 1))


def test_rolled_back_transaction_leaves_no_series_behind(store: Store) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.import_rows([(1000, "ghost", "active_power_kw", 1.0, 0)])
        raise RuntimeError("abort")
    assert store.series() == []
    store.insert_readings(readings("ghost", "active_power_kw", 1))
    assert store.series() == [("ghost", "active_power_kw")]


def test_ids_are_never_reused_after_the_newest_rows_are_removed(store: Store) -> None:
    """A sink whose cursor stands at the newest id must still see every later reading."""
    store.insert_readings(readings("m1", "active_power_kw", 10))
    newest = store.readings.readings_after(0, 100)[-1].id
    store.cursors.move("influx", READINGS, newest)
    # everything is forwarded and old, so retention empties the table
    assert store.apply_retention(to_ms(T0 + timedelta(days=30)), 86400_000, ["influx"]) == 10
    store.insert_readings(readings("m1", "active_power_kw", 3, start=T0 + timedelta(days=30)))
    fresh = store.readings.readings_after(store.cursors.position("influx", READINGS), 100)
    assert len(fresh) == 3
    assert min(r.id for r in fresh) > newest


def test_poll_records_fold_per_device(store: Store) -> None:
    store.commit_samples([], [("m1", 1000, None), ("m1", 2000, "timeout"),
                            ("m1", 3000, None), ("m2", 1500, "refused")])
    store.commit_samples([], [("m1", 4000, None)])
    status = store.device_status()
    assert status["m1"] == {"last_poll": 4000, "last_success": 4000,
                            "last_error": "timeout", "last_error_time": 2000,
                            "polls": 4, "errors": 1}
    assert status["m2"] == {"last_poll": 1500, "last_success": None,
                            "last_error": "refused", "last_error_time": 1500,
                            "polls": 1, "errors": 1}


def test_quota_sheds_forwarded_samples_before_unsent_ones(store: Store) -> None:
    store.insert_readings(readings("m1", "active_power_kw", 20000))
    store.insert_readings(readings("m2", "active_power_kw", 20000))
    m1_last = max(r.id for r in store.readings.query_readings(device="m1"))
    store.cursors.move("influx", READINGS, m1_last)  # m1 forwarded, m2 not yet
    store.quota = store.size_bytes() * 3 // 4
    assert store.enforce_quota(batch=1000, sinks=["influx"]) > 0
    assert len(list(store.readings.query_readings(device="m2"))) == 20000
    assert len(list(store.readings.query_readings(device="m1"))) < 20000
