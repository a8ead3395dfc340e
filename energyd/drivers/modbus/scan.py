"""Commissioning: poll one configured device once, and scan a bus for meters.

`scan()` asks each unit id for the L1 voltage and the frequency of every built-in profile
that has both, decoding each answer in all four byte orders. A profile is named when the
voltage is plausible for a low-voltage phase (80..500 V) and the frequency for a grid
(45..65 Hz); the order that made them so is reported, which tells a user the `order:` to
set for a meter that swaps its bytes. A unit that does not answer the first probe within
the timeout is taken as absent; one that answers but matches no profile is reported as
responding, unrecognised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from energyd.config.profiles import Profile, RegisterSpec, builtin_names, load_profile
from energyd.drivers.modbus.decode import ORDERS, decode
from energyd.drivers.modbus.link import ModbusLink, PollResult
from energyd.errors import DeviceError, DeviceRefused, DeviceTimeout

VOLTAGE = (80.0, 500.0)
FREQUENCY = (45.0, 65.0)


@dataclass(frozen=True)
class ScanHit:
    unit: int
    profile: str | None  # None: the unit answers but no profile fits
    order: str | None = None
    voltage_v: float | None = None
    frequency_hz: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"unit": self.unit, "profile": self.profile, "order": self.order,
                "voltage_l1_v": self.voltage_v, "frequency_hz": self.frequency_hz}


def candidates(names: Iterable[str] | None = None) -> list[Profile]:
    out = []
    for name in names or builtin_names():
        p = load_profile(name)
        qs = {s.quantity for s in p.registers}
        if {"voltage_l1_v", "frequency_hz"} <= qs:
            out.append(p)
    return out


def _orders(spec: RegisterSpec) -> list[str]:
    return [spec.order] + [o for o in ORDERS if o != spec.order]


def _value(words: list[int], spec: RegisterSpec, order: str) -> float:
    return decode(words, spec.type, order, spec.scale, spec.offset)


async def _read(link: ModbusLink, spec: RegisterSpec, unit: int, timeout: float) -> list[int]:
    return await link.read(spec.function, spec.address, spec.count, unit=unit, timeout=timeout)


async def probe_unit(link: ModbusLink, unit: int, profiles: list[Profile],
                     timeout: float) -> ScanHit | None:
    answered = False
    for profile in profiles:
        v_spec = profile.register("voltage_l1_v")
        f_spec = profile.register("frequency_hz")
        try:
            v_words = await _read(link, v_spec, unit, timeout)
            answered = True
            f_words = await _read(link, f_spec, unit, timeout)
        except DeviceRefused:
            answered = True
            continue
        except DeviceTimeout:
            if not answered:
                return None  # nobody at this address
            continue
        for order in _orders(v_spec):
            volts = _value(v_words, v_spec, order)
            hz = _value(f_words, f_spec, order)
            if VOLTAGE[0] <= volts <= VOLTAGE[1] and FREQUENCY[0] <= hz <= FREQUENCY[1]:
                return ScanHit(unit, profile.name, order, round(volts, 2), round(hz, 3))
    return ScanHit(unit, None) if answered else None


async def scan(link: ModbusLink, units: Iterable[int], *, timeout: float = 0.5,
               profiles: Iterable[str] | None = None) -> list[ScanHit]:
    """Probe `units` one after the other on `link`; the units that answered."""
    cands = candidates(profiles)
    hits = []
    for unit in units:
        try:
            hit = await probe_unit(link, unit, cands, timeout)
        except DeviceError as exc:
            raise DeviceError(f"scan stopped at unit {unit}: {exc}") from exc
        if hit is not None:
            hits.append(hit)
    return hits


def parse_units(text: str) -> list[int]:
    """"1-10,15" -> [1, ..., 10, 15] (unit ids 1..247)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad unit list {text!r}: use e.g. 1-10,15") from None
        if not (1 <= a <= b <= 247):
            raise ValueError(f"bad unit range {part!r}: unit ids are 1..247")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError("no unit ids given")
    return sorted(set(out))


async def read_device(device: object, clock: object | None = None) -> tuple[Profile, PollResult]:
    """Poll one configured device once: (its profile, the PollResult)."""
    from energyd.drivers.modbus.link import DevicePoller, LinkSettings

    poller = DevicePoller.from_device(device, clock)  # type: ignore[arg-type]
    async with ModbusLink(LinkSettings.from_options(device.modbus)) as link:  # type: ignore[attr-defined]
        result = await poller.poll(link)
    return poller.profile, result
