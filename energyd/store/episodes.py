"""Alert episodes as the store keeps them: rows of the `alerts` table.

Each change to an episode (its start, its end, a rejection counted into it) takes a new
change number, so the sinks forward the changed row as an `energy_alert` point. The episode
tracker (energyd/alerts/episodes.py) decides what changes; this repository only keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

ACTIVE = "active"
RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class StoredEpisode:
    id: int
    rule: str
    device: str
    state: str
    started: int
    ended: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EpisodeChange:
    """An episode as it should now stand; `id` 0 is one not stored yet, unless `follows`
    names the earlier change of the same `save` that stores it first (an episode that
    starts and ends in one batch)."""

    id: int
    rule: str
    device: str
    state: str
    started: int
    ended: int | None
    detail: dict[str, Any]
    follows: int | None = None


_COLUMNS = "id, rule, device, state, started, ended, detail"


def _episode(row: tuple) -> StoredEpisode:
    i, rule, device, state, started, ended, detail = row
    return StoredEpisode(i, rule, device, state, started, ended, json.loads(detail or "{}"))


class Episodes:
    def __init__(self, store: Store):
        self._store = store

    def newest_first(self, *, state: str | None = None,
                     limit: int | None = None) -> list[StoredEpisode]:
        """Episodes, newest first (all, or only `active` / `resolved`)."""
        sql = f"SELECT {_COLUMNS} FROM alerts"
        params: list[Any] = []
        if state is not None:
            sql += " WHERE state = ?"
            params.append(state)
        sql += " ORDER BY started DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_episode(r) for r in self._store._read(sql, params)]

    def overlapping(self, rule: str, device: str, start_ms: int, end_ms: int,
                    limit: int = 20) -> list[StoredEpisode]:
        """A rule's episodes on a device that began before `end_ms` and had not ended by
        `start_ms`."""
        return [_episode(r) for r in self._store._read(
            f"SELECT {_COLUMNS} FROM alerts WHERE rule = ? AND device = ? AND started < ? "
            "AND (ended IS NULL OR ended > ?) LIMIT ?", (rule, device, end_ms, start_ms, limit))]

    def latest_active(self, rule: str, device: str) -> StoredEpisode | None:
        rows = self._store._read(
            f"SELECT {_COLUMNS} FROM alerts WHERE rule = ? AND device = ? AND state = ? "
            "ORDER BY id DESC LIMIT 1", (rule, device, ACTIVE))
        return _episode(rows[0]) if rows else None

    def started_at(self, rule: str, device: str, started: int) -> list[StoredEpisode]:
        """A rule's episodes on a device that began at `started`, newest first: those of
        a statement period, which begin with it."""
        return [_episode(r) for r in self._store._read(
            f"SELECT {_COLUMNS} FROM alerts WHERE rule = ? AND device = ? AND started = ? "
            "ORDER BY id DESC", (rule, device, started))]

    def save(self, changes: Sequence[EpisodeChange]) -> list[int]:
        """Store the changes in one transaction, each under a new change number; returns
        each episode's id (a new one for those not stored yet)."""
        ids: list[int] = []
        with self._store._writing() as conn:
            for ch in changes:
                seq = self._store.next_seq(conn)
                detail = json.dumps(ch.detail, sort_keys=True)
                if ch.follows is not None:
                    ch = replace(ch, id=ids[ch.follows])
                if ch.id == 0:
                    cur = conn.execute(
                        "INSERT INTO alerts (rule, device, state, started, ended, detail, seq) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (ch.rule, ch.device, ch.state, ch.started, ch.ended, detail, seq))
                    ids.append(int(cur.lastrowid or 0))
                else:
                    conn.execute("UPDATE alerts SET state = ?, ended = ?, detail = ?, seq = ? "
                                 "WHERE id = ?", (ch.state, ch.ended, detail, seq, ch.id))
                    ids.append(ch.id)
        return ids
