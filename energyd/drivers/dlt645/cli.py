"""`energyd scan --dlt645`: the driver's part of the command line (energyd/cli.py parses
the options and hands them here)."""

from __future__ import annotations

import asyncio
import sys

import orjson
from rich.console import Console
from rich.table import Table

from energyd.drivers.dlt645.link import BusSettings, Dlt645Link
from energyd.drivers.dlt645.scan import parse_addresses, scan
from energyd.errors import DeviceError


def scan_bus(host: str | None, port: int, serial_port: str | None, baudrate: int,
             parity: str, addresses: str, timeout: float, as_json: bool,
             search_bus: bool = False) -> int:
    """Scan one bus and print what answered; the exit code (0 found, 1 none or failed,
    2 bad input)."""
    try:
        candidates = parse_addresses(addresses) if addresses else []
    except ValueError as exc:
        print(f"energyd scan: --addresses: {exc}", file=sys.stderr)
        return 2
    if serial_port is not None:
        settings = BusSettings(transport="serial", serial_port=serial_port, baudrate=baudrate,
                               parity=parity)
    else:
        settings = BusSettings(transport="tcp", host=host, port=port)

    async def go():  # type: ignore[no-untyped-def]
        async with Dlt645Link(settings) as link:
            return await scan(link, candidates, timeout=timeout, search_bus=search_bus)

    try:
        heard, hits = asyncio.run(go())
    except DeviceError as exc:
        print(f"energyd scan: {exc}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps(
            {"broadcast": heard.as_dict(), "meters": [h.as_dict() for h in hits]},
            option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0 if hits else 1
    console = Console()
    note = {"one meter": f"broadcast read address: one meter, {heard.address}",
            "several meters answered": "broadcast read address: several meters answered at "
            "once (their replies collided); "
            + ("searching by address endings" if search_bus else "probing --addresses"),
            "no reply": "broadcast read address: no reply"}[heard.outcome]
    console.print(note)
    if heard.outcome == "several meters answered" and not candidates and not search_bus:
        console.print("give the meters' addresses (their plates) with --addresses, or "
                      "--search, to find each")
    table = Table(title=f"{settings.describe()}: {len(hits)} meters")
    for col in ("address", "profile", "voltage_l1_v", "frequency_hz",
                "active_energy_import_kwh", "found by"):
        table.add_column(col)
    for h in hits:
        table.add_row(h.address, h.profile or "(answers, not recognised)",
                      "" if h.voltage_v is None else f"{h.voltage_v:g}",
                      "" if h.frequency_hz is None else f"{h.frequency_hz:g}",
                      "" if h.import_kwh is None else f"{h.import_kwh:.2f}", h.found_by)
    console.print(table)
    return 0 if hits else 1
