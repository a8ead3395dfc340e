"""`energyd read`, `energyd scan --driver dlt645`, `energyd simulate dlt645` and `check-config`
for DL/T 645 meters, against the simulator on real sockets."""

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
from energyd.drivers.dlt645.link import BusSettings, Dlt645Link
from energyd.errors import DeviceTimeout
from energyd.simulators.dlt645 import READ_CODES, Dlt645Simulator

A1, A2, A3 = "000000000001", "000000000002", "000012345678"


class ThreadedSimulator:
    """The simulator on its own event loop, so the CLI can run asyncio.run() beside it."""

    def __init__(self, **kwargs: object):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = asyncio.run_coroutine_threadsafe(self._start(kwargs), self.loop).result(10)

    async def _start(self, kwargs: dict[str, object]) -> Dlt645Simulator:
        return await Dlt645Simulator(**kwargs).start()  # type: ignore[arg-type]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server() -> Iterator[Dlt645Simulator]:
    t = ThreadedSimulator(addresses=[A1, A2, A3])
    try:
        yield t.sim
    finally:
        t.close()
    assert t.sim.requests > 0 and set(t.sim.control_codes) <= READ_CODES, t.sim.control_codes


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        f"storage: {{path: {tmp_path / 'e.db'}}}\n"
        "devices:\n"
        "  - name: incomer\n    role: grid_import\n    driver: dlt645\n"
        f"    dlt645: {{transport: tcp, host: 127.0.0.1, port: {port}, address: '{A3}',"
        " timeout: 0.5}\n"
        "  - name: ghost\n    driver: dlt645\n"
        f"    dlt645: {{transport: tcp, host: 127.0.0.1, port: {port}, address: '9',"
        " timeout: 0.2}\n", encoding="utf-8")
    return path


def test_read_prints_the_meters_values_and_refused_identifiers(server: Dlt645Simulator,
                                                                tmp_path: Path) -> None:
    path = config(tmp_path, server.port)
    server.meter(A3).faults.refuse.add("02800002")
    result = CliRunner().invoke(cli, ["read", "-c", str(path), "incomer", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    values = payload["values"]
    assert payload["profile"] == "dlt645_2007"
    assert values["voltage_l1_v"]["unit"] == "V" and 220 < values["voltage_l1_v"]["value"] < 240
    assert values["active_energy_import_kwh"]["unit"] == "kWh"
    assert "frequency_hz" not in values and len(values) == 16
    assert [e["block"] for e in payload["errors"]] == ["02800002"]
    assert "no such data" in payload["errors"][0]["error"]
    table = CliRunner().invoke(cli, ["read", "-c", str(path), "incomer"])
    assert table.exit_code == 0
    assert f"address {A3}" in table.stdout and "active_power_kw" in table.stdout
    assert "02800002" in table.stderr


def test_read_of_a_silent_meter_fails_clearly(server: Dlt645Simulator, tmp_path: Path) -> None:
    path = config(tmp_path, server.port)
    result = CliRunner().invoke(cli, ["read", "-c", str(path), "ghost"])
    assert result.exit_code == 1
    assert "meter 000000000009" in result.stderr and "no reply" in result.stderr


def test_check_config_summarises_a_dlt645_device(tmp_path: Path) -> None:
    from rich.console import Console

    from energyd.config.loader import load_config
    from energyd.config.summary import summary_tables

    path = config(tmp_path, 8899)
    result = CliRunner().invoke(cli, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    console = Console(width=200, record=True)
    for table in summary_tables(load_config(path)):
        console.print(table)
    text = console.export_text()
    assert f"dlt645 tcp 127.0.0.1:8899 address {A3}, dlt645_2007" in text, text


def test_scan_finds_the_meters(server: Dlt645Simulator) -> None:
    server.meter(A2).faults.no_reply = True
    at = ["scan", "--driver", "dlt645", "--host", "127.0.0.1", "--port", str(server.port)]
    result = CliRunner().invoke(cli, [*at, "--units", f"1-3,{A3}", "--timeout", "0.3",
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert "broadcast read address: several meters answered" in result.stderr
    assert [m["address"] for m in payload] == [A1, A3]
    assert all(m["profile"] == "dlt645_2007" for m in payload)
    # one meter left on the bus: the broadcast alone finds it
    server.meter(A1).faults.no_reply = True
    result = CliRunner().invoke(cli, [*at, "--timeout", "0.3"])
    assert result.exit_code == 0, result.output
    assert f"one meter, {A3}" in result.stdout and "broadcast" in result.stdout
    bad = CliRunner().invoke(cli, ["scan", "--driver", "dlt645", "--host", "127.0.0.1",
                                   "--port", "1", "--units", "x"])
    assert bad.exit_code == 2 and "--units" in bad.stderr
    no_port = CliRunner().invoke(cli, ["scan", "--driver", "dlt645", "--host", "127.0.0.1"])
    assert no_port.exit_code == 2 and "needs the serial server's --port" in no_port.output
    tunnel = CliRunner().invoke(cli, [*at, "--rtu-over-tcp"])
    assert tunnel.exit_code == 2 and "leave out --rtu-over-tcp" in tunnel.output


def test_scan_searches_a_bus_by_address_endings(server: Dlt645Simulator) -> None:
    result = CliRunner().invoke(cli, ["scan", "--driver", "dlt645", "--host", "127.0.0.1",
                                      "--port", str(server.port), "--units", "search",
                                      "--timeout", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    assert "searching by address endings" in result.stderr
    found = {m["address"]: m["found_by"] for m in json.loads(result.stdout)}
    assert found == {A1: "search", A2: "search", A3: "search"}


def test_simulate_dlt645_standalone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "energyd.cli", "simulate", "dlt645", "--addresses", "4,5",
         "--port", "0", "--fault", "5:no_reply", "--duration", "20"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "simulating DL/T 645 meters 000000000004,000000000005 on 127.0.0.1:" in line, \
            line
        port = int(line.split("127.0.0.1:")[1].split()[0])

        async def probe() -> tuple[bytes, str]:
            async with Dlt645Link(BusSettings(transport="tcp", host="127.0.0.1",
                                              port=port)) as link:
                data = await link.read("000000000004", "00010000", timeout=1.0)
                try:
                    await link.read("000000000005", "00010000", timeout=0.2)
                except DeviceTimeout:
                    return data, "silent"
                return data, "answered"

        data, silent = asyncio.run(probe())
        assert len(data) == 4 and silent == "silent"
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "energyd.cli", "simulate", "dlt645",
                          "--fault", "7:no_reply", "--duration", "0"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "no meter at address 000000000007" in bad.stderr
