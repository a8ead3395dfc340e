"""reconciliation: the meter against the supplier's statement, per account; the latest
billing period decides. `tolerance` defaults to accounting.reconciliation_tolerance."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import (
    PERIODIC,
    Observation,
    Rule,
    RuleContext,
    RuleOptions,
    StatementCheck,
)
from energyd.model import from_ms


class ReconciliationOptions(RuleOptions):
    type: Literal["reconciliation"]
    tolerance: float | None = Field(None, ge=0, le=1)


class Reconciliation(Rule):
    options: ReconciliationOptions

    def on_hour(self, ctx: RuleContext, start_ms: int, end_ms: int) -> list[Observation]:
        return self.judge(ctx, ctx.statement_checks(start_ms, end_ms))

    def judge(self, ctx: RuleContext, checks: Iterable[StatementCheck]) -> list[Observation]:
        latest: dict[str, StatementCheck] = {}
        for c in checks:
            prev = latest.get(c.account)
            if prev is None or c.period_start_ms >= prev.period_start_ms:
                latest[c.account] = c
        o = self.options
        now = ctx.now_ms()
        wanted = set(ctx.devices(o.name)) if (o.devices or o.role) else None
        tol = o.tolerance if o.tolerance is not None else ctx.reconciliation_tolerance
        out = []
        for account, c in sorted(latest.items()):
            if wanted is not None and not (set(c.devices) & wanted or account in wanted):
                continue
            # a statement below what the meter alone measured is wrong by any margin,
            # until a person accepts it as it stands
            v = C.reconciliation(c.metered_kwh, c.statement_kwh,
                                 tolerance=0.0 if c.below_metered else tol,
                                 hysteresis=o.hysteresis)
            if c.accepted:
                v = C.Verdict(C.Level.OFF, {**v.figures, "accepted": True})
            v.figures.update(period_start=from_ms(c.period_start_ms).isoformat(),
                             period_end=from_ms(c.period_end_ms).isoformat())
            out.append(self.observe(account, now, v, PERIODIC))
        return out
