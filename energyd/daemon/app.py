"""The daemon: one process, one event loop, one clock, one store.

Start-up is strict (a config that does not validate stops here, exit 2); steady state is
lenient (a failing component is logged, restarted with backoff, and the rest go on).
SIGTERM/SIGINT stop polling, commit what was read and return; SIGHUP reloads the config,
and a new file that does not validate is refused while the running one stays.

Each configuration runs as a *generation*: the components built from it, a scheduler and a
store writer. A reload ends the generation after committing its readings and starts the
next one from the new file; the store stays open unless its path changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from energyd import __version__
from energyd.clock import STEPPED_FOR, Clock, ClockWatch, RealClock
from energyd.config.loader import load_config
from energyd.config.schema import Config
from energyd.daemon import (
    air,
    alerting,
    forwarding,
    housekeeping,
    polling,
    rollups,
    sessions,
    subscriptions,
)
from energyd.daemon.context import Builder, Component, Context
from energyd.daemon.degraded import Degraded
from energyd.daemon.http import HealthServer
from energyd.daemon.metrics import Metrics
from energyd.daemon.notify import Notifier
from energyd.daemon.scheduler import Scheduler
from energyd.errors import ConfigError, EnergydError, StoreCorrupt
from energyd.retry import Backoff
from energyd.store.sqlite import RECOVER_HINT, Store
from energyd.store.writer import StoreWriter

log = logging.getLogger(__name__)

# Data flows one way: acquisition feeds the store; forwarding, rollups and alerts read it.
BUILDERS: list[Builder] = [
    housekeeping.build,
    polling.build,
    subscriptions.build,
    sessions.build,
    forwarding.build,
    rollups.build,
    air.build,
    alerting.build,
]

# Data files a config names, loaded before a generation starts: a reload whose files are
# broken is refused while the running generation goes on untouched.
PREFLIGHTS: list[Callable[[Config], None]] = [rollups.preflight]

RESTART_DELAY_MAX = 60.0
CLOCK_LOOK_EVERY = 1.0  # seconds between two comparisons of the wall and monotonic clocks


def preflight(config: Config) -> None:
    """Raise ConfigError if a file the config names cannot be loaded."""
    problems = []
    for check in PREFLIGHTS:
        try:
            check(config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)


def tune_gc() -> None:
    """The daemon's garbage-collection policy, set once its start-up is done.

    Readings, store rows and line-protocol points are made and dropped by the hundred
    thousand; none of them forms a cycle, yet with the default threshold each 700 of them
    set off a collection, and the big lists a backlog chunk holds set off full ones (a fifth
    of the forwarder's CPU went there). Collections are made rarer, and what is loaded by
    now (modules, the config, the profiles), which lives as long as the process, is moved
    out of the collector's sight. Cycles are still collected, only less often.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


CONFLICT_LOG_EVERY = 60.0  # wall seconds between two reports of conflicting readings


class ConflictLog:
    """Reports readings that conflicted with stored ones in one line per interval, not one
    per reading: the first at once, then what came since, at the first commit after
    CONFLICT_LOG_EVERY."""

    def __init__(self, every: float = CONFLICT_LOG_EVERY):
        self.every = every
        self._pending: dict[str, int] = {}
        self._last = -every

    def add(self, found: dict[str, int]) -> None:
        for device, n in found.items():
            self._pending[device] = self._pending.get(device, 0) + n
        self.report()

    def report(self) -> None:
        now = time.monotonic()
        if not self._pending or now - self._last < self.every:
            return
        pending, self._pending = self._pending, {}
        self._last = now
        log.warning("store: %d readings came with another value for a series and time it "
                    "holds (%s); the first values stand, the others are kept as conflicts "
                    "(energyd status, energyd readings conflicts)", sum(pending.values()),
                    ", ".join(f"{d}: {n}" for d, n in sorted(pending.items())))


class Daemon:
    def __init__(self, config: Config, *, config_path: str | Path | None = None,
                 clock: Clock | None = None, notifier: Notifier | None = None,
                 builders: list[Builder] | None = None):
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.clock = clock or RealClock()
        self.notifier = notifier or Notifier()
        self.builders = builders if builders is not None else BUILDERS
        self.metrics = Metrics()
        self.degraded = Degraded()
        # only the real wall clock can be stepped under the daemon: the simulated ones are
        # made from the monotonic clock (or by hand, in tests)
        self.clock_watch = ClockWatch() if isinstance(self.clock, RealClock) else None
        self.store: Store | None = None
        # readings a generation could not commit (a full disk), for the next one on its store
        self._held: Any = None
        self.http_port: int | None = None
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._action: str | None = None
        self._started = time.monotonic()
        self._previous: Config | None = None  # the running config while a reload is tried
        self._next: Config | None = None  # a checked config waiting for its generation
        self.context: Context | None = None

    # --- control ------------------------------------------------------------------------

    def stop(self) -> None:
        self._action = "stop"
        self._wake.set()

    def reload(self) -> None:
        if self._action != "stop":
            self._action = "reload"
        self._wake.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    # --- running ------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            self._install_signals()
        tune_gc()
        # one watchdog for the daemon's life: a reload that takes a while must not miss pings
        watchdog = (asyncio.create_task(self._watchdog(), name="energyd[watchdog]")
                    if self.notifier.watchdog_interval else None)
        clock_task = (asyncio.create_task(self._watch_clock(), name="energyd[clock]")
                      if self.clock_watch is not None else None)
        try:
            while True:
                try:
                    await self._generation(self.config)
                except EnergydError as exc:
                    # a reloaded file can pass the schema and still fail to build (a broken
                    # emission-factor table, a profile file that went missing): keep running
                    # what ran before; at start-up there is nothing to fall back to
                    if self._previous is None or self._action == "stop":
                        raise
                    log.error("reload refused, the running configuration stays: %s", exc)
                    self.config, self._previous = self._previous, None
                    self._action = None
                    self._wake.clear()
                    continue
                if self._action == "stop":
                    break
                # the generation ended for a reload whose file was already checked
                self._action = None
                self._wake.clear()
                self._previous, self.config = self.config, self._next or self.config
                self._next = None
        finally:
            for task in (watchdog, clock_task):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if handle_signals:
                self._remove_signals()
            if self.store is not None:
                self.store.close()
            log.info("energyd stopped")
        return 0

    def _check_reload(self) -> Config | None:
        """The new configuration if it validates and its files load; None keeps the old."""
        if self.config_path is None:
            log.warning("reload asked, but the daemon was started without a config file")
            return None
        self.notifier.reloading(time.monotonic_ns() // 1000)
        try:
            new = load_config(self.config_path)
            preflight(new)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            self.notifier.ready("reload refused; running the previous configuration")
            return None
        log.info("configuration reloaded from %s", self.config_path)
        return new

    def _open_store(self, config: Config) -> Store:
        if self.store is not None and self.store.path == config.storage.path:
            self.store.quota = config.storage.quota
            return self.store
        if self.store is not None:
            self.store.close()
        store = Store.open(config.storage.path, quota=config.storage.quota)
        # a damaged page is found now, not by an hourly rollup that then fails each hour
        started = time.monotonic()
        problems = store.check()
        if problems:
            store.close()
            raise StoreCorrupt(f"{config.storage.path}: the store is damaged: "
                               f"{'; '.join(problems[:3])}; {RECOVER_HINT}")
        log.debug("store checked in %.1f s", time.monotonic() - started)
        self.store = store
        return self.store

    async def _generation(self, config: Config) -> None:
        store = self._open_store(config)
        listeners: list[Any] = []

        commit_listeners: list[Any] = []
        conflicts = ConflictLog()

        def on_conflicts(found: dict[str, int]) -> None:
            for device, n in found.items():
                self.metrics.store_conflicts.labels(device).inc(n)
            conflicts.add(found)

        def on_commit(count: int, batch: list[Any]) -> None:
            self.metrics.readings.inc(count)
            conflicts.report()
            for listener in commit_listeners:
                try:
                    listener(count)
                except Exception:
                    log.exception("a commit listener failed")
            for listener in listeners:
                try:
                    listener(batch)
                except Exception:
                    log.exception("a reading listener failed")

        def on_state(name: str, reason: str | None) -> None:
            if reason is None:
                self.degraded.clear(name)
            else:
                self.degraded.set(name, reason)

        writer = StoreWriter(store, flush_interval=config.storage.flush_interval,
                             on_commit=on_commit, keep_readings=lambda: bool(listeners),
                             on_state=on_state, max_pending=config.storage.pending_limit,
                             on_conflicts=on_conflicts)
        scheduler = Scheduler(self.clock)
        ctx = Context(config, self.clock, store, writer, self.metrics, scheduler,
                      reading_listeners=listeners, commit_listeners=commit_listeners,
                      degraded=self.degraded, clock_watch=self.clock_watch)
        self.context = ctx
        components: list[Component] = []
        for build in self.builders:
            components.extend(build(ctx))

        if self._held is not None:  # once the generation is built: it will run
            (held, trouble), self._held = self._held, None
            log.info("the reloaded configuration takes over %d readings not yet committed",
                     len(held))
            writer.take_over(held, trouble)
        scheduler.start()
        writer_task = asyncio.create_task(writer.run(), name="energyd[store].flush")
        tasks = [asyncio.create_task(self._supervise(c), name=f"energyd[{c.name}]")
                 for c in components]
        http = (HealthServer(config.http.host, config.http.port, self._health,
                             self.metrics.render) if config.http.enabled else None)
        try:
            async with http if http is not None else contextlib.nullcontext():
                self.http_port = http.port if http is not None else None
                self.metrics.up.set(1)
                status = (f"polling {sum(d.enabled for d in config.devices)} devices, "
                          f"{len(config.all_sinks)} sinks")
                self.notifier.ready(status)
                log.info("energyd %s running: %s", __version__, status)
                self.ready.set()
                self._previous = None
                # a reload ends this generation only once the new file has been checked
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if self._action == "stop":
                        break
                    self._next = self._check_reload()
                    if self._next is not None:
                        break
                    self._action = None
                self.ready.clear()
                if self._action == "stop":
                    self.notifier.stopping()
                # stop polling first, then commit what was read
                scheduler.shutdown()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            scheduler.shutdown()
            for t in tasks:
                t.cancel()
            writer_task.cancel()
            await asyncio.gather(writer_task, return_exceptions=True)
            # a reload on the same store keeps what could not be committed (a full disk)
            held = writer.hand_over()
            if (held is not None and self._action == "reload" and self._next is not None
                    and self._next.storage.path == store.path):
                self._held = (held, writer.trouble)
            self.metrics.up.set(0)

    async def _supervise(self, component: Component) -> None:
        restarts = Backoff(base=1.0, cap=RESTART_DELAY_MAX, jitter=False)
        delay = restarts.next()
        while True:
            started = time.monotonic()
            try:
                await component.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it in %.0f s", component.name, delay)
            if time.monotonic() - started > 10 * delay:
                restarts.reset()  # it ran a good while: start the backoff afresh
                delay = restarts.next()
            await asyncio.sleep(delay)
            delay = restarts.next()

    async def _watchdog(self) -> None:
        # Pinged from the event loop itself: a loop that hangs stops the pings, and systemd
        # restarts the service.
        assert self.notifier.watchdog_interval
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)

    async def _watch_clock(self) -> None:
        """Compare the wall clock with the monotonic one every second: a step is logged once
        (one line, whatever it changed), counted, and shown for a while; a clock that cannot
        be trusted is shown for as long as it lasts."""
        watch = self.clock_watch
        assert watch is not None
        suspect: str | None = None
        first = True
        while True:
            step = watch.look()
            now_suspect = watch.suspect()
            said = []
            if step is not None:
                self.metrics.clock_steps.inc()
                self.metrics.clock_last_step.set(step.seconds)
                self.degraded.set("clock_stepped", step.describe(), lasts=STEPPED_FOR, quiet=True)
                if self.context is not None:
                    self.context.scheduler.clock_stepped()
                said.append(f"{step.describe()}; schedules run on the monotonic clock and "
                            "are not affected")
            if now_suspect != suspect or first:
                if now_suspect is not None:
                    self.degraded.set("clock_suspect", now_suspect, quiet=True)
                    said.append(f"{now_suspect}: readings stamped now are flagged "
                                "clock_suspect, kept and held out of the rollup")
                elif not first:
                    self.degraded.clear("clock_suspect", quiet=True)
                    said.append("the clock is plausible again: readings are stamped as usual")
                self.metrics.clock_suspect.set(1 if now_suspect else 0)
                suspect, first = now_suspect, False
            if said:
                log.warning("%s", "; ".join(said))
            await asyncio.sleep(CLOCK_LOOK_EVERY)

    def _health(self) -> dict[str, Any]:
        ctx = self.context
        degraded = self.degraded.snapshot()
        payload: dict[str, Any] = {
            "status": ("stopping" if not self.ready.is_set() else
                       "degraded" if degraded else "ok"),
            "degraded": degraded,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "site": self.config.site.name,
            "devices": len(self.config.devices),
            "sinks": [s.name for s in self.config.all_sinks],
        }
        if ctx is not None:
            payload["pending_readings"] = ctx.writer.pending
            payload["committed_readings"] = ctx.writer.committed
            payload["jobs_skipped"] = dict(ctx.scheduler.missed)  # slots never made up
            payload["shed_readings"] = ctx.writer.shed
            payload["thinned_readings"] = ctx.writer.thinned
            for key, fn in ctx.health.items():
                try:
                    payload[key] = fn()
                except Exception as exc:  # health must answer even if a part cannot
                    payload[key] = f"unavailable: {exc}"
        return payload
