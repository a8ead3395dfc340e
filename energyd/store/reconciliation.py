"""The alert episodes of statements that disagree with the meter, one per statement period
(rule, account, period start), kept while no `reconciliation` alert rule owns them.

The accounting only finds the disagreements; what it finds is written here by its caller."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store


class ReconciliationEpisodes:
    def __init__(self, store: Store):
        self._store = store

    def sync(self, rule: str, periods: Iterable[tuple[str, int, str | None]],
             now_ms: int) -> None:
        """For each (account, period start, detail JSON or None): an open episode with that
        detail, or, with None, the open one resolved. Unchanged episodes are not touched."""
        with self._store._writing() as conn:
            for account, started, detail in periods:
                existing = conn.execute(
                    "SELECT id, state, detail FROM alerts WHERE rule = ? AND device = ? "
                    "AND started = ? ORDER BY id DESC LIMIT 1",
                    (rule, account, started)).fetchone()
                active = existing is not None and existing[1] == "active"
                if detail is None:
                    if active:
                        conn.execute("UPDATE alerts SET state = 'resolved', ended = ?, seq = ? "
                                     "WHERE id = ?",
                                     (now_ms, self._store.next_seq(conn), existing[0]))
                elif not active:
                    conn.execute(
                        "INSERT INTO alerts (rule, device, state, started, ended, detail, seq) "
                        "VALUES (?, ?, 'active', ?, NULL, ?, ?)",
                        (rule, account, started, detail, self._store.next_seq(conn)))
                elif existing[2] != detail:
                    conn.execute("UPDATE alerts SET detail = ?, seq = ? WHERE id = ?",
                                 (detail, self._store.next_seq(conn), existing[0]))

    def resolve(self, rule: str, periods: Iterable[tuple[str, int]], now_ms: int) -> None:
        """Resolve the open episodes of (account, period start): a replaced statement's."""
        with self._store._writing() as conn:
            for account, started in periods:
                conn.execute("UPDATE alerts SET state = 'resolved', ended = ?, seq = ? "
                             "WHERE rule = ? AND device = ? AND started = ? "
                             "AND state = 'active'",
                             (now_ms, self._store.next_seq(conn), rule, account, started))
