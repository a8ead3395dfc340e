"""Every alert rule type: `type:` -> (its options model, its rule). One line per type; a
new type is a module in this folder and a line here."""

from __future__ import annotations

from typing import Any

from energyd.alerts.rules import backlog, off_shift, reconciliation, spike, stale, threshold
from energyd.alerts.rules.base import Rule

RULES: dict[str, tuple[type[Any], type[Rule]]] = {
    "spike": (spike.SpikeOptions, spike.Spike),
    "threshold": (threshold.ThresholdOptions, threshold.ThresholdRule),
    "off_shift": (off_shift.OffShiftOptions, off_shift.OffShift),
    "stale": (stale.StaleOptions, stale.Stale),
    "reconciliation": (reconciliation.ReconciliationOptions, reconciliation.Reconciliation),
    "backlog": (backlog.BacklogOptions, backlog.Backlog),
}


def build(options: Any) -> Rule:
    """The run-time rule for a configured rule's options."""
    return RULES[options.type][1](options)
