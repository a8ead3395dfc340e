"""Alert events not yet delivered to a channel: rows of the `alert_outbox` table.

What an event is and when it counts as delivered is the dispatcher's business
(energyd/alerts/outbox.py); this repository keeps the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

Payload = dict[str, Any]


class OutboxRows:
    def __init__(self, store: Store):
        self._store = store

    def keep(self, channels: list[str], payloads: list[Payload], created_ms: int
             ) -> list[dict[str, int]]:
        """Each payload for each channel, all in one transaction; for each payload,
        channel -> row id."""
        out: list[dict[str, int]] = []
        with self._store._writing() as conn:
            for payload in payloads:
                body = json.dumps(payload, sort_keys=True)
                ids: dict[str, int] = {}
                for channel in channels:
                    cur = conn.execute("INSERT INTO alert_outbox (channel, payload, created) "
                                       "VALUES (?, ?, ?)", (channel, body, created_ms))
                    ids[channel] = int(cur.lastrowid or 0)
                out.append(ids)
        return out

    def delivered(self, row: int) -> None:
        with self._store._writing() as conn:
            conn.execute("DELETE FROM alert_outbox WHERE id = ?", (row,))

    def drop_older(self, channel: str, created_before_ms: int) -> int:
        """Forget the channel's rows made before the given time; returns how many."""
        with self._store._writing() as conn:
            return conn.execute("DELETE FROM alert_outbox WHERE channel = ? AND created < ?",
                                (channel, created_before_ms)).rowcount

    def undelivered(self, channel: str) -> list[tuple[int, Payload]]:
        """The channel's rows, oldest first."""
        return [(row, json.loads(body)) for row, body in self._store._read(
            "SELECT id, payload FROM alert_outbox WHERE channel = ? ORDER BY id", (channel,))]

    def counts(self) -> dict[str, int]:
        """channel -> undelivered events."""
        return dict(self._store._read(
            "SELECT channel, count(*) FROM alert_outbox GROUP BY channel"))

    def forget_channels_except(self, channels: Iterable[str]) -> int:
        names = sorted(set(channels))
        marks = ",".join("?" * len(names))
        with self._store._writing() as conn:
            return conn.execute(f"DELETE FROM alert_outbox WHERE channel NOT IN ({marks})",
                                names).rowcount
