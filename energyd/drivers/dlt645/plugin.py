"""The DL/T 645 driver as energyd sees it (energyd/drivers/contracts.py): a polled driver
whose link is an RS485 bus (a serial port, or a transparent serial server's host:port) with
several meters on it, its one-shot read, and its scan."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from energyd.clock import Clock
from energyd.drivers.contracts import BadScanTarget, DriverPlugin, OneRead, Polled, ScanReport
from energyd.drivers.dlt645.link import BusSettings, Dlt645Link, MeterPoller, PollResult
from energyd.drivers.dlt645.options import Dlt645Device

log = logging.getLogger(__name__)

SEARCH = "search"  # in the scan's units: find the meters by their address endings


class Dlt645Bus:
    """One bus (a PolledLink): its connection and a MeterPoller per meter on it."""

    def __init__(self, link_id: str, devices: list[Dlt645Device], clock: Clock):
        first = devices[0].dlt645
        assert first is not None
        self.settings = BusSettings.from_options(first)
        line = (first.baudrate, first.parity, first.bytesize, first.stopbits)
        for d in devices[1:]:
            o = d.dlt645
            assert o is not None
            if (o.baudrate, o.parity, o.bytesize, o.stopbits) != line:
                log.warning("%s: %s sets other serial parameters than %s; one bus has one "
                            "setting, %s's is used", link_id, d.name, devices[0].name,
                            devices[0].name)
        self.units = [MeterPoller.from_device(d, clock) for d in devices]
        self.link = Dlt645Link(self.settings)

    @property
    def requests(self) -> int:
        return self.link.requests

    async def __aenter__(self) -> Dlt645Bus:
        await self.link.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)

    def read(self, unit: MeterPoller) -> Awaitable[PollResult]:
        return unit.read(self.link)  # failures come back per identifier, not raised

    def finish(self, unit: MeterPoller, raw: PollResult) -> PollResult:
        return unit.decode(raw)

    def reset(self) -> None:
        # every meter silent: the serial server or the port is gone; the next read reconnects
        self.link.close()


def link_of(device: Dlt645Device) -> str:
    assert device.dlt645 is not None
    return device.dlt645.link


async def read_once(device: Any) -> OneRead:
    from energyd.drivers.dlt645.link import read_device

    profile, result = await read_device(device)
    return OneRead(title=f"{device.name} ({profile.name}, address {device.dlt645.address})",
                   facts={"profile": profile.name}, readings=result.readings,
                   failures=[(f.block, str(f.error)) for f in result.failures])


def _settings(link: dict[str, Any], timeout: float) -> BusSettings:
    transport = link.get("transport", "tcp")
    if transport == "rtu":
        return BusSettings(transport="serial", serial_port=link["serial_port"],
                           baudrate=link.get("baudrate") or 2400,
                           parity=link.get("parity") or "E",
                           connect_timeout=max(1.0, timeout))
    if transport != "tcp":
        raise BadScanTarget("--rtu-over-tcp", "a DL/T 645 serial server passes the bus's "
                            "bytes through as they are: leave out --rtu-over-tcp")
    if link.get("port") is None:
        raise BadScanTarget("--port", "a DL/T 645 scan over TCP needs the serial server's "
                            "--port (there is no standard one)")
    return BusSettings(transport="tcp", host=link["host"], port=link["port"],
                       connect_timeout=max(1.0, timeout))


async def scan(link: dict[str, Any], units: str, timeout: float) -> ScanReport:
    """The broadcast read-address request, then the addresses in `units` (plates'
    numbers and ranges), or the search by address endings where `units` says `search`."""
    from energyd.drivers.dlt645.scan import parse_addresses
    from energyd.drivers.dlt645.scan import scan as run_scan

    parts = [p.strip() for p in units.split(",")]
    search_bus = SEARCH in parts
    try:
        addresses = parse_addresses(",".join(p for p in parts if p != SEARCH))
    except ValueError as exc:
        raise BadScanTarget("--units", f"{exc} (DL/T 645: meter addresses, ranges, or "
                                       f"`{SEARCH}`)") from None
    settings = _settings(link, timeout)
    async with Dlt645Link(settings) as bus:
        heard, hits = await run_scan(bus, addresses, timeout=timeout, search_bus=search_bus)
    notes = [{
        "one meter": f"broadcast read address: one meter, {heard.address}",
        "several meters answered": "broadcast read address: several meters answered at once "
        "(their replies collided); " + ("searching by address endings" if search_bus
                                        else "probing the --units addresses"),
        "no reply": "broadcast read address: no reply"}[heard.outcome]]
    if heard.outcome == "several meters answered" and not addresses and not search_bus:
        notes.append("give the meters' addresses (their plates) with --units, or "
                     f"`--units {SEARCH}` to find each")
    return ScanReport(
        title=f"{settings.describe()}: {len(hits)} meters",
        rows=[h.as_dict() for h in hits],
        columns=("address", "profile", "voltage_l1_v", "frequency_hz",
                 "active_energy_import_kwh", "found by"),
        table=[(h.address, h.profile or "(answers, not recognised)",
                "" if h.voltage_v is None else f"{h.voltage_v:g}",
                "" if h.frequency_hz is None else f"{h.frequency_hz:g}",
                "" if h.import_kwh is None else f"{h.import_kwh:.2f}", h.found_by)
               for h in hits],
        notes=tuple(notes))


PLUGIN = DriverPlugin(name="dlt645", read_once=read_once, scan=scan,
                      polled=Polled(link_of=link_of, open_link=Dlt645Bus))
