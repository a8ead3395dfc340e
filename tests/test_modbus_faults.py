"""Modbus faults that must not change how a device is read: garbled replies, exception replies
that are not about the request, and failing units sharing a link with a healthy one.

The meters are energyd's simulator, over real sockets, with its fault switches: `garble`
(the next replies one register short, or with an exception code no device sends),
`exceptions` (a device's own refusal of an address) and `no_reply`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest
from test_modbus_polling import Running, plant

from energyd.config.profiles import load_profile
from energyd.drivers.modbus.link import DevicePoller, LinkSettings, ModbusLink, ReadCode
from energyd.errors import DeviceGarbled, DeviceRefused
from energyd.simulators import MeterSimulator
from energyd.simulators.meter import parse_fault
from energyd.store import Store


@pytest.mark.parametrize("framer", ["socket", "rtu"])
@pytest.mark.parametrize("kind", ["short", "exception", "function"])
async def test_a_garbled_reply_is_a_device_error_at_the_driver_edge(framer: str,
                                                                    kind: str) -> None:
    async with MeterSimulator(profile="eastron_sdm630", units=[1], framer=framer) as sim:
        transport = "tcp" if framer == "socket" else "rtu_over_tcp"
        async with ModbusLink(LinkSettings(transport=transport, host="127.0.0.1",
                                           port=sim.port)) as link:
            sim.unit(1).faults.garble, sim.unit(1).faults.garble_kind = 1, kind
            with pytest.raises(DeviceGarbled, match="garbled reply"):
                await link.read(ReadCode.INPUT_REGISTERS, 0, 18, unit=1, timeout=1.0)
            # the next reply is whole again
            words = await link.read(ReadCode.INPUT_REGISTERS, 0, 18, unit=1, timeout=1.0)
            assert len(words) == 18
            # a device's own refusal is still a refusal, with its code
            sim.unit(1).faults.exceptions[52] = 2
            with pytest.raises(DeviceRefused) as refused:
                await link.read(ReadCode.INPUT_REGISTERS, 52, 2, unit=1, timeout=1.0)
            assert refused.value.exception_code == 2


@pytest.mark.parametrize("function", [ReadCode.HOLDING_REGISTERS, ReadCode.INPUT_REGISTERS])
async def test_a_reply_with_an_odd_byte_count_is_garbled_not_a_timeout(function: ReadCode
                                                                       ) -> None:
    # a Modbus TCP server that counts one byte too many in its replies to address 0
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await reader.read(12):
            tid, unit, code = request[:2], request[6], request[7]
            address, count = int.from_bytes(request[8:10]), int.from_bytes(request[10:12])
            words = b"".join(i.to_bytes(2, "big") for i in range(1, count + 1))
            extra = b"\0" if address == 0 else b""
            pdu = bytes([code, len(words + extra)]) + words + extra
            writer.write(tid + b"\0\0" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu)
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, ModbusLink(LinkSettings(host="127.0.0.1", port=port)) as link:
        with pytest.raises(DeviceGarbled, match="7 bytes for 3 registers"):
            await link.read(function, 0, 3, unit=1, timeout=1.0)
        # a reply that counts right is read, through the same decoder
        assert await link.read(function, 10, 3, unit=1, timeout=1.0) == [1, 2, 3]


async def test_a_garbled_reply_fails_one_poll_and_leaves_the_read_plan_alone() -> None:
    # without its readable range the SDM630 is read in two blocks: one garbled, one not
    profile = dataclasses.replace(load_profile("eastron_sdm630"), readable={})
    poller = DevicePoller("m1", 1, profile, timeout=1.0)
    plan = [str(b) for b in poller.blocks]
    assert any(b.count > 2 for b in poller.blocks)  # merged reads, as planned
    async with MeterSimulator(profile=profile, units=[1]) as sim, \
            ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
        clean = await poller.poll(link)
        assert not clean.failures
        for kind in ("short", "exception", "function"):
            sim.unit(1).faults.garble, sim.unit(1).faults.garble_kind = 1, kind
            bad = await poller.poll(link)
            assert bad.reason == "garbled", bad.error
            assert len(bad.failures) == 1 and "garbled reply" in bad.error
            # the other blocks of the poll were read and decoded
            assert 0 < len(bad.readings) < len(clean.readings)
            assert [str(b) for b in poller.blocks] == plan
            assert not poller.isolated
        again = await poller.poll(link)
    assert not again.failures and len(again.readings) == len(clean.readings)


async def test_a_busy_or_failed_device_does_not_change_the_plan() -> None:
    profile = load_profile("eastron_sdm630")
    poller = DevicePoller("m1", 1, profile, timeout=1.0)
    plan = [str(b) for b in poller.blocks]
    async with MeterSimulator(profile=profile, units=[1]) as sim, \
            ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
        for code in (4, 6):
            sim.unit(1).faults.exceptions[52] = code
            result = await poller.poll(link)
            assert result.reason == "refused" and f"exception {code}" in result.error
            assert [str(b) for b in poller.blocks] == plan
        sim.unit(1).faults.exceptions[52] = 11  # a gateway: the unit behind it is silent
        result = await poller.poll(link)
        assert result.reason == "timeout" and result.timed_out
        assert [str(b) for b in poller.blocks] == plan


async def test_an_isolated_register_is_probed_again_later(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="energyd.drivers.modbus.link")
    profile = load_profile("eastron_sdm630")
    poller = DevicePoller("m1", 1, profile, timeout=1.0)
    poller.reprobe_after = 0.3
    merged = [str(b) for b in poller.blocks]
    async with MeterSimulator(profile=profile, units=[1]) as sim, \
            ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
        sim.unit(1).faults.exceptions[52] = 2  # the device's own: illegal data address
        first = await poller.poll(link)
        assert poller.isolated and "fc4 52..53" in [str(b) for b in poller.blocks]
        assert any(r.quantity == "active_power_l1_kw" for r in first.readings)
        await asyncio.sleep(0.4)
        # still refused at the re-probe: isolated again, and not said again at INFO
        await poller.poll(link)
        assert "fc4 52..53" in [str(b) for b in poller.blocks]
        infos = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and "refused" in infos[0].getMessage()
        # the refusal ends (a firmware update): the next re-probe merges the reads again
        del sim.unit(1).faults.exceptions[52]
        await asyncio.sleep(0.4)
        back = await poller.poll(link)
    assert not back.failures and not poller.isolated
    assert [str(b) for b in poller.blocks] == merged
    assert any("merged reads work again" in r.getMessage() for r in caplog.records)


async def test_a_healthy_unit_waits_at_most_one_timeout_behind_three_failing_ones(
        tmp_path: Path) -> None:
    interval, timeout = 0.6, 0.4
    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2, 3, 4],
                              framer="rtu") as sim:
        for u in (2, 3, 4):
            sim.unit(u).faults.no_reply = True
        text = plant(tmp_path, sim.port, [1, 2, 3, 4], interval=interval, timeout=timeout,
                     backoff_max=interval)
        async with Running(text) as run:
            await asyncio.sleep(2.5)  # every failing unit has failed once by now
            healthy = run.state("m1")
            seen = len(healthy.lateness)
            await asyncio.sleep(8.0)
            late = list(healthy.lateness)[seen:]
            failing = [run.state(f"m{u}") for u in (2, 3, 4)]
            polls, errors = healthy.polls, healthy.errors
    assert all(st.failing == "timeout" for st in failing)
    assert sum(st.polls for st in failing) >= 6  # they were tried, and cost the bus
    assert errors == 0 and len(late) >= 8, (polls, len(late))
    # one timeout at most, plus the scheduling noise of a loaded 2-core machine
    assert max(late) <= timeout + 0.2, sorted(late)[-5:]
    with Store.open(tmp_path / "energyd.db") as store:
        assert store.device_status()["m1"]["errors"] == 0


def test_the_simulator_takes_garble_from_the_command_line() -> None:
    assert parse_fault("2:garble=3/exception") == (2, "garble", "3/exception")
    with pytest.raises(ValueError, match="garble kind"):
        async def go() -> None:
            async with MeterSimulator(units=[2], faults=["2:garble=1/nonsense"]):
                pass
        asyncio.run(go())
