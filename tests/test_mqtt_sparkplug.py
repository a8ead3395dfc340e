"""Sparkplug B on the MQTT path: births and aliases, each metric's own time, sequence numbers,
deaths; and a real Mosquitto between an edge node and energyd."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer
from test_mqtt_station import Running, _config, _until

from energyd.config.loader import parse_config
from energyd.drivers.mqtt import _sparkplug_b_pb2 as pb
from energyd.drivers.mqtt.client import PayloadMapper, Rejected
from energyd.errors import ConfigError
from energyd.model import Quality, Reading, from_ms, to_ms
from energyd.store.sqlite import Store

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
T = to_ms(NOW) - 60_000  # the edge node's times: a minute ago

CONFIG = """
mqtt: {host: 127.0.0.1, port: 1883}
devices:
  - name: meter7
    driver: mqtt
    mqtt:
      format: sparkplug_b
      topic: spBv1.0/plant/+/gw1/meter7
      fields: {active_power_kw: Power/Active, active_energy_import_kwh: Energy/Import,
               current_l1_a: I1}
  - name: gw1
    driver: mqtt
    mqtt:
      format: sparkplug_b
      topic: spBv1.0/plant/+/gw1
      fields: {frequency_hz: Grid/Frequency}
"""

DOUBLE, INT32, INT64, BOOLEAN, STRING = 10, 3, 4, 11, 12


def payload(seq: int | None, metrics: list[dict[str, Any]], timestamp: int | None = T) -> bytes:
    p = pb.Payload()
    if timestamp is not None:
        p.timestamp = timestamp
    if seq is not None:
        p.seq = seq
    for spec in metrics:
        m = p.metrics.add()
        for k, v in spec.items():
            setattr(m, k, v)
    return p.SerializeToString()


def nbirth(seq: int = 0, bd_seq: int = 7) -> bytes:
    return payload(seq, [{"name": "bdSeq", "datatype": INT64, "long_value": bd_seq},
                         {"name": "Grid/Frequency", "alias": 1, "datatype": DOUBLE,
                          "double_value": 50.02}])


def dbirth(seq: int) -> bytes:
    return payload(seq, [
        {"name": "Power/Active", "alias": 10, "datatype": DOUBLE, "double_value": 12.5},
        {"name": "Energy/Import", "alias": 11, "datatype": INT64, "long_value": 1000},
        {"name": "I1", "alias": 12, "datatype": INT32, "int_value": 3},
        {"name": "Label", "alias": 13, "datatype": STRING, "string_value": "incomer"}])


@pytest.fixture
def mapper() -> PayloadMapper:
    return PayloadMapper(parse_config(CONFIG))


def test_births_give_readings_and_aliases_name_the_data(mapper: PayloadMapper) -> None:
    assert mapper.filters() == ["spBv1.0/plant/+/gw1/#"]  # the node's subtree, once
    when = from_ms(T)
    assert mapper.map("spBv1.0/plant/NBIRTH/gw1", nbirth(), NOW, []) == [
        Reading(when, "gw1", "frequency_hz", 50.02)]
    problems: list[Rejected] = []
    assert mapper.map("spBv1.0/plant/DBIRTH/gw1/meter7", dbirth(1), NOW, problems) == [
        Reading(when, "meter7", "active_power_kw", 12.5),
        Reading(when, "meter7", "active_energy_import_kwh", 1000.0),
        Reading(when, "meter7", "current_l1_a", 3.0)]
    assert [p.reason for p in problems] == ["not_numeric"]  # the label: not mapped anyway
    # DDATA by alias; each metric at its own time, else the payload's; a signed Int32 sent
    # as two's complement; a null metric has no value; historical values at their times
    data = payload(2, [
        {"alias": 10, "double_value": 13.0, "timestamp": T + 1000},
        {"alias": 10, "double_value": 11.0, "timestamp": T - 5000, "is_historical": True},
        {"alias": 12, "int_value": 2**32 - 4},
        {"alias": 11, "is_null": True}], timestamp=T + 2000)
    assert mapper.map("spBv1.0/plant/DDATA/gw1/meter7", data, NOW, []) == [
        Reading(from_ms(T + 1000), "meter7", "active_power_kw", 13.0),
        Reading(from_ms(T - 5000), "meter7", "active_power_kw", 11.0),
        Reading(from_ms(T + 2000), "meter7", "current_l1_a", -4.0)]
    # another device of the node: not configured, nothing read, nothing refused
    assert mapper.map("spBv1.0/plant/DDATA/gw1/meter9", payload(3, [
        {"name": "Power/Active", "double_value": 1.0}]), NOW, []) == []
    assert mapper.map("spBv1.0/plant/NDATA/gw1", payload(4, [
        {"alias": 1, "double_value": 49.98}]), NOW, []) == [
        Reading(from_ms(T), "gw1", "frequency_hz", 49.98)]


def test_a_sequence_gap_is_counted_and_the_message_still_taken(mapper: PayloadMapper) -> None:
    mapper.map("spBv1.0/plant/NBIRTH/gw1", nbirth(), NOW, [])
    mapper.map("spBv1.0/plant/DBIRTH/gw1/meter7", dbirth(1), NOW, [])
    problems: list[Rejected] = []
    got = mapper.map("spBv1.0/plant/DDATA/gw1/meter7",
                     payload(5, [{"alias": 10, "double_value": 14.0}]), NOW, problems)
    assert [r.value for r in got] == [14.0]
    assert [p.reason for p in problems] == ["sequence_gap"]
    assert "seq 5 where 2 was due" in str(problems[0])
    # the count goes on from the message taken; 255 wraps to 0
    problems.clear()
    for seq in [*range(6, 256), 0]:
        mapper.map("spBv1.0/plant/NDATA/gw1", payload(seq, [{"alias": 1, "double_value": 50.0}]),
                   NOW, problems)
    assert problems == []


def test_data_before_a_birth_is_refused_until_the_next_birth(mapper: PayloadMapper) -> None:
    data = payload(8, [{"alias": 10, "double_value": 13.0}])
    with pytest.raises(Rejected) as caught:
        mapper.map("spBv1.0/plant/DDATA/gw1/meter7", data, NOW, [])
    assert caught.value.reason == "no_birth"
    assert "waits for the next birth" in str(caught.value)
    # data that names its metrics needs no birth
    assert [r.value for r in mapper.map("spBv1.0/plant/DDATA/gw1/meter7", payload(
        9, [{"name": "Power/Active", "double_value": 3.0}]), NOW, [])] == [3.0]
    mapper.map("spBv1.0/plant/NBIRTH/gw1", nbirth(), NOW, [])
    mapper.map("spBv1.0/plant/DBIRTH/gw1/meter7", dbirth(1), NOW, [])
    assert [r.value for r in mapper.map("spBv1.0/plant/DDATA/gw1/meter7", payload(
        2, [{"alias": 10, "double_value": 13.0}]), NOW, [])] == [13.0]


def test_a_death_ends_the_node_only_for_its_own_birth(mapper: PayloadMapper) -> None:
    mapper.map("spBv1.0/plant/NBIRTH/gw1", nbirth(bd_seq=7), NOW, [])
    mapper.map("spBv1.0/plant/DBIRTH/gw1/meter7", dbirth(1), NOW, [])
    death = payload(None, [{"name": "bdSeq", "datatype": INT64, "long_value": 6}], None)
    assert mapper.map("spBv1.0/plant/NDEATH/gw1", death, NOW, []) == []  # an older session's
    data = payload(2, [{"alias": 10, "double_value": 13.0}])
    assert [r.value for r in mapper.map("spBv1.0/plant/DDATA/gw1/meter7", data, NOW, [])] == [
        13.0]
    death = payload(None, [{"name": "bdSeq", "datatype": INT64, "long_value": 7}], None)
    assert mapper.map("spBv1.0/plant/NDEATH/gw1", death, NOW, []) == []
    with pytest.raises(Rejected) as caught:  # its aliases went with it
        mapper.map("spBv1.0/plant/DDATA/gw1/meter7",
                   payload(3, [{"alias": 10, "double_value": 13.0}]), NOW, [])
    assert caught.value.reason == "no_birth"


def test_times_and_payloads_are_checked(mapper: PayloadMapper) -> None:
    with pytest.raises(Rejected) as caught:
        mapper.map("spBv1.0/plant/NDATA/gw1", b"\xff\xff\xff", NOW, [])
    assert caught.value.reason == "not_sparkplug"
    mapper.map("spBv1.0/plant/NBIRTH/gw1", nbirth(), NOW, [])
    future = to_ms(NOW + timedelta(days=2))
    with pytest.raises(Rejected) as caught:
        mapper.map("spBv1.0/plant/NDATA/gw1", payload(
            1, [{"alias": 1, "double_value": 50.0}], timestamp=future), NOW, [])
    assert caught.value.reason == "clock_skew"
    # no time at all: the receive time, flagged, one for the message
    got = mapper.map("spBv1.0/plant/NDATA/gw1", payload(
        2, [{"alias": 1, "double_value": 50.0}], timestamp=None), NOW, [])
    assert [(r.time, r.quality) for r in got] == [(NOW, Quality.RECEIVED)]
    mapper.map("spBv1.0/plant/DBIRTH/gw1/meter7", dbirth(3), NOW, [])
    got = mapper.map("spBv1.0/plant/DDATA/gw1/meter7", payload(
        4, [{"alias": 10, "double_value": 1.0}, {"alias": 11, "long_value": 2}],
        timestamp=None), NOW, [])
    assert [(r.time, r.quality) for r in got] == [(NOW, Quality.RECEIVED)] * 2


@pytest.mark.parametrize("topic, message", [
    ("spBv1.0/plant/NDATA/gw1", "needs a topic spBv1.0/<group>/+/<edge node>"),
    ("spBv1.0/+/+/gw1", "needs a topic spBv1.0/<group>/+/<edge node>"),
    ("plant/+/gw1/x", "needs a topic spBv1.0/<group>/+/<edge node>"),
])
def test_bad_sparkplug_entries_are_refused(topic: str, message: str) -> None:
    text = CONFIG.replace("spBv1.0/plant/+/gw1/meter7", topic)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "plant.yaml")
    assert message in str(caught.value)


async def test_an_edge_node_through_a_real_broker(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path) -> None:
    group = mqtt_topic_prefix.replace("/", "-")
    entry = {"name": "meter7", "driver": "mqtt",
             "mqtt": {"format": "sparkplug_b", "topic": f"spBv1.0/{group}/+/gw1/meter7",
                      "fields": {"active_power_kw": "Power/Active",
                                 "active_energy_import_kwh": "Energy/Import"}}}
    config = _config(tmp_path, mosquitto, [entry], f"{mqtt_topic_prefix}-e")
    now = to_ms(datetime.now(UTC))
    messages = [("NBIRTH", None, nbirth())]
    messages.append(("DBIRTH", "meter7", payload(1, [
        {"name": "Power/Active", "alias": 10, "datatype": DOUBLE, "double_value": 10.0},
        {"name": "Energy/Import", "alias": 11, "datatype": DOUBLE, "double_value": 500.0}],
        timestamp=now)))
    for i in range(1, 6):  # seq 4 is lost on the way
        seq = i + 1 if i < 3 else i + 2
        messages.append(("DDATA", "meter7", payload(seq, [
            {"alias": 10, "double_value": 10.0 + i}, {"alias": 11, "double_value": 500.0 + i}],
            timestamp=now + 1000 * i)))
    async with Running(config) as energyd:
        await asyncio.to_thread(_publish_all, mosquitto, group, messages)
        await _until(lambda: energyd.component.acked >= len(messages), 10, "all committed")
        metrics = energyd.daemon.metrics.render().decode()
    with Store.open(tmp_path / "energyd.db") as store:
        power = [(r.time_ms - now, r.value, r.quality)
                 for r in store.readings.query_readings(device="meter7",
                                                        quantity="active_power_kw")]
    assert power == [(1000 * i, 10.0 + i, Quality.GOOD) for i in range(6)]
    assert (f'energyd_mqtt_rejected_total{{reason="sequence_gap",'
            f'topic="spBv1.0/{group}/DDATA/gw1/meter7"}} 1.0') in metrics


def _publish_all(broker: MosquittoServer, group: str,
                 messages: list[tuple[str, str | None, bytes]]) -> None:
    done = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{group}-gw1")
    client.on_publish = lambda *args: done.release()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for kind, device, body in messages:
            topic = f"spBv1.0/{group}/{kind}/gw1" + (f"/{device}" if device else "")
            client.publish(topic, body, qos=1)
        for _ in messages:
            assert done.acquire(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
