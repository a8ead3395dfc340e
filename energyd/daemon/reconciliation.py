"""Reconciliation findings into alert episodes, one per statement period.

The accounting only finds the statements that disagree with the meter (`RecomputeResult`
carries the findings and the statements checked); the episodes they call for are recorded
here, by the hourly rollup job and the `invoices` commands, while no `reconciliation` alert
rule is configured (with one, the alert engine owns those episodes).
"""

from __future__ import annotations

from energyd.accounting.findings import RULE, episodes
from energyd.accounting.storage import RecomputeResult
from energyd.config.schema import Config
from energyd.store.sqlite import Store


def record_reconciliation(store: Store, config: Config, result: RecomputeResult,
                          now_ms: int) -> None:
    """Record what `result` found: the episodes of statements replaced by an import end;
    a finding opens (or updates) its statement's episode; a statement checked and found in
    agreement, or accepted while below the meter, ends its episode."""
    if result.replaced:
        store.reconciliation.resolve(RULE, result.replaced, now_ms)
    if not result.checked or any(r.type == RULE for r in config.alerts.rules):
        return
    accepted = {a.statement for a in store.statements.acceptances()}
    store.reconciliation.sync(RULE, episodes(result.checked, result.findings, accepted),
                              now_ms)
