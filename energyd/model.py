"""The plain data every layer shares: a Reading and the quantity vocabulary.

A Reading is (time, device, quantity, value, quality). Quantity names carry their unit,
so a value never travels without it. The vocabulary is the contract between profiles,
payload mappings, the store, the InfluxDB schema and the dashboards (DESIGN.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple


class Quality(enum.IntEnum):
    """How far a value can be trusted; stored as a small integer."""

    GOOD = 0
    UNCERTAIN = 1  # plausible but suspicious: a counter that stepped back, a clipped value
    IMPORTED = 2  # came in through a CSV backfill rather than from the device itself
    # The payload had no time of its own: stamped on receipt (made strictly increasing per
    # series), so the time is when energyd saw it, not when it was measured.
    RECEIVED = 3
    # Stamped on receipt, but delivered from the broker's session backlog right after a
    # (re)connect: the value is real, its time only an upper bound of when it was produced.
    RECEIVED_BACKLOG = 4
    # Stamped while the gateway's own clock could not be trusted (before the build date, or
    # far from a server's time): kept, held out of the rollup, and never expired by retention
    # until reviewed.
    CLOCK_SUSPECT = 5


class Kind(enum.StrEnum):
    GAUGE = "gauge"  # an instantaneous value
    COUNTER = "counter"  # cumulative, only ever grows (until a wrap or reset)
    STATE = "state"  # an enumerated state coded as a number


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    kind: Kind
    # Under a disk quota the store drops sheddable samples first; counters carry the
    # energy an auditor signs for, so they are never shed.
    sheddable: bool
    description: str


def _q(name: str, unit: str, kind: Kind, description: str,
       sheddable: bool | None = None) -> Quantity:
    if sheddable is None:
        sheddable = kind is Kind.GAUGE
    return Quantity(name, unit, kind, sheddable, description)


_G, _C, _S = Kind.GAUGE, Kind.COUNTER, Kind.STATE

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in [
        _q("active_power_kw", "kW", _G, "total active power, signed, + = import"),
        _q("active_power_l1_kw", "kW", _G, "active power, phase L1"),
        _q("active_power_l2_kw", "kW", _G, "active power, phase L2"),
        _q("active_power_l3_kw", "kW", _G, "active power, phase L3"),
        _q("reactive_power_kvar", "kvar", _G, "total reactive power"),
        _q("apparent_power_kva", "kVA", _G, "total apparent power"),
        _q("power_factor", "", _G, "total power factor"),
        _q("frequency_hz", "Hz", _G, "grid frequency"),
        _q("voltage_l1_v", "V", _G, "voltage L1-N"),
        _q("voltage_l2_v", "V", _G, "voltage L2-N"),
        _q("voltage_l3_v", "V", _G, "voltage L3-N"),
        _q("voltage_l12_v", "V", _G, "voltage L1-L2"),
        _q("voltage_l23_v", "V", _G, "voltage L2-L3"),
        _q("voltage_l31_v", "V", _G, "voltage L3-L1"),
        _q("current_l1_a", "A", _G, "current L1"),
        _q("current_l2_a", "A", _G, "current L2"),
        _q("current_l3_a", "A", _G, "current L3"),
        _q("current_n_a", "A", _G, "neutral current"),
        _q("active_energy_import_kwh", "kWh", _C, "cumulative active energy imported"),
        _q("active_energy_export_kwh", "kWh", _C, "cumulative active energy exported"),
        _q("reactive_energy_import_kvarh", "kvarh", _C, "cumulative reactive energy imported"),
        _q("pressure_bar", "bar", _G, "compressed-air pressure (gauge)"),
        _q("flow_m3_min", "m3/min", _G, "free air delivered"),
        _q("compressor_state", "", _S, "0 off, 1 unloaded, 2 loaded", sheddable=False),
        _q("running_hours_h", "h", _C, "cumulative running hours"),
        _q("loaded_hours_h", "h", _C, "cumulative loaded hours"),
        _q("fuel_volume_m3", "m3", _C, "cumulative fuel volume"),
        _q("fuel_mass_t", "t", _C, "cumulative fuel mass"),
    ]
}

ROLES = ("grid_import", "submeter", "generation", "compressor", "fuel")

# Where an hour's energy came from, best first (DESIGN.md, "meter first, invoice fallback").
ENERGY_SOURCES = ("meter", "meter_interpolated", "invoice", "estimated")


def utc(dt: datetime) -> datetime:
    """Return `dt` as an aware UTC datetime; naive datetimes are refused, not guessed."""
    if dt.tzinfo is None:
        raise ValueError(f"time {dt.isoformat()} has no UTC offset")
    return dt.astimezone(UTC)


class _ReadingFields(NamedTuple):
    time: datetime  # aware, UTC
    device: str
    quantity: str
    value: float
    quality: Quality = Quality.GOOD


class Reading(_ReadingFields):
    """One value of one quantity of one device at one instant (the time of the read).

    An immutable record checked when made. A named tuple rather than a frozen dataclass:
    a poller makes one per value, hundreds of thousands a minute, and a tuple is made in
    less than half the time.
    """

    __slots__ = ()

    def __new__(cls, time: datetime, device: str, quantity: str, value: float,
                quality: Quality = Quality.GOOD) -> Reading:
        if time.tzinfo is None:
            raise ValueError("Reading.time must be timezone-aware")
        if not math.isfinite(value):
            raise ValueError(f"{device}/{quantity}: value {value!r} is not finite")
        return _new_tuple(cls, (time, device, quantity, value, quality))

    @property
    def time_ms(self) -> int:
        return to_ms(self.time)


_new_tuple = tuple.__new__


class _PollValuesFields(NamedTuple):
    time: datetime  # aware, UTC
    device: str
    quantities: tuple[str, ...]
    values: Sequence[float]
    quality: Quality = Quality.GOOD


class PollValues(_PollValuesFields):
    """Values of one device read at one instant, as columns: what a poll gives (a block of
    registers, a DL/T 645 identifier). The store packs the columns as they come; Readings
    are made only for whoever asks for them (`readings()`), since a poller that made one
    per value spent more on them than on the values. Checked when made, as a Reading is."""

    __slots__ = ()

    def __new__(cls, time: datetime, device: str, quantities: tuple[str, ...],
                values: Sequence[float], quality: Quality = Quality.GOOD) -> PollValues:
        if time.tzinfo is None:
            raise ValueError("PollValues.time must be timezone-aware")
        if len(quantities) != len(values):
            raise ValueError(f"{device}: {len(quantities)} quantities for {len(values)} values")
        if not all(map(math.isfinite, values)):
            bad = next(q for q, v in zip(quantities, values, strict=True)
                       if not math.isfinite(v))
            raise ValueError(f"{device}/{bad}: a value is not finite")
        return _new_tuple(cls, (time, device, quantities, values, quality))

    def readings(self) -> list[Reading]:
        time, device, quality = self.time, self.device, self.quality
        return [_new_tuple(Reading, (time, device, q, v, quality))
                for q, v in zip(self.quantities, self.values, strict=True)]


HOUR_MS = 3_600_000  # the rollups' grain, in the store's time unit


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch; the store's and the sinks' time unit."""
    return round(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
