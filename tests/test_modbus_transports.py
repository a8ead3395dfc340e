"""Every built-in profile, over every transport, decodes to what the simulator set.

One simulator plays a gateway with one unit per built-in profile; energyd's driver polls it
over Modbus TCP, RTU over TCP, and RTU on a virtual serial line (a socat pty pair). The
simulator's clock stands still, so the values it holds are the values it served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from energyd.clock import ManualClock
from energyd.config.profiles import builtin_names, load_profile
from energyd.drivers.modbus.decode import decode
from energyd.drivers.modbus.link import DevicePoller, LinkSettings, ModbusLink, ReadCode
from energyd.errors import DeviceRefused, DeviceTimeout
from energyd.simulators import MeterSimulator

READ_CODES = {1, 2, 3, 4}
PROFILES = {unit: name for unit, name in enumerate(builtin_names(), start=1)}
START = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)  # a Wednesday morning: full production


def tolerance(spec_type: str, scale: float, expected: float) -> float:
    if spec_type == "float32":
        return abs(expected) * 1e-6 + 1e-9  # float32 keeps 7 significant digits
    if spec_type == "float64":
        return 1e-9 + abs(expected) * 1e-12
    return abs(scale) / 2 + 1e-9  # integer registers round to one step of the scale


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    a, b = str(tmp_path / "ttyS-sim"), str(tmp_path / "ttyS-energyd")
    proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={a}",
                             f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(a) and os.path.exists(b):
                break
            if proc.poll() is not None:
                raise RuntimeError("socat exited")
            import time
            time.sleep(0.02)
        else:
            raise RuntimeError("socat did not create the pty pair")
        yield a, b
    finally:
        proc.terminate()
        proc.wait(5)


async def _gateway(transport: str, clock: ManualClock, pty: tuple[str, str] | None
                   ) -> tuple[MeterSimulator, LinkSettings]:
    if transport == "rtu":
        assert pty is not None
        sim = MeterSimulator(profile=PROFILES, units=PROFILES, framer="rtu",
                             serial_port=pty[0], baudrate=115200, clock=clock)
        await sim.start()
        return sim, LinkSettings(transport="rtu", serial_port=pty[1], baudrate=115200)
    framer = "socket" if transport == "tcp" else "rtu"
    sim = MeterSimulator(profile=PROFILES, units=PROFILES, framer=framer, clock=clock,
                         base_kw=120.0)
    await sim.start()
    return sim, LinkSettings(transport=transport, host="127.0.0.1", port=sim.port)


@pytest.fixture(params=["tcp", "rtu_over_tcp", "rtu"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path
                  ) -> AsyncIterator[tuple[MeterSimulator, LinkSettings, ManualClock]]:
    clock = ManualClock(START)
    pty = request.getfixturevalue("pty_pair") if request.param == "rtu" else None
    sim, settings = await _gateway(request.param, clock, pty)
    try:
        yield sim, settings, clock
    finally:
        await sim.stop()
    # checked at the server, for every request any of these tests made
    assert sim.requests > 0
    assert set(sim.function_codes) <= READ_CODES, sim.function_codes


async def test_every_profile_decodes_to_the_simulated_values(gateway) -> None:
    sim, settings, clock = gateway
    async with ModbusLink(settings) as link:
        for unit, name in PROFILES.items():
            profile = load_profile(name)
            poller = DevicePoller(name, unit, profile, timeout=1.0, clock=clock)
            result = await poller.poll(link)
            assert result.failures == [], (name, result.error)
            expected = sim.unit(unit).values()
            got = {r.quantity: r.value for r in result.readings}
            assert set(got) == {s.quantity for s in profile.registers}, name
            for spec in profile.registers:
                want = expected[spec.quantity]
                assert abs(got[spec.quantity] - want) <= tolerance(spec.type, spec.scale, want), \
                    (name, spec.quantity, got[spec.quantity], want)
            assert all(r.time == START for r in result.readings)  # stamped at the read


async def test_values_are_physically_consistent(gateway) -> None:
    sim, settings, clock = gateway
    async with ModbusLink(settings) as link:
        poller = DevicePoller("sdm", 1 + builtin_names().index("eastron_sdm630"),
                              load_profile("eastron_sdm630"), clock=clock)
        first = {r.quantity: r.value for r in (await poller.poll(link)).readings}
        phases = sum(first[f"active_power_l{i}_kw"] for i in (1, 2, 3))
        assert first["active_power_kw"] == pytest.approx(phases, rel=1e-5)
        assert first["apparent_power_kva"] == pytest.approx(
            first["active_power_kw"] / first["power_factor"], rel=1e-4)
        assert 49.9 < first["frequency_hz"] < 50.1
        assert 0.85 < first["power_factor"] < 1.0
        assert all(220 < first[f"voltage_l{i}_v"] < 240 for i in (1, 2, 3))
        # one hour later the import counter has grown by the integral of the power
        clock.advance(3600)
        second = {r.quantity: r.value for r in (await poller.poll(link)).readings}
        grown = second["active_energy_import_kwh"] - first["active_energy_import_kwh"]
        mean_kw = (first["active_power_kw"] + second["active_power_kw"]) / 2
        assert grown == pytest.approx(mean_kw, rel=0.1)
        assert second["active_energy_export_kwh"] == first["active_energy_export_kwh"]


async def test_swapped_bytes_decode_wrong_until_the_order_is_set(gateway) -> None:
    sim, settings, clock = gateway
    unit = 1 + builtin_names().index("eastron_sdm630")
    sim.unit(unit).faults.order = "BADC"
    async with ModbusLink(settings) as link:
        spec = load_profile("eastron_sdm630").register("voltage_l1_v")
        words = await link.read(ReadCode.INPUT_REGISTERS, spec.address, 2, unit=unit,
                                timeout=1.0)
        want = sim.unit(unit).values()["voltage_l1_v"]
        assert decode(words, "float32", "ABCD") != pytest.approx(want, rel=1e-3)
        assert decode(words, "float32", "BADC") == pytest.approx(want, rel=1e-6)


async def test_faults_exception_and_silence(gateway) -> None:
    sim, settings, clock = gateway
    unit = 1 + builtin_names().index("eastron_sdm630")
    meter = sim.unit(unit)
    async with ModbusLink(settings) as link:
        meter.faults.exceptions[0] = 4
        with pytest.raises(DeviceRefused) as exc:
            await link.read(4, 0, 2, unit=unit, timeout=1.0)
        assert exc.value.exception_code == 4
        meter.faults.exceptions.clear()
        meter.faults.no_reply = True
        with pytest.raises(DeviceTimeout):
            await link.read(4, 0, 2, unit=unit, timeout=0.2)
        meter.faults.no_reply = False
        assert len(await link.read(4, 0, 2, unit=unit, timeout=1.0)) == 2  # link still good


async def test_counter_reset_wrap_and_spike() -> None:
    clock = ManualClock(START)
    async with MeterSimulator(profile="carlo_gavazzi_em24", units=[1], clock=clock,
                              base_kw=100.0) as sim:
        meter = sim.unit(1)
        before = meter.values()
        meter.faults.spike = 3.0
        assert meter.values()["active_power_kw"] == pytest.approx(
            3 * before["active_power_kw"])
        meter.faults.spike = 1.0
        meter.reset_counters()
        assert meter.values()["active_energy_import_kwh"] == 0.0
        rollover = meter.wrap_counters()
        assert rollover == pytest.approx((2**31 - 1) * 0.1)
        high = meter.values()["active_energy_import_kwh"]
        assert high > rollover - 1
        clock.advance(600)
        assert meter.values()["active_energy_import_kwh"] < high  # wrapped past zero
        async with ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
            poller = DevicePoller("em24", 1, load_profile("carlo_gavazzi_em24"), clock=clock)
            got = {r.quantity: r.value for r in (await poller.poll(link)).readings}
        assert got["active_energy_import_kwh"] == pytest.approx(
            meter.values()["active_energy_import_kwh"], abs=0.05)


async def test_only_read_codes_leave_energyd_and_the_server_would_see_others() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async with MeterSimulator(profile="eastron_sdm630", units=[1]) as sim:
        async with ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
            for code in (5, 6, 15, 16, 22, 23, 0, 7, 43):
                with pytest.raises(ValueError):
                    await link.read(code, 0, 1, unit=1, timeout=0.5)
            assert sim.requests == 0  # refused before anything went on the wire
            await link.read(ReadCode.INPUT_REGISTERS, 0, 2, unit=1, timeout=1.0)
        assert set(sim.function_codes) == {4}
        # the check can fail: a write sent by another client is seen at the server
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, retries=0)
        await client.connect()
        rr = await client.write_register(0, 1, device_id=1)
        client.close()
        assert rr.isError()  # and refused
        assert 6 in sim.function_codes


def test_no_write_path_outside_the_simulators() -> None:
    import energyd

    root = Path(energyd.__file__).parent
    sources = [p for p in root.rglob("*.py") if "simulators" not in p.parts]
    sources += list((root.parent / "bench").glob("*.py"))
    assert any(p.parts[-2:] == ("modbus", "link.py") for p in sources)
    for path in sources:
        text = path.read_text(encoding="utf-8")
        forbidden = ["write_coil", "write_register", "readwrite_registers", "mask_write"]
        if "pymodbus" in text:
            forbidden.append(".execute(")  # a raw request could carry any function code
        for word in forbidden:
            assert word not in text, f"{path.name} contains {word}"


async def test_simulator_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        MeterSimulator(host="0.0.0.0")
    await asyncio.sleep(0)


async def test_generic_inline_registers(gateway) -> None:
    from energyd.config.loader import parse_config
    from energyd.config.profiles import device_profile

    sim, settings, clock = gateway
    unit = 1 + builtin_names().index("carlo_gavazzi_em24")
    config = parse_config(
        "devices:\n  - name: g\n    driver: modbus\n    registers:\n"
        "      - {quantity: voltage_l2_v, address: 2, function: 4, type: int32, order: CDAB,"
        " scale: 0.1}\n"
        "      - {quantity: frequency_hz, address: 0x37, function: 4, type: int16, scale: 0.1}\n"
        "    modbus: {host: 127.0.0.1}\n", "plant.yaml")
    poller = DevicePoller("g", unit, device_profile(config.devices[0]), clock=clock)
    async with ModbusLink(settings) as link:
        result = await poller.poll(link)
    want = sim.unit(unit).values()
    got = {r.quantity: r.value for r in result.readings}
    assert got["voltage_l2_v"] == pytest.approx(want["voltage_l2_v"], abs=0.05)
    assert got["frequency_hz"] == pytest.approx(want["frequency_hz"], abs=0.05)


async def test_link_reconnects_after_the_gateway_restarts() -> None:
    clock = ManualClock(START)
    sim = MeterSimulator(profile="eastron_sdm630", units=[1], clock=clock)
    await sim.start()
    port = sim.port
    async with ModbusLink(LinkSettings(host="127.0.0.1", port=port)) as link:
        assert len(await link.read(4, 0, 2, unit=1, timeout=0.5)) == 2
        await sim.stop()
        await asyncio.sleep(0.1)
        from energyd.errors import DeviceError

        with pytest.raises(DeviceError):
            await link.read(4, 0, 2, unit=1, timeout=0.5)
        sim = MeterSimulator(profile="eastron_sdm630", units=[1], clock=clock, port=port)
        await sim.start()
        try:
            assert len(await link.read(4, 0, 2, unit=1, timeout=0.5)) == 2
        finally:
            await sim.stop()


async def test_nan_from_the_meter_is_no_reading_and_no_failure() -> None:
    clock = ManualClock(START)
    async with MeterSimulator(profile="eastron_sdm630", units=[1], clock=clock) as sim:
        sim.unit(1).faults.overrides["voltage_l3_v"] = float("nan")  # an unwired phase
        async with ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
            poller = DevicePoller("m", 1, load_profile("eastron_sdm630"), clock=clock)
            result = await poller.poll(link)
    got = {r.quantity for r in result.readings}
    assert "voltage_l3_v" not in got and "voltage_l2_v" in got
    assert result.unavailable == ["voltage_l3_v"] and result.failures == []


async def test_slow_replies(gateway) -> None:
    import time

    sim, settings, clock = gateway
    slow = 1 + builtin_names().index("eastron_sdm630")
    other = 1 + builtin_names().index("janitza_umg96")
    sim.unit(slow).faults.delay = 0.1
    async with ModbusLink(settings) as link:
        t0 = time.perf_counter()
        assert len(await link.read(4, 0, 2, unit=slow, timeout=0.5)) == 2  # slow but in time
        assert time.perf_counter() - t0 >= 0.1
        sim.unit(slow).faults.delay = 0.35
        with pytest.raises(DeviceTimeout):
            await link.read(4, 0, 2, unit=slow, timeout=0.2)
        # its late reply turns up while the next unit is asked: that unit still gets its own
        words = await link.read(3, 19000, 2, unit=other, timeout=0.5)
        assert decode(words, "float32") == pytest.approx(
            sim.unit(other).values()["voltage_l1_v"], rel=1e-6)


def test_late_reply_coalesced_with_the_next_is_not_lost() -> None:
    """Regression: pymodbus's RTU framer dropped a good frame that arrived in one chunk
    after a stale one (drivers/modbus.py _FramerRTU)."""
    from pymodbus.framer.rtu import FramerRTU
    from pymodbus.pdu import DecodePDU
    from pymodbus.pdu.register_message import ReadInputRegistersResponse

    from energyd.drivers.modbus.link import _FramerRTU

    def frame(unit: int, regs: list[int]) -> bytes:
        pdu = ReadInputRegistersResponse(registers=regs, dev_id=unit)
        return FramerRTU(DecodePDU(False)).buildFrame(pdu)

    chunk = frame(1, [0x4366, 0x8000]) + frame(2, [0x1234, 0x5678])  # stale, then ours
    stock = FramerRTU(DecodePDU(False)).handleFrame(chunk, 2, 0)
    assert stock == (len(chunk), None)  # the stock framer loses the good frame
    used, pdu = _FramerRTU(DecodePDU(False)).handleFrame(chunk, 2, 0)
    assert used == len(chunk) and pdu is not None
    assert pdu.dev_id == 2 and pdu.registers == [0x1234, 0x5678]


async def test_retries_and_busy_replies() -> None:
    async with MeterSimulator(profile="eastron_sdm630", units=[1]) as sim, \
            ModbusLink(LinkSettings(host="127.0.0.1", port=sim.port)) as link:
        sim.unit(1).faults.drop = 1  # one request lost on the line
        with pytest.raises(DeviceTimeout):
            await link.read(4, 0, 2, unit=1, timeout=0.5)
        sim.unit(1).faults.drop = 1
        before = sim.unit(1).requests
        assert len(await link.read(4, 0, 2, unit=1, timeout=1.0, retries=1)) == 2
        assert sim.unit(1).requests - before == 2  # asked twice
        sim.unit(1).faults.exceptions[0] = 6  # device busy, every time
        before = sim.unit(1).requests
        with pytest.raises(DeviceRefused) as exc:
            await link.read(4, 0, 2, unit=1, timeout=0.5, retries=2)
        assert exc.value.exception_code == 6
        assert sim.unit(1).requests - before == 3  # busy is worth asking again
        sim.unit(1).faults.exceptions[0] = 2  # illegal address is not
        before = sim.unit(1).requests
        with pytest.raises(DeviceRefused):
            await link.read(4, 0, 2, unit=1, timeout=0.5, retries=2)
        assert sim.unit(1).requests - before == 1


async def test_the_simulator_refuses_a_read_across_a_readable_range_and_the_planner_avoids_it(
        gateway) -> None:
    sim, settings, clock = gateway
    unit = 1 + builtin_names().index("eastron_sdm630")
    profile = load_profile("eastron_sdm630")
    async with ModbusLink(settings) as link:
        poller = DevicePoller("sdm", unit, profile, timeout=1.0, clock=clock)
        requests = sim.requests
        result = await poller.poll(link)
        assert result.failures == [] and len(result.readings) == len(profile.registers)
        assert sim.requests - requests == 1  # the whole range in one read
        # a device that answered only 0..51 whole: the planner keeps to it, and the
        # simulator refuses what crosses its edge
        narrow = dataclasses.replace(profile, readable={4: ((0, 51), (52, 75))})
        sim.unit(unit).profile = narrow
        try:
            crossing = DevicePoller("sdm", unit, dataclasses.replace(profile, readable={}),
                                    timeout=1.0, clock=clock, max_gap=40)
            requests = sim.requests
            await crossing.poll(link)
            # refused as a whole, then every value read alone (and kept apart for an hour)
            assert len(crossing.isolated) == len(profile.registers)
            assert sim.requests - requests == 1 + len(profile.registers)
            kept = DevicePoller("sdm", unit, narrow, timeout=1.0, clock=clock)
            requests = sim.requests
            ok = await kept.poll(link)
            assert ok.failures == [] and len(ok.readings) == len(profile.registers)
            assert sim.requests - requests == 2
        finally:
            sim.unit(unit).profile = profile
