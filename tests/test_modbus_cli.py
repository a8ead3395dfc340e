"""`energyd read`, `energyd scan` and `energyd simulate meter` against real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from energyd.cli import cli
from energyd.drivers.modbus.link import LinkSettings, ModbusLink
from energyd.simulators import MeterSimulator

READ_CODES = {1, 2, 3, 4}


class ThreadedSimulator:
    """A simulator on its own event loop, so the CLI can run asyncio.run() beside it."""

    def __init__(self, **kwargs: object):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = asyncio.run_coroutine_threadsafe(self._start(kwargs), self.loop).result(10)

    async def _start(self, kwargs: dict[str, object]) -> MeterSimulator:
        return await MeterSimulator(**kwargs).start()  # type: ignore[arg-type]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def gateway() -> Iterator[MeterSimulator]:
    # three different meters behind one gateway, one of them with its bytes swapped
    t = ThreadedSimulator(profile={1: "eastron_sdm630", 2: "carlo_gavazzi_em24",
                                   3: "siemens_pac3200"}, units=[1, 2, 3])
    try:
        yield t.sim
    finally:
        t.close()
    assert set(t.sim.function_codes) <= READ_CODES, t.sim.function_codes


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        f"storage: {{path: {tmp_path / 'e.db'}}}\n"
        "devices:\n"
        "  - name: incomer\n    driver: modbus\n    profile: eastron_sdm630\n"
        f"    modbus: {{host: 127.0.0.1, port: {port}, unit: 1, timeout: 0.5}}\n"
        "  - name: ghost\n    driver: modbus\n    profile: eastron_sdm630\n"
        f"    modbus: {{host: 127.0.0.1, port: {port}, unit: 9, timeout: 0.2}}\n",
        encoding="utf-8")
    return path


def test_read_prints_decoded_values_and_block_errors(gateway: MeterSimulator,
                                                     tmp_path: Path) -> None:
    path = config(tmp_path, gateway.port)
    gateway.unit(1).faults.exceptions[70] = 2  # frequency refused
    result = CliRunner().invoke(cli, ["read", "-c", str(path), "incomer", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    values = payload["values"]
    assert payload["profile"] == "eastron_sdm630"
    assert values["voltage_l1_v"]["unit"] == "V"
    assert 220 < values["voltage_l1_v"]["value"] < 240
    assert values["active_energy_import_kwh"]["unit"] == "kWh"
    assert "frequency_hz" not in values
    assert len(values) == 15
    assert [e["block"] for e in payload["errors"]] == ["fc4 70..71"]
    assert "illegal data address" in payload["errors"][0]["error"]

    table = CliRunner().invoke(cli, ["read", "-c", str(path), "incomer"])
    assert table.exit_code == 0
    assert "active_power_kw" in table.stdout and "kW" in table.stdout
    assert "fc4 70..71" in table.stderr


def test_read_of_a_silent_device_fails_clearly(gateway: MeterSimulator, tmp_path: Path) -> None:
    path = config(tmp_path, gateway.port)
    result = CliRunner().invoke(cli, ["read", "-c", str(path), "ghost"])
    assert result.exit_code == 1
    assert "unit 9" in result.stderr and "no reply" in result.stderr
    result = CliRunner().invoke(cli, ["read", "-c", str(path), "nobody"])
    assert result.exit_code == 2 and "no device named 'nobody'" in result.stderr


def test_scan_finds_units_profiles_and_byte_order(gateway: MeterSimulator) -> None:
    gateway.unit(3).faults.order = "BADC"
    result = CliRunner().invoke(cli, ["scan", "--host", "127.0.0.1", "--port",
                                      str(gateway.port), "--units", "1-4", "--timeout", "1.0",
                                      "--json"])
    assert result.exit_code == 0, result.output
    hits = {h["unit"]: h for h in json.loads(result.stdout)}
    assert set(hits) == {1, 2, 3}  # nobody at unit 4
    assert (hits[1]["profile"], hits[1]["order"]) == ("eastron_sdm630", "ABCD")
    assert (hits[2]["profile"], hits[2]["order"]) == ("carlo_gavazzi_em24", "CDAB")
    assert (hits[3]["profile"], hits[3]["order"]) == ("siemens_pac3200", "BADC")
    assert 45 < hits[3]["frequency_hz"] < 65


def test_scan_needs_one_link() -> None:
    result = CliRunner().invoke(cli, ["scan"])
    assert result.exit_code == 2 and "--host" in result.output


def test_simulate_meter_standalone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "energyd.cli", "simulate", "meter", "--profile", "janitza_umg96",
         "--port", "0", "--units", "4,5", "--framer", "rtu", "--fault", "5:no_reply",
         "--duration", "20"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "simulating janitza_umg96 units 4,5 on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])

        async def probe() -> tuple[list[int], str]:
            async with ModbusLink(LinkSettings(transport="rtu_over_tcp", host="127.0.0.1",
                                               port=port)) as link:
                words = await link.read(3, 19000, 2, unit=4, timeout=1.0)
                try:
                    await link.read(3, 19000, 2, unit=5, timeout=0.2)
                except Exception as exc:  # noqa: BLE001
                    return words, type(exc).__name__
                return words, "answered"

        words, silent = asyncio.run(probe())
        assert len(words) == 2 and silent == "DeviceTimeout"
    finally:
        proc.terminate()
        proc.wait(10)


def test_simulate_meter_refuses_a_bad_fault() -> None:
    result = CliRunner().invoke(cli, ["simulate", "meter", "--port", "0", "--fault",
                                      "1:explode", "--duration", "0"])
    assert result.exit_code == 2
    assert "unknown kind 'explode'" in result.stderr


def test_scan_on_a_serial_line(tmp_path: Path) -> None:
    a, b = str(tmp_path / "ttyS-sim"), str(tmp_path / "ttyS-scan")
    socat = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={a}",
                              f"pty,raw,echo=0,link={b}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import os
        import time

        deadline = time.monotonic() + 5
        while not (os.path.exists(a) and os.path.exists(b)):
            assert time.monotonic() < deadline, "socat did not create the pty pair"
            time.sleep(0.02)
        t = ThreadedSimulator(profile="schneider_pm5xxx", units=[2], framer="rtu",
                              serial_port=a, baudrate=19200)
        try:
            result = CliRunner().invoke(cli, ["scan", "--serial-port", b, "--baudrate", "19200",
                                              "--units", "1-3", "--timeout", "1.0", "--json"])
        finally:
            t.close()
        assert result.exit_code == 0, result.output
        hits = json.loads(result.stdout)
        assert [(h["unit"], h["profile"], h["order"]) for h in hits] == \
            [(2, "schneider_pm5xxx", "ABCD")]
        assert set(t.sim.function_codes) <= READ_CODES
    finally:
        socat.terminate()
        socat.wait(5)
