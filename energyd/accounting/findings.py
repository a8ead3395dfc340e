"""Reconciliation findings as values: a statement that disagrees with the meter.

`reconciliation_findings` (rollup.py) finds them as plain mappings; `find` gives them as
`ReconciliationFinding`, whose `to_json()` is that mapping again, key for key, so the JSON,
CSV and HTML reports read as before. The accounting writes no alert episode itself: the
caller hands the findings to the alerts' episode tracker (energyd/daemon/reconciliation.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from energyd.accounting.rollup import RollupRow, Statement, reconciliation_findings

RULE = "reconciliation"
"""The alert rule the episodes of findings are kept under."""
METER_DIFFERENCE = "meter_difference"
BELOW_METERED = "statement_below_metered"


@dataclass(frozen=True)
class ReconciliationFinding:
    """A statement whose period disagrees with the meter (`reconciliation_findings` says
    when): `meter_difference` (fully metered, beyond tolerance; the meter stands) or
    `statement_below_metered` (the period has gaps and the statement is below what the meter
    alone measured; the gap hours keep their estimate until corrected or accepted)."""

    kind: str
    statement: int
    account: str
    devices: tuple[str, ...]
    period_start: str  # ISO 8601, UTC
    period_end: str
    statement_kwh: float
    metered_kwh: float
    difference_kwh: float  # metered - statement
    difference_share: float
    tolerance: float
    document: str | None
    supplier: str | None
    estimated_kwh: float | None = None  # statement_below_metered only
    gap_hours: int | None = None  # statement_below_metered only

    @property
    def below_metered(self) -> bool:
        return self.kind == BELOW_METERED

    @classmethod
    def from_json(cls, f: Mapping[str, Any]) -> ReconciliationFinding:
        return cls(f["kind"], f["statement"], f["account"], tuple(f["devices"]),
                   f["period_start"], f["period_end"], f["statement_kwh"], f["metered_kwh"],
                   f["difference_kwh"], f["difference_share"], f["tolerance"], f["document"],
                   f["supplier"], f.get("estimated_kwh"), f.get("gap_hours"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "statement": self.statement, "account": self.account,
            "devices": list(self.devices), "period_start": self.period_start,
            "period_end": self.period_end, "statement_kwh": self.statement_kwh,
            "tolerance": self.tolerance, "document": self.document, "supplier": self.supplier,
            "metered_kwh": self.metered_kwh, "difference_kwh": self.difference_kwh,
            "difference_share": self.difference_share}
        if self.below_metered:
            out["estimated_kwh"] = self.estimated_kwh
            out["gap_hours"] = self.gap_hours
        return out

    def message(self) -> str:
        """The finding in a sentence, as its alert episode carries it."""
        name = (f"statement {self.document or self.statement} for {self.account} "
                f"({self.period_start} to {self.period_end})")
        if self.below_metered:
            return (f"{name}: {self.statement_kwh:g} kWh billed, below the "
                    f"{self.metered_kwh:g} kWh metered in the period alone; {self.gap_hours} "
                    f"gap hours keep an estimate until the data or the statement is corrected "
                    f"or the difference is accepted")
        return (f"{name}: {self.statement_kwh:g} kWh billed, {self.metered_kwh:g} kWh metered "
                f"({self.difference_share:.1%} apart, tolerance {self.tolerance:.0%})")


def find(statements: Iterable[Statement], rows: Iterable[RollupRow],
         tolerance: float) -> list[ReconciliationFinding]:
    """`reconciliation_findings` as values."""
    return [ReconciliationFinding.from_json(f)
            for f in reconciliation_findings(statements, rows, tolerance)]

