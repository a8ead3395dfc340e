"""The Modbus driver as energyd sees it (energyd/drivers/contracts.py): a polled driver whose
link is a serial port or a gateway's host:port, its summary line, its one-shot read."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from energyd.clock import Clock
from energyd.drivers.contracts import BadScanTarget, DriverPlugin, OneRead, Polled, ScanReport
from energyd.drivers.modbus.link import DevicePoller, LinkSettings, ModbusLink, PollResult
from energyd.drivers.modbus.options import ModbusDevice

log = logging.getLogger(__name__)


class ModbusBus:
    """One bus (a PolledLink): its connection and a DevicePoller per unit on it."""

    def __init__(self, link_id: str, devices: list[ModbusDevice], clock: Clock):
        first = devices[0]
        assert first.modbus is not None
        self.settings = LinkSettings.from_options(first.modbus)
        serial = (self.settings.baudrate, self.settings.parity, self.settings.bytesize,
                  self.settings.stopbits)
        for d in devices[1:]:
            other = LinkSettings.from_options(d.modbus)
            if (other.baudrate, other.parity, other.bytesize, other.stopbits) != serial:
                log.warning("%s: %s sets other serial parameters than %s; one bus has one "
                            "setting, %s's is used", link_id, d.name, first.name, first.name)
        self.units = [DevicePoller.from_device(d, clock) for d in devices]
        self.link = ModbusLink(self.settings)

    @property
    def requests(self) -> int:
        return self.link.requests

    async def __aenter__(self) -> ModbusBus:
        await self.link.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.__aexit__(*exc)

    def read(self, unit: DevicePoller) -> Awaitable[PollResult]:
        # the poller's own coroutine, not one wrapped around it: this is every poll's path
        if unit.close_after_poll:
            return self._read_and_close(unit)
        return unit.read(self.link)

    async def _read_and_close(self, unit: DevicePoller) -> PollResult:
        try:
            return await unit.read(self.link)
        finally:
            self.link.close()

    def finish(self, unit: DevicePoller, raw: PollResult) -> PollResult:
        return unit.decode(raw)

    def reset(self) -> None:
        self.link.close()


def link_of(device: ModbusDevice) -> str:
    assert device.modbus is not None
    return device.modbus.link


async def read_once(device: Any) -> OneRead:
    from energyd.drivers.modbus.scan import read_device

    profile, result = await read_device(device)
    return OneRead(title=f"{device.name} ({profile.name}, unit {device.modbus.unit})",
                   facts={"profile": profile.name}, readings=result.readings,
                   unavailable=list(result.unavailable),
                   failures=[(f.block, str(f.error)) for f in result.failures])


async def scan(link: dict[str, Any], units: str, timeout: float) -> ScanReport:
    """Probe unit ids on a bus or gateway; name the profile and byte order of each."""
    from energyd.drivers.modbus.scan import parse_units
    from energyd.drivers.modbus.scan import scan as run_scan

    try:
        unit_ids = parse_units(units or "1-247")  # none given: every unit id
    except ValueError as exc:
        raise BadScanTarget("--units", str(exc)) from None
    settings = LinkSettings(**link)
    async with ModbusLink(settings) as bus:
        hits = await run_scan(bus, unit_ids, timeout=timeout)
    return ScanReport(
        title=f"{settings.describe()}: {len(hits)} responding",
        rows=[h.as_dict() for h in hits],
        columns=("unit", "profile", "order", "voltage_l1_v", "frequency_hz"),
        table=[(str(h.unit), h.profile or "(responds, not recognised)", h.order or "",
                "" if h.voltage_v is None else f"{h.voltage_v:g}",
                "" if h.frequency_hz is None else f"{h.frequency_hz:g}") for h in hits])


PLUGIN = DriverPlugin(name="modbus", read_once=read_once, scan=scan,
                      polled=Polled(link_of=link_of, open_link=ModbusBus))
