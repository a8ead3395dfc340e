"""The configuration schema (DESIGN.md, "Configuration").

Every model forbids unknown keys: a typo such as `intreval:` must fail loudly, not leave a
device polled at the default rate. Durations accept `10s`, `5m`, `1h` or a bare number of
seconds; sizes accept `500MB` or `2GiB`. Secrets are never values here, only `*_file` or
`*_env` references (see secrets.py).

Sections own their models: a driver's or a sink's options live in one class below, documented
field by field, and `config/*.example.yaml` files show them in use (parsed by the tests).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from energyd.config.secrets import read_secret
from energyd.config.units import Duration, Size
from energyd.model import QUANTITIES, ROLES

Role = Literal["grid_import", "submeter", "generation", "compressor", "fuel"]
assert set(ROLES) == set(Role.__args__)  # type: ignore[attr-defined]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("base_dir")


def _check_quantity(name: str) -> str:
    if name not in QUANTITIES:
        raise ValueError(f"unknown quantity {name!r} (see the quantity vocabulary in DESIGN.md)")
    return name


# --- site and storage --------------------------------------------------------------------


class Site(Strict):
    name: str = "site"
    timezone: str = "UTC"  # IANA name; reports and production hours use it, storage is UTC
    grid_region: str = "CN-national"  # selects the location-based emission factor
    gateway: str | None = None  # tag that tells gateways apart in a central InfluxDB

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Storage(Strict):
    path: Path = Path("/var/lib/energyd/energyd.db")
    retention: Duration = 400 * 86400.0  # raw readings older than this go, once forwarded
    quota: Size | None = None  # above it, gauges are shed oldest first; counters never are
    flush_interval: Duration = 1.0  # readings wait at most this long before the commit


class Http(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9810, ge=0, le=65535)


# --- devices -----------------------------------------------------------------------------


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

    _q = field_validator("quantity")(classmethod(lambda cls, v: _check_quantity(v)))


class ModbusOptions(Strict):
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    unit: int = Field(1, ge=0, le=255)
    timeout: Duration = 1.0
    retries: int = Field(0, ge=0, le=10)
    # Devices that bend the spec:
    pause_after_connect: Duration = 0.0
    pause_between_requests: Duration = 0.0
    close_after_poll: bool = False  # for single-master devices
    single_register: bool = False  # one value per request
    max_gap: int = Field(10, ge=0, le=120)  # registers read across to merge two blocks
    max_registers: int = Field(125, ge=1, le=125)
    backoff_max: Duration = 300.0  # cap of the growing delay after timeouts

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


class MqttDeviceOptions(Strict):
    topic: str  # exact topic, or a pattern with + / # wildcards
    format: Literal["json", "value", "sparkplug"] = "json"
    fields: dict[str, str] = Field(default_factory=dict)  # quantity -> dotted path in payload
    quantity: str | None = None  # for format: value, the one quantity the topic carries
    timestamp: str | None = None  # dotted path of the time field (ISO 8601 or epoch)
    device_level: int | None = None  # topic level (0-based) whose text names the device

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for q in v:
            _check_quantity(q)
        return v


class Device(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    role: Role = "submeter"
    driver: Literal["modbus", "mqtt"]
    interval: Duration = 10.0
    enabled: bool = True
    profile: str | None = None  # built-in profile name, or a path to a profile YAML file
    registers: list[Register] = Field(default_factory=list)  # the generic profile, inline
    modbus: ModbusOptions | None = None
    mqtt: MqttDeviceOptions | None = None
    # Accounting: used to tell a counter wrap or reset from real energy.
    rated_power_kw: float | None = Field(None, gt=0)
    counter_rollover: float | None = Field(None, gt=0)  # value at which the counter wraps to 0
    fuel: FuelParameters | None = None

    @model_validator(mode="after")
    def _driver_options(self) -> Device:
        if self.driver == "modbus":
            if self.modbus is None:
                raise ValueError("driver modbus needs a `modbus:` section")
            if self.mqtt is not None:
                raise ValueError("driver modbus cannot have an `mqtt:` section")
            if self.profile is None and not self.registers:
                raise ValueError("a modbus device needs a `profile:` or inline `registers:`")
        else:
            if self.mqtt is None:
                raise ValueError("driver mqtt needs an `mqtt:` section")
            if self.modbus is not None:
                raise ValueError("driver mqtt cannot have a `modbus:` section")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        return self


class FuelParameters(Strict):
    """tCO2 = quantity x NCV x carbon content x oxidation x 44/12."""

    quantity: Literal["fuel_volume_m3", "fuel_mass_t"]
    unit_factor: float = 1.0  # converts the counter's unit into the NCV's unit (e.g. m3 -> 10^4 Nm3)
    ncv_gj_per_unit: float = Field(gt=0)
    carbon_content_tc_per_gj: float = Field(gt=0)
    oxidation: float = Field(1.0, gt=0, le=1)
    source: str = ""


# --- connections ---------------------------------------------------------------------------


class Tls(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname verification (self-signed lab brokers only)


class Mqtt(Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = "energyd"  # fixed, so the broker keeps the session across restarts
    keepalive: int = Field(30, ge=5)
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls: Tls | None = None
    max_payload: Size = 65536
    max_clock_skew: Duration = 86400.0  # payload timestamps further off are refused
    _password: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _secret(self, info: ValidationInfo) -> Mqtt:
        self._password = read_secret(self.password_file, self.password_env, _base_dir(info))
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


class InfluxDB(Strict):
    name: str = "influxdb"  # the sink's cursor in the store is kept under this name
    api: Literal["v2", "v1"] = "v2"
    url: str
    # v2
    org: str | None = None
    bucket: str | None = None
    token_file: str | None = None
    token_env: str | None = None
    # v1
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    # forwarding
    chunk_size: int = Field(5000, ge=1, le=100000)
    max_points_per_second: float | None = Field(None, gt=0)  # bounds the backlog drain
    timeout: Duration = 10.0
    gzip: bool = True
    backoff_max: Duration = 300.0
    _token: SecretStr | None = PrivateAttr(None)
    _password: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _api_fields(self, info: ValidationInfo) -> InfluxDB:
        if self.api == "v2" and not self.bucket:
            raise ValueError("api v2 needs a bucket")
        if self.api == "v1" and not self.database:
            raise ValueError("api v1 needs a database")
        self._token = read_secret(self.token_file, self.token_env, _base_dir(info))
        self._password = read_secret(self.password_file, self.password_env, _base_dir(info))
        return self

    @property
    def token(self) -> SecretStr | None:
        return self._token

    @property
    def password(self) -> SecretStr | None:
        return self._password


# --- accounting ----------------------------------------------------------------------------


class Certificate(Strict):
    id: str
    type: Literal["GEC", "I-REC", "green_contract", "PPA"] = "GEC"
    mwh: float = Field(gt=0)
    vintage: int  # generation year
    market: str = "CN"
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    devices: list[str] | None = None  # None: any grid_import device


class Accounting(Strict):
    emission_factors: Path | None = None  # default: the file shipped with energyd
    location_method: str = "location"
    residual_region: str | None = None  # default: site.grid_region
    max_interpolation_gap: Duration = 900.0  # samples further apart do not make a `meter` hour
    reconciliation_tolerance: float = Field(0.02, ge=0, le=1)
    rollup_delay: Duration = 300.0  # the hourly job runs this long after the hour
    recompute_hours: int = Field(48, ge=0)  # recomputed at start-up
    accounts: dict[str, list[str]] = Field(default_factory=dict)  # invoice account -> devices
    certificates: list[Certificate] = Field(default_factory=list)


# --- alerts ----------------------------------------------------------------------------------


class AlertRule(Strict):
    name: str
    type: Literal["spike", "threshold", "off_shift", "stale", "reconciliation", "backlog"]
    devices: list[str] | None = None
    role: Role | None = None
    # spike
    factor: float = Field(1.5, gt=0)
    min_delta_kwh: float = Field(0.0, ge=0)
    baseline_weeks: int = Field(4, ge=1, le=52)
    window: Duration = 900.0  # live spike: rolling window of power
    # threshold
    quantity: str = "active_power_kw"
    limit: float | None = None
    duration: Duration = 0.0
    # off_shift
    production_hours: list[str] = Field(default_factory=lambda: ["Mon-Fri 06:00-22:00"])
    margin_kwh: float = Field(0.0, ge=0)
    # stale
    multiple: float = Field(3.0, gt=0)
    # backlog
    max_age: Duration = 3600.0
    hysteresis: float = Field(0.1, ge=0, le=1)


class AlertChannel(Strict):
    type: Literal["mqtt", "webhook", "log"]
    topic: str = "energyd/alerts"  # mqtt: events go to TOPIC/events, state to TOPIC/state/<id>
    url: str | None = None  # webhook
    secret_file: str | None = None  # webhook: HMAC-SHA256 key for the signature header
    secret_env: str | None = None
    timeout: Duration = 5.0
    retries: int = Field(5, ge=0)
    _secret: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AlertChannel:
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook channel needs a url")
        self._secret = read_secret(self.secret_file, self.secret_env, _base_dir(info))
        return self

    @property
    def secret(self) -> SecretStr | None:
        return self._secret


class Alerts(Strict):
    rules: list[AlertRule] = Field(default_factory=list)
    channels: list[AlertChannel] = Field(default_factory=lambda: [AlertChannel(type="log")])


# --- the file ------------------------------------------------------------------------------


class Config(Strict):
    site: Site = Field(default_factory=Site)
    storage: Storage = Field(default_factory=Storage)
    http: Http = Field(default_factory=Http)
    devices: list[Device] = Field(default_factory=list)
    mqtt: Mqtt | None = None
    influxdb: Annotated[list[InfluxDB], Field(default_factory=list)]
    accounting: Accounting = Field(default_factory=Accounting)
    alerts: Alerts = Field(default_factory=Alerts)

    @field_validator("influxdb", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        # One sink is the common case and reads better as a mapping.
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique: {', '.join(dupes)}")
        sinks = [s.name for s in self.influxdb]
        if len(set(sinks)) != len(sinks):
            raise ValueError("influxdb sink names must be unique (set `name:`)")
        if any(d.driver == "mqtt" for d in self.devices) and self.mqtt is None:
            raise ValueError("mqtt devices need a top-level `mqtt:` broker section")
        known = set(names)
        for account, devs in self.accounting.accounts.items():
            for d in devs:
                if d not in known:
                    raise ValueError(f"accounting.accounts.{account}: unknown device {d!r}")
        for rule in self.alerts.rules:
            for d in rule.devices or []:
                if d not in known:
                    raise ValueError(f"alerts rule {rule.name!r}: unknown device {d!r}")
        return self

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


Device.model_rebuild()
