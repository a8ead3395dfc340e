"""DL/T 645-2007: the codec, every built-in identifier over a serial line (a socat pty
pair) and over TCP, faults on a shared bus, the bus owner in the daemon, and scan.

The simulator's clock stands still, so the values it serves are the values it set; every
request any test made is checked at the simulator for its control code.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from energyd.cli import cli
from energyd.clock import ManualClock
from energyd.config.loader import load_config, parse_config
from energyd.daemon import polling
from energyd.daemon.app import Daemon
from energyd.drivers.dlt645 import codec
from energyd.drivers.dlt645.codec import FrameError, ReadCode
from energyd.drivers.dlt645.link import BusSettings, Dlt645Link, MeterPoller
from energyd.drivers.dlt645.profile import builtin_names, load_profile
from energyd.drivers.dlt645.scan import parse_addresses, scan
from energyd.errors import ConfigError, DeviceError, DeviceRefused, DeviceTimeout
from energyd.simulators.dlt645 import READ_CODES, Dlt645Simulator
from energyd.store import Store

START = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)  # a Wednesday morning: full production
A1, A2, A3 = "000000000001", "000000000002", "000012345678"
SAMPLE = Path(__file__).resolve().parent.parent / "energyd/drivers/dlt645/sample.yaml"


# --- the codec ---------------------------------------------------------------------------


def test_the_codec_builds_read_requests_and_nothing_else() -> None:
    assert {int(c) for c in ReadCode} == {0x11, 0x12, 0x13}
    for code in range(256):
        with pytest.raises(ValueError, match="not a read"):
            codec.request(A1, code)  # type: ignore[arg-type]  # a plain number never passes
    # the frame the standard's examples give for a broadcast read of 00010000
    assert codec.request(codec.BROADCAST, ReadCode.READ_DATA, codec.identifier_bytes(
        "00010000")).hex(" ").upper() == \
        "FE FE FE FE 68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16"
    for bad in ("00000000001", "0000000000A1", "00000000001x"):
        with pytest.raises(ValueError, match="not 12 BCD digits"):
            codec.read_data(bad, "00010000")
    # the address goes on the wire last two digits first
    assert codec.read_address(preamble=False)[1:7] == b"\xaa" * 6
    assert codec.read_data(A3, "02010100", preamble=False)[1:7] == bytes.fromhex(
        "785634120000")


async def test_the_simulator_would_see_any_other_control_code() -> None:
    # the check every test makes at the simulator can fail: a write reaches it as a write
    from energyd.simulators.dlt645 import reply_frame

    async with Dlt645Simulator(addresses=[A1]) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(reply_frame(A1, 0x14, codec.identifier_bytes("04000101") + b"\0" * 8))
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(64), 2)
        writer.close()
    assert sim.unexpected == {0x14}
    frame = codec.take_frame(bytearray(reply))
    assert frame is not None and frame.abnormal  # and a meter refuses it


def test_bcd_values_signs_and_garbage() -> None:
    assert codec.decode_bcd(bytes.fromhex("56341200"), 2, False) == 1234.56  # 00123456
    assert codec.decode_bcd(bytes.fromhex("345692"), 4, True) == -12.5634  # sign bit set
    for value, size, decimals in [(-12.5634, 3, 4), (0.958, 2, 3), (79.9999, 3, 4),
                                  (-0.5, 2, 3), (999999.99, 4, 2)]:
        raw = codec.encode_bcd(value, size, decimals, value < 0 or size != 4)
        assert codec.decode_bcd(raw, decimals, value < 0 or size != 4) == value
    with pytest.raises(FrameError, match="not BCD"):
        codec.decode_bcd(b"\x1a\x00", 1, False)
    broken = bytearray(codec.read_data(A1, "00010000", preamble=False))
    broken[-2] ^= 0xFF
    buffer = bytearray(b"\x00\xfe" + bytes(broken) + codec.read_data(A2, "00010000"))
    with pytest.raises(FrameError, match="checksum"):
        codec.take_frame(buffer)
    frame = codec.take_frame(buffer)  # the bad frame is consumed; the next one is whole
    assert frame is not None and frame.address == A2 and frame.control == 0x11


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 3))
def test_any_bytes_give_frames_or_frame_errors_and_are_used_up(noise: bytes, n: int) -> None:
    good = codec.read_data(A1, "00010000")
    buffer = bytearray(noise + good * n)
    frames = 0
    for _ in range(len(buffer) + 1):
        before = len(buffer)
        try:
            frame = codec.take_frame(buffer)
        except FrameError:
            assert len(buffer) < before  # a bad frame is consumed
            continue
        if frame is None:
            break
        frames += 1
        assert len(buffer) < before
    else:
        raise AssertionError("take_frame made no progress")
    assert frames >= (n if b"\x68" not in noise else 0)


@given(st.integers(0, 10**8 - 1), st.integers(0, 4), st.booleans())
def test_bcd_round_trip(digits: int, decimals: int, negative: bool) -> None:
    value = digits / 10**decimals * (-1 if negative else 1)
    signed_limit = 8 * 10**7 - 1
    raw = codec.encode_bcd(value, 4, decimals, signed=True)
    assert codec.decode_bcd(raw, decimals, True) == pytest.approx(
        math.copysign(min(digits, signed_limit), value) / 10**decimals, abs=0)
    assert codec.decode_bcd(codec.encode_bcd(abs(value), 4, decimals, False), decimals,
                            False) == pytest.approx(digits / 10**decimals, abs=0)


def test_a_profile_file_with_errors_is_refused_at_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "meter.yaml"
    bad.write_text('identifiers:\n  "00010000":\n    - {quantity: active_energy_kwh, '
                   'format: XXXXXX.XX}\n  "0201FF":\n    - {quantity: voltage_l1_v, '
                   'format: XXX.XX}\n')
    with pytest.raises(ConfigError) as err:
        load_profile(str(bad))
    text = str(err.value)
    assert "meter.yaml:3" in text and "unknown quantity 'active_energy_kwh'" in text
    assert "0201FF" in text and "XXX.XX" in text
    # named by a device, the same file stops the configuration at the device's line, with
    # the profile's own line (check-config and start-up load it through the options model)
    config = tmp_path / "plant.yaml"
    config.write_text("devices:\n  - name: m\n    driver: dlt645\n    dlt645: {serial_port: "
                      "/dev/ttyS1, address: '1', profile: meter.yaml}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    text = str(err.value)
    assert f"{config}:4" in text and "DL/T 645 profile has errors" in text, text
    assert "meter.yaml:3" in text and "unknown quantity 'active_energy_kwh'" in text, text
    result = CliRunner().invoke(cli, ["check-config", "-c", str(config)])
    assert result.exit_code == 2 and "meter.yaml:3" in result.output, result.output


# --- over a pty and over TCP --------------------------------------------------------------


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    a, b = str(tmp_path / "ttyS-sim"), str(tmp_path / "ttyS-energyd")
    proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={a}",
                             f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(250):
            if os.path.exists(a) and os.path.exists(b):
                break
            if proc.poll() is not None:
                raise RuntimeError("socat exited")
            time.sleep(0.02)
        else:
            raise RuntimeError("socat did not create the pty pair")
        yield a, b
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture(params=["tcp", "serial"])
async def bus(request: pytest.FixtureRequest
              ) -> AsyncIterator[tuple[Dlt645Simulator, BusSettings, ManualClock]]:
    clock = ManualClock(START)
    if request.param == "serial":
        sim_port, our_port = request.getfixturevalue("pty_pair")
        sim = Dlt645Simulator(addresses=[A1, A2, A3], serial_port=sim_port, baudrate=9600,
                              clock=clock)
        settings = BusSettings(transport="serial", serial_port=our_port, baudrate=9600)
    else:
        sim = Dlt645Simulator(addresses=[A1, A2, A3], clock=clock)
        settings = None
    await sim.start()
    if settings is None:
        settings = BusSettings(transport="tcp", host="127.0.0.1", port=sim.port)
    try:
        yield sim, settings, clock
    finally:
        await sim.stop()
    # checked at the simulator, for every request the test made
    assert sim.requests > 0
    assert set(sim.control_codes) <= READ_CODES, sim.control_codes
    assert not sim.unexpected


async def test_every_identifier_decodes_to_the_simulated_values(bus) -> None:
    sim, settings, clock = bus
    async with Dlt645Link(settings) as link:
        for name in builtin_names():
            profile = load_profile(name)
            for address in (A1, A2, A3):
                result = await MeterPoller(address, address, profile, clock=clock).poll(link)
                assert result.failures == [], (name, result.error)
                got = {r.quantity: r.value for r in result.readings}
                served = sim.served(address)
                assert set(got) == set(profile.quantities), name
                for quantity, value in got.items():
                    assert value == served[quantity], (name, address, quantity)
                assert all(r.time == START for r in result.readings)
    # and the values are a meter's: P = sum of the phases, V x I x PF per phase
    v = sim.served(A1)
    assert v["active_power_kw"] == pytest.approx(
        v["active_power_l1_kw"] + v["active_power_l2_kw"] + v["active_power_l3_kw"], abs=3e-4)
    for ph in ("l1", "l2", "l3"):
        assert v[f"active_power_{ph}_kw"] == pytest.approx(
            v[f"voltage_{ph}_v"] * v[f"current_{ph}_a"] * v["power_factor"] / 1000, rel=2e-3)
    assert 45 < v["frequency_hz"] < 55 and v["active_energy_import_kwh"] > 0


async def test_replies_in_parts_are_read_with_follow_ups(bus) -> None:
    sim, settings, clock = bus
    sim.meter(A2).faults.parts = 2
    async with Dlt645Link(settings) as link:
        result = await MeterPoller(A2, A2, load_profile("dlt645_2007"), clock=clock).poll(link)
    assert result.failures == []
    served = sim.served(A2)
    assert {r.quantity: r.value for r in result.readings} == {
        q: served[q] for q in load_profile("dlt645_2007").quantities}
    assert sim.control_codes[0x12] > 0


async def test_error_replies_are_refusals_and_the_other_identifiers_are_read_on(bus) -> None:
    sim, settings, clock = bus
    sim.meter(A1).faults.refuse.add("0201FF00")
    sim.meter(A2).faults.error = 0x04
    profile = load_profile("dlt645_2007")
    async with Dlt645Link(settings) as link:
        one = await MeterPoller(A1, A1, profile, clock=clock).poll(link)
        two = await MeterPoller(A2, A2, profile, clock=clock).poll(link)
    assert [f.block for f in one.failures] == ["0201FF00"]
    assert isinstance(one.failures[0].error, DeviceRefused)
    assert one.failures[0].error.exception_code == 0x02
    assert "no such data" in str(one.failures[0].error)
    assert {r.quantity for r in one.readings} == set(profile.quantities) - {
        "voltage_l1_v", "voltage_l2_v", "voltage_l3_v"}
    assert one.reason == "refused"
    assert len(two.failures) == len(profile.identifiers) and not two.readings
    assert all(f.error.exception_code == 0x04 for f in two.failures)  # type: ignore[attr-defined]
    assert "password error" in two.error  # type: ignore[operator]


async def test_an_identifier_the_meter_does_not_have_is_set_aside_until_a_reprobe(
        bus) -> None:
    sim, settings, clock = bus
    sim.meter(A1).faults.refuse.add("00030000")
    profile = load_profile("dlt645_2007")
    poller = MeterPoller(A1, A1, profile, clock=clock)
    asked = lambda: sim.meter(A1).requests  # noqa: E731
    async with Dlt645Link(settings) as link:
        first = await poller.poll(link)
        n = asked()
        second = await poller.poll(link)
        assert asked() - n == len(profile.identifiers) - 1  # not asked again
        assert list(poller.set_aside) == ["00030000"]
        poller.set_aside["00030000"] = 0.0  # the re-probe is due
        sim.meter(A1).faults.refuse.clear()  # a firmware update
        third = await poller.poll(link)
        # an error that is not "no such data" changes nothing about what is asked (one
        # link for the test: socat ends a pty pair once its end has been closed)
        sim.meter(A2).faults.error = 0x04
        poller2 = MeterPoller(A2, A2, profile, clock=clock)
        await poller2.poll(link)
        again = await poller2.poll(link)
    assert [f.block for f in first.failures] == ["00030000"]
    assert second.failures == [] and "reactive_energy_import_kvarh" not in {
        r.quantity for r in second.readings}
    assert third.failures == [] and not poller.set_aside
    assert "reactive_energy_import_kvarh" in {r.quantity for r in third.readings}
    assert len(again.failures) == len(profile.identifiers) and not poller2.set_aside


async def test_a_dead_address_costs_the_others_at_most_one_timeout(bus) -> None:
    sim, settings, clock = bus
    timeout = 0.4
    sim.meter(A2).faults.no_reply = True
    profile = load_profile("dlt645_2007")
    pollers = [MeterPoller(a, a, profile, timeout=timeout, clock=clock) for a in (A1, A2, A3)]
    async with Dlt645Link(settings) as link:
        await pollers[0].poll(link)  # connected and warm
        started = time.monotonic()
        results = [await p.poll(link) for p in pollers]
        elapsed = time.monotonic() - started
    assert results[0].failures == [] and results[2].failures == []
    assert isinstance(results[1].failures[0].error, DeviceTimeout)
    assert len(results[1].failures) == 1  # the dead meter's poll ends at its first silence
    assert sim.meter(A2).requests == 1
    # two healthy polls of 10 requests each take milliseconds; the dead meter one timeout
    assert timeout <= elapsed < 2 * timeout, elapsed


async def test_a_slow_meters_late_reply_is_not_taken_for_its_neighbours(bus) -> None:
    sim, settings, clock = bus
    sim.meter(A1).faults.slow = 0.3
    profile = load_profile("dlt645_2007_single")
    async with Dlt645Link(settings) as link:
        late = await MeterPoller(A1, A1, profile, timeout=0.15, clock=clock).poll(link)
        await asyncio.sleep(0.05)
        # the late reply from A1 arrives while A3 is asked; it is passed over
        sim.meter(A3).faults.slow = 0.2
        ok = await MeterPoller(A3, A3, profile, timeout=1.0, clock=clock).poll(link)
        assert link.passed_over >= 1
    assert isinstance(late.failures[0].error, DeviceTimeout)
    assert ok.failures == [] and {r.quantity: r.value for r in ok.readings} == {
        q: sim.served(A3)[q] for q in profile.quantities}


async def test_a_reply_under_way_at_the_timeout_is_waited_for_at_the_lines_speed(
        pty_pair: tuple[str, str]) -> None:
    # 300 baud: the request takes 0.73 s to send, and the timeout counts from its end
    # (0.93 s); the reply begins at 0.5 s and its last 6 bytes, 0.22 s on this line, come
    # at 1.05 s: awaited, as the bytes of a reply on the line
    clock = ManualClock(START)
    async with Dlt645Simulator(addresses=[A1], serial_port=pty_pair[0], clock=clock) as sim:
        sim.meter(A1).faults.slow = 0.5
        sim.meter(A1).faults.trickle = 0.55
        settings = BusSettings(transport="serial", serial_port=pty_pair[1], baudrate=300)
        async with Dlt645Link(settings) as link:
            started = time.monotonic()
            data = await link.read(A1, "00010000", timeout=0.2)
            took = time.monotonic() - started
            sim.meter(A1).faults.trickle = 0.0
            sim.meter(A1).faults.slow = 0.0
            assert data == await link.read(A1, "00010000", timeout=0.2)
    assert 0.95 < took < 2.0, took
    assert settings.line_seconds(20) == pytest.approx(20 * 11 / 300)


async def test_a_reply_that_stops_half_way_times_out_once_its_rest_is_overdue(
        pty_pair: tuple[str, str]) -> None:
    async with Dlt645Simulator(addresses=[A1], serial_port=pty_pair[0]) as sim:
        sim.meter(A1).faults.slow = 0.1
        sim.meter(A1).faults.trickle = 5.0  # the last bytes come far too late
        settings = BusSettings(transport="serial", serial_port=pty_pair[1], baudrate=300)
        async with Dlt645Link(settings) as link:
            started = time.monotonic()
            with pytest.raises(DeviceTimeout):
                await link.read(A1, "00010000", timeout=0.2)
            took = time.monotonic() - started
    # 0.73 s to send, the timeout, then the rest's time at 300 baud, and no more: not 5 s
    assert 0.9 < took < 2.5, took


async def test_scan_finds_one_meter_by_broadcast_and_several_by_address(bus) -> None:
    sim, settings, clock = bus
    async with Dlt645Link(settings) as link:
        heard, hits = await scan(link, parse_addresses("1-4,000012345678"), timeout=0.3)
        assert heard.outcome == "several meters answered"
        assert [h.address for h in hits] == [A1, A2, A3]
        assert {h.profile for h in hits} == {"dlt645_2007"}
        assert hits[0].voltage_v == sim.served(A1)["voltage_l1_v"]
        # alone on the bus, a meter answers the broadcast: its address, no candidates
        for a in (A1, A2):
            sim.meter(a).faults.no_reply = True
        heard, hits = await scan(link, [], timeout=0.3)
        assert heard.address == A3 and heard.outcome == "one meter"
        assert [(h.address, h.found_by) for h in hits] == [(A3, "broadcast")]
        # a meter that refuses the blocks is named with the one-value-per-identifier profile
        sim.meter(A3).faults.refuse.update({"0201FF00", "0202FF00", "0203FF00", "0206FF00"})
        heard, hits = await scan(link, [], timeout=0.3)
        assert hits[0].profile == "dlt645_2007_single"
    assert sim.control_codes[0x13] == 3


async def test_search_finds_every_meter_of_a_multi_drop_bus_by_its_address_ending() -> None:
    # 01 ends three addresses: the search goes one byte up under it; 78 ends one
    addresses = [A1, "000000000101", "000000020301", A3]
    async with Dlt645Simulator(addresses=addresses, clock=ManualClock(START)) as sim:
        sim.meter(A3).faults.refuse.add("00010000")  # refusing still says who it is
        settings = BusSettings(transport="tcp", host="127.0.0.1", port=sim.port)
        async with Dlt645Link(settings) as link:
            heard, hits = await scan(link, [], timeout=0.05, search_bus=True)
    assert heard.outcome == "several meters answered"
    assert sorted(h.address for h in hits) == sorted(addresses)
    assert {h.found_by for h in hits} == {"search"}
    assert {h.profile for h in hits} == {"dlt645_2007"}
    assert [h.import_kwh is None for h in hits if h.address == A3] == [True]
    assert sim.control_codes[0x13] == 1
    assert 200 <= sim.control_codes[0x11] <= 200 + 4 * 3  # two levels, then the probes
    assert set(sim.control_codes) <= READ_CODES


def test_parse_addresses() -> None:
    assert parse_addresses("1-2,000012345678,2") == [A1, A2, A3]
    for bad in ("12-3", "abc", "1234567890123", "0-99999"):
        with pytest.raises(ValueError):
            parse_addresses(bad)


# --- configuration -----------------------------------------------------------------------


def test_the_sample_parses_and_groups_meters_by_bus() -> None:
    config = parse_config(SAMPLE.read_text(), str(SAMPLE))
    from energyd.drivers.registry import plugin

    polled = plugin("dlt645").polled
    assert polled is not None
    groups = polling.group_by_link(config.devices, "dlt645", polled)
    assert {k: [d.name for d in v] for k, v in groups.items()} == {
        "dlt645:serial:/dev/ttyUSB0": ["incomer-t1", "check-t1"],
        "dlt645:tcp:192.168.10.40:8899": ["workshop-3"]}
    assert config.devices[1].dlt645.address == "000012345679"  # type: ignore[union-attr]
    assert config.devices[1].dlt645.baudrate == 2400  # type: ignore[union-attr]
    assert config.devices[1].dlt645.parity == "E"  # type: ignore[union-attr]


def _shown(default: object) -> str:
    """A default as the README writes it."""
    if default is None:
        return "-"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):  # durations
        return next((f"{default / size:g}{unit}" for unit, size in (("m", 60), ("s", 1))
                     if default >= size and default % size == 0), f"{default:g}")
    return str(default)


def test_the_readme_documents_every_option_and_its_default() -> None:
    from energyd.drivers.dlt645.options import Dlt645Options

    readme = (SAMPLE.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip().strip("`")
            for line in readme.splitlines() if line.startswith("| `")}
    for name, field in Dlt645Options.model_fields.items():
        assert name in rows, f"README.md does not document `{name}`"
        want = "(required)" if field.is_required() else _shown(field.default)
        assert rows[name] == want, (name, rows[name], want)


@pytest.mark.parametrize("section, message", [
    ("{serial_port: /dev/ttyS1, address: 1234567890123}", "not up to 12 decimal digits"),
    ("{serial_port: /dev/ttyS1, address: '12AB'}", "not up to 12 decimal digits"),
    ("{transport: tcp, address: '1'}", "needs a host"),
    ("{serial_port: /dev/ttyS1, address: '1', profile: nowhere.yaml}", "cannot read"),
    ("{serial_port: /dev/ttyS1, address: '1', parity: X}", "parity"),
])
def test_bad_dlt645_options_are_refused_at_their_line(section: str, message: str) -> None:
    text = f"devices:\n  - name: m\n    driver: dlt645\n    dlt645: {section}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "plant.yaml")
    assert "plant.yaml:4" in str(err.value) and message in str(err.value), str(err.value)


def test_a_dlt645_device_without_its_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a `dlt645:` section"):
        parse_config("devices:\n  - name: m\n    driver: dlt645\n", "plant.yaml")
    with pytest.raises(ConfigError, match="names its profile under `dlt645:`"):
        parse_config("devices:\n  - name: m\n    driver: dlt645\n    profile: eastron_sdm630\n"
                     "    dlt645: {serial_port: /dev/x, address: '1'}\n", "plant.yaml")
    with pytest.raises(ConfigError, match="cannot have a `dlt645:` section"):
        parse_config("devices:\n  - name: m\n    driver: modbus\n    profile: eastron_sdm630\n"
                     "    modbus: {host: 127.0.0.1}\n    dlt645: {serial_port: /dev/x, "
                     "address: '1'}\n", "plant.yaml")


# --- the bus owner in the daemon --------------------------------------------------------


def plant(tmp_path: Path, port: int, addresses: list[str], *, interval: float,
          timeout: float, backoff_max: float) -> str:
    devices = "".join(
        f"  - name: m{a[-1]}\n    driver: dlt645\n    interval: {interval}\n"
        f"    dlt645: {{transport: tcp, host: 127.0.0.1, port: {port}, address: '{a}',"
        f" timeout: {timeout}, backoff_max: {backoff_max}}}\n"
        for a in addresses)
    return (f"storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.2}}\n"
            f"http: {{enabled: false}}\ndevices:\n{devices}")


async def test_the_daemon_polls_a_shared_bus_and_backs_off_a_silent_meter(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energyd.daemon.polling")
    interval, timeout = 0.8, 0.4
    async with Dlt645Simulator(addresses=[A1, A2, "000000000003"]) as sim:
        sim.meter(A2).faults.no_reply = True
        daemon = Daemon(parse_config(plant(tmp_path, sim.port, [A1, A2, "000000000003"],
                                           interval=interval, timeout=timeout,
                                           backoff_max=2.4), "plant.yaml"),
                        builders=[polling.build])
        task = asyncio.create_task(daemon.run(handle_signals=False))
        await asyncio.wait_for(daemon.ready.wait(), 10)
        try:
            await asyncio.sleep(5.0)
            assert daemon.context is not None
            (name,) = [k for k in daemon.context.health if k.endswith(".poll")]
            owner = daemon.context.health[name].__self__  # type: ignore[attr-defined]
            states = {st.device.name: st for st in owner.states}
            health = owner.health()
            sim.meter(A2).faults.no_reply = False
            await asyncio.sleep(4.0)
            recovered = states["m2"].failing
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
    for d in ("m1", "m3"):
        st = states[d]
        assert st.errors == 0 and st.polls >= 4, (d, st.polls)
        # a healthy meter waits at most for the one request on the wire
        assert max(st.lateness) < timeout + 0.3, (d, max(st.lateness))
    assert states["m2"].skipped > 0  # backed off, not asked every interval
    assert health["devices"]["m2"]["failing"] == "timeout"
    assert health["devices"]["m2"]["unit"] == A2
    assert recovered is None
    text = caplog.text
    assert text.count("m2 (unit 000000000002") == 2  # once into failure, once out
    assert "answering again" in text
    assert set(sim.control_codes) <= READ_CODES
    with Store.open(tmp_path / "energyd.db") as store:
        for d in ("m1", "m3"):
            rows = list(store.readings.query_readings(device=d,
                                                      quantity="active_energy_import_kwh"))
            assert len(rows) >= states[d].polls - 1, d  # the last poll may be in flight
        status = store.device_status()
    assert status["m2"]["errors"] >= 1 and status["m1"]["errors"] == 0, status


async def test_the_daemon_reads_a_bus_on_a_serial_line(
        tmp_path: Path, pty_pair: tuple[str, str]) -> None:
    sim_port, our_port = pty_pair
    async with Dlt645Simulator(addresses=[A1, A3], serial_port=sim_port) as sim:
        text = (f"storage: {{path: {tmp_path / 'energyd.db'}, flush_interval: 0.2}}\n"
                "http: {enabled: false}\ndevices:\n" + "".join(
                    f"  - name: m{a[-1]}\n    driver: dlt645\n    interval: 0.5\n"
                    f"    dlt645: {{serial_port: {our_port}, address: '{a}', timeout: 0.5}}\n"
                    for a in (A1, A3)))
        daemon = Daemon(parse_config(text, "plant.yaml"), builders=[polling.build])
        task = asyncio.create_task(daemon.run(handle_signals=False))
        await asyncio.wait_for(daemon.ready.wait(), 10)
        await asyncio.sleep(2.5)
        daemon.stop()
        await asyncio.wait_for(task, 10)
    with Store.open(tmp_path / "energyd.db") as store:
        for d in ("m1", "m8"):
            rows = list(store.readings.query_readings(device=d, quantity="voltage_l1_v"))
            assert len(rows) >= 3, (d, len(rows))
            assert all(200 < r.value < 260 for r in rows), rows
        status = store.device_status()
    assert status["m1"]["errors"] == 0 and status["m8"]["errors"] == 0, status
    assert set(sim.control_codes) <= READ_CODES


async def test_an_identifier_set_aside_shows_in_health_and_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with Dlt645Simulator(addresses=[A1]) as sim:
        sim.meter(A1).faults.refuse.add("00030000")
        daemon = Daemon(parse_config(plant(tmp_path, sim.port, [A1], interval=0.3,
                                           timeout=0.4, backoff_max=2.4), "plant.yaml"),
                        builders=[polling.build])
        task = asyncio.create_task(daemon.run(handle_signals=False))
        await asyncio.wait_for(daemon.ready.wait(), 10)
        try:
            await asyncio.sleep(2.0)
            assert daemon.context is not None
            (name,) = [k for k in daemon.context.health if k.endswith(".poll")]
            health = daemon.context.health[name]()
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)
    meter = health["devices"]["m1"]
    assert meter["set_aside"] == ["00030000"] and meter["polls"] >= 3, meter
    assert meter["errors"] == 1 and meter["failing"] is None, meter  # the first poll only
    assert sum(1 for r in caplog.records if "has no 00030000" in r.getMessage()) == 1
    assert sum(1 for r in caplog.records if "00030000: meter" in r.getMessage()) == 1
    assert set(sim.control_codes) <= READ_CODES


async def test_a_serial_port_that_cannot_be_set_up_is_a_device_error(tmp_path: Path) -> None:
    for path in (tmp_path / "not-a-tty", tmp_path / "missing"):
        if path.name == "not-a-tty":
            path.write_bytes(b"")  # termios refuses a plain file
        link = Dlt645Link(BusSettings(transport="serial", serial_port=str(path)))
        with pytest.raises(DeviceError, match=f"cannot connect to serial:{path}"):
            await link.read(A1, "00010000", timeout=0.2)
        assert not link.connected
