"""The bus owner is the same for every polled driver: driven through drivers/contracts.py
by a driver that is not Modbus, it keeps its guarantees (healthy units first, backoff of a
silent unit, logging into failure and out of it once, readings into the real store).

The driver here is a small in-process one whose units answer after a short wait, or stay
silent for one timeout, as the test says: what the owner is handed is only the contract.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from energyd.clock import Clock
from energyd.config.loader import parse_config
from energyd.daemon import polling
from energyd.daemon.app import Daemon
from energyd.daemon.context import Component, Context
from energyd.drivers.contracts import Polled
from energyd.model import PollValues
from energyd.store import Store

WIRE = 0.005  # seconds a unit takes to answer
TIMEOUT = 0.15  # seconds a silent unit holds the link


@dataclass
class Outcome:
    values: list[PollValues]
    error: str | None = None
    reason: str | None = None
    silent: bool = False
    parts: dict[str, str] = field(default_factory=dict)

    def failed_parts(self) -> dict[str, str]:
        return self.parts


@dataclass
class Unit:
    name: str
    address: int
    backoff_max: float = 0.6
    mute: bool = False  # no answer: the test turns it on and off
    refuse: bool = False  # one part refused, the others answered
    reads: int = 0


class CountingBus:
    """A PolledLink whose units answer with how often they were read."""

    opened: list[CountingBus] = []

    def __init__(self, link_id: str, devices: list[Any], clock: Clock):
        self.units = [Unit(d.name, i + 1) for i, d in enumerate(devices)]
        self.requests = 0
        self.resets = 0
        self.busy = False
        self.overlapped = False
        CountingBus.opened.append(self)

    async def __aenter__(self) -> CountingBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def read(self, unit: Unit) -> Unit | None:
        self.overlapped |= self.busy  # one request on the wire at a time
        self.busy = True
        try:
            self.requests += 1
            await asyncio.sleep(TIMEOUT if unit.mute else WIRE)
            unit.reads += 1
            return None if unit.mute else unit
        finally:
            self.busy = False

    def finish(self, unit: Unit, raw: Unit | None) -> Outcome:
        if raw is None:
            return Outcome([], f"unit {unit.address}: no reply", "timeout", silent=True)
        values = PollValues(datetime.now(UTC), unit.name, ("active_energy_import_kwh",),
                            [float(unit.reads)])
        if unit.refuse:
            return Outcome([values], "part b: refused", "refused",
                           parts={"b": "part b: refused"})
        return Outcome([values])

    def reset(self) -> None:
        self.resets += 1


COUNTING = Polled(link_of=lambda d: "counting:bus", open_link=CountingBus)


def build(ctx: Context) -> list[Component]:
    return [polling.LinkOwner(ctx, "counting:bus", list(ctx.config.devices), COUNTING)]


def config(tmp_path: Path) -> str:
    # the devices' own options are the driver's business; these serve as any device would
    devices = "".join(
        f"  - {{name: u{i}, driver: modbus, profile: eastron_sdm630, interval: 0.2,"
        f" modbus: {{host: 127.0.0.1}}}}\n" for i in (1, 2, 3))
    return (f"storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.1}}\n"
            f"http: {{enabled: false}}\ndevices:\n{devices}")


async def test_the_owner_drives_any_polled_driver_through_the_contract(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energyd.daemon.polling")
    CountingBus.opened.clear()
    daemon = Daemon(parse_config(config(tmp_path), "plant.yaml"), builders=[build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await asyncio.wait_for(daemon.ready.wait(), 10)
    try:
        (bus,) = CountingBus.opened
        owner = next(f.__self__ for k, f in daemon.context.health.items()  # type: ignore[union-attr]
                     if k.endswith(".poll"))
        u1, u2, u3 = bus.units
        u2.mute = True
        u3.refuse = True
        await asyncio.sleep(2.0)
        states = {st.device.name: st for st in owner.states}
        silent = states["u2"]
        # the silent unit is backed off: far fewer reads than its neighbours, slots skipped
        assert silent.failing == "timeout" and silent.skipped > 0
        assert u2.reads < u1.reads / 2, (u2.reads, u1.reads)
        # a healthy unit waits at most one timeout behind the silent one
        assert max(states["u1"].lateness) < TIMEOUT + 0.2
        assert states["u1"].errors == 0 and states["u1"].polls >= 6
        u2.mute = False
        await asyncio.sleep(1.5)
        assert silent.failing is None and silent.last_ok_ms is not None
        assert not bus.overlapped
        health = owner.health()
        assert health["devices"]["u2"]["unit"] == 2 and health["devices"]["u3"]["errors"] > 0
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)

    messages = [r.getMessage() for r in caplog.records]
    # into failure once, out of it once; a refused part once, however many polls it failed
    assert sum("u2 (unit 2 on counting:bus)" in m and "backing off" in m for m in messages) == 1
    assert sum("u2 (unit 2 on counting:bus): answering again" in m for m in messages) == 1
    assert sum(m.startswith("u3: part b: refused") for m in messages) == 1

    with Store.open(tmp_path / "energyd.db") as store:
        stored = {d: list(store.readings.query_readings(
                      device=d, quantity="active_energy_import_kwh")) for d in ("u1", "u2", "u3")}
    # every poll that answered is in the store, the refused part's poll with its good parts
    assert len(stored["u1"]) == states["u1"].polls
    assert len(stored["u3"]) == states["u3"].polls >= 6
    assert 0 < len(stored["u2"]) < len(stored["u1"])
