"""What every alert rule shares: the options common to all types, the observation a rule
makes, the hooks a rule type may have and the context the engine gives its hooks.

A rule type implements only the hooks it needs; the engine tells them apart by protocol:

    LiveRule      reads live readings: `live_inputs` names the (device, quantity) pairs it
                  reads, `on_reading` judges one reading
    HourlyRule    `on_hour(ctx, start_ms, end_ms)` after every rollup run
    PeriodicRule  `periodic(ctx, now_ms)` every `period_s(ctx)` seconds
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol, runtime_checkable

from pydantic import Field, model_validator

from energyd.alerts.rules.conditions import Verdict
from energyd.config.types import Role, Strict

HOURLY = "hourly"
LIVE = "live"
PERIODIC = "periodic"

Feed = Callable[[int, float], None]  # (time ms, value) into a rule's gathered state


class RuleOptions(Strict):
    """The keys every rule type takes. A rule applies to `devices`, else to every device of
    `role`, else to every device."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)  # also an MQTT topic level
    type: str
    devices: list[str] | None = None
    role: Role | None = None
    # a condition clears only below its threshold less this fraction (no flapping)
    hysteresis: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _devices_or_role(self) -> Any:
        if self.devices is not None and self.role is not None:
            raise ValueError("give devices or role, not both")
        return self


@dataclass(frozen=True, slots=True)
class Observation:
    rule: str
    type: str  # the rule's type: spike, threshold, off_shift, ...
    device: str
    at_ms: int  # the instant (or hour start) the verdict is about
    verdict: Verdict
    source: str  # "live", "hourly" or "periodic": who may end what it started


@dataclass(frozen=True, slots=True)
class StatementCheck:
    """A supplier statement compared with the meter, as the reconciliation rule reads it."""

    account: str
    devices: tuple[str, ...]
    period_start_ms: int
    period_end_ms: int
    metered_kwh: float
    statement_kwh: float
    below_metered: bool  # the statement bills less than the meter alone measured
    accepted: bool  # a person accepted the statement as it stands


class RuleContext(Protocol):
    """What the engine gives a rule's hooks."""

    tz: tzinfo
    site: str
    sinks: list[str]  # the names of the sinks readings are forwarded to
    reconciliation_tolerance: float

    def now_ms(self) -> int: ...

    def devices(self, rule: str) -> list[str]:
        """The device names a rule watches (as readings carry them)."""
        ...

    def interval(self, device: str) -> float: ...

    def hourly_energy(self, devices: list[str], start_ms: int, end_ms: int
                      ) -> dict[str, dict[int, float]]:
        """kWh per device and measured hour."""
        ...

    def silence(self, device: str, now_ms: int | None) -> tuple[int, int]:
        """(now, when the device was last heard of) on the clock silence is measured by."""
        ...

    def backlogs(self) -> list[tuple[str, int, int | None]]:
        """Per sink: its name, the readings it has not sent and the oldest one's time."""
        ...

    def statement_checks(self, start_ms: int, end_ms: int) -> list[StatementCheck]: ...


class Rule:
    """A configured rule at run time; `options` holds its configuration."""

    # whether its hooks ask the context how long a device has been silent: the engine then
    # learns at start when each of the rule's devices was last heard of
    reads_silence = False

    def __init__(self, options: Any):
        self.options = options

    @property
    def name(self) -> str:
        return str(self.options.name)

    @property
    def type(self) -> str:
        return str(self.options.type)

    def observe(self, device: str, at_ms: int, verdict: Verdict, source: str) -> Observation:
        return Observation(self.name, self.type, device, at_ms, verdict, source)


@runtime_checkable
class LiveRule(Protocol):
    def live_inputs(self, ctx: RuleContext) -> Iterable[tuple[str, str, Feed | None]]:
        """(device, quantity, feed): a reading of the pair goes to `feed` when the rule only
        gathers it, else to `on_reading`."""
        ...

    def on_reading(self, ctx: RuleContext, device: str, t_ms: int, value: float,
                   active: bool) -> Verdict | None:
        """None (or HOLD) when the reading changes nothing."""
        ...


@runtime_checkable
class HourlyRule(Protocol):
    def on_hour(self, ctx: RuleContext, start_ms: int, end_ms: int) -> list[Observation]: ...


@runtime_checkable
class PeriodicRule(Protocol):
    def period_s(self, ctx: RuleContext) -> float | None:
        """How often to run (clock seconds); None: not at all."""
        ...

    def periodic(self, ctx: RuleContext, now_ms: int | None) -> list[Observation]: ...


def hourly_series(ctx: RuleContext, name: str, aggregate: bool, role: str | None,
                  start_ms: int, end_ms: int) -> dict[str, dict[int, float]]:
    """kWh per device and hour; with `aggregate`, the devices' sum as one series, named after
    the role (all compressors: "compressor"), else the site."""
    per_device = ctx.hourly_energy(ctx.devices(name), start_ms, end_ms)
    if not aggregate:
        return per_device
    total: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for values in per_device.values():
        for hour, kwh in values.items():
            total[hour] += kwh
            counts[hour] += 1
    # a site total is only a total when every device has the hour
    n = len(per_device)
    return {role or ctx.site: {h: v for h, v in total.items() if counts[h] == n}}
