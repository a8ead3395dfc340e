"""Scope 2 by the hour: hourly and annual matching, residual mix, on-site generation, CFE%.

Pure functions over plain data (no clock, no sockets, no store). Times are UTC epoch ms; an
hour is the UTC hour its start names, as the rollups keep them. The rules (the accounting
README, "Scope 2 by the hour", says the same for people):

- **Hourly matching** (`match_hourly`): a granular certificate covers purchased electricity
  only in the UTC hour its production interval lies in (an hour or less), and only within
  the market boundary it was issued in. An interval across the start of a UTC hour (the
  hourly certificates of a half-hour time zone: 13:00-14:00 in India is 07:30-08:30 UTC) is
  split between its two hours in proportion to time, its production taken as even within
  the interval: it covers each hour with its share, never one hour with the whole. No
  banking: what an hour's certificates hold beyond that hour's load covers nothing and is
  reported as excess. Within an hour, certificates are used in the order of their
  production start, then id; the load of the hour is served devices by name. A certificate
  id appears once: the same id twice is refused, so no certificate is ever counted twice.
- **Annual matching** (`match_annual`): an instrument covers any purchased hour within its
  window (its vintage year by default) and market, by volume, hours in time order (devices
  by name within an hour), instruments in the order given, each until used up: the rule the
  rollups have always used for `accounting.certificates`.
- **Residual mix** (`market_tco2`): what no instrument covers takes the residual factor of
  the hour, in both modes; a missing factor leaves the figure null, never zero.
- **On-site generation** (`self_consumption`): per hour, self-consumed = generation - export,
  never negative; an export above the generation of its hour is listed, not netted off.
  Self-consumed energy is not purchased electricity and carries no Scope 2.
- **Carbon-free share** (`cfe`, Google's CFE% method): per hour, load = purchased +
  self-consumed; clean = self-consumed + hourly-matched certificates, capped at load; plus,
  where the region's hourly clean share is known, that share of the rest; CFE = clean / load.
  A month's CFE is the sum of the hours' clean MWh over the sum of their load.
- **The hourly-matching gap** (`gap_by_hour_of_day`): per hour, the MWh annual matching covers
  and hourly matching does not (never negative), summed by local hour of day.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

HOUR_MS = 3_600_000
EPSILON_MWH = 1e-9  # what is left of a certificate or an hour below this is rounding
ROUND = 9


class Consumption(Protocol):
    """A purchased device-hour: a rollup row has these (RollupRow does)."""

    @property
    def device(self) -> str: ...
    @property
    def hour(self) -> int: ...
    @property
    def mwh(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Load:
    device: str
    hour: int
    mwh: float


@dataclass(frozen=True, slots=True)
class GranularCertificate:
    """An EnergyTag-style certificate: energy produced in [start_ms, end_ms), one hour or
    less, by `device` (the production device's id) with `technology` at
    `location`, issued in the market boundary `market`."""

    id: str
    start_ms: int
    end_ms: int
    wh: float
    market: str
    device: str = ""
    technology: str = ""
    location: str = ""
    storage_discharge: bool = False
    registry: str = ""
    backs: str = ""  # an annual instrument's id: this is that instrument's hourly production
    devices: tuple[str, ...] | None = None  # only these grid meters (those of the instrument)

    @property
    def hour(self) -> int:
        return self.start_ms - self.start_ms % HOUR_MS

    @property
    def mwh(self) -> float:
        return self.wh / 1e6

    def parts(self) -> list[tuple[int, float]]:
        """(UTC hour, MWh) of its production: all in its hour, or, across an hour's start,
        each hour's share in proportion to time."""
        second = self.end_ms - (self.end_ms - 1) % HOUR_MS - 1  # the start of the last hour
        if second <= self.start_ms:
            return [(self.hour, self.mwh)]
        share = (second - self.start_ms) / (self.end_ms - self.start_ms)
        return [(self.hour, self.mwh * share), (second, self.mwh * (1.0 - share))]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "production_start": iso(self.start_ms),
                "production_end": iso(self.end_ms), "wh": self.wh, "market": self.market,
                "device": self.device, "technology": self.technology,
                "location": self.location, "storage_discharge": self.storage_discharge,
                "registry": self.registry, "backs": self.backs}


def interval_problem(start_ms: int, end_ms: int) -> str | None:
    """Why a production interval cannot be a granular certificate's, or None."""
    if end_ms <= start_ms:
        return "production_end must be after production_start"
    if end_ms - start_ms > HOUR_MS:
        return "the production interval is longer than one hour"
    return None


@dataclass(frozen=True, slots=True)
class Instrument:
    """An annual instrument (GEC, I-REC, green contract, PPA), or a granular certificate
    counted by volume: usable on hours in [start_ms, end_ms) of `market`, by `devices` (None:
    any)."""

    id: str
    mwh: float
    market: str
    start_ms: int
    end_ms: int
    devices: tuple[str, ...] | None = None
    kind: str = "annual"

    def applies(self, device: str, hour: int) -> bool:
        return self.start_ms <= hour < self.end_ms and (
            self.devices is None or device in self.devices)


@dataclass
class Matching:
    """What a matching gave: (device, hour) -> [(certificate id, MWh)]; per certificate the
    MWh used and left; certificates that could cover nothing, with why."""

    allocations: dict[tuple[str, int], list[tuple[str, float]]] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    unused: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def covered(self, device: str, hour: int) -> float:
        return sum(m for _, m in self.allocations.get((device, hour), ()))

    def covered_by_hour(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for (_, hour), got in self.allocations.items():
            out[hour] = out.get(hour, 0.0) + sum(m for _, m in got)
        return out

    @property
    def total(self) -> float:
        return sum(self.used.values())


def _unique(ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"certificate {i} is listed twice: a certificate is counted once")
        seen.add(i)


def _loads(consumption: Iterable[Consumption]) -> list[Load]:
    merged: dict[tuple[str, int], float] = {}
    for c in consumption:
        if not math.isfinite(c.mwh) or c.mwh < 0:
            raise ValueError(f"{c.device} {iso(c.hour)}: consumption {c.mwh!r} MWh is not a "
                             "finite number >= 0")
        merged[(c.device, c.hour)] = merged.get((c.device, c.hour), 0.0) + c.mwh
    return [Load(d, h, m) for (d, h), m in sorted(merged.items(), key=lambda x: (x[0][1],
                                                                                x[0][0]))]


def _markets(market: str | Collection[str]) -> tuple[set[str], str]:
    names = {market} if isinstance(market, str) else set(market)
    return names, "/".join(sorted(names))


def match_hourly(consumption: Iterable[Consumption],
                 certificates: Sequence[GranularCertificate],
                 market: str | Collection[str]) -> Matching:
    """Granular certificates to the purchased load of their own hour and market (see the
    module's rules). Every certificate ends up in `used`, `unused` (excess in its hour, no
    load left to cover) or `refused` (another market, or an interval that is not one hour's).
    `market`: the site's market boundary, or the names it goes by (a country and its grid
    region)."""
    _unique(c.id for c in certificates)
    markets, shown = _markets(market)
    out = Matching()
    by_hour: dict[int, list[tuple[GranularCertificate, float]]] = {}
    for c in certificates:
        why = interval_problem(c.start_ms, c.end_ms)
        if why is None and c.market not in markets:
            why = f"market {c.market}, not the site's market {shown}"
        if why is None and not (math.isfinite(c.wh) and c.wh > 0):
            why = f"{c.wh!r} Wh is not a positive number"
        if why is not None:
            out.refused[c.id] = why
            continue
        for hour, part in c.parts():
            by_hour.setdefault(hour, []).append((c, part))
    loads: dict[int, list[Load]] = {}
    for ld in _loads(consumption):
        loads.setdefault(ld.hour, []).append(ld)
    used: dict[str, float] = {}
    unused: dict[str, float] = {}
    for hour, parts in sorted(by_hour.items()):
        left = {c.id: part for c, part in parts}
        order = sorted((c for c, _ in parts), key=lambda c: (c.start_ms, c.id))
        for ld in loads.get(hour, ()):
            need = ld.mwh
            for c in order:
                if need <= EPSILON_MWH:
                    break
                if left[c.id] <= EPSILON_MWH or (
                        c.devices is not None and ld.device not in c.devices):
                    continue
                take = min(need, left[c.id])
                left[c.id] -= take
                need -= take
                out.allocations.setdefault((ld.device, hour), []).append(
                    (c.id, round(take, ROUND)))
        for c, part in parts:
            used[c.id] = used.get(c.id, 0.0) + part - left[c.id]
            if left[c.id] > EPSILON_MWH:
                unused[c.id] = unused.get(c.id, 0.0) + left[c.id]
    for cid, mwh in used.items():
        out.used[cid] = round(mwh, ROUND)
    for cid, mwh in unused.items():
        out.unused[cid] = round(mwh, ROUND)
    return out


def match_annual(consumption: Iterable[Consumption], instruments: Sequence[Instrument],
                 market: str | Collection[str],
                 used_before: Mapping[str, float] | None = None) -> Matching:
    """Instruments by volume within their window and market (see the module's rules);
    `used_before`: what hours before `consumption` already took of each."""
    _unique(i.id for i in instruments)
    markets, shown = _markets(market)
    before = used_before or {}
    out = Matching()
    usable = []
    for ins in instruments:
        if ins.market not in markets:
            out.refused[ins.id] = f"market {ins.market}, not the site's market {shown}"
        else:
            usable.append(ins)
    remaining = {i.id: max(0.0, i.mwh - before.get(i.id, 0.0)) for i in usable}
    for ld in _loads(consumption):
        need = ld.mwh
        for ins in usable:
            if need <= EPSILON_MWH:
                break
            left = remaining[ins.id]
            if left <= EPSILON_MWH or not ins.applies(ld.device, ld.hour):
                continue
            take = min(need, left)
            remaining[ins.id] = left - take
            need -= take
            out.allocations.setdefault((ld.device, ld.hour), []).append(
                (ins.id, round(take, ROUND)))
    for ins in usable:
        start = max(0.0, ins.mwh - before.get(ins.id, 0.0))
        out.used[ins.id] = round(start - remaining[ins.id], ROUND)
        if remaining[ins.id] > EPSILON_MWH:
            out.unused[ins.id] = round(remaining[ins.id], ROUND)
    return out


def market_tco2(mwh: float, covered: float, residual: float | None) -> float | None:
    """Market-based tCO2 of an hour: what no instrument covers x the residual factor; null
    without a factor."""
    if residual is None:
        return None
    return round(max(mwh - covered, 0.0) * residual, ROUND)


# --- on-site generation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnSite:
    hour: int
    generation_mwh: float
    export_mwh: float | None  # None: no export figure for the hour
    self_consumed_mwh: float | None  # None: unknown without the export figure
    export_above_generation_mwh: float = 0.0  # listed, never netted off


def self_consumption(generation: Mapping[int, float],
                     export: Mapping[int, float] | None) -> list[OnSite]:
    """Per hour: self-consumed = generation - export, never negative. `export` None: the
    site has no export meter and cannot export (all generation is consumed on site); an hour
    missing from `export` leaves its self-consumption unknown rather than guessed."""
    hours = sorted(set(generation) | set(export or {}))
    out = []
    for h in hours:
        gen = max(generation.get(h, 0.0), 0.0)
        if export is None:
            exp: float | None = 0.0
        else:
            exp = export.get(h)
        if exp is None:
            out.append(OnSite(h, round(gen, ROUND), None, None))
            continue
        exp = max(exp, 0.0)
        out.append(OnSite(h, round(gen, ROUND), round(exp, ROUND),
                          round(max(gen - exp, 0.0), ROUND),
                          round(max(exp - gen, 0.0), ROUND)))
    return out


# --- carbon-free share -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CfeHour:
    hour: int
    load_mwh: float
    clean_contracted_mwh: float  # self-consumed + hourly-matched, capped at load
    grid_clean_mwh: float | None  # None: no grid clean share for the hour
    cfe: float | None  # None: no load

    @property
    def clean_mwh(self) -> float:
        return self.clean_contracted_mwh + (self.grid_clean_mwh or 0.0)


def cfe(purchased: Mapping[int, float], self_consumed: Mapping[int, float],
        matched: Mapping[int, float],
        grid_clean_share: Mapping[int, float] | None = None) -> list[CfeHour]:
    """CFE% per hour (see the module's rules). All mappings are hour -> MWh, but
    `grid_clean_share`: hour -> share 0..1 of the region's mix that is carbon-free."""
    out = []
    for h in sorted(set(purchased) | set(self_consumed)):
        load = max(purchased.get(h, 0.0), 0.0) + max(self_consumed.get(h, 0.0), 0.0)
        contracted = min(max(self_consumed.get(h, 0.0), 0.0) + max(matched.get(h, 0.0), 0.0),
                         load)
        share = None if grid_clean_share is None else grid_clean_share.get(h)
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"{iso(h)}: grid clean share {share!r} is not within 0..1")
        grid = None if share is None else (load - contracted) * share
        clean = contracted + (grid or 0.0)
        out.append(CfeHour(h, round(load, ROUND), round(contracted, ROUND),
                           None if grid is None else round(grid, ROUND),
                           round(clean / load, ROUND) if load > EPSILON_MWH else None))
    return out


def cfe_total(hours: Iterable[CfeHour]) -> float | None:
    """A period's CFE: the hours' clean MWh over their load."""
    hs = list(hours)
    load = sum(h.load_mwh for h in hs)
    return round(sum(h.clean_mwh for h in hs) / load, ROUND) if load > EPSILON_MWH else None


# --- the gap between the modes ---------------------------------------------------------------


def gap_by_hour_of_day(annual: Mapping[int, float], hourly: Mapping[int, float],
                       tz: ZoneInfo) -> list[dict[str, float | int]]:
    """Per local hour of day (0..23): MWh covered by annual matching, by hourly matching, and
    the gap: per hour max(annual - hourly, 0), summed."""
    out = [{"hour_of_day": i, "annual_mwh": 0.0, "hourly_mwh": 0.0, "gap_mwh": 0.0}
           for i in range(24)]
    for h in set(annual) | set(hourly):
        local = datetime.fromtimestamp(h / 1000, UTC).astimezone(tz).hour
        a, b = annual.get(h, 0.0), hourly.get(h, 0.0)
        slot = out[local]
        slot["annual_mwh"] += a
        slot["hourly_mwh"] += b
        slot["gap_mwh"] += max(a - b, 0.0)
    for slot in out:
        for k in ("annual_mwh", "hourly_mwh", "gap_mwh"):
            slot[k] = round(slot[k] + 0.0, 6)
    return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
