"""Dispatch of episode starts and ends: MQTT, webhook, log (and the store, always).

Every channel is independent: `send()` only queues, never waits on the network, and each
channel drains its own queue in its own thread, so a webhook that hangs for its whole
timeout delays nobody but itself, and the polling never waits on any of them. With an
`Outbox`, what the webhook and MQTT channels have not delivered survives a restart or a crash
(see outbox.py).

- store: not a channel here; the episode tracker writes each start and end to the alerts
  table with a new seq, and the sinks forward it as the `energy_alert` measurement.
- log: one WARNING line per start, one INFO line per end.
- mqtt: its own paho client (client id `<mqtt.client_id>-alerts`, so it never takes over the
  daemon's subscriber session). Each event goes to `TOPIC/events` (QoS 1), and the episode's
  latest state to the retained `TOPIC/state/<rule>/<device>`, so a dashboard that connects
  later sees what is active now. paho reconnects by itself and keeps QoS 1 messages queued
  while the broker is away.
- webhook: JSON POST; with a secret, the header `X-Energyd-Signature: sha256=<hex>` is the
  HMAC-SHA256 of the body. A timeout per attempt; connection errors, 408, 429 and 5xx are
  retried with a doubling backoff up to `retries` times; other 4xx are dropped and logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from energyd import __version__
from energyd.alerts.outbox import Outbox
from energyd.config.secrets import redact_urls, split_credentials
from energyd.httpclient import HttpClient, HttpUnreachable, split_url
from energyd.retry import Backoff, retry_after

log = logging.getLogger(__name__)

Payload = dict[str, Any]


Done = Callable[[], None]


class Channel(Protocol):
    name: str
    durable: bool  # its undelivered events are kept in the outbox

    def start(self) -> None: ...

    def send(self, payload: Payload, done: Done | None = None) -> None:
        """Queue `payload`; call `done` once the receiver has it or refused it for good."""
        ...

    def close(self, timeout: float = 2.0) -> None: ...


def _summary(p: Payload) -> str:
    figures = ", ".join(f"{k}={v}" for k, v in (p.get("figures") or {}).items())
    when = p["started"] if p["event"] == "start" else p.get("ended")
    return f"{p['rule']} ({p.get('type')}) on {p['device']} at {when}: {figures}"


class LogChannel:
    name = "log"
    durable = False

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger("energyd.alerts")

    def start(self) -> None:
        pass

    def send(self, payload: Payload, done: Done | None = None) -> None:
        if payload["event"] == "start":
            self.log.warning("alert started: %s", _summary(payload))
        else:
            self.log.info("alert ended: %s", _summary(payload))
        if done is not None:
            done()

    def close(self, timeout: float = 2.0) -> None:
        pass


class _Delivery:
    """The messages of one event: done when the broker has acknowledged every one."""

    __slots__ = ("done", "left", "sealed", "failed")

    def __init__(self, done: Done | None):
        self.done = done
        self.left = 0
        self.sealed = False  # every message of the event published (or refused)
        self.failed = False

    def complete(self) -> bool:
        return self.sealed and not self.failed and self.left == 0


class MqttChannel:
    """Publishes through its own paho-mqtt 2 client; the network thread is paho's. Kept in
    the outbox until acknowledged with QoS 1 or 2; with QoS 0 nothing is acknowledged, so
    nothing is kept."""

    def __init__(self, *, name: str, host: str, port: int, topic: str, client_id: str,
                 qos: int = 1, username: str | None = None, password: str | None = None,
                 keepalive: int = 30, tls_context: Any = None,
                 on_error: Callable[[str], None] | None = None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.name = name
        self.topic = topic.rstrip("/")
        self.qos = qos
        self.durable = qos > 0
        self._host, self._port, self._keepalive = host, port, keepalive
        self._on_error = on_error
        self._pending: dict[int, _Delivery] = {}
        self._early: set[int] = set()  # acknowledged before publish() returned its mid
        self._cond = threading.Condition()
        self._connected = False
        self._closing = False
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        c.max_queued_messages_set(10000)  # bounded: an alert storm must not eat the memory
        c.reconnect_delay_set(1, 60)
        if username:
            c.username_pw_set(username, password)
        if tls_context is not None:
            c.tls_set_context(tls_context)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("alerts mqtt %s: broker refused the connection: %s", self.name,
                        reason_code)
            return
        if not self._connected:
            log.info("alerts mqtt %s: connected to %s:%s", self.name, self._host, self._port)
        self._connected = True

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if self._connected and not self._closing:
            log.warning("alerts mqtt %s: disconnected (%s); paho reconnects and keeps "
                        "QoS 1 messages queued", self.name, reason_code)
        self._connected = False

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if self.qos == 0:
            return
        with self._cond:
            delivery = self._pending.pop(mid, None)
            if delivery is None:
                self._early.add(mid)
                return
            delivery.left -= 1
            complete = delivery.complete()
            self._cond.notify_all()
        if complete and delivery.done is not None:
            delivery.done()

    def start(self) -> None:
        self._closing = False
        self.client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self.client.loop_start()

    def send(self, payload: Payload, done: Done | None = None) -> None:
        body = json.dumps(payload, sort_keys=True)
        state = {**payload, "state": "active" if payload["event"] == "start" else "resolved"}
        state_topic = f"{self.topic}/state/{payload['rule']}/{payload['device']}"
        delivery = _Delivery(done)
        for topic, data, retain in ((f"{self.topic}/events", body, False),
                                    (state_topic, json.dumps(state, sort_keys=True), True)):
            info = self.client.publish(topic, data, qos=self.qos, retain=retain)
            # 4: not connected yet; a QoS 1 message stays queued, a QoS 0 one is gone
            if info.rc == 0 or (info.rc == 4 and self.qos > 0):
                if self.qos > 0:
                    with self._cond:
                        if info.mid in self._early:
                            self._early.discard(info.mid)
                        else:
                            self._pending[info.mid] = delivery
                            delivery.left += 1
                continue
            delivery.failed = True
            log.error("alerts mqtt %s: cannot queue the message for %s (rc %s)",
                      self.name, topic, info.rc)
            if self._on_error:
                self._on_error(self.name)
        with self._cond:
            delivery.sealed = True
            complete = delivery.complete()
        if complete and done is not None:
            done()

    def close(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        self._closing = True
        with self._cond:
            while self._pending and self._connected and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            if self._pending:
                log.warning("alerts mqtt %s: %d messages not acknowledged at shutdown "
                            "(the episodes stay in the store)", self.name, len(self._pending))
        self.client.disconnect()
        self.client.loop_stop()


class WebhookChannel:
    """POSTs each event as JSON from a thread of its own; retried with backoff."""

    durable = True

    def __init__(self, *, name: str, url: str, secret: str | None = None,
                 timeout: float = 5.0, retries: int = 5, backoff: float = 1.0,
                 backoff_max: float = 60.0, on_error: Callable[[str], None] | None = None):
        self.name = name
        # user:password@ in the URL (from url_file or url_env) goes as basic auth, never
        # as part of the address
        self.url, user, password = split_credentials(url)
        origin, self._target = split_url(self.url)
        self._http = HttpClient(origin, timeout=timeout)
        self._auth = None if user is None and password is None else "Basic " + \
            base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        self._secret = secret.encode() if secret else None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._on_error = on_error
        self._queue: queue.Queue[tuple[Payload, Done | None] | None] = queue.Queue(
            maxsize=10000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: tuple[Payload, Done | None] | None = None  # interrupted by close()
        self.delivered = 0
        self.failed = 0

    def start(self) -> None:
        """Start the worker; after close() this starts a fresh one (a restarted component)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(self._stop,),
                                        name=f"energyd-webhook-{self.name}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, payload: Payload, done: Done | None = None) -> None:
        try:
            self._queue.put_nowait((payload, done))
        except queue.Full:
            self.failed += 1
            log.error("webhook %s: queue full, an alert event was dropped", self.name)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes an idle worker
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        # what is queued waits for a restart; if the process ends, the outbox has it
        left = (self._held is not None) + sum(item is not None for item in list(self._queue.queue))
        if left:
            log.warning("webhook %s: %d alert events not delivered yet", self.name, left)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            item, self._held = self._held or self._queue.get(), None
            if item is None:
                continue
            payload, done = item
            if self._deliver(payload, stop):
                if done is not None:
                    done()
            elif stop.is_set():  # interrupted: first in line for a restarted worker
                self._held = item

    def _deliver(self, payload: Payload, stop: threading.Event) -> bool:
        """True once the receiver took the event or refused it for good; False when it is
        worth sending again later (no answer within the retries, or shutting down)."""
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json",
                   "User-Agent": f"energyd/{__version__}",
                   "X-Energyd-Event": payload["event"]}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Energyd-Signature"] = f"sha256={digest}"
        backoff = Backoff(base=self.backoff, cap=self.backoff_max, jitter=False)
        for attempt in range(self.retries + 1):
            if stop.is_set():
                return False
            wait_at_least = None
            try:
                reply = self._http.post(self._target, body, headers)
            except HttpUnreachable as exc:  # refused, reset, timed out
                reason = redact_urls(exc.reason)
                self._http.reset()
            else:
                if 200 <= reply.status < 300:
                    self.delivered += 1
                    if attempt:
                        log.info("webhook %s: delivered after %d retries", self.name, attempt)
                    return True
                if reply.status < 500 and reply.status not in (408, 429):
                    log.error("webhook %s: the receiver refused the event (HTTP %d); dropped",
                              self.name, reply.status)
                    self._failed()
                    return True
                reason = f"HTTP {reply.status}"
                wait_at_least = retry_after(reply.header("Retry-After"))
            if attempt < self.retries:
                delay = backoff.next(at_least=wait_at_least)
                log.warning("webhook %s: attempt %d failed (%s); retrying in %.1f s",
                            self.name, attempt + 1, reason, delay)
                if stop.wait(delay):
                    return False
            else:
                log.error("webhook %s: giving up after %d attempts (%s)", self.name,
                          attempt + 1, reason)
        self._failed()
        return False

    def _failed(self) -> None:
        self.failed += 1
        if self._on_error:
            self._on_error(self.name)


class Dispatcher:
    """Fans each event out to every channel; a channel that raises is logged and skipped.
    With an `outbox`, each event is kept for every durable channel until it is delivered,
    and the first `start()` sends each channel what an earlier process had not delivered.
    A later start (the component restarted) does not: the channels kept what they held, the
    webhook its queue and the MQTT client its unacknowledged messages, and send it then."""

    def __init__(self, channels: list[Channel], site: str, outbox: Outbox | None = None):
        self.channels = channels
        self.site = site
        self.outbox = outbox
        self._started = False
        self._replayed = False

    def _durable(self) -> list[Channel]:
        return [ch for ch in self.channels if ch.durable] if self.outbox is not None else []

    def start(self) -> None:
        for ch in self.channels:
            try:
                ch.start()
            except Exception:
                log.exception("alert channel %s failed to start", ch.name)
        self._started = True
        if self.outbox is None or self._replayed:
            return
        self._replayed = True
        try:
            gone = self.outbox.forget_channels_except(ch.name for ch in self._durable())
            if gone:
                log.info("alert outbox: %d events of channels no longer configured dropped",
                         gone)
            for ch in self._durable():
                pending = self.outbox.pending(ch.name)
                if pending:
                    log.info("alert channel %s: sending %d events not delivered before",
                             ch.name, len(pending))
                for row, payload in pending:
                    ch.send(payload, partial(self.outbox.done, row))
        except Exception:
            log.exception("alert outbox: cannot read the undelivered events")

    def send(self, payload: Payload) -> None:
        self.send_all([payload])

    def send_all(self, payloads: list[Payload]) -> None:
        """Send events in order; the outbox keeps them all in one transaction."""
        if not payloads:
            return
        rows: list[dict[str, int]] = [{} for _ in payloads]
        durable = self._durable()
        if durable:
            assert self.outbox is not None
            try:
                rows = self.outbox.add([ch.name for ch in durable], payloads)
            except Exception:
                # sent all the same, only not kept for a restart
                log.exception("alert outbox: cannot keep the events")
        for payload, kept in zip(payloads, rows, strict=True):
            for ch in self.channels:
                row = kept.get(ch.name)
                try:
                    ch.send(payload, None if row is None or self.outbox is None
                            else partial(self.outbox.done, row))
                except Exception:
                    log.exception("alert channel %s failed", ch.name)

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for ch in self.channels:
            try:
                ch.close()
            except Exception:
                log.exception("alert channel %s failed to close", ch.name)
