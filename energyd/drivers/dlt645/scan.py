"""Finding DL/T 645 meters on a bus (`energyd scan --driver dlt645`, through plugin.py).

First the broadcast read-address request (to AA AA AA AA AA AA), which every meter on the
bus answers. With one meter on the bus that is its address. With several, their replies
go out at once and collide on the wire: what arrives fails its checksum, and the scan says
so ("several meters answered") rather than guessing. The addresses to try then come from
the user (`--units`, single addresses and ranges, e.g. the plates' numbers or a range
of consecutive serials), or from a search (`--units search`) by the standard's shortened
addressing (`search()`: a read sent to AA..AA plus the last byte, 00 to 99, and a byte
further up wherever two meters share an ending). Each address found is asked for the
built-in profiles' identifiers, and a meter that answers one with a plausible L1 voltage
and frequency is named with that profile (the three-phase block profile first, then the
one identifier per value profile for meters that refuse the FF blocks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from energyd.drivers.dlt645.codec import FrameError
from energyd.drivers.dlt645.link import Dlt645Link
from energyd.drivers.dlt645.profile import Dlt645Profile, builtin_names, load_profile
from energyd.errors import DeviceGarbled, DeviceRefused, DeviceTimeout

VOLTAGE = (80.0, 500.0)
FREQUENCY = (45.0, 65.0)
MAX_CANDIDATES = 10_000


@dataclass(frozen=True)
class Broadcast:
    address: str | None  # the one meter's address
    outcome: str  # "one meter", "several meters answered", "no reply"

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "outcome": self.outcome}


@dataclass(frozen=True)
class MeterHit:
    address: str
    profile: str | None  # None: the meter answers but no profile fits
    voltage_v: float | None = None
    frequency_hz: float | None = None
    import_kwh: float | None = None
    found_by: str = "candidate"  # or "broadcast"

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "profile": self.profile,
                "voltage_l1_v": self.voltage_v, "frequency_hz": self.frequency_hz,
                "active_energy_import_kwh": self.import_kwh, "found_by": self.found_by}


def parse_addresses(text: str) -> list[str]:
    """'1-3,000012345678' -> ['000000000001', ..., '000012345678'] (zero-padded)."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or len(lo) > 12 or len(hi) > 12:
            raise ValueError(f"bad address {part!r}: up to 12 digits, or a range A-B")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise ValueError(f"bad address range {part!r}: the end comes before the start")
        if len(out) + b - a + 1 > MAX_CANDIDATES:
            raise ValueError(f"more than {MAX_CANDIDATES} addresses to probe")
        out.extend(f"{n:012d}" for n in range(a, b + 1))
    return list(dict.fromkeys(out))


async def search(link: Dlt645Link, *, timeout: float, di: str = "00010000",
                 known: str = "", found: list[str] | None = None) -> list[str]:
    """Every meter on the bus, by the standard's shortened addressing: a read of `di` to
    AA..AA xx for each last byte xx from 00 to 99 is answered by the meters whose address
    ends in xx; where several answer at once (their replies collide), the next byte up is
    tried under that one, and so on. About 100 requests (and so up to 100 timeouts) a
    level, one level more for each shared ending."""
    found = [] if found is None else found
    depth = len(known) // 2
    for xx in range(100):
        ending = f"{xx:02d}{known}"
        pattern = "AA" * (5 - depth) + ending
        try:
            found.append(await link.who_answers(pattern, di, timeout=timeout))
        except DeviceTimeout:
            continue
        except DeviceGarbled:
            if depth < 5:
                await search(link, timeout=timeout, di=di, known=ending, found=found)
    return found


async def broadcast(link: Dlt645Link, timeout: float) -> Broadcast:
    try:
        return Broadcast(await link.read_address(timeout=timeout), "one meter")
    except DeviceGarbled:
        return Broadcast(None, "several meters answered")
    except DeviceTimeout:
        return Broadcast(None, "no reply")


async def _quantity(link: Dlt645Link, address: str, profile: Dlt645Profile, quantity: str,
                    timeout: float) -> float | None:
    try:
        ident = profile.identifier(quantity)
    except KeyError:
        return None
    data = await link.read(address, ident.di, timeout=timeout)
    try:
        return dict(ident.decode(data)).get(quantity)
    except FrameError as exc:
        raise DeviceGarbled(f"meter {address} {ident.di}: {exc}") from None


async def probe_meter(link: Dlt645Link, address: str, profiles: list[Dlt645Profile],
                      timeout: float, found_by: str = "candidate") -> MeterHit | None:
    answered = False
    for profile in profiles:
        try:
            volts = await _quantity(link, address, profile, "voltage_l1_v", timeout)
            answered = True
            hz = await _quantity(link, address, profile, "frequency_hz", timeout)
        except (DeviceRefused, DeviceGarbled):
            answered = True
            continue
        except DeviceTimeout:
            if not answered:
                return None  # nobody at this address
            continue
        if (volts is not None and hz is not None and VOLTAGE[0] <= volts <= VOLTAGE[1]
                and FREQUENCY[0] <= hz <= FREQUENCY[1]):
            try:  # shown when the meter gives it; it does not decide the profile
                kwh = await _quantity(link, address, profile, "active_energy_import_kwh",
                                      timeout)
            except (DeviceRefused, DeviceGarbled, DeviceTimeout):
                kwh = None
            return MeterHit(address, profile.name, volts, hz, kwh, found_by)
    return MeterHit(address, None, found_by=found_by) if answered else None


async def scan(link: Dlt645Link, addresses: Iterable[str] = (), *, timeout: float = 1.0,
               profiles: Iterable[str] | None = None, search_bus: bool = False
               ) -> tuple[Broadcast, list[MeterHit]]:
    """The broadcast's outcome, and the meters found (the broadcast's one, those the
    search found when asked for and several answered the broadcast, then the candidates
    that answered)."""
    names = list(profiles or [])
    if not names:
        names = ["dlt645_2007"] + [n for n in builtin_names() if n != "dlt645_2007"]
    cands = [load_profile(n) for n in names]
    heard = await broadcast(link, timeout)
    hits: list[MeterHit] = []
    todo: list[tuple[str, str]] = []
    if heard.address is not None:
        todo.append((heard.address, "broadcast"))
    elif search_bus and heard.outcome == "several meters answered":
        todo += [(a, "search") for a in await search(link, timeout=timeout)]
    seen = {a for a, _ in todo}
    todo += [(a, "candidate") for a in addresses if a not in seen]
    for address, how in todo:
        hit = await probe_meter(link, address, cands, timeout, how)
        if hit is not None:
            hits.append(hit)
    return heard, hits
