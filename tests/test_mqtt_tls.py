"""TLS and username/password against a real Mosquitto that requires both."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from servers import MosquittoServer
from test_mqtt_station import Running, _until

from energyd.config.loader import parse_config
from energyd.daemon.app import Daemon

PASSWORD = "air-Station-7"


class SecureMosquitto(MosquittoServer):
    """TLS only, no anonymous clients, one user from a password file."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text().replace("allow_anonymous true",
                                                    "allow_anonymous false")
        text += (f"password_file {self.dir}/passwd\ncafile {self.dir}/ca.pem\n"
                 f"certfile {self.dir}/server.pem\nkeyfile {self.dir}/server.key\n")
        self.config_path.write_text(text)

    def _ready(self) -> bool:
        # the fixtures' plain-TCP probe cannot speak TLS: a finished handshake will do
        context = ssl.create_default_context(cafile=str(self.dir / "ca.pem"))
        with socket.create_connection((self.host, self.port), timeout=1.0) as raw, \
                context.wrap_socket(raw, server_hostname=self.host):
            return True


def _certificates(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=energyd-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")


@pytest.fixture
def secure_broker(tmp_path: Path):
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("the TLS test needs openssl and mosquitto_passwd (Debian: openssl, mosquitto)")
    d = tmp_path / "broker"
    d.mkdir()
    _certificates(d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "energyd", PASSWORD],
                   check=True, capture_output=True)
    with SecureMosquitto(d) as broker:
        yield broker


def _config(tmp_path: Path, broker: MosquittoServer, password_file: str) -> str:
    return f"""
storage: {{path: {tmp_path / "e.db"}, flush_interval: 0.2}}
http: {{enabled: false}}
mqtt:
  host: 127.0.0.1
  port: {broker.port}
  client_id: energyd-tls
  username: energyd
  password_file: {password_file}
  tls: {{ca_file: {broker.dir / "ca.pem"}}}
devices:
  - {{name: m1, driver: mqtt, mqtt: {{topic: plant/m1, format: value, quantity: active_power_kw}}}}
"""


def _publish(broker: MosquittoServer, payload: bytes) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
    c.username_pw_set("energyd", PASSWORD)
    c.tls_set(ca_certs=str(broker.dir / "ca.pem"))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish("plant/m1", payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


async def test_tls_with_username_and_password_file(secure_broker, tmp_path: Path):
    (tmp_path / "mqtt.pw").write_text(PASSWORD + "\n")
    config = parse_config(_config(tmp_path, secure_broker, "mqtt.pw"), "e.yaml",
                          base_dir=tmp_path)
    async with Running(config) as energyd:
        await asyncio.to_thread(_publish, secure_broker, b"12.5")
        await _until(lambda: energyd.component.acked == 1, 10, "the message over TLS")
        assert [r.value for r in energyd.daemon.store.readings.query_readings()] == [12.5]


async def test_a_wrong_password_is_refused_and_never_logged(
        secure_broker, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "bad.pw").write_text("not-the-password\n")
    config = parse_config(_config(tmp_path, secure_broker, "bad.pw"), "e.yaml",
                          base_dir=tmp_path)
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 10)
        health: dict[str, Any] = {}

        def refused() -> bool:
            health.update(daemon.context.health["mqtt"]())
            return bool(health["last_error"])

        await _until(refused, 10, "the broker's refusal")
        assert not health["connected"] and "refused" in health["last_error"]
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    assert "not-the-password" not in caplog.text
    assert "not-the-password" not in str(health)
