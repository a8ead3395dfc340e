"""The reconciliation rule's input: supplier statements checked against the metered rollups
by accounting's `reconciliation_findings`, read as `StatementCheck` values through one
adapter (`statement_check`), so the rule never guesses a finding's key names.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from energyd.alerts.rules.base import StatementCheck
from energyd.alerts.rules.conditions import HOUR_MS
from energyd.config.schema import Config
from energyd.store.sqlite import Store


def statement_findings(config: Config, store: Store
                       ) -> Callable[[int, int], list[StatementCheck]]:
    """A reconciliation source over the store: every statement whose period overlaps the
    hours just rolled up, compared with the metered rollups by accounting's
    `reconciliation_findings` (asked with no tolerance, so agreeing statements come back
    too and can end an episode; statements not fully metered do not come back at all)."""
    from energyd.accounting.rollup import RollupRow, Statement, reconciliation_findings

    names = {d.name for d in config.devices}
    inputs = store.alert_inputs

    def devices_of(account: str) -> tuple[str, ...]:
        if account in config.accounting.accounts:
            return tuple(config.accounting.accounts[account])
        return (account,) if account in names else ()

    def source(start_ms: int, end_ms: int) -> list[StatementCheck]:
        statements = []
        for st in inputs.statements_overlapping(start_ms, end_ms):
            devs = devices_of(st.account)
            if devs:
                statements.append(Statement(st.id, st.account, st.period_start, st.period_end,
                                            st.energy_kwh, devs, st.supplier, st.document))
        if not statements:
            return []
        lo = min(st.start_ms for st in statements) - HOUR_MS
        hi = max(st.end_ms for st in statements)
        devs = sorted({d for st in statements for d in st.devices})
        # the kWh split gives the metered part of hours with gaps
        rows = [RollupRow(h.device, h.hour, h.mwh, h.source, h.coverage, None, None, None,
                          None, {"kwh": h.kwh_split} if h.kwh_split else {})
                for h in inputs.metered_hours(devs, lo, hi)]
        accepted = inputs.accepted_statements()
        return [statement_check(f, accepted)
                for f in reconciliation_findings(statements, rows, tolerance=-1.0)]

    return source


def statement_check(finding: dict[str, Any], accepted: set[int]) -> StatementCheck:
    """Accounting's reconciliation finding (today a plain dict) as the rule reads it; an
    accepted statement below the meter stands as it is, so its episode ends."""
    below = finding["kind"] == "statement_below_metered"
    return StatementCheck(
        account=finding["account"],
        devices=tuple(finding["devices"]) or (finding["account"],),
        period_start_ms=_ms(finding["period_start"]),
        period_end_ms=_ms(finding["period_end"]),
        metered_kwh=float(finding["metered_kwh"]),
        statement_kwh=float(finding["statement_kwh"]),
        below_metered=below,
        accepted=below and finding["statement"] in accepted,
    )


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
