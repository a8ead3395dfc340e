"""The alert outbox: what a webhook or MQTT channel has not delivered is kept in the store and
sent again when the daemon starts, against a real HTTP receiver and a real Mosquitto."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import free_port
from test_alerts_dispatch import Receiver, Subscriber, event

from energyd.alerts.dispatch import Dispatcher, LogChannel, MqttChannel, WebhookChannel
from energyd.alerts.outbox import Outbox
from energyd.store import Store


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "store.db") as s:
        yield s


def test_a_webhook_event_not_delivered_is_sent_again_at_the_next_start(store):
    outbox = Outbox(store)
    with Receiver(script=[503]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=0)
        first = Dispatcher([hook, LogChannel()], "plant-a", outbox)
        first.start()
        first.send(event().payload("plant-a"))
        wait_for("the failed attempt", lambda: hook.failed == 1)
        first.close()
        assert outbox.counts() == {"ops": 1}  # the log channel keeps nothing

        # the daemon again, new channel objects, the same store
        again = WebhookChannel(name="ops", url=receiver.url, retries=0)
        second = Dispatcher([again, LogChannel()], "plant-a", outbox)
        second.start()
        try:
            assert receiver.got.wait(5)
            wait_for("the outbox to empty", lambda: outbox.counts() == {})
        finally:
            second.close()
        assert len(receiver.requests) == 2
        assert receiver.requests[0][1] == receiver.requests[1][1]  # the same event, as sent
        assert json.loads(receiver.requests[1][1])["rule"] == "incomer-spike"

        third = Dispatcher([WebhookChannel(name="ops", url=receiver.url)], "plant-a", outbox)
        third.start()
        time.sleep(0.3)
        third.close()
        assert len(receiver.requests) == 2  # delivered once is not sent again


def test_delivered_and_refused_events_leave_the_outbox(store):
    outbox = Outbox(store)
    with Receiver(script=[400]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=3, backoff=0.05)
        dispatcher = Dispatcher([hook], "plant-a", outbox)
        dispatcher.start()
        try:
            dispatcher.send(event(device="incomer-1").payload("plant-a"))  # refused: 400
            dispatcher.send(event(device="incomer-2").payload("plant-a"))  # delivered
            assert receiver.got.wait(5)
            wait_for("the outbox to empty", lambda: outbox.counts() == {})
        finally:
            dispatcher.close()
    assert len(receiver.requests) == 2 and hook.delivered == 1 and hook.failed == 1


def test_an_mqtt_event_is_kept_until_the_broker_acknowledges_it(store, mosquitto,
                                                               mqtt_topic_prefix):
    outbox = Outbox(store)
    away = MqttChannel(name="mqtt", host="127.0.0.1", port=free_port(),  # nothing listens there
                       topic=mqtt_topic_prefix, client_id=mqtt_topic_prefix + "-a")
    first = Dispatcher([away], "plant-a", outbox)
    first.start()
    first.send(event().payload("plant-a"))
    first.close()
    assert outbox.counts() == {"mqtt": 1}

    sub = Subscriber(mosquitto.port, f"{mqtt_topic_prefix}/events", mqtt_topic_prefix + "-s")
    channel = MqttChannel(name="mqtt", host="127.0.0.1", port=mosquitto.port,
                          topic=mqtt_topic_prefix, client_id=mqtt_topic_prefix + "-b")
    second = Dispatcher([channel], "plant-a", outbox)
    second.start()
    try:
        got = sub.wait(1)
        assert len(got) == 1 and json.loads(got[0].payload)["device"] == "incomer-1"
        wait_for("the outbox to empty", lambda: outbox.counts() == {})
        second.send(event("end").payload("plant-a"))
        assert len(sub.wait(2)) == 2
        wait_for("the outbox to empty", lambda: outbox.counts() == {})
    finally:
        second.close()
        sub.close()


def test_events_past_the_age_limit_or_of_removed_channels_are_dropped(store, caplog):
    t0 = 1_780_000_000_000
    Outbox(store, now_ms=lambda: t0).add(["ops", "old-hook"], [event().payload("plant-a")])
    later = Outbox(store, now_ms=lambda: t0 + 25 * 3_600_000)
    with caplog.at_level(logging.WARNING):
        assert later.pending("ops") == []
    assert "1 undelivered events older than 24 h dropped" in caplog.text
    assert later.counts() == {"old-hook": 1}
    assert later.forget_channels_except(["ops"]) == 1 and later.counts() == {}


def test_a_restarted_channel_sends_what_it_held_once(store):
    """A component restart (same dispatcher, same channels): the channel sends what it
    held, in order, and the outbox does not send it a second time."""
    outbox = Outbox(store)
    with Receiver(script=[503]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=5, backoff=30)
        dispatcher = Dispatcher([hook], "plant-a", outbox)
        dispatcher.start()
        dispatcher.send(event(device="incomer-1").payload("plant-a"))  # 503, then backs off
        wait_for("the first attempt", lambda: len(receiver.requests) == 1)
        dispatcher.send(event(device="incomer-2").payload("plant-a"))  # waits in the queue
        dispatcher.close()  # ends the backoff at once
        assert outbox.counts() == {"ops": 2}

        dispatcher.start()
        try:
            wait_for("both events", lambda: outbox.counts() == {})
            time.sleep(0.3)  # a duplicate would come now
        finally:
            dispatcher.close()
        devices = [json.loads(body)["device"] for _, body, _ in receiver.requests[1:]]
        assert devices == ["incomer-1", "incomer-2"]


def test_events_dispatched_together_are_kept_together_and_sent_in_order(store):
    outbox = Outbox(store)
    with Receiver(script=[]) as receiver:
        hook = WebhookChannel(name="ops", url=receiver.url, retries=3, backoff=0.05)
        dispatcher = Dispatcher([hook, LogChannel()], "plant-a", outbox)
        dispatcher.start()
        try:
            dispatcher.send_all([event(device=f"incomer-{k}").payload("plant-a")
                                 for k in range(3)])
            wait_for("the outbox to empty", lambda: outbox.counts() == {})
        finally:
            dispatcher.close()
        assert [json.loads(body)["device"] for _, body, _ in receiver.requests] == [
            "incomer-0", "incomer-1", "incomer-2"]
