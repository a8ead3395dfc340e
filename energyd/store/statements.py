"""Supplier statements (invoices), their replacements, and the acceptances recorded for
statements below the meter. A replaced statement is kept, but no longer used."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store


@dataclass(frozen=True)
class StoredStatement:
    id: int
    account: str
    start_ms: int
    end_ms: int
    kwh: float
    supplier: str | None
    document: str | None
    replaced_by: int | None = None


@dataclass(frozen=True)
class NewStatement:
    account: str
    start_ms: int
    end_ms: int
    kwh: float
    supplier: str | None
    document: str | None
    replaces: int | None = None


@dataclass(frozen=True)
class Acceptance:
    statement: int
    at_ms: int
    by: str
    reason: str
    finding: str  # the finding as it stood, JSON text


_COLUMNS = "id, account, period_start, period_end, energy_kwh, supplier, document, replaced_by"


class Statements:
    def __init__(self, store: Store):
        self._store = store

    def _select(self, where: str, params: tuple = ()) -> list[StoredStatement]:
        return [StoredStatement(*r) for r in self._store._read(
            f"SELECT {_COLUMNS} FROM invoices WHERE {where} ORDER BY id", params)]

    def current(self, start: int | None = None, end: int | None = None
                ) -> list[StoredStatement]:
        """The statements in use (not replaced), those whose period overlaps [start, end)
        if given."""
        if start is not None and end is not None:
            return self._select("replaced_by IS NULL AND period_start < ? AND period_end > ?",
                                (end, start))
        return self._select("replaced_by IS NULL")

    def replaced(self, start: int, end: int) -> list[StoredStatement]:
        """The replaced statements whose period overlaps [start, end)."""
        return self._select("replaced_by IS NOT NULL AND period_start < ? AND period_end > ?",
                            (end, start))

    def first_start(self, account: str) -> int | None:
        """The start of the account's earliest statement in use."""
        return self._store._read("SELECT min(period_start) FROM invoices WHERE account = ? "
                                 "AND replaced_by IS NULL", (account,))[0][0]

    def add(self, statements: Iterable[NewStatement], imported_ms: int) -> list[int]:
        """Store a file's statements in one transaction, marking those they replace;
        returns their ids."""
        ids = []
        with self._store._writing() as conn:
            for s in statements:
                new_id = conn.execute(
                    "INSERT INTO invoices (account, period_start, period_end, energy_kwh, "
                    "supplier, document, imported) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (s.account, s.start_ms, s.end_ms, s.kwh, s.supplier, s.document,
                     imported_ms)).lastrowid
                if s.replaces is not None:
                    conn.execute("UPDATE invoices SET replaced_by = ? WHERE id = ?",
                                 (new_id, s.replaces))
                ids.append(int(new_id))
        return ids

    def acceptances(self) -> list[Acceptance]:
        """Every acceptance recorded, oldest first."""
        return [Acceptance(*r) for r in self._store._read(
            "SELECT statement, accepted, accepted_by, reason, finding FROM "
            "statement_acceptances ORDER BY id")]

    def accept(self, acceptance: Acceptance) -> None:
        with self._store._writing() as conn:
            conn.execute(
                "INSERT INTO statement_acceptances (statement, accepted, accepted_by, reason, "
                "finding) VALUES (?, ?, ?, ?, ?)",
                (acceptance.statement, acceptance.at_ms, acceptance.by, acceptance.reason,
                 acceptance.finding))

    def restore(self, statements: Iterable[StoredStatement],
                acceptances: Iterable[Acceptance]) -> None:
        """Statements and acceptances with their ids as an evidence folder lists them."""
        with self._store._writing() as conn:
            conn.executemany(
                "INSERT INTO invoices (id, account, period_start, period_end, energy_kwh, "
                "supplier, document, imported, replaced_by) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [(s.id, s.account, s.start_ms, s.end_ms, s.kwh, s.supplier, s.document,
                  s.replaced_by) for s in statements])
            conn.executemany(
                "INSERT INTO statement_acceptances (statement, accepted, accepted_by, reason, "
                "finding) VALUES (?, ?, ?, ?, ?)",
                [(a.statement, a.at_ms, a.by, a.reason, a.finding) for a in acceptances])
