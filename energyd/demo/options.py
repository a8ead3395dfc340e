"""What a demo run is given: the plant's config, where its data goes, how fast it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energyd.errors import EnergydError

SOURCE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
LOOPBACK = "127.0.0.1"
DEFAULT_SPEED = 360.0


class DemoError(EnergydError):
    """The demo cannot run as configured (the message says why)."""


@dataclass
class InfluxTarget:
    url: str
    api: str = "v1"
    database: str = "energy"
    org: str | None = None
    bucket: str | None = None
    username: str | None = None
    password_file: str | None = None
    token_file: str | None = None

    def sink(self) -> dict[str, Any]:
        s: dict[str, Any] = {"name": "influxdb", "api": self.api, "url": self.url,
                             "timeout": "5s", "backoff_max": "10s"}
        if self.api == "v1":
            s["database"] = self.database
            if self.username:
                s["username"] = self.username
            if self.password_file:
                s["password_file"] = str(Path(self.password_file).resolve())
        else:
            s.update(org=self.org or "-", bucket=self.bucket or self.database)
            if self.token_file:
                s["token_file"] = str(Path(self.token_file).resolve())
        return s


@dataclass
class DemoOptions:
    workdir: Path = Path("demo-data")
    config: Path = SOURCE_CONFIG
    speed: float = DEFAULT_SPEED
    duration: float | None = None  # wall seconds; None: until Ctrl-C
    influx: InfluxTarget | None = None
    broker: str = "auto"  # auto | mosquitto | amqtt
    live: bool | None = None  # None: when the terminal is interactive

