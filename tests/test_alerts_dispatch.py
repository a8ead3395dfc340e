"""Dispatch channels against real receivers: Mosquitto from the fixtures and a local HTTP
server on 127.0.0.1. A receiver that hangs must not hold up another channel."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from energyd.alerts.dispatch import Dispatcher, LogChannel, MqttChannel, WebhookChannel
from energyd.alerts.episodes import Episode, Event

SECRET = "s3cret-for-the-test"


def event(kind: str = "start", rule: str = "incomer-spike", device: str = "incomer-1") -> Event:
    ep = Episode(7, rule, device, "active" if kind == "start" else "resolved",
                 1_780_000_000_000, None if kind == "start" else 1_780_000_360_000,
                 {"type": "spike", "source": "live", "start": {"kw": 412.0, "baseline_kw": 120.0}})
    return Event(kind, ep)


class Receiver:
    """A webhook receiver: records each POST; answers the statuses in `script` (a status,
    or a status and headers), then 200."""

    def __init__(self, script: list[int | tuple[int, dict[str, str]]] | None = None):
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.script = list(script or [])
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body, time.monotonic()))
                answer = outer.script.pop(0) if outer.script else 200
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status == 200:
                    outer.got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/energy"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Subscriber:
    def __init__(self, port: int, topic: str, client_id: str):
        self.messages: list[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_channel_publishes_events_and_a_retained_state(mosquitto, mqtt_topic_prefix):
    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/#", mqtt_topic_prefix + "-sub")
    channel = MqttChannel(name="mqtt", host="127.0.0.1", port=mosquitto.port,
                          topic=mqtt_topic_prefix, client_id=mqtt_topic_prefix + "-alerts")
    try:
        channel.send(event("start").payload("plant-a"))  # before the connection: queued
        channel.start()
        got = sub.wait(2)
        by_topic = {m.topic: json.loads(m.payload) for m in got}
        events = by_topic[f"{mqtt_topic_prefix}/events"]
        assert events["event"] == "start" and events["figures"]["kw"] == 412.0
        assert events["site"] == "plant-a" and events["started"].startswith("2026-05-28")
        state = by_topic[f"{mqtt_topic_prefix}/state/incomer-spike/incomer-1"]
        assert state["state"] == "active"
        channel.send(event("end").payload("plant-a"))
        assert len(sub.wait(4)) == 4
    finally:
        channel.close()
        sub.close()
    # someone who connects later sees the latest state, retained by the broker
    late = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/state/#", mqtt_topic_prefix + "-l")
    try:
        retained = late.wait(1)
        assert len(retained) == 1 and retained[0].retain
        assert json.loads(retained[0].payload)["state"] == "resolved"
    finally:
        late.close()


def test_webhook_posts_signed_json_and_retries_with_backoff():
    with Receiver(script=[503, 502]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, secret=SECRET, timeout=2,
                              retries=3, backoff=0.1)
        hook.start()
        try:
            hook.send(event().payload("plant-a"))
            assert receiver.got.wait(5)
        finally:
            hook.close()
        assert len(receiver.requests) == 3  # two refusals, then delivered
        gaps = [b[2] - a[2] for a, b in zip(receiver.requests, receiver.requests[1:],
                                            strict=False)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # the backoff doubles
        headers, body, _ = receiver.requests[-1]
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Energyd-Signature"] == f"sha256={expected}"
        assert headers["Content-Type"] == "application/json"
        payload = json.loads(body)
        assert payload["rule"] == "incomer-spike" and payload["event"] == "start"
        assert SECRET not in body.decode()
        assert hook.delivered == 1 and hook.failed == 0


def test_webhook_waits_as_long_as_a_retry_after_date_says():
    """Retry-After comes as seconds or as an HTTP date (energyd.retry reads both)."""
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    with Receiver(script=[(429, {"Retry-After": later})]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=2, backoff=0.05)
        hook.start()
        try:
            hook.send(event().payload("plant-a"))
            assert receiver.got.wait(6)
        finally:
            hook.close()
        assert len(receiver.requests) == 2
        assert receiver.requests[1][2] - receiver.requests[0][2] >= 0.9  # not the 0.05 s


def test_webhook_does_not_retry_a_refusal_for_good():
    failures: list[str] = []
    with Receiver(script=[400]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=5, backoff=0.05,
                              on_error=failures.append)
        hook.start()
        hook.send(event().payload("plant-a"))
        deadline = time.monotonic() + 5
        while not failures and time.monotonic() < deadline:
            time.sleep(0.02)
        hook.close()
        assert len(receiver.requests) == 1 and failures == ["ops"]


@pytest.fixture
def black_hole():
    """A port that accepts connections and never answers: the worst webhook receiver."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    s.close()


def test_a_dead_webhook_does_not_delay_mqtt(mosquitto, mqtt_topic_prefix, black_hole):
    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/events", mqtt_topic_prefix + "-sub")
    hook = WebhookChannel(name="dead", url=black_hole, timeout=6.0, retries=3, backoff=1.0)
    channel = MqttChannel(name="mqtt", host="127.0.0.1", port=mosquitto.port,
                          topic=mqtt_topic_prefix, client_id=mqtt_topic_prefix + "-alerts")
    dispatcher = Dispatcher([hook, LogChannel(), channel], "plant-a")
    dispatcher.start()
    try:
        deadline = time.monotonic() + 10  # connected, as in a running daemon
        while not channel._connected:
            assert time.monotonic() < deadline, "the alert channel never connected"
            time.sleep(0.02)
        t0 = time.monotonic()
        for i in range(3):
            dispatcher.send(event(device=f"incomer-{i}").payload("plant-a"))
        sent = time.monotonic() - t0
        got = sub.wait(3, timeout=5)
        delivered = time.monotonic() - t0
        assert sent < 0.5  # send() only queues
        # well inside the webhook's first 6 s timeout: it is still hanging meanwhile
        assert len(got) == 3 and delivered < 3.0
        assert hook.delivered == 0 and hook.running
    finally:
        t_close = time.monotonic()
        dispatcher.close()
        sub.close()
    assert time.monotonic() - t_close < 6  # shutdown does not sit out every retry
