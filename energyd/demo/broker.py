"""The demo's MQTT broker: Mosquitto as a child process when it is installed, else the
embedded amqtt, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from energyd.demo.options import LOOPBACK, DemoError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


class Broker:
    """Mosquitto as a child process, or amqtt inside this process."""

    def __init__(self, kind: str, workdir: Path):
        self.port = _free_port()
        self.workdir = workdir
        self.binary = _mosquitto_binary()
        if kind == "auto":
            kind = "mosquitto" if self.binary else "amqtt"
        if kind == "mosquitto" and not self.binary:
            raise DemoError("mosquitto is not installed (apt-get install mosquitto), "
                            "or use --broker amqtt")
        self.kind = kind
        self._proc: subprocess.Popen[bytes] | None = None
        self._amqtt: Any = None

    async def start(self) -> None:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            lines = [f"listener {self.port} {LOOPBACK}", "allow_anonymous true",
                     "persistence false", "log_dest stderr"]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            with open(self.workdir / "mosquitto.log", "ab") as out:
                self._proc = subprocess.Popen([str(self.binary), "-c", str(conf)],
                                              stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)
        else:
            from amqtt.broker import Broker as AmqttBroker

            # amqtt logs every connection at INFO; the demo's log would drown in it
            logging.getLogger("amqtt").setLevel(logging.WARNING)
            self._amqtt = AmqttBroker({
                "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": True}},
            })
            await self._amqtt.start()
        deadline = time.monotonic() + 10
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise DemoError(f"mosquitto exited at start (see {self.workdir}/mosquitto.log)")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoError(f"the MQTT broker did not listen on {self.port}") from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._amqtt is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._amqtt.shutdown(), 5)
            self._amqtt = None


