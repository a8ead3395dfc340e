"""Polled acquisition: one owner per physical link (serial port or gateway host:port).

Every enabled device of a polled driver (energyd/drivers/contracts.py: Modbus, DL/T 645) is
grouped by the link its driver says it is on; each group gets a `LinkOwner` holding the
link's one connection, through the driver's PolledLink, which knows the wire and nothing of
scheduling: the owner is the same for every polled driver.

The owner keeps its units' slots itself, on the monotonic clock: one wake-up per tick
queues every unit due then (not a timer per device: on a small gateway the wake-ups cost
more than the polls), and the owner's worker reads the queue one device at a time, so the
units of a bus never talk over each other while different links poll concurrently.
What a tick's polls read goes to the store in one call, as columns (each poll's values
with their one time, energyd.model.PollValues), not as a Reading per value.

A failure stays with its unit:
- a part of the unit that is refused (a Modbus exception reply isolates the refused
  registers, drivers/modbus/planner.py) is the driver's business; the unit's other parts are
  read on, in the same poll, and each failing part is logged once;
- a silent poll (a timeout, a connection down) ends that unit's poll (costing the bus one
  timeout) and backs the unit off: its next polls are skipped for a delay that doubles from
  one interval up to the unit's `backoff_max`, so a dead unit does not spend the other
  units' bus time;
- a unit in failure waits behind the healthy ones: the queue gives a healthy unit the bus
  first, so it waits at most for the one request on the wire, whatever the number of
  failing units on the link;
- a garbled reply is a failed block of that poll, and changes neither the read plan nor
  the backoff;
- the failure is logged once on the way in and once on recovery, never per poll.
A device already queued when it falls due again is not queued twice (the missed slot is
counted); the schedule itself never stops.

Lateness (start of a device's first read minus the slot it was scheduled for) is kept per
owner for /health and the benchmark. So is the link's utilisation: the share of the last
minute it had a request outstanding (timeouts and pauses included: they hold the bus too),
also counted as `energyd_link_busy_seconds_total` (its rate is the utilisation). A link busy
more than 90% of a minute is logged, once, with what to do about it: its polls will run late
and then miss slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from energyd.config.schema import Device
from energyd.daemon.context import Component, Context
from energyd.drivers.contracts import Polled, PolledLink, PollOutcome
from energyd.drivers.registry import plugins
from energyd.model import PollValues, to_ms
from energyd.retry import backoff_delay

log = logging.getLogger(__name__)

LATENESS_SAMPLES = 20_000  # per link: the recent polls, for /health and the benchmark
UTILISATION_WINDOW = 60.0  # seconds
BUSY_CHECK_EVERY = 10.0  # seconds between two looks at the utilisation, for the log
BUSY_WARNING, BUSY_CLEAR = 0.9, 0.75  # utilisation that is logged, and that ends the warning
# the phases a link's ticks take within an interval: links in one phase share the process's
# wake-ups (their replies come in together, and one return from the poller serves several),
# two phases keep a server behind several gateways from being asked by all at once. Measured
# at 200 meters on 20 links (bench/bench_modbus.py): four phases cost about 50 us more CPU
# per poll than two, one phase doubles the lateness of a link's last unit
LINK_PHASES = 2
TICK_SLACK = 0.0005  # seconds: a slot this close to the tick is served by it
# a link that is never idle still hands its readings (and its busy seconds) over, after this
# many polls or this many seconds, whichever comes first
HAND_OVER_EVERY = 64
HAND_OVER_AFTER = 1.0


@dataclass
class DeviceState:
    device: Device
    poller: Any  # the driver's object for this unit (a PolledUnit)
    interval_wall: float
    start: float = 0.0  # time.monotonic() of the first slot
    queued: bool = False
    slot: float = 0.0  # monotonic time of the unit's next slot
    polled_slot: float = 0.0  # monotonic time of the slot the queued poll belongs to
    not_before: float = 0.0  # monotonic; backing off until then
    backoff: float = 0.0  # current backoff in wall seconds
    silent_polls: int = 0  # in a row: the backoff's attempt
    failing: str | None = None  # reason while in failure
    refused: set[str] = field(default_factory=set)  # blocks already reported refused
    polls: int = 0
    errors: int = 0
    skipped: int = 0  # slots skipped while backing off
    missed: int = 0  # slots that came while the previous poll still waited
    last_ok_ms: int | None = None
    last_error: str | None = None
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    polls_metric: Any = None  # the device's child of metrics.polls, looked up once


class LinkOwner:
    """Owns one bus: one connection, one queue, every unit on it."""

    def __init__(self, ctx: Context, link: str, devices: list[Device], driver: Polled):
        self.ctx = ctx
        self.link_id = link
        self.name = f"energyd[{link}].poll"
        self.devices = devices
        self.bus: PolledLink = driver.open_link(link, devices, ctx.clock)
        self.states = [
            DeviceState(d, unit, max(ctx.clock.real_seconds(d.interval), 0.001))
            for d, unit in zip(devices, self.bus.units, strict=True)
        ]
        self.lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self.polls = 0
        self.ticks = 0  # wake-ups of the link's schedule
        # (failing, order, state): healthy units first, each kind in the order it fell due
        self._queue: asyncio.PriorityQueue[tuple[bool, int, DeviceState]] = (
            asyncio.PriorityQueue())
        self._order = itertools.count()
        self._link: PolledLink | None = None  # the bus, while it runs
        self._silent_in_row = 0
        self._stopping = False
        self._busy: deque[tuple[float, float]] = deque()  # (end, seconds) of recent polls
        self._busy_since = time.monotonic()
        self._reading_since: float | None = None  # monotonic start of the poll on the wire
        self._busy_checked = self._busy_since
        self._busy_warned = False
        self._busy_metric = ctx.metrics.link_busy.labels(link)
        self._busy_unsaid = 0.0  # seconds busy not yet added to the metric
        self._handed_at = time.monotonic()
        # decoded, not yet handed to the store: the values, and (device, ms, error) per poll
        self._values: list[PollValues] = []
        self._polled: list[tuple[str, int, str | None]] = []

    async def run(self) -> None:
        async with self.bus as link:
            self._link = link
            worker = asyncio.create_task(self._worker(), name=f"{self.name}.worker")
            ticks = asyncio.create_task(self._ticks(), name=f"{self.name}.ticks")
            self.ctx.health[self.name] = self.health
            try:
                await asyncio.Event().wait()
            finally:
                self._stopping = True
                ticks.cancel()
                # a driver's library (pymodbus) can swallow a cancellation that lands inside a
                # request: insist
                while not worker.done():
                    worker.cancel()
                    await asyncio.wait([worker], timeout=0.2)
                for task in (worker, ticks):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await asyncio.sleep(0)  # the last poll's decoding, queued by the worker
                self._hand_over()
                self.ctx.health.pop(self.name, None)

    async def _ticks(self) -> None:
        """One wake-up per tick of the link, queuing every unit due by then.

        Every unit of the link starts at one instant, within a second (or the shortest
        interval) of the start, and then falls due every interval: units with one interval
        fall due together and are served by one wake-up, back to back, rather than each by
        a timer of its own. The first instant is on a grid of the monotonic clock shifted by
        one of LINK_PHASES phases (stable per link), so links started together share their
        ticks by phase. A step of the wall clock moves none of them. Slots that a stalled
        event loop let pass are skipped and counted as missed, never made up."""
        now = time.monotonic()
        grid = min(1.0, *(st.interval_wall for st in self.states))
        phase = (zlib.crc32(self.link_id.encode()) % LINK_PHASES) / LINK_PHASES * grid
        first = math.ceil((now - phase) / grid) * grid + phase
        for st in self.states:
            st.slot = st.start = first
        while True:
            tick = min(st.slot for st in self.states)
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            self.ticks += 1
            now = time.monotonic()
            for st in self.states:
                if st.slot > now + TICK_SLACK:
                    continue
                slot = st.slot
                passed = math.floor((now - slot) / st.interval_wall)  # whole slots gone by
                if passed > 0:
                    st.missed += passed
                    slot += passed * st.interval_wall
                self.due(st, slot)
                st.slot = slot + st.interval_wall

    def due(self, st: DeviceState, slot: float) -> None:
        if st.queued:
            st.missed += 1
            return
        if time.monotonic() < st.not_before:
            st.skipped += 1
            return
        st.polled_slot = slot
        self.enqueue(st)

    def enqueue(self, st: DeviceState) -> None:
        """Queue a unit's poll: after every healthy unit already waiting if it is failing."""
        st.queued = True
        self._queue.put_nowait((st.failing is not None, next(self._order), st))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            _, _, st = await self._queue.get()
            try:
                result = await self.read(st)
            except Exception:  # a bug in one poll must not end the bus
                log.exception("%s: poll of %s failed", self.name, st.device.name)
                st.queued = False
            else:
                # decoding runs while the next unit's request is on the wire
                loop.call_soon(self._finish_safely, st, result)
            finally:
                self._queue.task_done()
            if (self._queue.empty() or len(self._polled) >= HAND_OVER_EVERY
                    or time.monotonic() - self._handed_at >= HAND_OVER_AFTER):
                # the tick's units are read: the store gets what they gave in one call
                loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._handed_at = time.monotonic()
        values, self._values = self._values, []
        polled, self._polled = self._polled, []
        writer = self.ctx.writer
        try:
            if values:
                writer.submit_values(values)
            if polled:
                writer.record_polls(polled)
            if self._busy_unsaid:
                self._busy_metric.inc(self._busy_unsaid)
                self._busy_unsaid = 0.0
            self._check_busy()
        except Exception:
            log.exception("%s: handing the values of %d polls to the store failed", self.name,
                          len(polled))

    def _finish_safely(self, st: DeviceState, result: Any) -> None:
        try:
            self.finish(st, result)
        except Exception:
            log.exception("%s: poll of %s failed", self.name, st.device.name)
        finally:
            st.queued = False

    async def read(self, st: DeviceState) -> Any:
        assert self._link is not None
        link = self._link
        late = max(0.0, time.monotonic() - st.polled_slot)
        self.lateness.append(late)
        st.lateness.append(late)
        started = self._reading_since = time.monotonic()
        try:
            return await link.read(st.poller)  # failures come back in the result, not raised
        finally:
            ended = time.monotonic()
            self._reading_since = None
            self._busy.append((ended, ended - started))
            self._busy_unsaid += ended - started  # counted at the hand-over

    def utilisation(self, now: float | None = None) -> float:
        """The share of the last minute (or of the time since start, if shorter) that the
        link had a request outstanding."""
        now = time.monotonic() if now is None else now
        horizon = now - UTILISATION_WINDOW
        busy = self._busy
        while busy and busy[0][0] <= horizon:
            busy.popleft()
        # a poll that began before the window counts only for its part inside it, and so
        # does the one on the wire now
        seconds = sum(min(d, end - horizon) for end, d in busy)
        if self._reading_since is not None:
            seconds += now - max(self._reading_since, horizon)
        return min(1.0, seconds / max(min(UTILISATION_WINDOW, now - self._busy_since), 1e-9))

    def _check_busy(self) -> None:
        now = time.monotonic()
        if (now - self._busy_checked < BUSY_CHECK_EVERY
                or now - self._busy_since < UTILISATION_WINDOW):
            return
        self._busy_checked = now
        share = self.utilisation(now)
        if share >= BUSY_WARNING and not self._busy_warned:
            self._busy_warned = True
            log.warning("%s: the link was busy %.0f%% of the last minute; its polls will run "
                        "late and then miss slots (lengthen the intervals, read fewer "
                        "registers, or split the units over more links)", self.link_id,
                        share * 100)
        elif share < BUSY_CLEAR and self._busy_warned:
            self._busy_warned = False
            log.info("%s: the link is busy %.0f%% of the time again", self.link_id,
                     share * 100)

    def finish(self, st: DeviceState, raw: Any) -> None:
        """Decode, keep the readings for the store (handed over once the tick's units are
        read, `_hand_over`), count, log changes of state."""
        result = self.bus.finish(st.poller, raw)
        device = st.device
        self.polls += 1
        st.polls += 1
        when_ms = to_ms(self.ctx.clock.now())
        if result.values:
            self._values += self.ctx.stamped_values(result.values)
        self._polled.append((device.name, when_ms, result.error))
        if st.polls_metric is None:
            st.polls_metric = self.ctx.metrics.polls.labels(device.name)
        st.polls_metric.inc()
        reason = result.reason
        if reason is not None:
            st.errors += 1
            st.last_error = result.error
            self.ctx.metrics.poll_errors.labels(device.name, reason).inc()
        if result.values:
            st.last_ok_ms = when_ms
        self._account(st, result, reason)

    def _account(self, st: DeviceState, result: PollOutcome, reason: str | None) -> None:
        name = st.device.name
        if reason is not None and result.silent:
            st.backoff = backoff_delay(st.silent_polls, base=st.interval_wall, jitter=False,
                                       cap=self.ctx.clock.real_seconds(st.poller.backoff_max))
            st.silent_polls += 1
            st.not_before = time.monotonic() + st.backoff
            if st.failing is None:
                log.warning("%s (unit %s on %s): %s; backing off", name, st.poller.address,
                            self.link_id, result.error)
            st.failing = reason
            self._silent_in_row += 1
            # every unit silent: the gateway or the connection is gone; start afresh
            if self._silent_in_row >= len(self.states) + 2:
                self.bus.reset()
                self._silent_in_row = 0
            return
        self._silent_in_row = 0
        st.backoff = 0.0
        st.silent_polls = 0
        st.not_before = 0.0
        if st.failing is not None:
            log.info("%s (unit %s on %s): answering again", name, st.poller.address,
                     self.link_id)
            st.failing = None
        if reason is None:
            return
        parts = result.failed_parts()
        new = parts.keys() - st.refused
        if new:
            log.warning("%s: %s", name, "; ".join(why for part, why in parts.items()
                                                  if part in new))
            st.refused |= new

    def health(self) -> dict[str, Any]:
        return {
            "link": self.link_id,
            "polls": self.polls,
            "ticks": self.ticks,
            "utilisation": round(self.utilisation(), 3),
            "devices": {
                st.device.name: {
                    "unit": st.poller.address,
                    "polls": st.polls, "errors": st.errors, "skipped": st.skipped,
                    "missed": st.missed, "failing": st.failing,
                    "last_ok_ms": st.last_ok_ms, "last_error": st.last_error,
                    **self._details(st),
                } for st in self.states
            },
        }

    @staticmethod
    def _details(st: DeviceState) -> dict[str, Any]:
        # a driver's own lines about a unit (contracts.py, PolledUnit)
        details = getattr(st.poller, "details", None)
        return details() if details is not None else {}


def group_by_link(devices: list[Device], driver: str, polled: Polled
                  ) -> dict[str, list[Device]]:
    links: dict[str, list[Device]] = {}
    for d in devices:
        if d.enabled and d.driver == driver:
            links.setdefault(polled.link_of(d), []).append(d)
    return links


def build(ctx: Context) -> list[Component]:
    owners: list[Component] = []
    for plugin in plugins():
        if plugin.polled is not None:
            links = group_by_link(ctx.config.devices, plugin.name, plugin.polled)
            owners += [LinkOwner(ctx, link, devs, plugin.polled) for link, devs in links.items()]
    return owners
