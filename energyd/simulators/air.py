"""A compressed-air station as a small physical model, with no clock and no sockets inside.

    system = AirSystem.build(compressors=4, seed=1)
    system.step(when, dt_seconds)       # advance the plant by dt, at simulated time `when`
    system.compressors[0].power_kw      # what a controller would publish

The plant's air demand follows shifts: during production hours (Mon-Fri 06:00-22:00, UTC
unless `tz` is given) it is `production_share` of the station's capacity, with a slow
swing and noise; off-shift only the leak baseline (`leak_share` of capacity) remains, plus
any leak injected with `inject_leak(m3_min)`, which is what an off-shift alert should see.

The compressors share one receiver and run a pressure cascade: compressor i loads below
`6.6 - 0.1 i` bar and unloads above `7.4 - 0.1 i` bar, so the first ones carry the base
load and the last ones trim. An unloaded compressor still draws about 30% of its rated
power; after `idle_off` seconds unloaded it stops. Loaded, it delivers its full capacity
(free air, m3/min) at rated power, a little more as the pressure rises.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

OFF, UNLOADED, LOADED = 0, 1, 2
MAX_STEP = 1.0  # seconds: the receiver pressure is integrated in steps no longer than this


@dataclass
class Compressor:
    name: str
    capacity_m3_min: float = 10.0
    rated_kw: float = 55.0
    load_below_bar: float = 6.6
    unload_above_bar: float = 7.4
    unloaded_share: float = 0.3
    idle_off: float = 600.0
    state: int = OFF
    energy_kwh: float = 0.0
    running_h: float = 0.0
    loaded_h: float = 0.0
    power_kw: float = 0.0
    flow_m3_min: float = 0.0
    _unloaded_for: float = 0.0

    def control(self, pressure: float) -> None:
        if pressure < self.load_below_bar:
            self.state = LOADED
            self._unloaded_for = 0.0
        elif pressure > self.unload_above_bar and self.state == LOADED:
            self.state = UNLOADED
            self._unloaded_for = 0.0

    def advance(self, dt: float, pressure: float) -> None:
        if self.state == UNLOADED:
            self._unloaded_for += dt
            if self._unloaded_for >= self.idle_off:
                self.state = OFF
        if self.state == LOADED:
            self.power_kw = self.rated_kw * (0.9 + 0.02 * max(0.0, pressure - 2.0))
            self.flow_m3_min = self.capacity_m3_min
        elif self.state == UNLOADED:
            self.power_kw = self.rated_kw * self.unloaded_share
            self.flow_m3_min = 0.0
        else:
            self.power_kw = 0.0
            self.flow_m3_min = 0.0
        hours = dt / 3600.0
        self.energy_kwh += self.power_kw * hours
        if self.state != OFF:
            self.running_h += hours
        if self.state == LOADED:
            self.loaded_h += hours


@dataclass
class AirSystem:
    compressors: list[Compressor]
    receiver_m3: float = 12.0  # receiver and pipework, at the working pressure
    pressure_bar: float = 7.0
    production_share: float = 0.6
    leak_share: float = 0.12
    production_days: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday = 0
    production_hours: tuple[float, float] = (6.0, 22.0)
    tz: tzinfo | None = None
    leak_m3_min: float = 0.0  # injected on top of the baseline, off-shift and on
    seed: int = 0
    demand_m3_min: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def build(cls, compressors: int, *, prefix: str = "c", seed: int = 0,
              capacity_m3_min: float = 10.0, rated_kw: float = 55.0, **kwargs: object) -> AirSystem:
        units = [Compressor(f"{prefix}{i + 1}", capacity_m3_min=capacity_m3_min,
                            rated_kw=rated_kw, load_below_bar=6.6 - 0.1 * i,
                            unload_above_bar=7.4 - 0.1 * i) for i in range(compressors)]
        return cls(units, seed=seed, **kwargs)  # type: ignore[arg-type]

    @property
    def capacity_m3_min(self) -> float:
        return sum(c.capacity_m3_min for c in self.compressors)

    def in_production(self, when: datetime) -> bool:
        local = when.astimezone(self.tz) if self.tz is not None else when
        hour = local.hour + local.minute / 60
        start, end = self.production_hours
        return local.weekday() in self.production_days and start <= hour < end

    def demand(self, when: datetime) -> float:
        cap = self.capacity_m3_min
        base = cap * self.leak_share + self.leak_m3_min
        if not self.in_production(when):
            return base
        swing = 1.0 + 0.1 * math.sin(when.timestamp() / 3600.0 * 2 * math.pi / 3)
        return base + cap * (self.production_share - self.leak_share) * swing

    def inject_leak(self, m3_min: float) -> None:
        self.leak_m3_min = m3_min

    def step(self, when: datetime, dt: float) -> None:
        """Advance by `dt` seconds ending at `when`, in steps of at most MAX_STEP."""
        if dt <= 0:
            return
        steps = max(1, math.ceil(dt / MAX_STEP))
        h = dt / steps
        demand = self.demand(when)
        for _ in range(steps):
            d = max(0.0, demand * (1.0 + self._rng.gauss(0.0, 0.02)))
            for c in self.compressors:
                c.control(self.pressure_bar)
                c.advance(h, self.pressure_bar)
            supply = sum(c.flow_m3_min for c in self.compressors)
            # free air in minus free air out, over the receiver's volume (1 bar = 1 atm here)
            self.pressure_bar += (supply - d) * (h / 60.0) / self.receiver_m3
            self.pressure_bar = min(10.0, max(0.0, self.pressure_bar))
        self.demand_m3_min = demand
