"""Hourly MWh and tCO2: "meter first, invoice fallback", emission factors, certificates, reports.

Pure functions over plain data (no clock, no sockets) in `validation` (which counter samples
energy may be computed from), `energy` (counter -> hourly energy),
`factors`, `rollup` (gap filling, tCO2, certificates, reconciliation), `invoices` (statement
files) and `report`; `service.Accountant` is the service that reads the store and writes
rollups, through the repository interfaces of `repositories` (no SQL), with the evidence
export and verification in `evidence` and reconciliation findings as values in `findings`.
`reconciliation_findings(statements, rows, tolerance)` is what the alert engine calls to
compare fully metered billing periods with their statements.
"""

from energyd.accounting.energy import CounterSpec, Trace, analyse_counter, hourly, integrate_power
from energyd.accounting.factors import Factor, FactorTable, load_factors, parse_factors
from energyd.accounting.rollup import (
    SOURCES,
    RollupRow,
    Statement,
    fuel_tco2,
    reconciliation_findings,
)

__all__ = [
    "SOURCES",
    "CounterSpec",
    "Factor",
    "FactorTable",
    "RollupRow",
    "Statement",
    "Trace",
    "analyse_counter",
    "fuel_tco2",
    "hourly",
    "integrate_power",
    "load_factors",
    "parse_factors",
    "reconciliation_findings",
]
