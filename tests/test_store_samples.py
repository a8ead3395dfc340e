"""Packing readings into samples: one row per instant and set of series (store/samples.py)."""

from __future__ import annotations

import sqlite3
from array import array
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import stored

from energyd.model import Quality, Reading, from_ms, to_ms
from energyd.store import READINGS, Store
from energyd.store.samples import SLOTS, group, group_rows, unpack_ids, unpack_values
from energyd.store.schema import MIGRATIONS
from energyd.store.writer import StoreWriter
from tests.test_store import T0


def columns(rows: list[tuple[int, int, float, int]]) -> tuple[array, array, array, array]:
    s, t, v, q = zip(*rows, strict=True)
    return array("q", s), array("q", t), array("d", v), array("b", q)


def test_a_call_at_one_time_is_one_sample_and_packing_is_repeatable() -> None:
    poll = [(sid, 1000, sid * 1.5, 0) for sid in (7, 3, 9)]
    later = [(7, 2000, 1.0, 0), (3, 2000, 2.0, Quality.UNCERTAIN)]
    samples = group(*columns(poll + later), starts=[0, 3])
    assert [(unpack_ids(k), t, list(unpack_values(v)), q) for k, t, v, q in samples] == [
        ((7, 3, 9), 1000, [10.5, 4.5, 13.5], None),  # all good: no quality blob
        ((7, 3), 2000, [1.0, 2.0], bytes([0, 1]))]
    assert group(*columns(poll + later), starts=[0, 3]) == samples


def test_samples_split_at_calls_times_repeated_series_and_full_slots() -> None:
    rows = [(1, 1000, 1.0, 0), (2, 1000, 2.0, 0),  # call 1
            (3, 1000, 3.0, 0),  # call 2, same time: a sample of its own
            (1, 2000, 1.0, 0), (1, 2000, 9.0, 0), (2, 3000, 2.0, 0)]  # call 3
    samples = group(*columns(rows), starts=[0, 2, 3])
    assert [(unpack_ids(k), t) for k, t, _, _ in samples] == [
        ((1, 2), 1000), ((3,), 1000), ((1,), 2000), ((1,), 2000), ((2,), 3000)]
    wide = [(sid, 1000, float(sid), 0) for sid in range(1, 2 * SLOTS + 2)]
    assert [len(unpack_ids(k)) for k, *_ in group_rows(wide)] == [SLOTS, SLOTS, 1]


def test_a_poll_is_one_row_and_a_resent_batch_is_ignored(store: Store) -> None:
    ids = [store.series_id("m1", q) for q in ("voltage_l1_v", "current_l1_a",
                                               "active_energy_import_kwh")]
    polls = [[(sid, 1000 * k, 230.0 + k + i, 0) for i, sid in enumerate(ids)]
             for k in range(1, 4)]
    flush = [s for p in polls for s in group_rows(p)]
    assert store.commit_samples(flush, [("m1", 1000, None)]) == 3
    assert store.commit_samples(flush, []) == 0  # the committer died before answering
    assert stored(store, "SELECT count(*) FROM samples")[0][0] == 3
    assert store.readings.count_readings() == 9
    rows, end, more = store.readings.reading_chunk(0, 2**62, 4)  # whole samples: 6 readings
    assert [v for _, _, v in rows] == [231.0, 232.0, 233.0, 232.0, 233.0, 234.0]
    assert not more or store.readings.count_after(end) == 3
    assert end == store.readings.readings_after(0, 6)[-1].id
    rest, top, more = store.readings.reading_chunk(end, 2**62, 100)
    assert len(rest) == 3 and not more and top == store.readings.last_reading_id()
    # a reading's id is its sample's id * SLOTS + its position
    assert [r.id % SLOTS for r in store.readings.readings_after(0, 9)] == [0, 1, 2] * 3
    counter = store.readings.latest("m1", "active_energy_import_kwh")
    assert counter is not None and (counter.time_ms, counter.value) == (3000, 235.0)


def test_an_import_skips_what_a_poll_stored_in_another_layout(store: Store) -> None:
    a, b = store.series_id("m1", "voltage_l1_v"), store.series_id("m1", "current_l1_a")
    store.commit_samples(group_rows([(a, 1000, 230.0, 0), (b, 1000, 5.0, 0)]), [])
    again = [Reading(T0, "m1", "voltage_l1_v", 1.0)]
    assert store.insert_readings(again) == 1
    clash = [(a, 1000, 999.0, 0), (a, 2000, 231.0, 0), (a, 2000, 232.0, 0)]
    with store._writing() as conn:  # the store's own bulk path
        assert store.insert_series_rows(conn, clash) == 1  # 1000 is known, 2000 twice
    assert store.readings.series_values(a, 0, 3000) == [(1000, 230.0), (2000, 231.0)]


def test_quota_keeps_the_counters_of_a_mixed_sample_under_the_same_id(store: Store) -> None:
    ids = [store.series_id("m1", q) for q in ("active_power_kw", "active_energy_import_kwh",
                                               "voltage_l1_v")]
    flush = [s for k in range(2000)
             for s in group_rows([(sid, 1000 * k, float(k), 0) for sid in ids])]
    store.commit_samples(flush, [])
    first = store.readings.readings_after(0, 3)
    store.quota = store.size_bytes() // 2
    shed = store.enforce_quota(batch=500)
    assert shed > 0 and shed % 2 == 0
    counters = list(store.readings.query_readings(quantity="active_energy_import_kwh"))
    assert [r.value for r in counters] == [float(k) for k in range(2000)]
    # the oldest sample now holds only its counter, at its old sample id
    assert counters[0].id // SLOTS == first[0].id // SLOTS
    assert not store.readings.series_values(ids[0], 0, 0)
    assert len(store.readings.series_values(ids[0], 0, 2_000_000)) == 2000 - shed // 2


def test_migration_packs_readings_and_moves_every_position(tmp_path: Path) -> None:
    """A store of schema 4 (a row per reading) opens as samples with nothing lost: cursors,
    rejected items and the hourly job's position still point at the same readings."""
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO series (device, quantity) VALUES ('m1', 'active_power_kw'), "
                 "('m1', 'active_energy_import_kwh')")
    t0 = to_ms(T0)
    conn.executemany("INSERT INTO readings (id, series, time, value, quality) "
                     "VALUES (?, ?, ?, ?, ?)",
                     [(i, 1 + i % 2, t0 + 1000 * (i // 2), float(i), 2 if i == 5 else 0)
                      for i in range(1, 11)])
    conn.execute("DELETE FROM readings WHERE id = 10")  # AUTOINCREMENT remembers it
    conn.executemany("INSERT INTO sink_cursors VALUES ('influx', ?, ?, 0)",
                     [(READINGS, 4), ("rollups", 7)])
    conn.execute("INSERT INTO rejected (sink, stream, item, message, time) "
                 "VALUES ('influx', 'readings', 3, 'bad', 0)")
    conn.execute("INSERT INTO meta VALUES ('accounting.readings_position', '6')")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with Store.open(path) as store:
        assert store.readings.count_readings() == 9
        assert store.cursors.position("influx", READINGS) == 4 * SLOTS
        assert store.cursors.position("influx", "rollups") == 7  # not a reading id
        assert store.readings.count_after(store.cursors.position("influx", READINGS)) == 5
        assert store.meta.get("accounting.readings_position") == 6 * SLOTS
        rejected = stored(store, "SELECT item FROM rejected")[0][0]
        assert [r.value for r in store.readings.readings_after(rejected - 1, 1)] == [3.0]
        assert [(r.value, r.quality)
                for r in store.readings.readings_after(4 * SLOTS, 1)] == [(5.0, 2)]
        store.insert_readings([Reading(T0 + timedelta(hours=1), "m1", "active_power_kw", 1.0)])
        assert store.readings.last_reading_id() > 10 * SLOTS  # above the deleted newest id


def test_a_full_disk_leaves_no_layout_id_behind_for_another_process_to_reuse(tmp_path: Path):
    path = tmp_path / "e.db"
    with Store.open(path) as store, Store.open(path) as importer:
        power = store.series_id("m1", "active_power_kw")
        volts = store.series_id("m1", "voltage_l1_v")
        pages = store._read("PRAGMA page_count")[0][0]
        store._read(f"PRAGMA max_page_count = {pages + 3}")
        poll = group_rows([(power, 1000, 1.0, 0), (volts, 1000, 2.0, 0)])[0]
        many = [(poll[0], 1000 + k, poll[2], None) for k in range(20000)]
        with pytest.raises(sqlite3.OperationalError, match="full"):  # not "cannot rollback"
            store.commit_samples(many, [])
        store._read("PRAGMA max_page_count = 1000000")
        # another process makes a layout, which may get the id the failed one had
        importer.insert_readings([Reading(from_ms(500), "m1", "voltage_l1_v", 230.0)])
        store.commit_samples(group_rows([(power, 9000, 7.0, 0), (volts, 9000, 231.0, 0)]), [])
        assert importer.readings.series_values(power, 0, 10_000) == [(9000, 7.0)]
        assert importer.readings.series_values(volts, 0, 10_000) == [(500, 230.0), (9000, 231.0)]


def test_a_message_with_a_new_series_is_packed_as_it_will_be_when_delivered_again(store: Store,
        tmp_path: Path) -> None:
    store.series_id("m1", "active_power_kw")  # known; the counter is new
    message = [Reading(T0, "m1", "active_power_kw", 5.0),
               Reading(T0, "m1", "active_energy_import_kwh", 100.0)]
    with StoreWriter(store) as writer:
        writer.submit(list(message))
        writer.flush_sync()
        writer.submit(list(message))  # QoS 1: the broker delivers it again
        writer.flush_sync()
    assert store.readings.count_readings() == 2
    assert stored(store, "SELECT count(*) FROM samples")[0][0] == 1


def test_quota_leaves_a_sample_alone_when_a_cursor_points_inside_it(store: Store) -> None:
    ids = [store.series_id("m1", q) for q in ("active_power_kw", "voltage_l1_v",
                                               "active_energy_import_kwh")]
    store.commit_samples([s for k in range(200) for s in group_rows(
        [(sid, 1000 * k, float(k), 0) for sid in ids])], [])
    first = store.readings.readings_after(0, 3)
    # resend from the first sample's second reading on (deploy/influxdb/README.md)
    store.cursors.move("influx", READINGS, first[0].id)
    assert store.readings.count_after(first[0].id) == 3 * 200 - 1
    store.quota = store.size_bytes() // 2
    assert store.enforce_quota(batch=50) > 0
    rest = store.readings.readings_after(first[0].id, 2)
    assert [(r.quantity, r.value) for r in rest] == [
        ("voltage_l1_v", 0.0), ("active_energy_import_kwh", 0.0)]


@pytest.mark.parametrize("passed", [True, False])
def test_quota_leaves_a_sample_alone_when_a_position_named_by_its_caller_points_inside_it(
        store: Store, passed: bool) -> None:
    ids = [store.series_id("m1", q) for q in ("active_power_kw", "voltage_l1_v",
                                               "active_energy_import_kwh")]
    store.commit_samples([s for k in range(200) for s in group_rows(
        [(sid, 1000 * k, float(k), 0) for sid in ids])], [])
    first = store.readings.readings_after(0, 3)
    # the hourly job's position: the store knows the key only because the caller names it
    store.meta.set("job.position", first[0].id)
    store.quota = store.size_bytes() // 2
    assert store.enforce_quota(batch=50, positions=["job.position"] if passed else []) > 0
    rest = store.readings.readings_after(first[0].id, 2)
    if passed:  # the sample stays whole: the readings after the position are the same
        assert [(r.quantity, r.value) for r in rest] == [
            ("voltage_l1_v", 0.0), ("active_energy_import_kwh", 0.0)]
    else:  # rewritten to its counter: the ids after the position moved
        assert [(r.quantity, r.value) for r in rest][0] != ("voltage_l1_v", 0.0)


def test_a_series_held_in_two_layouts_reads_back_as_one(store: Store) -> None:
    a, b = store.series_id("m1", "voltage_l1_v"), store.series_id("m1", "current_l1_a")
    store.commit_samples(group_rows([(a, 3000, 232.0, 0), (b, 3000, 6.0, 0)]), [])
    store.commit_samples(group_rows([(a, 2000, 231.0, 0)]), [])
    store.commit_samples(group_rows([(a, 1000, 230.0, 0), (b, 1000, 5.0, 0)]), [])
    by_time = [(t, q, v) for t, _, q, v, _ in store.readings.readings_in(0, 4000)]
    assert by_time == [(1000, "current_l1_a", 5.0), (1000, "voltage_l1_v", 230.0),
                       (2000, "voltage_l1_v", 231.0),
                       (3000, "current_l1_a", 6.0), (3000, "voltage_l1_v", 232.0)]
    by_series = [(q, t) for t, _, q, _, _ in store.readings.readings_in(0, 4000, by_series=True)]
    assert by_series == [("current_l1_a", 1000), ("current_l1_a", 3000),
                         ("voltage_l1_v", 1000), ("voltage_l1_v", 2000),
                         ("voltage_l1_v", 3000)]
    assert [r.value for r in store.readings.query_readings(quantity="voltage_l1_v")] == [
        230.0, 231.0, 232.0]
    assert store.readings.series_time_before(a, 3000) == 2000
    assert store.readings.latest("m1", "voltage_l1_v").value == 232.0


def test_a_sparse_import_over_densely_stored_time_finds_what_is_held(store: Store) -> None:
    a, b = store.series_id("m1", "voltage_l1_v"), store.series_id("m1", "current_l1_a")
    store.commit_samples([s for k in range(2000) for s in group_rows(
        [(a, 1000 * k, 230.0, 0), (b, 1000 * k, 5.0, 0)])], [])
    sparse = [(a, 0, 1.0, 0), (a, 999_500, 2.0, 0), (a, 1_999_000, 3.0, 0)]
    with store._writing() as conn:  # the store's own bulk path
        assert store.insert_series_rows(conn, sparse) == 1  # only 999,500 is new
    assert store.readings.series_values(a, 999_000, 1_000_000) == [
        (999_000, 230.0), (999_500, 2.0), (1_000_000, 230.0)]
