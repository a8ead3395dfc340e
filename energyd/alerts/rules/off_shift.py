"""off_shift: energy used outside production hours (compressed air left running, a leak)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import (
    HOURLY,
    Observation,
    Rule,
    RuleContext,
    RuleOptions,
    hourly_series,
)
from energyd.config.hours import ProductionHours


class OffShiftOptions(RuleOptions):
    type: Literal["off_shift"]
    # the devices' hourly energy summed and alerted on as one series
    aggregate: bool = False
    # site-timezone wall clock, e.g. ["Mon-Fri 06:00-22:00", "Sat 06:00-14:00"]
    production_hours: list[str] = Field(default_factory=lambda: ["Mon-Fri 06:00-22:00"])
    margin_kwh: float = Field(0.0, ge=0)

    @field_validator("production_hours")
    @classmethod
    def _hours(cls, v: list[str]) -> list[str]:
        ProductionHours.parse(v)
        return v


class OffShift(Rule):
    options: OffShiftOptions

    def __init__(self, options: OffShiftOptions):
        super().__init__(options)
        self._shifts = ProductionHours.parse(options.production_hours)

    def on_hour(self, ctx: RuleContext, start_ms: int, end_ms: int) -> list[Observation]:
        o = self.options
        out = []
        for device, values in hourly_series(ctx, o.name, o.aggregate, o.role,
                                            start_ms, end_ms).items():
            for hour in C.hours(start_ms, end_ms):
                v = C.off_shift(values.get(hour), margin=o.margin_kwh,
                                off_shift_hour=self._shifts.hour_is_off_shift(hour, ctx.tz),
                                hysteresis=o.hysteresis)
                out.append(self.observe(device, hour, v, HOURLY))
        return out
