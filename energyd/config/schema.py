"""The configuration schema (DESIGN.md, "Configuration").

Every model forbids unknown keys: a typo such as `intreval:` must fail loudly, not leave a
device polled at the default rate. Durations accept `10s`, `5m`, `1h` or a bare number of
seconds; sizes accept `500MB` or `2GiB`. Secrets are never values here, only `*_file` or
`*_env` references (see secrets.py).

Sections own their models: a driver's or a sink's options live in one class below, documented
field by field, and `config/*.example.yaml` files show them in use (parsed by the tests).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from energyd.alerts.rules.registry import RULES
from energyd.config.secrets import check_http_url, read_secret
from energyd.config.types import (
    AgeMonths,
    Duration,
    ProblemsAt,
    Role,
    Size,
    Strict,
    size_within,
    within,
)
from energyd.config.types import base_dir as _base_dir
from energyd.config.types import check_quantity as _check_quantity
from energyd.config.types import duplicates as _duplicates
from energyd.config.types import path_value as _path
from energyd.config.types import secret_file as _secret_file
from energyd.drivers.dlt645.options import Dlt645Options
from energyd.sinks.registry import SINKS

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
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {v[:60]!r}") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Storage(Strict):
    path: Path = Path("/var/lib/energyd/energyd.db")
    # raw readings older than this go, once forwarded
    retention: Annotated[Duration, within(3600, 100 * 366 * 86400)] = 400 * 86400.0
    # above it, gauges are shed oldest first; counters never are
    quota: Annotated[Size, size_within(2**20, 2**50)] | None = None
    # readings wait at most this long before the commit
    flush_interval: Annotated[Duration, within(0.01, 60)] = 1.0

    # readings held in memory while commits fail (a full disk): past it gauges are shed
    pending_limit: int = Field(1_000_000, ge=1_000, le=100_000_000)

    _p = field_validator("path")(classmethod(lambda cls, v: _path(v)))


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


class MqttDeviceOptions(Strict):
    """How one device's messages are found and read (energyd/drivers/mqtt.py has examples).

    An exact topic gives readings of this device. A pattern (`+`, `#`) with `device_level`
    is a template: the text at that topic level names the device, and `devices` lists the
    names it may take (anything else is refused, so a mistyped publisher cannot invent
    devices); role and station of the entry apply to each of them.
    """

    topic: str  # exact topic, or a pattern with + / # wildcards
    # sparkplug_b: topic spBv1.0/<group>/+/<edge node>[/<device>], fields map quantities to
    # metric names (energyd/drivers/sparkplug.py)
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
            _check_quantity(q)
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
            _check_quantity(self.quantity)
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


class Device(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    role: Role = "submeter"
    driver: Literal["modbus", "mqtt", "dlt645"]
    interval: Annotated[Duration, within(0.01, 86400)] = 10.0
    enabled: bool = True
    profile: str | None = None  # built-in profile name, or a path to a profile YAML file
    registers: list[Register] = Field(default_factory=list)  # the generic profile, inline
    modbus: ModbusOptions | None = None
    mqtt: MqttDeviceOptions | None = None
    dlt645: Dlt645Options | None = None
    # Accounting: used to tell a counter wrap or reset from real energy.
    rated_power_kw: float | None = Field(None, gt=0)
    counter_rollover: float | None = Field(None, gt=0)  # value at which the counter wraps to 0
    # A fuel counter's most plausible advance per hour, in its own unit (m3/h, t/h); the
    # rate limit of fuel counters as rated_power_kw is of kWh counters.
    rated_flow: float | None = Field(None, gt=0)
    fuel: FuelParameters | None = None

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A built-in name stays as is; a file becomes an absolute path, checked now so a
        # broken profile stops the start-up instead of a poll.
        if v is None:
            return v
        from energyd.config.profiles import check_profile_ref

        return check_profile_ref(_path(v), _base_dir(info))

    @model_validator(mode="after")
    def _driver_options(self) -> Device:
        if self.driver != "dlt645" and self.dlt645 is not None:
            raise ValueError(f"driver {self.driver} cannot have a `dlt645:` section")
        if self.driver == "dlt645":
            if self.dlt645 is None:
                raise ValueError("driver dlt645 needs a `dlt645:` section")
            if self.modbus is not None or self.mqtt is not None:
                raise ValueError("driver dlt645 cannot have a `modbus:` or `mqtt:` section")
            if self.profile is not None or self.registers:
                raise ValueError("a dlt645 device names its profile under `dlt645:`")
        elif self.driver == "modbus":
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
        if self.rated_flow is not None and self.role != "fuel":
            raise ValueError("rated_flow is a fuel counter's limit (role fuel); an electricity "
                             "meter takes rated_power_kw")
        return self


class FuelParameters(Strict):
    """tCO2 = quantity x NCV x carbon content x oxidation x 44/12."""

    quantity: Literal["fuel_volume_m3", "fuel_mass_t"]
    # converts the counter's unit into the NCV's unit (e.g. 1e-4 for m3 -> 10^4 Nm3)
    unit_factor: float = Field(1.0, gt=0)
    ncv_gj_per_unit: float = Field(gt=0)
    carbon_content_tc_per_gj: float = Field(gt=0)
    oxidation: float = Field(1.0, gt=0, le=1)
    source: str = ""


# --- connections ---------------------------------------------------------------------------


class Tls(Strict):
    ca_file: Path | None = None  # default: the system's trust store
    cert_file: Path | None = None  # client certificate (mutual TLS), with key_file
    key_file: Path | None = None
    insecure: bool = False  # skip hostname verification (self-signed lab brokers only)

    _p = field_validator("ca_file", "cert_file", "key_file")(classmethod(lambda cls, v: _path(v)))

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Mqtt(Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("energyd", min_length=1)  # fixed: the broker keeps the session
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(30, ge=5, le=65535)
    qos: Literal[0, 1, 2] = 1
    # MQTT 5 session expiry: how long the broker keeps the session (and queues QoS 1/2
    # messages) while energyd is away. 3.1.1 sessions never expire.
    session_expiry: Annotated[Duration, within(0, 2**32 - 1)] = 7 * 86400.0
    # Messages are acknowledged only once committed to the store; this many may wait for
    # their commit. Sent as Receive Maximum (MQTT 5). A 3.1.1 broker applies its own limit
    # (mosquitto: max_inflight_messages, 20 by default, which energyd assumes unless this
    # is set): set it to the broker's value.
    max_inflight: int = Field(10000, ge=1, le=65535)
    reconnect_delay_max: Annotated[Duration, within(1, 3600)] = 60.0
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls: Tls | None = None
    max_payload: Annotated[Size, size_within(16, 268_435_455)] = 65536  # MQTT's own limit
    # A payload timestamp further ahead of the clock than this is refused ("clock_skew").
    max_clock_skew: Annotated[Duration, within(1, 366 * 86400)] = 86400.0
    # A payload timestamp older than this is refused ("too_old"). Generous: a persistent
    # session hands over what it queued during an outage, and that is real data.
    max_message_age: Annotated[Duration, within(3600, 10 * 366 * 86400)] = 30 * 86400.0
    # After a reconnect to a kept session, messages are taken as the session's backlog
    # (quality received_backlog when they carry no time) until none arrives for this long.
    backlog_gap: Annotated[Duration, within(0.05, 600)] = 1.0
    _password: SecretStr | None = PrivateAttr(None)
    _files = field_validator("password_file")(classmethod(_secret_file))

    @model_validator(mode="after")
    def _secret(self, info: ValidationInfo) -> Mqtt:
        self._password = read_secret(self.password_file, self.password_env, _base_dir(info))
        if self._password is not None and self.username is None:
            raise ValueError("a password needs a `username:`")
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


class InfluxDB(Strict):
    """One InfluxDB sink (energyd/sinks/; deploy/influxdb/README.md sets the server up).

    api v2: InfluxDB 2.x, 3.x, Cloud, 1.8+ (token `user:password`, org `-`, bucket `db/rp`)
    and servers that take the v2 write API (VictoriaMetrics); `bucket`, `org`, a token.
    api v1: InfluxDB 1.x `/write`; `database`, `retention_policy`, `username` and a password.
    Secrets come only from `*_file` / `*_env`, never from the YAML or the URL.
    """

    # keys its cursors in the store
    name: str = Field("influxdb", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    api: Literal["v2", "v1"] = "v2"
    url: str  # http(s)://host:port, without credentials
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
    chunk_size: int = Field(5000, ge=1, le=100000)  # points per write, at most
    max_points_per_second: float | None = Field(None, gt=0)  # bounds the backlog drain
    # once caught up, look for new rows this often
    interval: Annotated[Duration, within(0.01, 3600)] = 1.0
    timeout: Annotated[Duration, within(0.1, 600)] = 10.0
    gzip: bool = True
    # cap of the jittered delay after a failed write
    backoff_max: Annotated[Duration, within(0.01, 86400)] = 300.0
    _token: SecretStr | None = PrivateAttr(None)
    _password: SecretStr | None = PrivateAttr(None)
    _files = field_validator("token_file", "password_file")(classmethod(_secret_file))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = check_http_url(v)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("credentials do not belong in the URL: use token_file, "
                             "username and password_file")
        if parts.query or parts.fragment:
            raise ValueError("the URL takes no query string (InfluxDB 1.x's ?u=&p= would "
                             "hold a password): use username and password_file")
        return v

    @model_validator(mode="after")
    def _api_fields(self, info: ValidationInfo) -> InfluxDB:
        if self.api == "v2" and not self.bucket:
            raise ValueError("api v2 needs a bucket")
        if self.api == "v1" and not self.database:
            raise ValueError("api v1 needs a database")
        if self.interval <= 0 or self.timeout <= 0 or self.backoff_max <= 0:
            raise ValueError("interval, timeout and backoff_max must be positive")
        self._token = read_secret(self.token_file, self.token_env, _base_dir(info))
        self._password = read_secret(self.password_file, self.password_env, _base_dir(info))
        if self._password is not None and self.username is None:
            raise ValueError("a password needs a `username:`")
        return self

    @property
    def token(self) -> SecretStr | None:
        return self._token

    @property
    def password(self) -> SecretStr | None:
        return self._password

    @property
    def type(self) -> str:
        """The sink type this entry is (energyd/sinks/registry.py)."""
        return f"influxdb_{self.api}"


# The `sinks:` list: each entry's model is its sink's own (energyd/sinks/<type>/options.py),
# listed in energyd/sinks/registry.py and told apart by `type:`. Today's `influxdb:` section
# (above) stays, each entry one sink of type influxdb_v1 or influxdb_v2.
class UnknownSink(BaseModel):
    """An entry whose `type:` is missing or not a sink energyd has: refused at that line."""

    model_config = ConfigDict(extra="allow")
    type: Any = None

    @model_validator(mode="after")
    def _refuse(self) -> UnknownSink:
        known = ", ".join(SINKS)
        if self.type is None:
            raise ProblemsAt([(("type",), f"a sink needs `type:` (one of {known})")])
        raise ProblemsAt([(("type",), f"unknown sink type {str(self.type)[:60]!r}: energyd "
                                      f"has {known}")])


def _sink_tag(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return kind if isinstance(kind, str) and kind in SINKS else "unknown"


Sink = Annotated[
    Union[tuple(Annotated[entry.options, Tag(name)]  # noqa: UP007
                for name, entry in SINKS.items())] | Annotated[UnknownSink, Tag("unknown")],
    Discriminator(_sink_tag)]


# --- accounting ----------------------------------------------------------------------------


class Certificate(Strict):
    """A contractual instrument for market-based Scope 2, allocated MWh for MWh to purchased
    hours in the order the certificates are listed, each until used up. It applies to hours
    in [valid_from, valid_to) (times without an offset, and dates, are site time), by
    default the vintage's calendar year; `market` must match the site's grid region."""

    id: str
    type: Literal["GEC", "I-REC", "green_contract", "PPA"] = "GEC"
    mwh: float = Field(gt=0)
    vintage: int = Field(ge=2000, le=2100)  # generation year
    market: str = "CN"
    valid_from: datetime | None = None
    valid_to: datetime | None = None  # excluded
    devices: list[str] | None = None  # None: any grid_import device

    @model_validator(mode="after")
    def _window(self) -> Certificate:
        a, b = self.valid_from, self.valid_to
        if a is not None and b is not None and (a.tzinfo is None) == (b.tzinfo is None) \
                and b <= a:
            raise ValueError("valid_to must be after valid_from")
        return self


class Accounting(Strict):
    emission_factors: Path | None = None  # default: the file shipped with energyd
    location_method: str = "location"
    residual_region: str | None = None  # default: site.grid_region
    # samples further apart do not make a `meter` hour
    max_interpolation_gap: Annotated[Duration, within(1, 86400)] = 900.0
    reconciliation_tolerance: float = Field(0.02, ge=0, le=1)
    # the hourly job runs this long after the hour
    rollup_delay: Annotated[Duration, within(0, 86400)] = 300.0
    recompute_hours: int = Field(48, ge=0, le=24 * 366)  # recomputed at start-up
    # a supplier statement covers at most this many days: a mistyped year would otherwise
    # spread one bill over a century of hours
    max_statement_days: int = Field(400, ge=1, le=3660)
    # how long after its validity the latest published factor is carried forward
    # (provisional): '3y', '18mo'; kept in calendar months
    max_factor_age: Annotated[AgeMonths, Field(ge=0, le=100 * 12)] = 36
    accounts: dict[str, list[str]] = Field(default_factory=dict)  # invoice account -> devices
    certificates: list[Certificate] = Field(default_factory=list)
    # The plant's calendar for estimates from like days: local dates that are not working
    # days (public holidays, shutdowns), and weekend dates that are (make-up working days).
    holidays: list[date] = Field(default_factory=list)
    working_days: list[date] = Field(default_factory=list)

    @field_validator("emission_factors")
    @classmethod
    def _factors_path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        _path(v)
        base = _base_dir(info)
        return base / v if v is not None and base is not None and not v.is_absolute() else v

    @field_validator("certificates")
    @classmethod
    def _unique(cls, v: list[Certificate]) -> list[Certificate]:
        dupes = _duplicates([c.id for c in v], "certificate id", key="id")
        if dupes:
            raise ProblemsAt(dupes)
        return v


# --- alerts ----------------------------------------------------------------------------------


# One alert rule: a model per type (energyd/alerts/rules/<type>.py), each with only its own
# keys, told apart by `type:`. A rule applies to `devices`, else to every device of `role`,
# else to every device; with `aggregate: true` (spike, off_shift) the devices' hourly energy
# is summed and alerted on as one series, named after the role or the site.
def _rule_type(v: Any) -> Any:
    """The rule's `type:` checked before its model is chosen, so a missing or unknown type
    is reported at `type` in the words used for any other closed choice."""
    if isinstance(v, dict):
        if "type" not in v:
            raise ProblemsAt([(("type",), "Field required")])
        if v["type"] not in RULES:
            names = [repr(t) for t in RULES]
            raise ProblemsAt([(("type",), f"Input should be {', '.join(names[:-1])} or "
                                          f"{names[-1]}")])
    return v


AlertRule = Annotated[Union[tuple(options for options, _ in RULES.values())],  # noqa: UP007
                      Field(discriminator="type"), BeforeValidator(_rule_type)]


class AlertChannel(Strict):
    """Where alert events go. Each channel is independent (energyd/alerts/dispatch.py)."""

    type: Literal["mqtt", "webhook", "log"]
    name: str | None = None  # in logs and metrics; default: the type
    # mqtt: events to TOPIC/events, the retained state to TOPIC/state/<rule>/<device>
    topic: str = "energyd/alerts"
    broker: Mqtt | None = None  # mqtt: default the top-level `mqtt:` broker, else 127.0.0.1:1883
    qos: Literal[0, 1, 2] = 1
    url: str | None = None  # webhook
    # webhook: a URL that carries a token (chat services' incoming hooks) is a secret
    url_file: str | None = None
    url_env: str | None = None
    secret_file: str | None = None  # webhook: HMAC-SHA256 key for the signature header
    secret_env: str | None = None
    timeout: Annotated[Duration, within(0.1, 300)] = 5.0  # webhook: per attempt
    retries: int = Field(5, ge=0, le=100)  # webhook: attempts after the first
    # webhook: first wait between attempts, doubled each time
    backoff: Annotated[Duration, within(0.01, 3600)] = 1.0
    backoff_max: Annotated[Duration, within(0.01, 86400)] = 60.0
    _secret: SecretStr | None = PrivateAttr(None)
    _url: SecretStr | None = PrivateAttr(None)
    _files = field_validator("secret_file", "url_file")(classmethod(_secret_file))

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AlertChannel:
        if self.type == "webhook":
            given = [k for k in ("url", "url_file", "url_env") if getattr(self, k)]
            if len(given) != 1:
                raise ValueError("a webhook channel needs one of url, url_file, url_env")
            try:
                if self.url is not None:
                    parts = check_http_url(self.url)
                    if "@" in parts.netloc or parts.query or parts.fragment or "?" in self.url:
                        # credentials or a query string (where hook tokens live) are secrets
                        raise ValueError("this webhook url carries credentials or a query "
                                         "string; put it in a file (url_file) or the "
                                         "environment (url_env)")
                self._url = (SecretStr(self.url) if self.url else
                             read_secret(self.url_file, self.url_env, _base_dir(info)))
                assert self._url is not None
                # from a file, user:password@ is fine: it is sent as HTTP basic auth
                check_http_url(self._url.get_secret_value())
            except ValueError as exc:
                raise ProblemsAt([((given[0],), str(exc))]) from None
        if self.type != "mqtt" and self.broker is not None:
            raise ValueError("only an mqtt channel takes a broker")
        if any(c in self.topic for c in "+#"):
            raise ValueError(f"topic {self.topic!r} cannot hold the wildcards + or #")
        self._secret = read_secret(self.secret_file, self.secret_env, _base_dir(info))
        return self

    @property
    def secret(self) -> SecretStr | None:
        return self._secret

    @property
    def endpoint(self) -> SecretStr | None:
        """The webhook's URL, from `url` or from its secret source."""
        return self._url

    @property
    def label(self) -> str:
        return self.name or self.type


class Alerts(Strict):
    rules: list[AlertRule] = Field(default_factory=list)
    channels: list[AlertChannel] = Field(default_factory=lambda: [AlertChannel(type="log")])

    @model_validator(mode="after")
    def _unique(self) -> Alerts:
        problems = [(("rules", *loc), message) for loc, message in
                    _duplicates([r.name for r in self.rules], "alert rule name")]
        problems += [(("channels", *loc), message + " (channels of the same type need "
                      "distinct `name:`s)") for loc, message in
                     _duplicates([c.label for c in self.channels], "alert channel name")]
        if problems:
            raise ProblemsAt(problems)
        return self


# --- the file ------------------------------------------------------------------------------


class Config(Strict):
    site: Site = Field(default_factory=Site)
    storage: Storage = Field(default_factory=Storage)
    http: Http = Field(default_factory=Http)
    devices: list[Device] = Field(default_factory=list)
    mqtt: Mqtt | None = None
    influxdb: Annotated[list[InfluxDB], Field(default_factory=list)]
    sinks: Annotated[list[Sink], Field(default_factory=list)]
    accounting: Accounting = Field(default_factory=Accounting)
    alerts: Alerts = Field(default_factory=Alerts)

    @field_validator("influxdb", "sinks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        # One sink is the common case and reads better as a mapping.
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        names = [d.name for d in self.devices]
        problems = [(("devices", *loc), message)
                    for loc, message in _duplicates(names, "device name")]
        problems += [(("influxdb", *loc), message + " (set `name:`)") for loc, message in
                     _duplicates([s.name for s in self.influxdb], "influxdb sink name")]
        taken = {s.name for s in self.influxdb}
        problems += [(("sinks", *loc), message + " (set `name:`)") for loc, message in
                     _duplicates([s.name for s in self.sinks], "sink name")]
        problems += [(("sinks", i, "name"), f"sink name {s.name!r} is already used by an "
                      "`influxdb:` entry: sink names must be unique (set `name:`)")
                     for i, s in enumerate(self.sinks) if s.name in taken]
        if self.mqtt is None:
            problems += [(("devices", i, "driver"), "mqtt devices need a top-level `mqtt:` "
                          "broker section") for i, d in enumerate(self.devices)
                         if d.driver == "mqtt"][:1]
        roles = {d.name: d.role for d in self.devices}
        for account, devs in self.accounting.accounts.items():
            for j, d in enumerate(devs):
                if d not in roles:
                    problems.append((("accounting", "accounts", account, j),
                                     f"unknown device {d!r}"))
                elif roles[d] != "grid_import":
                    # a statement bills purchased electricity: a submeter or a generator
                    # under an account would add energy that the incomers already count,
                    # or that was never bought
                    problems.append((("accounting", "accounts", account, j),
                                     f"account {account!r} holds {d!r}, a {roles[d]} device: "
                                     "statement accounts hold grid_import devices only"))
        known = set(names)
        for i, rule in enumerate(self.alerts.rules):
            problems += [(("alerts", "rules", i, "devices", j),
                          f"alerts rule {rule.name!r}: unknown device {d!r}")
                         for j, d in enumerate(rule.devices or []) if d not in known]
        if problems:
            raise ProblemsAt(problems)
        return self

    @property
    def all_sinks(self) -> list[Any]:
        """Every sink to forward to: the `influxdb:` entries, then the `sinks:` ones."""
        return [*self.influxdb, *self.sinks]

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


Device.model_rebuild()
