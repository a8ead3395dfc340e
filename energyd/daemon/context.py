"""What the daemon hands to each component it starts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from energyd.clock import Clock
from energyd.config.schema import Config
from energyd.daemon.degraded import Degraded
from energyd.daemon.metrics import Metrics
from energyd.daemon.scheduler import Scheduler
from energyd.model import Reading
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
    # What keeps the daemon from being wholly well (disk full, a sink failing...): /health
    # says "degraded" and names each; the daemon's, so it outlives a reload.
    degraded: Degraded = field(default_factory=Degraded)


class Component(Protocol):
    """One unit of the running daemon: a bus owner, the MQTT client, a sink forwarder...

    `run()` sets itself up (it may add jobs to ctx.scheduler), then runs until cancelled,
    releasing what it holds in `finally`. A failure inside is contained: it is logged and
    the daemon goes on with the other components.
    """

    name: str

    def run(self) -> Awaitable[None]: ...


Builder = Callable[[Context], list[Component]]
