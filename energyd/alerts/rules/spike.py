"""spike: consumption above its usual level for the hour of the week.

Hourly: the hour's kWh against the median of the same hour of the week over
`baseline_weeks` weeks. Live (`window` > 0): the mean of `quantity` (kW) over a rolling
window against the same baseline in kW. Fires when the value exceeds `factor` x baseline
and the baseline by at least `min_delta_kwh`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import Field, field_validator

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import (
    HOURLY,
    Feed,
    Observation,
    Rule,
    RuleContext,
    RuleOptions,
    hourly_series,
)
from energyd.config.types import Duration, check_quantity, within


class SpikeOptions(RuleOptions):
    type: Literal["spike"]
    # the devices' hourly energy summed and alerted on as one series
    aggregate: bool = False
    factor: float = Field(1.5, gt=0)
    min_delta_kwh: float = Field(0.0, ge=0)
    baseline_weeks: int = Field(4, ge=1, le=52)  # median of the same hour of the week
    # live spike: rolling window of power; 0 turns the live test off
    window: Annotated[Duration, within(0, 86400)] = 900.0
    quantity: str = "active_power_kw"  # the live spike's power quantity

    _q = field_validator("quantity")(classmethod(lambda cls, v: check_quantity(v)))


class Spike(Rule):
    options: SpikeOptions

    def __init__(self, options: SpikeOptions):
        super().__init__(options)
        self._windows: dict[str, C.RollingMean] = {}
        self._baselines: dict[tuple[str, int], float | None] = {}

    @property
    def live(self) -> bool:
        return self.options.window > 0

    # --- on the hour -------------------------------------------------------------------

    def on_hour(self, ctx: RuleContext, start_ms: int, end_ms: int) -> list[Observation]:
        o = self.options
        history_start = start_ms - (o.baseline_weeks + 1) * 7 * 24 * C.HOUR_MS
        out = []
        for device, values in hourly_series(ctx, o.name, o.aggregate, o.role,
                                            history_start, end_ms).items():
            for hour in C.hours(start_ms, end_ms):
                if hour not in values:
                    continue
                base, weeks = C.baseline(hour, values, o.baseline_weeks, ctx.tz)
                v = C.spike(values[hour], base, factor=o.factor, min_delta=o.min_delta_kwh,
                            hysteresis=o.hysteresis)
                if v.level is not C.Level.HOLD:
                    v.figures["baseline_weeks"] = weeks
                out.append(self.observe(device, hour, v, HOURLY))
        return out

    # --- live ----------------------------------------------------------------------------

    def live_inputs(self, ctx: RuleContext) -> Iterable[tuple[str, str, Feed | None]]:
        if not self.live:
            return []
        return [(device, self.options.quantity, None) for device in ctx.devices(self.name)]

    def on_reading(self, ctx: RuleContext, device: str, t_ms: int, value: float,
                   active: bool) -> C.Verdict | None:
        o = self.options
        win = self._windows.get(device)
        if win is None:
            win = self._windows[device] = C.RollingMean(o.window)
        win.add(t_ms, value)
        mean = win.mean()
        if mean is None:
            return None
        base = self._live_baseline(ctx, device, t_ms)
        level = C.spike_level(mean, base, factor=o.factor, min_delta=o.min_delta_kwh,
                              hysteresis=o.hysteresis)
        # the figures are only made for a verdict that starts or ends an episode
        if level is C.Level.HOLD or (level is C.Level.ON) == active:
            return None
        v = C.spike(mean, base, factor=o.factor, min_delta=o.min_delta_kwh,
                    hysteresis=o.hysteresis, unit="kw")
        if v.level is not C.Level.HOLD:
            v.figures["window_s"] = o.window
        return v

    def _live_baseline(self, ctx: RuleContext, device: str, t_ms: int) -> float | None:
        """Average kW of this hour of the week: its median hourly kWh (kWh per hour = kW)."""
        hour = t_ms - t_ms % C.HOUR_MS
        key = (device, hour)
        if key not in self._baselines:
            if len(self._baselines) > 10000:
                self._baselines.clear()
            weeks = self.options.baseline_weeks
            earlier = C.same_hour_of_week(hour, weeks, ctx.tz)
            values = ctx.hourly_energy([device], min(earlier), max(earlier) + 1).get(device, {})
            self._baselines[key] = C.baseline(hour, values, weeks, ctx.tz)[0]
        return self._baselines[key]
