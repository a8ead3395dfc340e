"""The store's repositories: what the accounting and the air job read and write through."""

from __future__ import annotations

import contextlib
import inspect
import json
import sqlite3
from typing import Any, Protocol

import pytest

from energyd.accounting import repositories
from energyd.store import Store
from energyd.store.episodes import EpisodeChange
from energyd.store.statements import Acceptance, NewStatement

H = 3_600_000


def _row(device: str, hour: int, mwh: float, source: str = "meter") -> tuple[Any, ...]:
    return (device, hour, mwh, source, 1.0, mwh * 0.5, mwh * 0.5, 0.5, "f1", "{}")


def _protocols() -> list[tuple[str, type]]:
    return [(name, obj) for name, obj in vars(repositories).items()
            if inspect.isclass(obj) and issubclass(obj, Protocol) and obj is not Protocol
            and obj.__module__ == repositories.__name__]


def _members(proto: type) -> dict[str, Any]:
    return {k: v for k, v in vars(proto).items() if not k.startswith("_")}


@pytest.mark.parametrize("name", [n for n, _ in _protocols() if n != "AccountingStore"])
def test_every_repository_interface_of_the_accounting_is_met_by_the_store(
        store: Store, name: str) -> None:
    proto = dict(_protocols())[name]
    attr = {"RollupRepository": "rollups", "StatementRepository": "statements",
            "CertificateRepository": "allocations", "MetaRepository": "meta",
            "ReadingRepository": "readings"}[name]
    repo = getattr(store, attr)
    for method, spec in _members(proto).items():
        got = getattr(repo, method, None)
        assert got is not None, f"store.{attr} has no {method}"
        want = list(inspect.signature(spec).parameters)[1:]  # without self
        assert list(inspect.signature(got).parameters) == want, f"store.{attr}.{method}"


def test_the_store_itself_meets_the_accounting_store_interface(store: Store) -> None:
    proto = dict(_protocols())["AccountingStore"]
    for member in _members(proto):
        assert hasattr(store, member), member


def test_an_atomic_block_writes_across_repositories_or_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        assert store.rollups.write_changed([_row("m1", 0, 1.0)], {"m1": (0, H)}) == 1
        store.allocations.reallocate(0, [("c1", "m1", 0, 1.0)])
        raise RuntimeError("a failure half way")
    assert store.rollups.rows(0, H) == [] and store.allocations.used_before(H) == {}
    with store.atomic():
        store.rollups.write_changed([_row("m1", 0, 1.0)], {"m1": (0, H)})
        store.allocations.reallocate(0, [("c1", "m1", 0, 1.0)])
        with store.atomic():  # joins the outer block
            store.meta.set("k", [1, 2])
    assert len(store.rollups.rows(0, H)) == 1 and store.allocations.used_before(H) == {"c1": 1.0}
    assert store.meta.get("k") == [1, 2]


def test_rollups_are_written_only_where_they_changed_each_with_a_new_change_number(
        store: Store) -> None:
    spans = {"m1": (0, 3 * H), "m2": (0, 3 * H)}
    rows = [_row(d, h * H, 1.0) for d in ("m1", "m2") for h in range(3)]
    assert store.rollups.write_changed(rows, spans) == 6
    seq = store.meta.get("seq")
    assert store.rollups.write_changed(rows, spans) == 0
    assert store.meta.get("seq") == seq  # the sinks see nothing new
    rows[1] = _row("m1", H, 2.0, "estimated")
    # one device's span differs: read per device, and a row outside its span alone
    assert store.rollups.write_changed(rows + [_row("m2", 5 * H, 1.0)],
                                       {"m1": (0, 3 * H), "m2": (0, 2 * H)}) == 2
    assert store.meta.get("seq") == seq + 2
    assert store.rollups.rows(H, 2 * H, ["m1"]) == [_row("m1", H, 2.0, "estimated")]
    assert store.rollups.first_hour() == 0
    assert store.rollups.first_hours(H, 6 * H) == {"m1": H, "m2": H}


def test_a_replacing_statement_leaves_the_replaced_one_on_record(store: Store) -> None:
    [old] = store.statements.add([NewStatement("acc", 0, 10 * H, 100.0, "SG", "A")], 1)
    [new] = store.statements.add([NewStatement("acc", 0, 10 * H, 90.0, "SG", "A-R", old)], 2)
    assert [s.id for s in store.statements.current()] == [new]
    assert [s.id for s in store.statements.current(5 * H, 20 * H)] == [new]
    assert store.statements.current(10 * H, 20 * H) == []
    [replaced] = store.statements.replaced(0, H)
    assert (replaced.id, replaced.replaced_by, replaced.kwh) == (old, new, 100.0)
    assert store.statements.first_start("acc") == 0 and store.statements.first_start("x") is None
    store.statements.accept(Acceptance(new, 5, "li.wei", "confirmed", json.dumps({"a": 1})))
    assert store.statements.acceptances() == [
        Acceptance(new, 5, "li.wei", "confirmed", '{"a": 1}')]


def test_rollups_give_the_hourly_energy_and_the_metered_split_of_chosen_devices(
        store: Store) -> None:
    gap = ("m1", H, 0.1, "estimated", 0.5, 0.05, 0.05, 0.5, "f1",
           json.dumps({"kwh": {"meter": 50.0, "estimated": 50.0}, "statements": [1]}))
    rows = [_row("m1", 0, 1.0), gap, _row("m2", 0, 2.0), _row("m1", 2 * H, 3.0)]
    store.rollups.write_changed(rows, {"m1": (0, 3 * H), "m2": (0, 3 * H)})
    assert sorted(store.rollups.energy(0, 2 * H, ["m1"])) == [
        ("m1", 0, 1.0, "meter"), ("m1", H, 0.1, "estimated")]
    assert store.rollups.energy(0, 2 * H, []) == []
    assert sorted(store.rollups.metered(0, 3 * H, ["m1", "m2"])) == [
        ("m1", 0, 1.0, "meter", 1.0, None),
        ("m1", H, 0.1, "estimated", 0.5, {"meter": 50.0, "estimated": 50.0}),
        ("m1", 2 * H, 3.0, "meter", 1.0, None), ("m2", 0, 2.0, "meter", 1.0, None)]


def test_episodes_are_kept_each_change_under_a_new_number(store: Store) -> None:
    def episodes() -> list[tuple]:  # read as another process would
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return conn.execute("SELECT device, state, started, ended, detail FROM alerts "
                                "ORDER BY id").fetchall()

    (i,) = store.episodes.save([EpisodeChange(0, "reconciliation", "acc", "active", 0, None,
                                              {"x": 1})])
    seq = store.meta.get("seq")
    assert episodes() == [("acc", "active", 0, None, '{"x": 1}')]
    # an episode that starts and ends in one save: the end follows the start's new id
    store.episodes.save([EpisodeChange(0, "reconciliation", "acc", "active", H, None, {}),
                         EpisodeChange(0, "reconciliation", "acc", "resolved", H, 2 * H, {},
                                       follows=0)])
    assert [e[1:4] for e in episodes()] == [("active", 0, None), ("resolved", H, 2 * H)]
    assert int(store.meta.get("seq")) == int(seq) + 2
    store.episodes.save([EpisodeChange(i, "reconciliation", "acc", "resolved", 0, 15,
                                       {"x": 2})])
    [e] = store.episodes.started_at("reconciliation", "acc", 0)
    assert (e.id, e.state, e.ended, e.detail) == (i, "resolved", 15, {"x": 2})
    assert store.episodes.started_at("reconciliation", "other", 0) == []
    assert store.episodes.latest_active("reconciliation", "acc") is None


def test_air_hours_are_written_only_where_they_changed(store: Store) -> None:
    row = ("c1", 0, 50.0, 400.0, 7.5, 0.8, "{}")
    assert store.air.write_changed([row]) == 1
    # a recompute's float one unit of the last place off is no change
    assert store.air.write_changed([("c1", 0, 50.0 + 1e-13, 400.0, 7.5, 0.8, "{}")]) == 0
    assert store.air.write_changed([("c1", 0, 51.0, 400.0, 7.5, 0.8, "{}")]) == 1


def test_air_hours_give_the_kwh_of_chosen_stations(store: Store) -> None:
    store.air.write_changed([("c1", 0, 50.0, 400.0, 7.5, 0.8, "{}"),
                             ("c1", H, 40.0, 300.0, 8.0, 0.7, "{}"),
                             ("c2", 0, 10.0, 80.0, 7.5, 0.2, "{}")])
    assert sorted(store.air.kwh(["c1"], 0, 2 * H)) == [("c1", 0, 50.0), ("c1", H, 40.0)]
    assert store.air.kwh(["c2"], H, 2 * H) == [] and store.air.kwh([], 0, 2 * H) == []
