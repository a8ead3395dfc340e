"""The real-server fixtures answer like the real servers do, and survive restarts."""

from __future__ import annotations

import json
import queue
import socket
import threading
import urllib.parse
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import InfluxDBServer, MosquittoServer, VictoriaMetricsServer

# 2023-11-14T22:13:20.123456789Z: sub-second digits catch any precision mix-up
TS_NS = 1_700_000_000_123_456_789
TS_MS = TS_NS // 1_000_000

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    with _no_proxy.open(req, timeout=10) as resp:
        return resp.status


# --- InfluxDB 1.x -------------------------------------------------------------------------------


def test_influxdb_write_and_query_exact_point(influxdb: InfluxDBServer, influxdb_database: str):
    db = influxdb_database
    assert influxdb.url == f"http://127.0.0.1:{influxdb.port}"
    assert [db] in influxdb.query("SHOW DATABASES")["results"][0]["series"][0]["values"]

    qs = urllib.parse.urlencode({"db": db, "precision": "ns"})
    line = f"power,device=m1 active_power_kw=12.5 {TS_NS}"
    status = _post(f"{influxdb.url}/write?{qs}", line.encode())
    assert status == 204

    result = influxdb.query("SELECT active_power_kw, device FROM power", db=db, epoch="ns")
    series = result["results"][0]["series"]
    assert series == [
        {
            "name": "power",
            "columns": ["time", "active_power_kw", "device"],
            "values": [[TS_NS, 12.5, "m1"]],
        }
    ]
    rfc3339 = influxdb.query("SELECT active_power_kw FROM power", db=db)
    assert rfc3339["results"][0]["series"][0]["values"] == [
        ["2023-11-14T22:13:20.123456789Z", 12.5]
    ]


def test_influxdb_query_error_raises(influxdb: InfluxDBServer, influxdb_database: str):
    with pytest.raises(RuntimeError, match="not_a_db"):
        influxdb.query("SELECT * FROM power", db="not_a_db")
    answer = influxdb.query("SELECT * FROM power", db="not_a_db", check=False)
    assert "database not found" in answer["results"][0]["error"]


def test_influxdb_private_restart_keeps_data(influxdb_private: InfluxDBServer):
    server = influxdb_private
    url = server.url
    server.create_database("plant")
    server.write("plant", f"power,device=m1 active_power_kw=3.5 {TS_NS}")

    server.stop()
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()

    server.start()
    assert server.url == url
    values = server.query("SELECT active_power_kw FROM power", db="plant", epoch="ns")
    assert values["results"][0]["series"][0]["values"] == [[TS_NS, 3.5]]

    server.restart()
    assert server.query("SHOW DATABASES")["results"][0]["series"][0]["values"] == [["plant"]]


# --- Mosquitto ----------------------------------------------------------------------------------


class _Client:
    """A paho client running its network loop in a thread, with events for the acks."""

    def __init__(self, broker: MosquittoServer, client_id: str = "", clean_session: bool = True):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self._connected.wait(5), "no CONNACK from the broker"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        assert not reason_code.is_failure, reason_code
        self.session_present = flags.session_present
        self._connected.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self._subscribed.wait(5), "no SUBACK from the broker"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def next_message(self, timeout: float = 5) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_publish_is_received_exactly(mosquitto: MosquittoServer, mqtt_topic_prefix: str):
    assert mosquitto.host == "127.0.0.1"
    topic = f"{mqtt_topic_prefix}/station1/state"
    payload = json.dumps({"pressure_bar": 7.25, "compressor_state": 2}).encode() + b"\x00\xff"

    sub = _Client(mosquitto)
    pub = _Client(mosquitto)
    try:
        sub.subscribe(f"{mqtt_topic_prefix}/#")
        pub.publish(topic, payload)
        msg = sub.next_message()
        assert (msg.topic, msg.payload) == (topic, payload)
    finally:
        pub.close()
        sub.close()


def test_mosquitto_persistent_session_survives_restart(
    mosquitto_private: MosquittoServer, mqtt_topic_prefix: str
):
    broker = mosquitto_private
    client_id = f"sub-{uuid.uuid4().hex[:12]}"
    topic = f"{mqtt_topic_prefix}/meter1"

    sub = _Client(broker, client_id, clean_session=False)
    sub.subscribe(topic, qos=1)
    sub.close()

    def publish(payload: bytes) -> None:
        pub = _Client(broker)
        try:
            pub.publish(topic, payload, qos=1)  # returns after PUBACK: the broker holds it
        finally:
            pub.close()

    publish(b"queued before restart")
    port = broker.port
    broker.restart()
    assert broker.port == port
    publish(b"queued after restart")

    sub = _Client(broker, client_id, clean_session=False)
    try:
        assert sub.session_present is True
        got = [sub.next_message().payload, sub.next_message().payload]
        assert got == [b"queued before restart", b"queued after restart"]
    finally:
        sub.close()


# --- VictoriaMetrics ----------------------------------------------------------------------------


def test_victoria_metrics_influx_writes_are_exported(
    victoria_metrics: VictoriaMetricsServer, victoria_metrics_db: str
):
    vm, db = victoria_metrics, victoria_metrics_db
    assert vm.url == f"http://127.0.0.1:{vm.port}"

    v1 = urllib.parse.urlencode({"db": db})
    line = f"power,device=m1 active_power_kw=12.5 {TS_NS}"
    assert _post(f"{vm.url}/write?{v1}", line.encode()) == 204
    # the v2 API as influxdb-client speaks it; `db` is what makes the label
    v2 = urllib.parse.urlencode({"org": "plant", "bucket": "energy", "precision": "ms", "db": db})
    line = f"power,device=m2 active_power_kw=-4.75 {TS_MS}"
    assert _post(f"{vm.url}/api/v2/write?{v2}", line.encode()) == 204
    vm.force_flush()

    series = vm.export(f'{{__name__="power_active_power_kw",db="{db}"}}')
    series.sort(key=lambda s: s["metric"]["device"])
    assert series == [
        {
            "metric": {"__name__": "power_active_power_kw", "db": db, "device": "m1"},
            "values": [12.5],
            "timestamps": [TS_MS],
        },
        {
            "metric": {"__name__": "power_active_power_kw", "db": db, "device": "m2"},
            "values": [-4.75],
            "timestamps": [TS_MS],
        },
    ]


def test_victoria_metrics_private_restart_keeps_data(
    victoria_metrics_private: VictoriaMetricsServer,
):
    vm = victoria_metrics_private
    vm.write(f"air,station=s1 pressure_bar=6.5 {TS_NS}", db="plant")
    vm.force_flush()
    url = vm.url

    vm.restart()
    assert vm.url == url
    series = vm.export('{__name__="air_pressure_bar"}')
    assert [(s["metric"]["station"], s["values"], s["timestamps"]) for s in series] == [
        ("s1", [6.5], [TS_MS])
    ]


# --- the harness itself -------------------------------------------------------------------------


def test_missing_binary_tells_to_run_make_test(tmp_path):
    with pytest.raises(RuntimeError, match="make test"):
        MosquittoServer(tmp_path, binary=str(tmp_path / "no-such-mosquitto"))


def test_failed_start_reports_log_tail_and_leaves_nothing(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = MosquittoServer(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"(?s)exited with code.*last lines of.*mosquitto"):
            server.start()
    assert not server.running


def test_close_ends_the_process(tmp_path):
    with VictoriaMetricsServer(tmp_path) as server:
        proc = server.proc
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None
