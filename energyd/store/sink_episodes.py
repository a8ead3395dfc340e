"""The `sink_rejected` alert episodes: one per sink (device = the sink's name) while a
server refuses points for good, in the alerts table, so they flow to the sinks like any
alert. Kept apart from the forwarder, which only reports what was refused."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from energyd.store.sqlite import Store

RULE = "sink_rejected"


class OpenEpisode(NamedTuple):
    id: int
    detail: dict[str, Any]


class SinkRejectionEpisodes:
    def __init__(self, store: Store):
        self._store = store

    def open_episode(self, sink: str) -> OpenEpisode | None:
        rows = self._store.execute(
            "SELECT id, detail FROM alerts WHERE rule = ? AND device = ? AND state = 'active' "
            "ORDER BY id DESC LIMIT 1", (RULE, sink))
        return OpenEpisode(rows[0][0], json.loads(rows[0][1] or "{}")) if rows else None

    def record(self, sink: str, *, stream: str, points: int, items: int, message: str,
               at_ms: int) -> bool:
        """Add refused points to the sink's open episode, or open one; True if opened."""
        with self._store.transaction() as conn:
            rows = conn.execute(
                "SELECT id, detail FROM alerts WHERE rule = ? AND device = ? "
                "AND state = 'active' ORDER BY id DESC LIMIT 1", (RULE, sink)).fetchall()
            seq = self._store.next_seq(conn)
            if rows:
                detail = json.loads(rows[0][1] or "{}")
                detail["points"] = detail.get("points", 0) + points
                detail["items"] = detail.get("items", 0) + items
                detail.update(stream=stream, message=message, last_ms=at_ms)
                conn.execute("UPDATE alerts SET detail = ?, seq = ? WHERE id = ?",
                             (json.dumps(detail), seq, rows[0][0]))
                return False
            detail = {"points": points, "items": items, "stream": stream,
                      "message": message, "last_ms": at_ms}
            conn.execute(
                "INSERT INTO alerts (rule, device, state, started, ended, detail, seq) "
                "VALUES (?, ?, 'active', ?, NULL, ?, ?)",
                (RULE, sink, at_ms, json.dumps(detail), seq))
            return True

    def resolve(self, episode: int, at_ms: int) -> None:
        with self._store.transaction() as conn:
            conn.execute("UPDATE alerts SET state = 'resolved', ended = ?, seq = ? WHERE id = ?",
                         (at_ms, self._store.next_seq(conn), episode))
