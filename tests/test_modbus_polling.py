"""The bus owner in the running daemon: isolation of failing units and blocks.

Real sockets, the real daemon (polling component only), the real store; the meters are
energyd's simulator playing a serial gateway with several units behind one TCP port.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from energyd.config.loader import parse_config
from energyd.daemon import polling
from energyd.daemon.app import Daemon
from energyd.simulators import MeterSimulator
from energyd.store import Store

READ_CODES = {1, 2, 3, 4}


def plant(tmp_path: Path, port: int, units: list[int], *, transport: str = "rtu_over_tcp",
          interval: float = 0.3, timeout: float = 0.2, backoff_max: float = 0.6,
          profile: str = "eastron_sdm630") -> str:
    devices = "".join(
        f"  - name: m{u}\n    driver: modbus\n    profile: {profile}\n    interval: {interval}\n"
        f"    modbus: {{transport: {transport}, host: 127.0.0.1, port: {port}, unit: {u},"
        f" timeout: {timeout}, backoff_max: {backoff_max}}}\n"
        for u in units)
    return (f"storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.2}}\n"
            f"http: {{enabled: false}}\ndevices:\n{devices}")


class Running:
    """The daemon with only the Modbus pollers, in the test's event loop."""

    def __init__(self, text: str):
        self.daemon = Daemon(parse_config(text, "plant.yaml"), builders=[polling.build])

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.daemon.run(handle_signals=False))
        await asyncio.wait_for(self.daemon.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.daemon.stop()
        await asyncio.wait_for(self.task, 10)

    def owner(self) -> polling.LinkOwner:
        assert self.daemon.context is not None
        (name,) = [k for k in self.daemon.context.health if k.endswith(".poll")]
        return self.daemon.context.health[name].__self__  # type: ignore[attr-defined]

    def state(self, device: str) -> polling.DeviceState:
        return next(s for s in self.owner().states if s.device.name == device)


async def test_a_silent_unit_costs_its_neighbours_at_most_one_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energyd.daemon.polling")
    # long enough that a loaded 2-core CI machine does not time out the healthy units
    interval, timeout = 0.8, 0.4
    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2, 3], framer="rtu") as sim:
        sim.unit(2).faults.no_reply = True
        text = plant(tmp_path, sim.port, [1, 2, 3], interval=interval, timeout=timeout,
                     backoff_max=2.4)
        async with Running(text) as run:
            await asyncio.sleep(6.4)
            dead = {d: (run.state(d).polls, run.state(d).errors) for d in ("m1", "m3")}
            m2 = run.state("m2")
            m2_polls, m2_skipped = m2.polls, m2.skipped
            late = {d: max(run.state(d).lateness) for d in ("m1", "m3")}
            missed = {d: run.state(d).missed for d in ("m1", "m3")}
            # the unit comes back
            sim.unit(2).faults.no_reply = False
            await asyncio.sleep(5.0)
            recovered = run.state("m2")
            assert recovered.failing is None
            assert recovered.polls - recovered.errors >= 2
    slots = 6.4 / interval
    for d in ("m1", "m3"):
        polls, errors = dead[d]
        assert errors == 0
        assert polls >= slots - 2, (d, polls)  # none dropped
        assert missed[d] == 0
        # delayed by one timeout at most (plus the scheduling noise of a busy test machine)
        assert late[d] <= timeout + 0.2, (d, late[d])
    # the silent unit was backed off instead of costing a timeout every slot
    assert m2_skipped >= 2 and m2_polls <= slots / 2, (m2_polls, m2_skipped)
    warnings = [r for r in caplog.records if "m2" in r.getMessage() and
                r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "m2" in r.getMessage() and
                  "answering again" in r.getMessage()]
    assert len(warnings) == 1 and "no reply" in warnings[0].getMessage()
    assert len(recoveries) == 1
    # what was read is in the store, under the right devices
    with Store.open(tmp_path / "energyd.db") as store:
        for d in ("m1", "m2", "m3"):
            rows = list(store.readings.query_readings(device=d, quantity="voltage_l1_v"))
            assert len(rows) >= (2 if d == "m2" else slots - 2), (d, len(rows))
        status = store.device_status()
        assert status["m2"]["errors"] >= 1 and status["m1"]["errors"] == 0
    assert set(sim.function_codes) <= READ_CODES


async def test_an_illegal_address_block_does_not_stop_the_other_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energyd")
    async with MeterSimulator(profile="eastron_sdm630", units=[1], framer="socket") as sim:
        sim.unit(1).faults.exceptions[52] = 2  # active_power_kw, inside the one 0..75 read
        text = plant(tmp_path, sim.port, [1], transport="tcp", interval=0.25)
        async with Running(text) as run:
            await asyncio.sleep(1.6)
            st = run.state("m1")
            polls = st.polls
            blocks = [str(b) for b in st.poller.blocks]
    assert polls >= 4
    # the values of the refused read are read alone from now on (until the next re-probe)
    assert "fc4 52..53" in blocks and "fc4 0..1" in blocks and len(blocks) == 16
    with Store.open(tmp_path / "energyd.db") as store:
        got = {q: len(list(store.readings.query_readings(device="m1", quantity=q))) for q in (
            "voltage_l1_v", "active_power_l3_kw", "apparent_power_kva",
            "active_energy_import_kwh", "frequency_hz", "active_power_kw")}
        status = store.device_status()["m1"]
    assert got["active_power_kw"] == 0
    for q, n in got.items():
        if q != "active_power_kw":
            assert n >= polls - 1, (q, n, polls)
    assert "fc4 52..53" in (status["last_error"] or "")
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING and
                "52..53" in r.getMessage()]
    assert len(refusals) == 1  # once, not every poll
    assert set(sim.function_codes) <= READ_CODES


async def test_devices_bending_the_spec(tmp_path: Path) -> None:
    """single_register, pauses and close_after_poll still read every value."""
    async with MeterSimulator(profile="siemens_pac3200", units=[7]) as sim:
        text = (f"storage: {{path: {tmp_path / 'e.db'}, flush_interval: 0.2}}\n"
                "http: {enabled: false}\ndevices:\n"
                "  - name: pac\n    driver: modbus\n    profile: siemens_pac3200\n"
                "    interval: 0.5\n"
                f"    modbus: {{host: 127.0.0.1, port: {sim.port}, unit: 7, timeout: 0.5,"
                " single_register: true, pause_between_requests: 0.005,"
                " pause_after_connect: 0.01, close_after_poll: true}\n")
        async with Running(text) as run:
            await asyncio.sleep(1.3)
            st = run.state("pac")
        requests = sim.requests
    assert st.polls >= 2 and st.errors == 0
    assert len(st.poller.blocks) == 16
    # every poll read each value alone; a poll under way when the daemon stopped was cut short
    assert 16 * st.polls <= requests < 16 * (st.polls + 1), (requests, st.polls)
    with Store.open(tmp_path / "e.db") as store:
        rows = list(store.readings.query_readings(device="pac",
                                                  quantity="active_energy_import_kwh"))
    assert len(rows) == st.polls


async def test_the_owner_reports_its_link_utilisation_and_warns_when_it_is_full(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="energyd.daemon.polling")
    monkeypatch.setattr(polling, "UTILISATION_WINDOW", 2.0)
    monkeypatch.setattr(polling, "BUSY_CHECK_EVERY", 0.2)
    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2, 3], framer="rtu") as sim:
        for u in (1, 2, 3):
            # one request per poll: 0.3 s of bus per poll, three units every 0.5 s
            sim.unit(u).faults.delay = 0.3
        text = plant(tmp_path, sim.port, [1, 2, 3], interval=0.5, timeout=1.0)
        async with Running(text) as run:
            # the link's first slot comes within one interval (its phase)
            await asyncio.sleep(4.0)
            owner = run.owner()
            full = owner.health()["utilisation"]
            busy_total = run.daemon.context.metrics.link_busy.labels(
                owner.link_id)._value.get()
            for u in (1, 2, 3):
                sim.unit(u).faults.delay = 0.0
            await asyncio.sleep(3.0)
            idle = owner.health()["utilisation"]
    assert full >= 0.9, full
    assert idle < 0.3, idle
    assert busy_total >= 3.0  # seconds of bus time, counted for Prometheus
    warnings = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()
                and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "of the last minute" in warnings[0], warnings
    assert any("busy" in r.getMessage() and "again" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


async def test_one_wake_up_per_tick_serves_every_unit_of_the_link_that_is_due(
        tmp_path: Path) -> None:
    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2, 3, 4, 5],
                              framer="socket") as sim:
        text = plant(tmp_path, sim.port, [1, 2, 3, 4], transport="tcp", interval=0.25,
                     timeout=1.0)
        # a fifth unit on the same link every other tick
        text += text.split("devices:\n")[1].split("  - name: m2")[0].replace(
            "m1", "m5").replace("unit: 1", "unit: 5").replace("interval: 0.25", "interval: 0.5")
        async with Running(text) as run:
            owner = run.owner()
            assert run.daemon.context is not None
            assert not [j for j in run.daemon.context.scheduler.jobs if "m1" in j]
            await asyncio.sleep(0.6)  # the first slot has come
            ticks0, polls0 = owner.ticks, {st.device.name: st.polls for st in owner.states}
            await asyncio.sleep(3.0)
            ticks = owner.ticks - ticks0
            polls = {st.device.name: st.polls - polls0[st.device.name] for st in owner.states}
            late = sorted(owner.lateness)
    assert 10 <= ticks <= 13, ticks  # 12 slots of 0.25 s, one wake-up each
    for name in ("m1", "m2", "m3", "m4"):
        assert ticks - 1 <= polls[name] <= ticks + 1, (name, polls, ticks)
    assert ticks // 2 - 1 <= polls["m5"] <= ticks // 2 + 1, (polls, ticks)
    # served back to back from the tick, each unit no later than the requests before it
    assert late[len(late) // 2] < 0.05, late


async def test_a_long_interval_still_polls_within_a_second_of_the_start(tmp_path: Path) -> None:
    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2], framer="socket") as sim:
        text = plant(tmp_path, sim.port, [1], transport="tcp", interval=900, timeout=1.0)
        text += text.split("devices:\n")[1].replace("m1", "m2").replace(
            "unit: 1", "unit: 2").replace("interval: 900", "interval: 0.25")
        async with Running(text) as run:
            await asyncio.sleep(1.5)
            slow, fast = run.state("m1"), run.state("m2")
            assert slow.polls == 1, slow.polls  # its first slot, not one 900 s away
            assert fast.polls >= 2
            # both started at one tick: the slow unit's slot was a tick of the fast one
            assert slow.start == fast.start
