"""A DL/T 645 device's options: the `dlt645:` section (README.md in this folder documents
every option), and the shape of a profile file, which the section names and which is
checked with the configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from energyd.config.types import (
    Device,
    Duration,
    ProblemsAt,
    Strict,
    check_quantity,
    data_file_ref,
    within,
)

BUILTIN_PROFILES = Path(__file__).resolve().parent / "profiles"


# --- a profile file (profile.py says what each part means) --------------------------------


def _format(text: str) -> str:
    whole, _, decimals = text.partition(".")
    if not whole or set(whole + decimals) != {"X"} or (len(whole) + len(decimals)) % 2:
        raise ValueError(f"format {text!r} is not an even number of X digits (e.g. XXX.X)")
    return text


def _nonzero(v: float) -> float:
    if v == 0:
        raise ValueError("scale 0 would make every value 0")
    return v


class ProfileValue(Strict):
    quantity: Annotated[str, AfterValidator(check_quantity)] | None
    format: Annotated[str, AfterValidator(_format)]
    signed: bool = False
    scale: Annotated[float, AfterValidator(_nonzero)] = 1.0


def _di(text: str) -> str:
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"data identifier {text!r} is not hex") from None
    if len(text) != 8:
        raise ValueError(f"data identifier {text!r} is not 8 hex digits (4 bytes)")
    return text.upper()


class ProfileFile(Strict):
    name: str | None = None
    source: str | None = None
    identifiers: dict[Annotated[str, AfterValidator(_di)],
                      Annotated[list[ProfileValue], Field(min_length=1)]]


# --- the `dlt645:` section ----------------------------------------------------------------


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
        return data_file_ref(v, info, BUILTIN_PROFILES, ProfileFile, "DL/T 645 profile")

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


class Dlt645Device(Device):
    driver: Literal["dlt645"]
    dlt645: Dlt645Options | None = None

    @model_validator(mode="before")
    @classmethod
    def _profile_in_its_section(cls, data: Any) -> Any:
        # a Modbus habit: the profile sits beside the section there
        if isinstance(data, dict) and "profile" in data:
            raise ProblemsAt([(("profile",), "a dlt645 device names its profile under "
                                             "`dlt645:` (dlt645: {profile: ...})")])
        return data

    def summary(self) -> str:
        """The device's line in `energyd check-config`."""
        o = self.dlt645
        assert o is not None
        where = o.serial_port if o.transport == "serial" else f"{o.host}:{o.port}"
        return f"dlt645 {o.transport} {where} address {o.address}, {o.profile}"
