"""An MQTT device's options: the `mqtt:` section (the broker is the file's top-level `mqtt:`,
shared by every MQTT device). README.md beside this file documents each."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from energyd.config.types import Device, Strict, check_quantity


class MqttDeviceOptions(Strict):
    """How one device's messages are found and read (energyd/drivers/mqtt/client.py has examples).

    An exact topic gives readings of this device. A pattern (`+`, `#`) with `device_level`
    is a template: the text at that topic level names the device, and `devices` lists the
    names it may take (anything else is refused, so a mistyped publisher cannot invent
    devices); role and station of the entry apply to each of them.
    """

    topic: str  # exact topic, or a pattern with + / # wildcards
    # sparkplug_b: topic spBv1.0/<group>/+/<edge node>[/<device>], fields map quantities to
    # metric names (energyd/drivers/mqtt/sparkplug.py)
    format: Literal["json", "value", "sparkplug_b"] = "json"
    fields: dict[str, str] = Field(default_factory=dict)  # quantity -> dotted path in payload
    quantity: str | None = None  # for format: value, the one quantity the topic carries
    timestamp: str | None = None  # dotted path of the time field (ISO 8601 or epoch s/ms)
    device_level: int | None = Field(None, ge=0, le=64)  # topic level (0-based) naming the device
    devices: list[str] | None = None  # with device_level: the device names it may take
    station: str | None = None  # compressed-air station this compressor belongs to

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for q, path in v.items():
            check_quantity(q)
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f"{q}: {path!r} is not a dotted path such as `data.power`")
        return v

    @model_validator(mode="after")
    def _mapping(self) -> MqttDeviceOptions:
        levels = self.topic.split("/")
        if not self.topic or any(("+" in x or "#" in x) and len(x) > 1 for x in levels) \
                or "#" in levels[:-1]:
            raise ValueError(f"{self.topic!r} is not a valid topic or topic pattern")
        if self.format == "sparkplug_b":
            if len(levels) not in (4, 5) or levels[0] != "spBv1.0" or levels[2] != "+" or any(
                    "+" in x or "#" in x for x in levels[1:2] + levels[3:]):
                raise ValueError(f"format sparkplug_b needs a topic spBv1.0/<group>/+/<edge "
                                 f"node>[/<device>], not {self.topic!r}")
            if not self.fields:
                raise ValueError("format sparkplug_b needs `fields:` (quantity: metric name)")
            if self.timestamp or self.quantity or self.device_level is not None:
                raise ValueError("format sparkplug_b takes each metric's own time and names its "
                                 "device in the topic: no `timestamp:`, `quantity:` or "
                                 "`device_level:`")
        if self.format == "json" and not self.fields:
            raise ValueError("format json needs `fields:` (quantity: dotted.path)")
        if self.format == "value":
            if self.quantity is None:
                raise ValueError("format value needs `quantity:`")
            check_quantity(self.quantity)
            if self.fields or self.timestamp:
                raise ValueError("format value carries a bare number: no `fields:`/`timestamp:`")
        if self.device_level is not None:
            if self.device_level >= len(levels) or levels[self.device_level] != "+":
                raise ValueError(f"device_level {self.device_level} must point at a `+` level "
                                 f"of {self.topic!r}")
            if not self.devices:
                raise ValueError("device_level needs `devices:`, the names the level may take")
            for name in self.devices:
                if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
                    raise ValueError(f"devices: {name!r} is not a valid device name")
        elif self.devices is not None:
            raise ValueError("`devices:` only goes with a topic pattern and `device_level`")
        return self


class MqttDevice(Device):
    driver: Literal["mqtt"]
    mqtt: MqttDeviceOptions | None = None

    needs: ClassVar[dict[str, str]] = {"mqtt": "broker"}

    def summary(self) -> str:
        """The device's line in `energyd check-config`."""
        m = self.mqtt
        assert m is not None
        if m.devices:
            # a template entry: one line, but every device it stands for is named
            return (f"mqtt {m.topic} ({m.format}), level {m.device_level} names "
                    f"{len(m.devices)} devices: {', '.join(m.devices)}")
        return f"mqtt {m.topic} ({m.format})"
