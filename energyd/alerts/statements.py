"""The reconciliation rule's input: supplier statements checked against the metered rollups
by accounting's reconciliation (`findings.find`), read as `StatementCheck` values through one
adapter (`statement_check`) over the typed `ReconciliationFinding`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime

from energyd.accounting.findings import ReconciliationFinding
from energyd.alerts.rules.base import StatementCheck
from energyd.alerts.rules.conditions import HOUR_MS
from energyd.config.schema import Config
from energyd.store.sqlite import Store


def statement_findings(config: Config, store: Store
                       ) -> Callable[[int, int], list[StatementCheck]]:
    """A reconciliation source over the store: every statement whose period overlaps the
    hours just rolled up, compared with the metered rollups by the accounting's
    reconciliation (asked with no tolerance, so agreeing statements come back too and can
    end an episode; statements not fully metered do not come back at all)."""
    from energyd.accounting.findings import find
    from energyd.accounting.rollup import RollupRow, Statement

    names = {d.name for d in config.devices}

    def devices_of(account: str) -> tuple[str, ...]:
        if account in config.accounting.accounts:
            return tuple(config.accounting.accounts[account])
        return (account,) if account in names else ()

    def source(start_ms: int, end_ms: int) -> list[StatementCheck]:
        statements = []
        for st in store.statements.current(start_ms, end_ms):
            devs = devices_of(st.account)
            if devs:
                statements.append(Statement(st.id, st.account, st.start_ms, st.end_ms,
                                            st.kwh, devs, st.supplier, st.document))
        if not statements:
            return []
        lo = min(st.start_ms for st in statements) - HOUR_MS
        hi = max(st.end_ms for st in statements)
        devs = sorted({d for st in statements for d in st.devices})
        # the kWh split gives the metered part of hours with gaps
        rows = [RollupRow(device, hour, mwh, src, coverage, None, None, None, None,
                          {"kwh": split} if split else {})
                for device, hour, mwh, src, coverage, split in store.rollups.metered(lo, hi, devs)]
        accepted = {a.statement for a in store.statements.acceptances()}
        return [statement_check(f, accepted) for f in find(statements, rows, tolerance=-1.0)]

    return source


def statement_check(finding: ReconciliationFinding, accepted: Collection[int]
                    ) -> StatementCheck:
    """Accounting's reconciliation finding as the rule reads it; an accepted statement below
    the meter stands as it is, so its episode ends."""
    return StatementCheck(
        account=finding.account,
        devices=tuple(finding.devices) or (finding.account,),
        period_start_ms=_ms(finding.period_start),
        period_end_ms=_ms(finding.period_end),
        metered_kwh=float(finding.metered_kwh),
        statement_kwh=float(finding.statement_kwh),
        below_metered=finding.below_metered,
        accepted=finding.below_metered and finding.statement in accepted,
    )


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
