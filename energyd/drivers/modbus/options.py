"""A Modbus device's options: the `modbus:` section, and the register map (a built-in or
file `profile:`, or inline `registers:`). README.md beside this file documents each."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from energyd.config.types import Device, Duration, Strict, check_quantity, profile_ref, within


class Register(Strict):
    """One value in a device's register map (inline for the generic profile)."""

    quantity: str
    address: int = Field(ge=0, le=65535)
    function: Literal[1, 2, 3, 4] = 3  # read function codes only: energyd never writes
    type: Literal[
        "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"
    ] = "float32"
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0

    _q = field_validator("quantity")(classmethod(lambda cls, v: check_quantity(v)))


class ModbusOptions(Strict):
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = Field(9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    unit: int = Field(1, ge=0, le=255)
    # a silent unit holds its whole link this long per attempt
    timeout: Annotated[Duration, within(0.01, 60)] = 1.0
    retries: int = Field(0, ge=0, le=10)
    # Devices that bend the spec:
    pause_after_connect: Annotated[Duration, within(0, 60)] = 0.0
    pause_between_requests: Annotated[Duration, within(0, 10)] = 0.0
    close_after_poll: bool = False  # for single-master devices
    single_register: bool = False  # one value per request
    max_gap: int = Field(10, ge=0, le=120)  # registers read across to merge two blocks
    max_registers: int = Field(125, ge=1, le=125)
    # cap of the growing delay after timeouts
    backoff_max: Annotated[Duration, within(0.01, 86400)] = 300.0

    @model_validator(mode="after")
    def _link(self) -> ModbusOptions:
        if self.transport in ("tcp", "rtu_over_tcp") and not self.host:
            raise ValueError(f"transport {self.transport} needs a host")
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport rtu needs a serial_port")
        return self

    @property
    def link(self) -> str:
        """The physical link this device sits on: one owner polls each."""
        if self.transport == "rtu":
            return f"serial:{self.serial_port}"
        return f"{self.transport}:{self.host}:{self.port}"


class ModbusDevice(Device):
    driver: Literal["modbus"]
    profile: str | None = None  # built-in profile name, or a path to a profile YAML file
    registers: list[Register] = Field(default_factory=list)  # the generic profile, inline
    modbus: ModbusOptions | None = None

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None, info: ValidationInfo) -> str | None:
        return profile_ref(v, info)

    @model_validator(mode="after")
    def _register_map(self) -> ModbusDevice:
        if self.profile is None and not self.registers:
            raise ValueError("a modbus device needs a `profile:` or inline `registers:`")
        return self

    def summary(self) -> str:
        """The device's line in `energyd check-config`."""
        m = self.modbus
        assert m is not None
        where = m.serial_port if m.transport == "rtu" else f"{m.host}:{m.port}"
        what = self.profile or f"{len(self.registers)} inline registers"
        return f"modbus {m.transport} {where} unit {m.unit}, {what}"
