"""The `dlt645:` section of a device (README.md in this folder documents every option)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from energyd.config.types import Duration, Strict, base_dir, path_value, within


class Dlt645Options(Strict):
    transport: Literal["serial", "tcp"] = "serial"
    serial_port: str | None = None
    host: str | None = None  # a transparent serial server (serial-to-Ethernet)
    port: int | None = Field(None, ge=1, le=65535)  # the serial server's (no standard port)
    # the standard's default line: 2400 baud, 8 data bits, even parity, 1 stop bit
    baudrate: int = Field(2400, ge=300, le=115200)
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    # the meter's address: 12 digits as printed on its plate (left-padded with zeros)
    address: str
    profile: str = "dlt645_2007"  # built-in profile name, or a path to a profile file
    # a silent meter holds its whole bus this long per request
    timeout: Annotated[Duration, within(0.05, 60)] = 1.0
    # FE FE FE FE before each request, which wakes the RS485 transceivers of some meters
    preamble: bool = True
    pause_between_requests: Annotated[Duration, within(0, 10)] = 0.0
    # cap of the growing delay after timeouts
    backoff_max: Annotated[Duration, within(0.01, 86400)] = 300.0

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, v: object) -> object:
        # YAML reads 000012345678 as a number; a meter's address is digits, kept as text
        text = str(v).strip() if isinstance(v, (str, int)) else v
        if isinstance(text, str):
            if not re.fullmatch(r"[0-9]{1,12}", text):
                raise ValueError(f"meter address {text!r} is not up to 12 decimal digits "
                                 "(write it in quotes as on the meter's plate)")
            return text.zfill(12)
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str, info: ValidationInfo) -> str:
        # loaded now, so a broken profile file stops the start-up instead of a poll
        from energyd.drivers.dlt645.profile import check_profile_ref

        return check_profile_ref(path_value(v), base_dir(info))

    @model_validator(mode="after")
    def _link(self) -> Dlt645Options:
        if self.transport == "tcp" and (not self.host or self.port is None):
            raise ValueError("transport tcp needs a host and a port (the serial server's)")
        if self.transport == "serial" and not self.serial_port:
            raise ValueError("transport serial needs a serial_port")
        return self

    @property
    def link(self) -> str:
        """The physical bus this meter is on: one owner polls each."""
        if self.transport == "serial":
            return f"dlt645:serial:{self.serial_port}"
        return f"dlt645:tcp:{self.host}:{self.port}"
