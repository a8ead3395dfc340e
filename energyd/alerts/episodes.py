"""Episodes: one start and one end per alert condition, kept in the store's alerts table.

A rule's verdicts arrive many times (every poll, every rollup, every recomputation at
start-up); the tracker turns them into episodes:

- ON with no active episode for (rule, device) starts one, unless an episode already covers
  that instant: a recomputation of hours already seen, or a daemon restarted after a spike,
  must not report it again.
- OFF ends the active episode, if that episode was started by the same source (the live
  evaluation or the hourly one) at an earlier time: the hourly rollup of 10:00 does not end a
  live episode that began at 10:40, and a late recomputation of 09:00 cannot end it either.
- HOLD (the hysteresis band, or not enough data) changes nothing.

An hourly verdict covers its whole hour, so a live episode within 10:00-11:00 and the
10:00 rollup are one episode, not two. Episodes are rows of the alerts table (state
`active` or `resolved`); each change takes a new `seq`, so the sinks forward it as an
`energy_alert` point. Active episodes are loaded at start, which is what lets state survive
a restart.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from energyd.alerts.rules import HOUR_MS, Level, Verdict
from energyd.model import from_ms
from energyd.store.sqlite import Store

ACTIVE = "active"
RESOLVED = "resolved"
HOURLY = "hourly"
# Who observed the condition; episodes without one were raised elsewhere (the sinks' own
# `sink_rejected` episode) and are left to whoever raised them.
SOURCES = ("live", HOURLY, "periodic")


@dataclass(frozen=True, slots=True)
class Observation:
    rule: str
    type: str  # the rule's type: spike, threshold, off_shift, ...
    device: str
    at_ms: int  # the instant (or hour start) the verdict is about
    verdict: Verdict
    source: str  # "live", "hourly" or "periodic": who may end what it started


@dataclass
class Episode:
    id: int
    rule: str
    device: str
    state: str
    started: int
    ended: int | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.detail.get("source", "")

    def covers(self, at_ms: int, source: str) -> bool:
        """Whether this episode already stands for a verdict at `at_ms`; an hourly verdict
        is about its whole hour."""
        span = HOUR_MS if source == HOURLY else 1
        return self.started < at_ms + span and (self.ended is None or self.ended > at_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "rule": self.rule, "type": self.detail.get("type"),
            "device": self.device, "state": self.state,
            "started": from_ms(self.started).isoformat(),
            "ended": from_ms(self.ended).isoformat() if self.ended is not None else None,
            "source": self.source,
            "figures": self.detail.get("start", {}),
            "end_figures": self.detail.get("end"),
        }


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "start" or "end"
    episode: Episode

    def payload(self, site: str) -> dict[str, Any]:
        return {"event": self.kind, "site": site, **self.episode.to_json()}


def annotated(obs: Observation) -> dict[str, Any]:
    """An episode's detail: the figures that fired it under `start`, and for the
    `energy_alert` annotation a `message` and the numeric figures at the top level."""
    figures = dict(obs.verdict.figures)
    shown = ", ".join(f"{k}={_short(v)}" for k, v in figures.items()
                      if v is not None and k not in ("fire_at", "release_at"))
    detail: dict[str, Any] = {
        k: float(v) for k, v in figures.items()
        if isinstance(v, int | float) and not isinstance(v, bool)}
    detail.update(type=obs.type, source=obs.source, start=figures,
                  message=f"{obs.type}: {shown}" if shown else obs.type)
    return detail


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def load_episodes(store: Store, *, state: str | None = None,
                  limit: int | None = None) -> list[Episode]:
    """Episodes, newest first (all, or only `active` / `resolved`)."""
    sql = "SELECT id, rule, device, state, started, ended, detail FROM alerts"
    params: list[Any] = []
    if state is not None:
        sql += " WHERE state = ?"
        params.append(state)
    sql += " ORDER BY started DESC, id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [Episode(i, r, d, s, st, en, json.loads(det or "{}"))
            for i, r, d, s, st, en, det in store.execute(sql, params)]


class EpisodeTracker:
    """Thread-safe: the live path, the rollup listener and the periodic jobs share it."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._active = self._load_active()

    def _load_active(self) -> dict[tuple[str, str], Episode]:
        return {(e.rule, e.device): e for e in load_episodes(self.store, state=ACTIVE)
                if e.source in SOURCES}

    def is_active(self, rule: str, device: str) -> bool:
        return (rule, device) in self._active  # a dict lookup: safe without the lock

    @property
    def active(self) -> list[Episode]:
        with self._lock:
            return list(self._active.values())

    def observe(self, observations: Iterable[Observation]) -> list[Event]:
        """Apply verdicts in order; persist what changed in one transaction; return the
        starts and ends to dispatch."""
        with self._lock:
            changes: list[tuple[str, Episode, Episode]] = []
            ended_here: dict[tuple[str, str], list[Episode]] = {}
            for obs in observations:
                key = (obs.rule, obs.device)
                level = obs.verdict.level
                current = self._active.get(key)
                if level is Level.ON:
                    if current is not None:
                        continue  # never repeated while it lasts
                    if any(e.covers(obs.at_ms, obs.source) for e in ended_here.get(key, ())) \
                            or self._covered(key, obs.at_ms, obs.source):
                        continue
                    ep = Episode(0, obs.rule, obs.device, ACTIVE, obs.at_ms, None,
                                 annotated(obs))
                    self._active[key] = ep
                    changes.append(("start", ep, _snapshot(ep)))
                elif level is Level.OFF and current is not None:
                    if current.source != obs.source or obs.at_ms <= current.started:
                        continue
                    current.state, current.ended = RESOLVED, obs.at_ms
                    current.detail["end"] = dict(obs.verdict.figures)
                    del self._active[key]
                    ended_here.setdefault(key, []).append(current)
                    changes.append(("end", current, _snapshot(current)))
            if changes:
                try:
                    self._persist(changes)
                except Exception:
                    # nothing was stored: forget the in-memory changes too, the verdicts
                    # come again with the next poll or rollup
                    self._active = self._load_active()
                    raise
            return [Event(kind, snap) for kind, _, snap in changes]

    def _covered(self, key: tuple[str, str], at_ms: int, source: str) -> bool:
        lo = at_ms - HOUR_MS if source == HOURLY else at_ms
        rows = self.store.execute(
            "SELECT id, state, started, ended, detail FROM alerts WHERE rule = ? AND device = ? "
            "AND started < ? AND (ended IS NULL OR ended > ?) LIMIT 20",
            (key[0], key[1], at_ms + HOUR_MS, lo))
        return any(Episode(i, key[0], key[1], s, st, en, json.loads(d)).covers(at_ms, source)
                   for i, s, st, en, d in rows)

    def _persist(self, changes: list[tuple[str, Episode, Episode]]) -> None:
        with self.store.transaction() as conn:
            for kind, ep, snap in changes:
                seq = self.store.next_seq(conn)
                detail = json.dumps(snap.detail, sort_keys=True)
                if kind == "start":
                    cur = conn.execute(
                        "INSERT INTO alerts (rule, device, state, started, ended, detail, seq) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (snap.rule, snap.device, snap.state, snap.started, snap.ended, detail,
                         seq))
                    ep.id = snap.id = int(cur.lastrowid or 0)
                else:
                    snap.id = ep.id
                    conn.execute("UPDATE alerts SET state = ?, ended = ?, detail = ?, seq = ? "
                                 "WHERE id = ?", (snap.state, snap.ended, detail, seq, ep.id))

    def retire(self, rules: set[str], at_ms: int) -> list[Event]:
        """End active episodes of rules no longer configured (they could never end)."""
        with self._lock:
            gone = [ep for key, ep in self._active.items() if key[0] not in rules]
            for ep in gone:
                ep.state, ep.ended = RESOLVED, max(at_ms, ep.started + 1)
                ep.detail["end"] = {"reason": "rule removed from the configuration"}
                del self._active[(ep.rule, ep.device)]
            changes = [("end", ep, _snapshot(ep)) for ep in gone]
            if changes:
                self._persist(changes)
            return [Event("end", snap) for _, _, snap in changes]


def _snapshot(ep: Episode) -> Episode:
    return Episode(ep.id, ep.rule, ep.device, ep.state, ep.started, ep.ended,
                   json.loads(json.dumps(ep.detail)))
