"""What the daemon hands to each component it starts."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from energyd.alerts.episodes import EpisodeTracker
from energyd.clock import Clock, ClockWatch
from energyd.config.schema import Config
from energyd.daemon.degraded import Degraded
from energyd.daemon.metrics import Metrics
from energyd.daemon.scheduler import Scheduler
from energyd.model import PollValues, Quality, Reading
from energyd.store.sqlite import Store
from energyd.store.writer import StoreWriter


@dataclass
class Context:
    config: Config
    clock: Clock
    store: Store
    writer: StoreWriter
    metrics: Metrics
    scheduler: Scheduler
    # Called with every committed batch of readings (live alert rules listen here). While
    # one is registered the writer keeps every Reading object until its commit.
    reading_listeners: list[Callable[[list[Reading]], None]] = field(default_factory=list)
    # Called with the number of readings of every commit, for those that only need to know.
    commit_listeners: list[Callable[[int], None]] = field(default_factory=list)
    # Awaited after every rollup run with (start_ms, end_ms) of the hours (re)computed, so
    # alert rules see each hour, including the recomputation at start-up.
    rollup_listeners: list[Callable[[int, int], Awaitable[None]]] = field(default_factory=list)
    # Set by components that hold state worth showing in /health.
    health: dict[str, Callable[[], object]] = field(default_factory=dict)
    # Named states of trouble the daemon lives with (shown in /health), shared by all.
    degraded: Degraded = field(default_factory=Degraded)
    # Says whether a time stamped from the wall clock can be trusted; None on a simulated
    # clock, which cannot be stepped.
    clock_watch: ClockWatch | None = None
    _episodes: EpisodeTracker | None = field(default=None, init=False, repr=False)
    _episodes_made: threading.Lock = field(default_factory=threading.Lock, init=False,
                                           repr=False)

    @property
    def episodes(self) -> EpisodeTracker:
        """The daemon's one episode tracker, which the alert rules, the statements'
        reconciliation and the sinks' refused points all feed. Made on first use (it reads
        the active episodes), from whichever thread comes first."""
        with self._episodes_made:
            if self._episodes is None:
                self._episodes = EpisodeTracker(self.store)
            return self._episodes

    def stamped_values(self, polls: list[PollValues]) -> list[PollValues]:
        """`stamped()` for polls as columns (drivers/contracts.py), all of one instant."""
        watch = self.clock_watch
        if not polls or watch is None or watch.suspect(polls[0].time) is None:
            return polls
        self.metrics.readings_clock_suspect.inc(sum(len(p.values) for p in polls))
        return [p._replace(quality=Quality.CLOCK_SUSPECT) for p in polls]

    def stamped(self, readings: list[Reading]) -> list[Reading]:
        """`readings`, all stamped from the wall clock at one instant, flagged CLOCK_SUSPECT
        if that clock could not be trusted then (counted; the store keeps them, retention
        leaves them, the rollup holds them out)."""
        watch = self.clock_watch
        if not readings or watch is None or watch.suspect(readings[0].time) is None:
            return readings
        self.metrics.readings_clock_suspect.inc(len(readings))
        return [r._replace(quality=Quality.CLOCK_SUSPECT) for r in readings]


class Component(Protocol):
    """One unit of the running daemon: a bus owner, the MQTT client, a sink forwarder...

    `run()` sets itself up (it may add jobs to ctx.scheduler), then runs until cancelled,
    releasing what it holds in `finally`. A failure inside is contained: it is logged and
    the daemon goes on with the other components.
    """

    name: str

    def run(self) -> Awaitable[None]: ...


Builder = Callable[[Context], list[Component]]
