"""MQTT acquisition: the daemon's one broker connection and its subscriptions.

`build(ctx)` returns one component when any enabled device's driver is a subscribed one
(energyd/drivers/contracts.py: the MQTT driver). Messages are mapped to Readings on paho's
network thread and handed to the store writer there (submit appends to a list under a short
lock, it never waits on the database).

Commit, then acknowledge. paho would send the PUBACK of a QoS 1 message as soon as
`on_message` returns, but the reading is durable only once the writer has committed it;
a process killed in between would lose a message the broker has already forgotten. So
the client runs with `manual_ack`, every QoS 1/2 message is remembered with the readings it
produced, and the acknowledgement goes out, in the order the messages came, when the
writer's commit (a reading listener) has covered all of them. Refused messages are
acknowledged at once (sending them again would not make them better).

* Clean stop (SIGTERM): new messages are no longer taken (left unacknowledged, the broker
  keeps them for the session), the writer commits what was taken, those messages are
  acknowledged, then DISCONNECT. Nothing is lost and nothing is sent twice.
* Crash (SIGKILL, power cut): whatever was not acknowledged is sent again by the broker on
  the next connection; what was already committed comes in twice and the store keeps one
  (a reading is unique per device, quantity and time: publish a timestamp in the payload
  so a repeat carries the same time). A message without a time is stamped on receipt, so
  its repeat (marked DUP by the broker, stored as received_backlog) is a second reading of
  the same value a little later.
* Broker restart: the broker's persistence keeps the session and its queue (mosquitto
  writes it on a clean shutdown and every autosave_interval).
* What the broker keeps for an absent energyd is bounded by the broker: mosquitto drops
  messages beyond `max_queued_messages` (1000 by default) per session and logs "Outgoing
  messages are being dropped". Size it for the longest outage to cover (messages per
  second x seconds); energyd cannot get back what the broker dropped. A session only
  exists once energyd has connected: what was published before its first connection
  was never meant for it.

The number of messages waiting for their commit is bounded by `mqtt.max_inflight` (sent
to the broker as Receive Maximum under MQTT 5; under 3.1.1 the broker's own limit
applies, taken as mosquitto's default of 20 unless max_inflight is set). When half of it
is waiting, the component asks the writer for an early flush, so a fast stream is not
held back to one window per `storage.flush_interval`; and while the session's backlog is
received (see _from_backlog), a pause in it with BACKLOG_END_MIN messages waiting asks for
one too, so the end of a backlog is not held back to the next flush. The messages of a
commit are acknowledged in one write (Subscriber.ack_all).

QoS 2 is accepted, but paho answers PUBREC before the message is handed over: a crash
between PUBREC and the commit loses it, so QoS 1 is what gives at-least-once into the
store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

from energyd.daemon.context import Component, Context
from energyd.drivers.mqtt.client import PayloadMapper, Rejected, Subscriber
from energyd.drivers.registry import plugin
from energyd.model import Quality, Reading

log = logging.getLogger(__name__)

_RECEIPT_TIMED = (Quality.RECEIVED, Quality.RECEIVED_BACKLOG)

LOG_EVERY = 60.0  # wall seconds between two log lines for the same topic and reason
# A 3.1.1 client cannot tell the broker its window; mosquitto's max_inflight_messages
# defaults to this. Set mqtt.max_inflight to the broker's value when it differs.
MQTT311_BROKER_INFLIGHT = 20
# Within the session's backlog, this many messages waiting and no new one for this many
# seconds: the backlog has ended, and they are committed at once (MqttComponent._backlog_paused)
BACKLOG_END_MIN = 100
BACKLOG_END = 0.05


def build(ctx: Context) -> list[Component]:
    if ctx.config.mqtt is None or not any(
            d.enabled and plugin(d.driver).subscribed for d in ctx.config.devices):
        return []
    return [MqttComponent(ctx)]


class _Taken:
    """One acknowledgeable message: done when its readings are committed."""

    __slots__ = ("mid", "qos", "generation", "done")

    def __init__(self, mid: int, qos: int, generation: int, done: bool):
        self.mid = mid
        self.qos = qos
        self.generation = generation
        self.done = done  # a message without readings has nothing to wait for

    def committed(self) -> None:
        """From the writer, once the message's readings are on disk."""
        self.done = True


class MqttComponent:
    name = "mqtt"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        assert ctx.config.mqtt is not None
        self.options = ctx.config.mqtt
        self.mapper = PayloadMapper(ctx.config)
        self._now = ctx.clock.now
        self.subscriber: Subscriber | None = None
        self.received = 0
        self.refused = 0
        self.acked = 0
        self._taking = False
        # paho's thread appends to _queue and only _ack_ready, under _send_lock (which keeps
        # acks in order across committing threads), takes from its front: a deque does both
        # from two threads without a lock of ours, which paho's thread would take per message
        self._send_lock = threading.Lock()
        self._queue: deque[_Taken] = deque()
        inflight = self.options.max_inflight
        if self.options.protocol == "3.1.1" and "max_inflight" not in \
                self.options.model_fields_set:
            inflight = min(inflight, MQTT311_BROKER_INFLIGHT)
        self._window = max(1, inflight // 2)
        self._flush_wanted: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_asked = False
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._messages: dict[str, Any] = {}
        # messages per topic: counted by paho's thread alone, published (by their growth
        # since `_published`) from the others, one at a time under _publish_lock
        self._counts: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._publish_lock = threading.Lock()
        # the session's backlog (see _from_backlog); times from time.monotonic()
        self._backlog = False
        self._backlog_count = 0
        self.backlog_received = 0
        self._last_arrival = 0.0
        self._last_ack = 0.0

    # --- the component ----------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._flush_wanted = asyncio.Event()
        self.ctx.commit_listeners.append(self._committed)
        self.ctx.health["mqtt"] = self._health
        filters = self.mapper.filters()
        key = f"mqtt.filters.{self.options.client_id}"
        previous = await asyncio.to_thread(self.ctx.store.meta.get, key, [])
        sub = self.subscriber = Subscriber(self.options, filters, on_message=self._on_message,
                                           on_connected=self._connected, stale=previous)
        saved = previous == filters
        self._taking = True
        sub.start()
        published = time.monotonic()
        try:
            while True:
                # a backlog being received is watched for its end (see _backlog_paused)
                watching = self._backlog and (
                    bool(self._queue)
                    or time.monotonic() - self._last_arrival < self.options.backlog_gap)
                try:
                    await asyncio.wait_for(self._flush_wanted.wait(),
                                           BACKLOG_END if watching else 1.0)
                    wanted = True
                except TimeoutError:
                    wanted = watching and self._backlog_paused()
                    if time.monotonic() - published >= 1.0:
                        published = time.monotonic()
                        self._publish_counts()  # also when nothing is committed (all refused)
                if not saved and sub.subscribed and not sub.stale:
                    # remembered once the broker has the new set, for the next start
                    await asyncio.to_thread(self.ctx.store.meta.set, key, filters)
                    saved = True
                if not wanted:
                    continue
                self._flush_wanted.clear()
                self._flush_asked = False
                try:
                    await self.ctx.writer.flush()
                except Exception:
                    log.exception("mqtt: early store flush failed; the writer retries")
                    await asyncio.sleep(1.0)
        finally:
            # Stop taking messages; commit and acknowledge what was taken; then leave.
            self._taking = False
            if not saved and sub.subscribed and not sub.stale:
                self.ctx.store.meta.set(key, filters)
            try:
                await asyncio.shield(self.ctx.writer.flush())
            except BaseException:
                log.exception("mqtt: final store flush failed; unacknowledged messages "
                              "will come again from the broker")
            await asyncio.to_thread(sub.stop)
            self.ctx.metrics.mqtt_connected.set(0)
            if self._committed in self.ctx.commit_listeners:
                self.ctx.commit_listeners.remove(self._committed)
            self.ctx.health.pop("mqtt", None)

    def _backlog_paused(self) -> bool:
        """Whether the session's backlog has stopped coming with messages waiting for their
        commit: the broker has sent what it queued (or waits for acknowledgements). They
        are committed and acknowledged then, not up to a flush interval later. A steady
        stream keeps the writer's cadence (one commit, one sync to disk, per interval):
        this applies only within a backlog, and to BACKLOG_END_MIN messages at least."""
        return (len(self._queue) >= BACKLOG_END_MIN
                and time.monotonic() - self._last_arrival >= BACKLOG_END)

    def _health(self) -> dict[str, Any]:
        sub = self.subscriber
        return {
            "connected": bool(sub and sub.connected),
            "subscribed": bool(sub and sub.subscribed),
            "last_error": sub.last_error if sub else None,
            "received": self.received,
            "refused": self.refused,
            "backlog_received": self.backlog_received,
            "waiting_for_commit": len(self._queue),
        }

    # --- paho thread ------------------------------------------------------------------------

    def _connected(self, session_present: bool) -> None:
        now = time.monotonic()
        self._backlog = session_present
        self._backlog_count = 0
        self._last_arrival = self._last_ack = now
        if session_present and self._loop is not None and self._flush_wanted is not None:
            # the loop looks again now, so it watches the backlog for its end from its
            # first message (the flush this asks for has nothing of MQTT's to commit yet)
            self._loop.call_soon_threadsafe(self._flush_wanted.set)

    def _from_backlog(self, msg: Any) -> bool:
        """Whether a message comes from the session's backlog rather than being published
        now. MQTT does not say, so: a resent one (DUP, first sent on an earlier connection)
        is; and after a reconnect to a kept session (CONNACK session present), the broker
        first sends what it queued, back to back, as fast as energyd acknowledges, so every
        message is taken as backlog until nothing arrives for `mqtt.backlog_gap` after the
        later of the last arrival and the last acknowledgement (a broker held back by a full
        window of unacknowledged messages sends again as soon as energyd acknowledges, so a
        slow commit does not end the backlog early). Erring towards "backlog" is the safe
        side: a receive time is an upper bound of a message's production either way, the
        flag only says it may be far off."""
        now = time.monotonic()
        if self._backlog and now - max(self._last_arrival, self._last_ack) > \
                self.options.backlog_gap:
            self._backlog = False
            if self._backlog_count:
                log.info("mqtt: %d messages came from the session's backlog after the "
                         "reconnect", self._backlog_count)
        self._last_arrival = now
        if self._backlog or msg.dup:
            self._backlog_count += 1
            self.backlog_received += 1
            return True
        return False

    def _on_message(self, msg: Any, generation: int) -> None:
        if not self._taking:
            return  # stopping: left unacknowledged, the broker keeps it for the session
        topic = msg.topic
        self.received += 1
        problems: list[Rejected] = []
        received = self._now()
        watch = self.ctx.clock_watch
        trusted = watch is None or watch.suspect(received) is None
        try:
            # a payload's own time is not refused as skewed by a clock known to be wrong
            readings = self.mapper.map(topic, msg.payload, received, problems,
                                       backlog=self._from_backlog(msg), retained=msg.retain,
                                       check_skew=trusted)
            if not trusted:
                readings = self._held(readings)
        except Rejected as exc:
            readings = []
            self.refused += 1
            problems.insert(0, exc)
        except Exception as exc:  # a fault here must still end in an ack, or the window leaks
            log.exception("mqtt: mapping a message on %s failed", topic)
            readings = []
            self.refused += 1
            problems.insert(0, Rejected("error", type(exc).__name__))
        if problems:
            seen: set[str] = set()
            for p in problems:  # counted once per message and reason, however many fields
                if p.reason not in seen:
                    seen.add(p.reason)
                    self._refuse(topic, p)
        self._take(topic, msg.mid, msg.qos, generation, readings)

    def _held(self, readings: list[Reading]) -> list[Reading]:
        """The readings stamped on receipt by a suspect clock, flagged CLOCK_SUSPECT; those
        with the payload's own time stand as they are."""
        out = []
        for r in readings:
            if r.quality in _RECEIPT_TIMED:
                r = r._replace(quality=Quality.CLOCK_SUSPECT)
                self.ctx.metrics.readings_clock_suspect.inc()
            out.append(r)
        return out

    def _take(self, topic: str, mid: int, qos: int, generation: int,
              readings: list[Reading]) -> None:
        # One submit() is one atomic part of a writer batch (taken, committed or put back
        # whole), so the message is committed exactly when its last reading is.
        # counted here, added to the metric at the next commit (_publish_counts)
        self._counts[topic] = self._counts.get(topic, 0) + 1
        if qos == 0:
            if readings:
                self.ctx.writer.submit(readings)
            return
        taken = _Taken(mid, qos, generation, not readings)
        self._queue.append(taken)  # before its commit can mark it
        waiting = len(self._queue)
        if readings:
            self.ctx.writer.submit(readings, taken.committed)
        else:
            self._ack_ready()
        if waiting >= self._window and not self._flush_asked and self._loop is not None:
            self._flush_asked = True
            assert self._flush_wanted is not None
            self._loop.call_soon_threadsafe(self._flush_wanted.set)

    def _refuse(self, topic: str, exc: Rejected) -> None:
        # a template's unknown device names are unbounded: label them by the pattern
        label = topic
        if exc.reason in ("unknown_device", "no_route"):
            routes = self.mapper.routes_for(topic)
            label = routes[0].topic if routes else "(unrouted)"
        self.ctx.metrics.mqtt_rejected.labels(label, exc.reason).inc()
        key = (label, exc.reason)
        now = time.monotonic()
        last, suppressed = self._logged.get(key, (-LOG_EVERY, 0))
        if now - last >= LOG_EVERY:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.warning("mqtt: refused a message on %s: %s%s", topic, exc, more)
            self._logged[key] = (now, 0)
        else:
            self._logged[key] = (last, suppressed + 1)

    # --- committing thread ------------------------------------------------------------------

    def _committed(self, count: int) -> None:
        # the writer has marked this commit's messages (taken.committed) before calling here
        self._ack_ready()
        self._publish_counts()

    def _publish_counts(self) -> None:
        sub = self.subscriber
        self.ctx.metrics.mqtt_connected.set(1 if sub is not None and sub.subscribed else 0)
        self.ctx.metrics.mqtt_waiting.set(len(self._queue))
        counts = self._counts.copy()  # one step: paho's thread may count meanwhile
        with self._publish_lock:
            published = self._published
            for topic, n in counts.items():
                grown = n - published.get(topic, 0)
                if grown <= 0:
                    continue
                published[topic] = n
                counter = self._messages.get(topic)
                if counter is None:
                    counter = self._messages[topic] = \
                        self.ctx.metrics.mqtt_messages.labels(topic)
                counter.inc(grown)

    def _ack_ready(self) -> None:
        with self._send_lock:
            ready: list[_Taken] = []
            q = self._queue
            while q and q[0].done:
                ready.append(q.popleft())
            sub = self.subscriber
            if sub is None or not ready:
                return
            # one write for the commit's messages, not one per message (Subscriber.ack_all)
            self.acked += sub.ack_all([(t.mid, t.qos, t.generation) for t in ready])
            self._last_ack = time.monotonic()
