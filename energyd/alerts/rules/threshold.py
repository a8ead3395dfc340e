"""threshold: one quantity above `limit` for at least `duration`, live."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import field_validator, model_validator

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import Feed, Rule, RuleContext, RuleOptions
from energyd.config.types import Duration, check_quantity, within


class ThresholdOptions(RuleOptions):
    type: Literal["threshold"]
    quantity: str = "active_power_kw"
    limit: float | None = None
    duration: Annotated[Duration, within(0, 7 * 86400)] = 0.0

    _q = field_validator("quantity")(classmethod(lambda cls, v: check_quantity(v)))

    @model_validator(mode="after")
    def _needs_limit(self) -> ThresholdOptions:
        if self.limit is None:
            raise ValueError("a threshold rule needs a limit")
        return self


class ThresholdRule(Rule):
    options: ThresholdOptions

    def __init__(self, options: ThresholdOptions):
        super().__init__(options)
        self._state: dict[str, C.Threshold] = {}

    def live_inputs(self, ctx: RuleContext) -> Iterable[tuple[str, str, Feed | None]]:
        return [(device, self.options.quantity, None) for device in ctx.devices(self.name)]

    def on_reading(self, ctx: RuleContext, device: str, t_ms: int, value: float,
                   active: bool) -> C.Verdict | None:
        th = self._state.get(device)
        if th is None:
            o = self.options
            assert o.limit is not None
            th = self._state[device] = C.Threshold(o.limit, o.duration, o.hysteresis)
        return th.add(t_ms, value, active=active)
