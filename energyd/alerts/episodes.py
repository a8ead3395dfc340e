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

Two producers besides the rules feed it, each with an episode of its own kind: a sink's points
refused for good (`sink_rejected` / `sink_quiet`, from the forwarder's outcome) and the
accounting's statements that disagree with the meter (`statements_checked` /
`statements_replaced`, while no `reconciliation` alert rule owns them). So this module alone
decides what the alerts table holds; energyd/store/episodes.py alone writes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from energyd.accounting.findings import RULE as RECONCILIATION
from energyd.accounting.findings import ReconciliationFinding
from energyd.accounting.rollup import Statement
from energyd.alerts.rules.base import HOURLY, LIVE, PERIODIC, Observation
from energyd.alerts.rules.conditions import HOUR_MS, Level
from energyd.model import from_ms
from energyd.store.episodes import EpisodeChange, StoredEpisode
from energyd.store.sqlite import Store

ACTIVE = "active"
RESOLVED = "resolved"
# Who observed the condition; episodes without one (a sink's rejected points, see
# `sink_rejected`; a statement's disagreement with the meter, see `statements_checked`) are
# not ended by observations.
SOURCES = (LIVE, HOURLY, PERIODIC)
__all__ = ["ACTIVE", "HOURLY", "RESOLVED", "SOURCES", "Episode", "EpisodeTracker", "Event",
           "Observation", "load_episodes"]
# a sink's episode of rejected points ends after this long without a rejection
SINK_QUIET_MS = 3600_000
SINK_REJECTED = "sink_rejected"


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
    return [_episode(e) for e in store.episodes.newest_first(state=state, limit=limit)]


def _episode(e: StoredEpisode) -> Episode:
    return Episode(e.id, e.rule, e.device, e.state, e.started, e.ended, e.detail)


class EpisodeTracker:
    """Thread-safe: the live path, the rollup listener and the periodic jobs share it."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._active = self._load_active()
        self._sinks_open: dict[str, bool] = {}  # sink -> has an active `sink_rejected` episode

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
        return any(_episode(e).covers(at_ms, source) for e in
                   self.store.episodes.overlapping(key[0], key[1], lo, at_ms + HOUR_MS))

    def _persist(self, changes: list[tuple[str, Episode, Episode]]) -> None:
        first: dict[int, int] = {}  # id(episode) -> its first change here
        stored = []
        for k, (_, ep, snap) in enumerate(changes):
            follows = first.setdefault(id(ep), k)
            stored.append(EpisodeChange(ep.id, snap.rule, snap.device, snap.state, snap.started,
                                        snap.ended, snap.detail,
                                        follows if follows != k and ep.id == 0 else None))
        ids = self.store.episodes.save(stored)
        for (_, ep, snap), i in zip(changes, ids, strict=True):
            ep.id = snap.id = i

    # --- a sink's points refused for good ------------------------------------------------

    def sink_rejected(self, sink: str, *, stream: str, points: int, items: int, message: str,
                      at_ms: int) -> list[Event]:
        """A sink's server refused `points` points (`items` stored items of `stream`) for
        good, the last with `message`: counted into the sink's active `sink_rejected`
        episode, or one started. Returns the start, if this started one."""
        # read and written as one: `energyd forward` may count into the same episode
        with self._lock, self.store.atomic():
            self._sinks_open[sink] = True
            current = self.store.episodes.latest_active(SINK_REJECTED, sink)
            if current is not None:
                detail = dict(current.detail)
                detail["points"] = detail.get("points", 0) + points
                detail["items"] = detail.get("items", 0) + items
                detail.update(stream=stream, message=message, last_ms=at_ms)
                self.store.episodes.save([EpisodeChange(
                    current.id, SINK_REJECTED, sink, ACTIVE, current.started, None, detail)])
                return []
            detail = {"points": points, "items": items, "stream": stream, "message": message,
                      "last_ms": at_ms}
            (i,) = self.store.episodes.save([EpisodeChange(0, SINK_REJECTED, sink, ACTIVE,
                                                           at_ms, None, detail)])
            return [Event("start", Episode(i, SINK_REJECTED, sink, ACTIVE, at_ms, None,
                                           detail))]

    def sink_quiet(self, sink: str, at_ms: int) -> list[Event]:
        """End the sink's `sink_rejected` episode once an hour has passed without a
        rejection. Returns the end, if this ended one."""
        with self._lock:
            if self._sinks_open.get(sink) is False:
                return []  # the common case, asked after every quiet cycle: no store read
            with self.store.atomic():
                current = self.store.episodes.latest_active(SINK_REJECTED, sink)
                self._sinks_open[sink] = current is not None
                if current is None or \
                        at_ms - current.detail.get("last_ms", 0) < SINK_QUIET_MS:
                    return []
                self._sinks_open[sink] = False
                self.store.episodes.save([EpisodeChange(
                    current.id, SINK_REJECTED, sink, RESOLVED, current.started, at_ms,
                    current.detail)])
            return [Event("end", Episode(current.id, SINK_REJECTED, sink, RESOLVED,
                                         current.started, at_ms, dict(current.detail)))]

    # --- statements that disagree with the meter ----------------------------------------

    def statements_checked(self, checked: Iterable[Statement],
                           findings: Iterable[ReconciliationFinding], accepted: Collection[int],
                           at_ms: int) -> list[Event]:
        """The accounting checked `checked` against the meter and found `findings`: one
        episode per statement period (rule `reconciliation`, device = the account, started =
        the period's start), open while its finding stands with the finding and its message
        as detail, ended once the statement agrees or is accepted while below the meter.
        Used while no `reconciliation` alert rule owns these episodes. Returns the starts
        and ends."""
        flagged = {f.statement: f for f in findings
                   if not (f.below_metered and f.statement in accepted)}
        events: list[Event] = []
        with self._lock, self.store.atomic():  # read and written as one, beside other writers
            for st in checked:
                f = flagged.get(st.id)
                found = self.store.episodes.started_at(RECONCILIATION, st.account, st.start_ms)
                current = found[0] if found and found[0].state == ACTIVE else None
                if f is None:
                    if current is not None:
                        events.append(self._end_stored(current, at_ms))
                    continue
                detail = {**f.to_json(), "message": f.message()}
                if current is None:
                    (i,) = self.store.episodes.save([EpisodeChange(
                        0, RECONCILIATION, st.account, ACTIVE, st.start_ms, None, detail)])
                    events.append(Event("start", Episode(i, RECONCILIATION, st.account, ACTIVE,
                                                         st.start_ms, None, detail)))
                elif current.detail != _plain(detail):
                    self.store.episodes.save([EpisodeChange(
                        current.id, RECONCILIATION, st.account, ACTIVE, current.started, None,
                        detail)])
        return events

    def statements_replaced(self, periods: Iterable[tuple[str, int]],
                            at_ms: int) -> list[Event]:
        """End the open episodes of the (account, period start) of statements a new import
        replaced: the replacement is checked on its own."""
        events: list[Event] = []
        with self._lock, self.store.atomic():
            for account, started in periods:
                for e in self.store.episodes.started_at(RECONCILIATION, account, started):
                    if e.state == ACTIVE:
                        events.append(self._end_stored(e, at_ms))
        return events

    def _end_stored(self, e: StoredEpisode, at_ms: int) -> Event:
        """End a stored episode (under the lock)."""
        if (kept := self._active.get((e.rule, e.device))) is not None and kept.id == e.id:
            del self._active[(e.rule, e.device)]  # a rule's own, should one match
        self.store.episodes.save([EpisodeChange(e.id, e.rule, e.device, RESOLVED, e.started,
                                                at_ms, e.detail)])
        return Event("end", Episode(e.id, e.rule, e.device, RESOLVED, e.started, at_ms,
                                    dict(e.detail)))

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


def _plain(detail: dict[str, Any]) -> dict[str, Any]:
    """`detail` as it reads back from the store (tuples become lists)."""
    return json.loads(json.dumps(detail))


def _snapshot(ep: Episode) -> Episode:
    return Episode(ep.id, ep.rule, ep.device, ep.state, ep.started, ep.ended,
                   json.loads(json.dumps(ep.detail)))
