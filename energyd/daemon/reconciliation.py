"""Reconciliation findings into alert episodes, one per statement period.

The accounting only finds the statements that disagree with the meter (`RecomputeResult`
carries the findings and the statements checked); the hourly rollup job and the `invoices`
and `rollup` commands hand them here, and the episode tracker keeps the episodes, while no
`reconciliation` alert rule is configured (with one, the alert engine judges the statements
itself and owns those episodes).
"""

from __future__ import annotations

from energyd.accounting.findings import RULE
from energyd.accounting.service import RecomputeResult
from energyd.alerts.episodes import EpisodeTracker, Event
from energyd.config.schema import Config
from energyd.store.sqlite import Store


def record_reconciliation(store: Store, config: Config, result: RecomputeResult,
                          now_ms: int, *, tracker: EpisodeTracker | None = None
                          ) -> list[Event]:
    """Record what `result` found: the episodes of statements replaced by an import end;
    a finding opens (or updates) its statement's episode; a statement checked and found in
    agreement, or accepted while below the meter, ends its episode. `tracker`: the daemon's
    one tracker (a command makes its own). Returns the starts and ends."""
    if not result.replaced and not result.checked:
        return []
    tracker = tracker if tracker is not None else EpisodeTracker(store)
    events = tracker.statements_replaced(result.replaced, now_ms) if result.replaced else []
    if not result.checked or any(r.type == RULE for r in config.alerts.rules):
        return events
    accepted = {a.statement for a in store.statements.acceptances()}
    return events + tracker.statements_checked(result.checked, result.findings, accepted,
                                               now_ms)
