"""One OPC UA device's readings: its session kept alive, its changes turned into Readings.

`OpcuaSource(name, options, interval, on_readings=..., now=...)` runs until cancelled:

* connect (security, user), look the profile's namespace up, then either subscribe to the
  nodes' data changes (`mode: subscription`, the default) or read them every `interval`
  (`mode: poll`);
* check the connection every `watchdog` (asyncua reads the server's state; a failed read, a
  publish loop that ended or a subscription the server closed all count as lost);
* on a loss: close what is left, wait (backoff from `reconnect_delay_min`, doubling, capped
  at `reconnect_delay_max`, with jitter), open a new session and re-create the subscription,
  which sends every node's current value first. Logged once on the loss and once on the
  recovery, however many attempts lie between; counted in `losses` and `recoveries`.
* after a re-created subscription (`backfill`, on by default), read from the server's
  history what each node did between the last source time energyd received and now: a
  subscription only ever sends the current value, so the changes while energyd was away
  would otherwise be lost. A server without history says so once in the log; a server
  that restarted keeps only what its history holds since its own start.

Time: a value's source timestamp is the reading's time (quality good, or uncertain when
the server says so). A value without one takes its receipt time, made strictly increasing
per device as the MQTT driver does (energyd/drivers/mqtt/), quality received. A value
whose status is bad, or that is not a number, is refused and counted in `refused` by
reason; nothing else is dropped. A value that comes again after a re-subscription (the
current value the server sends first) carries the same source time, so the store keeps it
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from energyd.drivers.opcua.options import OpcuaOptions
from energyd.drivers.opcua.session import BACKFILL_LIMIT, Change, HistoryUnavailable, Session
from energyd.errors import DeviceError
from energyd.model import Quality, Reading, from_ms, to_ms
from energyd.retry import Backoff

log = logging.getLogger(__name__)


def readings_of(device: str, options: OpcuaOptions, changes: list[Change], received: datetime,
                receipts: dict[str, int], refused: dict[str, int] | None = None,
                nodes: list | None = None) -> list[Reading]:
    """Readings of changes from one session's nodes. `receipts` holds the device's last
    receipt time (ms), so receipt-stamped readings stay strictly increasing."""
    nodes = nodes if nodes is not None else options.node_map()
    out = []
    for ch in changes:
        node = nodes[ch.node]
        reason = None
        if ch.status == "bad":
            reason = "bad_status"
        elif isinstance(ch.value, bool):
            value = float(ch.value)
        elif isinstance(ch.value, int | float):
            value = float(ch.value) * node.scale
            if value != value or value in (float("inf"), float("-inf")):
                reason = "not_finite"
        else:
            reason = "not_numeric"
        if reason is not None:
            if refused is not None:
                refused[reason] = refused.get(reason, 0) + 1
            continue
        if ch.source_time is not None:
            when = ch.source_time
            quality = Quality.UNCERTAIN if ch.status == "uncertain" else Quality.GOOD
        else:
            ms = to_ms(received)
            last = receipts.get(device)
            if last is not None and ms <= last:
                ms = last + 1
            receipts[device] = ms
            when = from_ms(ms)
            quality = Quality.RECEIVED
        out.append(Reading(when, device, node.quantity, value, quality))
    return out


class OpcuaSource:
    """The owner of one device's session. Keyword-only after `name`: `options`, `interval`
    (poll mode), `on_readings` (called on the event loop with each batch of Readings),
    `now` (the clock's now, for receipt times), `on_poll` (called with an error text or
    None after each connect attempt and each poll, for the device's status)."""

    def __init__(self, name: str, *, options: OpcuaOptions, interval: float,
                 on_readings: Callable[[list[Reading]], None],
                 now: Callable[[], datetime],
                 on_poll: Callable[[str | None], None] | None = None):
        self.name = name
        self.options = options
        self.interval = interval
        self.on_readings = on_readings
        self.now = now
        self.on_poll = on_poll
        self.nodes = options.node_map()
        self.connected = False
        self.last_error: str | None = None
        self.connects = 0  # sessions opened
        self.losses = 0  # connections lost (or never made) after being up or at start
        self.recoveries = 0
        self.changes = 0  # values received
        self.refused: dict[str, int] = {}
        self.unknown_nodes: dict[str, str] = {}
        self._receipts: dict[str, int] = {}
        self._failing = False
        self._subscribed = asyncio.Event()
        self._seen: dict[int, datetime] = {}  # node -> latest source time received
        self.backfilled = 0  # values read from the server's history after a reconnect
        self._no_history = False

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    async def run(self) -> None:
        reconnects = Backoff(base=self.options.reconnect_delay_min,
                             cap=self.options.reconnect_delay_max)
        while True:
            session = Session(options=self.options)
            try:
                await session.open()
                self.connects += 1
                since: dict[int, datetime] = {}
                if self.options.mode == "subscription":
                    since = dict(self._seen)  # before the subscription moves it on
                    await session.subscribe(self._take)
                    self._note_unknown(session)
                    if since and self.options.backfill:
                        since = await self._backfill(session, since)
                self._up()
                reconnects.reset()
                await self._hold(session, since if self.options.backfill else {})
            except DeviceError as exc:
                self._down(str(exc))
            finally:
                self.connected = False
                self._subscribed.clear()
                await session.close()
            await asyncio.sleep(reconnects.next())

    async def _hold(self, session: Session, since: dict[int, datetime]) -> None:
        """Until the connection is lost: poll, or watch the subscription."""
        o = self.options
        if o.mode == "poll":
            next_poll = time.monotonic()
            while True:
                await session.check()
                if time.monotonic() >= next_poll:
                    self._take(await session.read())
                    if self.on_poll is not None:
                        self.on_poll(None)
                    next_poll += self.interval
                    if next_poll < time.monotonic():  # late: no burst of catch-up polls
                        next_poll = time.monotonic() + self.interval
                await asyncio.sleep(min(o.watchdog, max(0.0, next_poll - time.monotonic())))
        self._subscribed.set()
        # The history is read once more a little later: a server may save a change to its
        # history after it was read (asyncua does so on its own publishing cycle), and a
        # change written while the subscription was being made reaches neither the
        # subscription nor the first read. The store keeps once what both bring.
        again = time.monotonic() + max(1.0, 4 * (o.publishing_interval or o.sampling_interval))
        while True:
            await asyncio.sleep(o.watchdog)
            await session.check()
            if self.on_poll is not None:
                # heard, though nothing changed: a steady value is sent once, not again
                self.on_poll(None)
            if since and time.monotonic() >= again:
                await self._backfill(session, since)
                since = {}

    async def _backfill(self, session: Session, since: dict[int, datetime]
                        ) -> dict[int, datetime]:
        """What changed between the last value seen and the new subscription, from the
        server's history: the store keeps once what the subscription's first values repeat."""
        try:
            changes = await session.history(since, self.now())
        except HistoryUnavailable as exc:
            if not self._no_history:
                self._no_history = True
                log.warning("opcua %s: %s: what changed while disconnected is not read back "
                            "(set `backfill: false` to skip the attempt)", self.name, exc)
            return {}
        if session.without_history and not self._no_history:
            self._no_history = True
            log.warning("opcua %s: the server keeps no history of %s: what those nodes did "
                        "while disconnected is not read back", self.name,
                        ", ".join(session.without_history))
        if session.truncated:
            log.warning("opcua %s: read back the first %d changes of %s only (the gap holds "
                        "more)", self.name, BACKFILL_LIMIT, ", ".join(session.truncated))
        self.backfilled += len(changes)
        if changes:
            self._take(changes)
        # where the next read of the same gap starts: after what this one found
        after = dict(since)
        for ch in changes:
            if ch.source_time is not None and ch.source_time > after[ch.node]:
                after[ch.node] = ch.source_time
        return after

    def _take(self, changes: list[Change]) -> None:
        self.changes += len(changes)
        seen = self._seen
        for ch in changes:
            t = ch.source_time
            if t is not None and (ch.node not in seen or t > seen[ch.node]):
                seen[ch.node] = t
        readings = readings_of(self.name, self.options, changes, self.now(), self._receipts,
                               self.refused, self.nodes)
        if readings:
            self.on_readings(readings)

    def _note_unknown(self, session: Session) -> None:
        unknown = {self.nodes[i].quantity: f"{self.nodes[i].node}: {why}"
                   for i, why in session.unknown.items()}
        if unknown != self.unknown_nodes and unknown:
            log.warning("opcua %s: the server refused %d node(s), read without them: %s",
                        self.name, len(unknown), "; ".join(unknown.values()))
        self.unknown_nodes = unknown

    def _up(self) -> None:
        self.connected = True
        self.last_error = None
        if self._failing:
            self._failing = False
            self.recoveries += 1
            log.warning("opcua %s: connected again to %s; session and subscription "
                        "re-created", self.name, self.options.endpoint)
        if self.on_poll is not None:
            self.on_poll(None)

    def _down(self, error: str) -> None:
        self.last_error = error
        if not self._failing:
            self._failing = True
            self.losses += 1
            log.warning("opcua %s: %s; reconnecting (up to every %gs)", self.name, error,
                        self.options.reconnect_delay_max)
        if self.on_poll is not None:
            self.on_poll(error)


async def read_nodes(name: str, options: OpcuaOptions, now: Callable[[], datetime]
                     ) -> tuple[list[Reading], dict[str, str]]:
    """One read of every node (`energyd read`): the readings it gives, and the quantities
    whose node has a bad status, with the status's name. Raises DeviceError."""
    async with Session(options=options) as session:
        changes = await session.read()
    nodes = options.node_map()
    readings = readings_of(name, options, changes, now(), {}, {}, nodes)
    bad = {nodes[c.node].quantity: c.status_name for c in changes if c.status == "bad"}
    return readings, bad
