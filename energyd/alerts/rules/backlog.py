"""backlog: a sink whose oldest unsent reading is older than `max_age`.

Only the readings stream is judged: its items carry the time they were read, while a
recomputed rollup carries the hour it is about, which may be days old.
"""

from __future__ import annotations

from typing import Annotated, Literal

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import PERIODIC, Observation, Rule, RuleContext, RuleOptions
from energyd.config.types import Duration, within


class BacklogOptions(RuleOptions):
    type: Literal["backlog"]
    max_age: Annotated[Duration, within(1, 366 * 86400)] = 3600.0


class Backlog(Rule):
    options: BacklogOptions

    def period_s(self, ctx: RuleContext) -> float | None:
        return 60.0 if ctx.sinks else None

    def periodic(self, ctx: RuleContext, now_ms: int | None) -> list[Observation]:
        now = now_ms if now_ms is not None else ctx.now_ms()
        o = self.options
        return [self.observe(sink, now, C.backlog(now, count, oldest, max_age_s=o.max_age,
                                                  hysteresis=o.hysteresis), PERIODIC)
                for sink, count, oldest in ctx.backlogs()]
