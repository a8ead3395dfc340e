"""MQTT acquisition against a real Mosquitto: the compressor station simulator publishes,
energyd stores; broker and energyd restarts (clean and killed) lose no QoS 1 message."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer

from energyd.config.schema import Config
from energyd.daemon.app import Daemon
from energyd.simulators.compressor import FIELDS, CompressorStation
from energyd.store.sqlite import Store

QUANTITY_OF = {key: q for q, key in FIELDS.items()}


def _config(tmp_path: Path, broker: MosquittoServer, devices: list[dict[str, Any]],
            client_id: str, **mqtt: Any) -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "energyd.db"), "flush_interval": 0.3},
        "http": {"enabled": False},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id, **mqtt},
        "devices": devices,
    }


class Running:
    """An in-process energyd on a real clock."""

    def __init__(self, config: dict[str, Any] | Config):
        self.daemon = Daemon(config if isinstance(config, Config) else
                             Config.model_validate(config))
        self.task: asyncio.Task[int] | None = None
        self._component: Any = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.daemon.run(handle_signals=False))
        await asyncio.wait_for(self.daemon.ready.wait(), 10)
        await _until(lambda: self.component.subscriber is not None
                     and self.component.subscriber.subscribed, 10, "energyd subscribed")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.daemon.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)

    @property
    def component(self) -> Any:
        if self._component is None:
            self._component = self._find_component()
        return self._component

    def _find_component(self) -> Any:
        ctx = self.daemon.context
        assert ctx is not None
        from energyd.daemon.subscriptions import MqttComponent
        return next(h.__self__ for h in ctx.commit_listeners
                    if isinstance(getattr(h, "__self__", None), MqttComponent))


async def _until(predicate: Callable[[], bool], timeout: float, what: str,
                 state: Callable[[], object] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f": {state()}" if state is not None else ""))
        await asyncio.sleep(0.05)


def _state(*running: Running) -> list[dict[str, Any]]:
    out = []
    for r in running:
        c = r.component
        front = c._queue[0] if c._queue else None
        out.append({**c._health(), "acked": c.acked, "generation": c.subscriber.generation,
                    "front": front and (front.mid, front.done, front.generation),
                    "pending": r.daemon.context.writer.pending
                    if r.daemon.context else None})
    return out


def _times(store_path: Path, device: str, quantity: str = "active_power_kw") -> dict[int, float]:
    with Store.open(store_path) as store:
        return {r.time_ms: r.value for r in store.readings.query_readings(device=device,
                                                                  quantity=quantity)}


def _assert_nothing_lost(sim: CompressorStation, store_path: Path) -> int:
    """Every message the broker acknowledged to the simulator is in the store, once."""
    total = 0
    for device in sim.devices:
        acked = sim.acked.get(device, {})
        # the publisher itself lost nothing: its sequence numbers run without a hole
        assert sorted(acked) == list(range(1, sim.seq[device] + 1)), device
        stored = _times(store_path, device)
        assert sorted(stored) == sorted(acked.values()), (
            f"{device}: {len(acked)} acknowledged, {len(stored)} stored, missing seqs "
            f"{sorted(s for s, t in acked.items() if t not in stored)[:10]}")
        total += len(acked)
    return total


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_simulator_values_arrive_with_device_quantity_and_time(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path, protocol: str):
    sim = CompressorStation(broker=(mosquitto.host, mosquitto.port), station="air1",
                            compressors=3, rate=20, topic_prefix=mqtt_topic_prefix,
                            client_id=f"{mqtt_topic_prefix}-sim")
    config = _config(tmp_path, mosquitto, [sim.template_entry()], f"{mqtt_topic_prefix}-e",
                     protocol=protocol)
    async with Running(config) as energyd:
        async with sim:
            await asyncio.sleep(1.5)
        await sim.wait_acked()
        want = sum(len(v) for v in sim.acked.values())
        await _until(lambda: energyd.component.acked >= want, 10, "all messages committed")
    store_path = tmp_path / "energyd.db"
    assert _assert_nothing_lost(sim, store_path) >= 60
    with Store.open(store_path) as store:
        assert {d for d, _ in store.series()} == set(sim.devices)
        for device, payload in sim.last_payload.items():
            for key, quantity in QUANTITY_OF.items():
                latest = store.readings.latest(device, quantity)
                assert latest is not None, (device, quantity)
                assert (latest.time_ms, latest.value) == (payload["ts"], payload[key])
        states = {r.value for r in store.readings.query_readings(quantity="compressor_state")}
        assert states and states <= {0.0, 1.0, 2.0}


async def test_broker_restart_mid_stream_loses_no_qos1_message(
        mosquitto_private: MosquittoServer, tmp_path: Path):
    broker = mosquitto_private
    sim = CompressorStation(broker=(broker.host, broker.port), station="air2", compressors=3,
                            rate=40)
    config = _config(tmp_path, broker, sim.device_entries(), "energyd-broker-restart")
    async with Running(config) as energyd:
        async with sim:
            await asyncio.sleep(1.0)
            before = energyd.component.received
            await asyncio.to_thread(broker.restart)
            await _until(lambda: energyd.component.subscriber.connected, 10, "reconnect")
            await asyncio.sleep(1.0)
        await sim.wait_acked(15)
        want = sum(len(v) for v in sim.acked.values())
        await _until(lambda: energyd.component.acked >= want, 15, "all messages committed")
        assert before > 0 and energyd.component.received > before
    assert _assert_nothing_lost(sim, tmp_path / "energyd.db") == want


async def test_energyd_restart_mid_stream_loses_no_qos1_message(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path):
    sim = CompressorStation(broker=(mosquitto.host, mosquitto.port), station="air3",
                            compressors=3, rate=40, topic_prefix=mqtt_topic_prefix,
                            client_id=f"{mqtt_topic_prefix}-sim")
    config = _config(tmp_path, mosquitto, [sim.template_entry()], f"{mqtt_topic_prefix}-e")
    async with Running(config):
        pass  # energyd ran before: the broker holds its session and subscriptions
    async with sim:
        async with Running(config) as first:
            await asyncio.sleep(1.0)
        taken_first = first.component.received
        published_while_down = sum(sim.seq.values())
        await asyncio.sleep(0.8)  # the broker queues for energyd's session meanwhile
        published_while_down = sum(sim.seq.values()) - published_while_down
        async with Running(config) as second:
            await asyncio.sleep(1.0)
            await sim.close()
            want = sum(len(v) for v in sim.acked.values())
            await _until(lambda: first.component.acked + second.component.acked >= want, 15,
                         "all messages committed", lambda: _state(first, second))
    assert taken_first > 0 and published_while_down > 30
    assert _assert_nothing_lost(sim, tmp_path / "energyd.db") == want


async def test_energyd_killed_mid_stream_loses_no_qos1_message(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path):
    """SIGKILL with up to a second of readings not yet committed: the broker still holds
    them, because energyd acknowledges a message only after its commit."""
    sim = CompressorStation(broker=(mosquitto.host, mosquitto.port), station="air4",
                            compressors=3, rate=50, topic_prefix=mqtt_topic_prefix,
                            client_id=f"{mqtt_topic_prefix}-sim")
    config = _config(tmp_path, mosquitto, sim.device_entries(), f"{mqtt_topic_prefix}-e")
    config["storage"]["flush_interval"] = 1.0
    path = tmp_path / "energyd.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    command = [sys.executable, "-m", "energyd.cli", "--log-level", "warning", "run", "-c",
               str(path)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))

    async def committed() -> int:
        with Store.open(tmp_path / "energyd.db") as store:
            return store.readings.count_readings()

    async with Running(config):
        pass  # energyd ran before: the broker holds its session and subscriptions
    async with sim:
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        try:
            # killed once it has committed, with up to a flush interval not yet committed
            await _until(lambda: _times(tmp_path / "energyd.db", "air4-c1"), 20,
                         "the first energyd committing")
            await asyncio.sleep(0.7)
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
            at_kill = sum(sim.seq.values())
            await asyncio.sleep(0.5)
            proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
            await asyncio.sleep(1.5)
        except BaseException:
            proc.kill()
            raise
    await sim.wait_acked()
    want = sum(len(v) for v in sim.acked.values())
    caught_up = True
    try:
        await _until(lambda: len(_times(tmp_path / "energyd.db", "air4-c1"))
                     >= len(sim.acked["air4-c1"]), 15, "the second energyd caught up")
        await asyncio.sleep(1.2)  # one more flush for the other compressors
    except AssertionError:
        caught_up = False
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert caught_up, f"the second energyd did not catch up; its log:\n{err.decode()[-3000:]}"
    assert proc.returncode == 0, err.decode()
    assert at_kill > 100 and await committed() > 0
    assert _assert_nothing_lost(sim, tmp_path / "energyd.db") == want


async def test_bad_payloads_are_refused_counted_and_the_stream_goes_on(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture):
    p = mqtt_topic_prefix
    devices = [
        {"name": "m1", "driver": "mqtt",
         "mqtt": {"topic": f"{p}/m1", "timestamp": "ts",
                  "fields": {"active_power_kw": "p", "active_energy_import_kwh": "e"}}},
        {"name": "st", "role": "compressor", "driver": "mqtt",
         "mqtt": {"topic": f"{p}/air/+/state", "device_level": len(p.split("/")) + 1,
                  "devices": ["k1"], "fields": {"compressor_state": "s"}}},
        {"name": "v1", "driver": "mqtt",
         "mqtt": {"topic": f"{p}/v1", "format": "value", "quantity": "pressure_bar"}},
    ]
    config = _config(tmp_path, mosquitto, devices, f"{p}-e", max_payload="2KB")
    now = int(time.time() * 1000)
    bad = [
        (f"{p}/m1", b"{'p': 1", "not_json"),
        (f"{p}/m1", b"\xc3\x28", "not_utf8"),
        (f"{p}/m1", json.dumps({"ts": now + 1, "x": 1}).encode(), "missing_field"),
        (f"{p}/m1", json.dumps({"ts": now + 2, "p": "over", "e": [1]}).encode(),
         "not_numeric"),
        (f"{p}/m1", b'{"ts": %d, "p": NaN, "e": Infinity}' % (now + 3), "not_finite"),
        (f"{p}/m1", json.dumps({"ts": now + 4, "p": 1, "pad": "x" * 3000}).encode(),
         "too_large"),
        (f"{p}/m1", json.dumps({"ts": now + 5 + 3 * 86400_000, "p": 1}).encode(),
         "clock_skew"),
        (f"{p}/m1", json.dumps({"ts": "soon", "p": 1}).encode(), "bad_timestamp"),
        (f"{p}/v1", b"inf", "not_finite"),
        (f"{p}/v1", b"high", "not_numeric"),
        (f"{p}/air/k2/state", b'{"s": 2}', "unknown_device"),
    ]
    good = [(f"{p}/m1", json.dumps({"ts": now + 10, "p": 7.5, "e": 100}).encode()),
            (f"{p}/v1", b"6.9"),
            (f"{p}/air/k1/state", b'{"s": 2}')]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{p}-pub")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    caplog.set_level(logging.WARNING, logger="energyd.daemon.subscriptions")
    try:
        async with Running(config) as energyd:
            for topic, payload, _ in bad + bad[:1]:  # the first kind twice
                client.publish(topic, payload, qos=1).wait_for_publish(5)
            for topic, payload in good:
                client.publish(topic, payload, qos=1).wait_for_publish(5)
            await _until(lambda: energyd.component.received == len(bad) + 1 + len(good), 10,
                         "all messages received")
            await _until(lambda: energyd.component.acked == len(bad) + 1 + len(good), 10,
                         "all messages acknowledged")
            metrics = energyd.daemon.metrics.registry
            store = energyd.daemon.store
            for topic, _, reason in bad:
                label = f"{p}/air/+/state" if reason == "unknown_device" else topic
                count = metrics.get_sample_value("energyd_mqtt_rejected_total",
                                                 {"topic": label, "reason": reason})
                assert count == (2 if reason == "not_json" else 1), (reason, count)
            assert {(r.device, r.quantity, r.value) for r in store.readings.query_readings()} == {
                ("m1", "active_power_kw", 7.5), ("m1", "active_energy_import_kwh", 100.0),
                ("v1", "pressure_bar", 6.9), ("k1", "compressor_state", 2.0)}
            assert store.readings.latest("m1", "active_power_kw").time_ms == now + 10
            assert metrics.get_sample_value("energyd_mqtt_messages_total",
                                            {"topic": f"{p}/m1"}) == 10
            assert metrics.get_sample_value("energyd_mqtt_connected") == 1
    finally:
        client.disconnect()
        client.loop_stop()
    refused = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
    assert len(refused) == len(bad), refused  # the repeated kind was not logged again
    assert any("not_json" in m and f"{p}/m1" in m for m in refused)


def test_simulate_compressor_command_publishes_and_refuses_other_hosts(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str):
    from click.testing import CliRunner

    from energyd.cli import cli

    got: list[str] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{mqtt_topic_prefix}-cli")
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(f"{mqtt_topic_prefix}/#", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.2)
        result = CliRunner().invoke(cli, [
            "simulate", "compressor", "--broker", f"127.0.0.1:{mosquitto.port}",
            "--station", "cli1", "--compressors", "2", "--rate", "20", "--duration", "1",
            "--topic-prefix", mqtt_topic_prefix])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output)
        assert printed["devices"][0]["mqtt"]["devices"] == ["cli1-c1", "cli1-c2"]
        deadline = time.monotonic() + 5
        while len(got) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {t.split("/")[-2] for t in got} == {"cli1-c1", "cli1-c2"} and len(got) >= 30
    finally:
        sub.disconnect()
        sub.loop_stop()
    refused = CliRunner().invoke(cli, ["simulate", "compressor", "--broker", "192.0.2.1:1883",
                                       "--duration", "1"])
    assert refused.exit_code == 2 and "not a loopback address" in refused.output


async def test_a_topic_dropped_from_the_config_is_unsubscribed(
        mosquitto: MosquittoServer, mqtt_topic_prefix: str, tmp_path: Path):
    """The persistent session would keep an old subscription and its queue forever."""
    p = mqtt_topic_prefix

    def device(topic: str) -> dict[str, Any]:
        return {"name": "d1", "driver": "mqtt",
                "mqtt": {"topic": topic, "format": "value", "quantity": "pressure_bar"}}

    async with Running(_config(tmp_path, mosquitto, [device(f"{p}/old")], f"{p}-e")):
        pass
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{p}-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        pub.publish(f"{p}/old", b"1.0", qos=1).wait_for_publish(5)  # queued for the session
        async with Running(_config(tmp_path, mosquitto, [device(f"{p}/new")],
                                   f"{p}-e")) as energyd:
            for topic, value in [(f"{p}/old", b"2.0"), (f"{p}/new", b"3.0")]:
                pub.publish(topic, value, qos=1).wait_for_publish(5)
            await _until(lambda: energyd.component.acked >= 2, 5, "the new topic")
            await asyncio.sleep(0.3)
            # what was queued before the restart still comes (and is refused); nothing
            # published to the old topic afterwards does
            assert energyd.component.received == 2
            metrics = energyd.daemon.metrics.registry
            assert metrics.get_sample_value("energyd_mqtt_rejected_total",
                                            {"topic": "(unrouted)", "reason": "no_route"}) == 1
            assert [r.value for r in energyd.daemon.store.readings.query_readings()] == [3.0]
    finally:
        pub.disconnect()
        pub.loop_stop()
