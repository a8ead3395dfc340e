"""Acknowledgements against a real Mosquitto: the messages of a commit are acknowledged in one
write (Subscriber.ack_all) and the broker takes every one of them; a backlog is committed as
soon as it stops coming, while a steady stream keeps the writer's flush interval."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer
from test_mqtt_station import Running, _config, _until
from test_mqtt_time_provenance import _publish, _readings

from energyd.config.schema import Mqtt
from energyd.drivers.mqtt.client import Subscriber


class Taking:
    """A Subscriber whose messages land in a queue as (payload, mid, qos, generation)."""

    def __init__(self, broker: MosquittoServer, client_id: str, topic: str, **options: Any):
        self.got: queue.Queue[tuple[bytes, int, int, int]] = queue.Queue()
        self.sub = Subscriber(
            Mqtt(host=broker.host, port=broker.port, client_id=client_id, **options), [topic],
            on_message=lambda msg, generation: self.got.put(
                (msg.payload, msg.mid, msg.qos, generation)))

    def __enter__(self) -> Taking:
        self.sub.start()
        deadline = time.monotonic() + 10
        while not self.sub.subscribed:
            assert time.monotonic() < deadline, "not subscribed"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sub.stop()

    def take(self, count: int, timeout: float = 10) -> list[tuple[bytes, int, int, int]]:
        return [self.got.get(timeout=timeout) for _ in range(count)]

    def nothing_more(self, wait: float = 1.0) -> bool:
        try:
            self.got.get(timeout=wait)
        except queue.Empty:
            return True
        return False


def _publish_raw(broker: MosquittoServer, client_id: str, topic: str,
                 messages: list[tuple[bytes, int]]) -> None:
    """(payload, qos) each, waiting for the broker to take every one."""
    done = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_publish = lambda *args: done.release()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for payload, qos in messages:
            client.publish(topic, payload, qos=qos)
        for _ in messages:
            assert done.acquire(timeout=10), "the broker did not take every message"
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_what_ack_all_acknowledges_is_forgotten_and_the_rest_comes_again(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, protocol: str) -> None:
    topic = f"{mqtt_topic_prefix}/m"
    client_id = f"{mqtt_topic_prefix}-sub"
    # 20: what mosquitto sends a 3.1.1 client before it acknowledges (max_inflight_messages)
    payloads = [str(i).encode() for i in range(20)]
    with Taking(mosquitto, client_id, topic, protocol=protocol, max_inflight=100):
        pass  # the session exists: the broker queues for it from now on
    _publish_raw(mosquitto, f"{mqtt_topic_prefix}-pub", topic, [(p, 1) for p in payloads])
    with Taking(mosquitto, client_id, topic, protocol=protocol, max_inflight=100) as first:
        got = first.take(20)
        assert [p for p, *_ in got] == payloads
        # the first 12 in one write; the rest not at all
        assert first.sub.ack_all([(mid, qos, g) for _, mid, qos, g in got[:12]]) == 12
        # a message of an earlier connection is not acknowledged on this one
        assert first.sub.ack_all([(mid, qos, g - 1) for _, mid, qos, g in got[12:]]) == 0
        time.sleep(0.3)  # the write leaves before DISCONNECT either way; this is for clarity
    with Taking(mosquitto, client_id, topic, protocol=protocol, max_inflight=100) as second:
        again = second.take(8)
        assert [p for p, *_ in again] == payloads[12:]
        assert second.sub.ack_all([(mid, qos, g) for _, mid, qos, g in again]) == 8
        assert second.nothing_more(0.5)
    with Taking(mosquitto, client_id, topic, protocol=protocol, max_inflight=100) as third:
        assert third.nothing_more(), "an acknowledged message came again"


@pytest.mark.parametrize("qos", [1, 2])
def test_the_broker_window_moves_on_each_ack_all(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, qos: int) -> None:
    """With a window of one message (Receive Maximum 1) the broker sends the next message
    only once the previous one is acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2)."""
    topic = f"{mqtt_topic_prefix}/m"
    client_id = f"{mqtt_topic_prefix}-sub"
    with Taking(mosquitto, client_id, topic, qos=2, max_inflight=1):
        pass
    _publish_raw(mosquitto, f"{mqtt_topic_prefix}-pub", topic,
                 [(str(i).encode(), qos) for i in range(3)])
    with Taking(mosquitto, client_id, topic, qos=2, max_inflight=1) as s:
        for i in range(3):
            payload, mid, got_qos, g = s.take(1)[0]
            assert (payload, got_qos) == (str(i).encode(), qos)
            assert s.nothing_more(0.3), "the broker sent past its window"
            assert s.sub.ack_all([(mid, got_qos, g)]) == 1


async def test_a_backlog_is_committed_when_it_stops_coming_and_a_stream_at_the_interval(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{mqtt_topic_prefix}/c1"
    entry = {"name": "c1", "role": "compressor", "driver": "mqtt",
             "mqtt": {"topic": topic, "fields": {"active_power_kw": "p"}}}
    config = _config(tmp_path, mosquitto, [entry], f"{mqtt_topic_prefix}-e", backlog_gap=0.3)
    config["storage"]["flush_interval"] = 20  # longer than this test waits for anything
    async with Running(config):
        pass
    await asyncio.to_thread(_publish, mosquitto, f"{mqtt_topic_prefix}-pub", topic,
                            [{"p": float(i)} for i in range(300)])
    async with Running(config) as energyd:
        # the backlog: committed and acknowledged well before a flush interval
        await _until(lambda: energyd.component.acked >= 300, 8, "the backlog committed",
                     energyd.component._health)
        await asyncio.sleep(0.6)  # longer than the gap: what comes now is fresh
        await asyncio.to_thread(_publish, mosquitto, f"{mqtt_topic_prefix}-pub", topic,
                                [{"p": float(i)} for i in range(300, 450)])
        await _until(lambda: energyd.component.received >= 450, 8, "the fresh ones taken")
        await asyncio.sleep(1.0)
        # a stream is not a backlog: it waits for the writer's flush (here at the stop)
        assert energyd.component.acked == 300
    assert [v for _, v, _ in _readings(tmp_path / "energyd.db", "c1")] == [
        float(i) for i in range(450)]
