"""What a driver plugin provides, and what it is handed: the whole of a driver's contract
with the rest of energyd (drivers/README.md says how to add a driver).

A driver's `options.py` holds its options model, a subclass of energyd.config.types.Device
whose `summary()` is the device's line in `energyd check-config`. Its `plugin.py` holds
`PLUGIN`, a DriverPlugin:

- `read_once(device)`: one poll for `energyd read` (commissioning), None if the driver's
  devices cannot be read on demand (their readings are pushed);
- `scan(link, units, timeout)`: `energyd scan --driver NAME`, the units that answer on a
  link and what they are, None if the driver has no bus to scan;
- how its devices are acquired, one of:
  - `polled`: the devices are read on a schedule over links they share (a serial bus, a
    gateway). The daemon runs one bus owner per link (energyd/daemon/polling.py): the
    wake-ups, the queue that gives healthy units the bus first, the backoff of a silent
    unit, utilisation, and the logging into failure and out of it. The driver gives it a
    PolledLink per link, which knows the wire and nothing of scheduling;
  - `subscribed`: the devices' readings come in over the broker connection the daemon holds
    (the file's top-level `mqtt:`), mapped by the driver's own code;
  - `owned`: each device has a connection of its own that the driver keeps (an OPC UA
    session): the driver gives the daemon, per device, a DeviceSession whose `run(services)`
    runs until cancelled; the daemon runs one component per device
    (energyd/daemon/sessions.py) and hands it SessionServices, all it may use.

The daemon hands a polled link or an owned session only what is here: the devices (their
options models), the clock, and the calls below. Readings go back as energyd.model.Reading,
or, from a polled link, as energyd.model.PollValues (a poll's values as columns).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from energyd.clock import Clock
from energyd.errors import DeviceError, DeviceGarbled, DeviceRefused, DeviceTimeout
from energyd.model import QUANTITIES, PollValues, Reading


class PollOutcome(Protocol):
    """What one poll of one unit gave, once decoded."""

    values: list[PollValues]  # as columns: the owner hands them to the store as they are

    @property
    def error(self) -> str | None:
        """Every failure of the poll in one line (the poll record, /health); None if clean."""

    @property
    def reason(self) -> str | None:
        """One word for the metrics (timeout, refused, garbled, connection); None if clean."""

    @property
    def silent(self) -> bool:
        """The unit did not answer, or the link is down: the owner backs the unit off."""

    def failed_parts(self) -> dict[str, str]:
        """Parts of the unit (register blocks, say) that failed, with why: each is logged
        the first time it fails, not at every poll."""


@dataclass
class PartFailure:
    """A part of a unit (a Modbus register block, a DL/T 645 data identifier) that failed in
    one poll, and why."""

    block: str
    error: DeviceError

    def __str__(self) -> str:
        return f"{self.block}: {self.error}"


@dataclass
class PollResult:
    """One poll of one unit, as a polled driver gives it (a PollOutcome): the values read,
    as columns, and the parts that failed. `raw` holds what was read and not yet decoded
    (the owner has the driver decode it while the next unit's request is on the wire)."""

    device: str
    values: list[PollValues] = field(default_factory=list)
    failures: list[PartFailure] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)

    @staticmethod
    def no_reply(error: DeviceError) -> bool:
        """Does this failure say the unit did not answer? (A driver adds its own signs.)"""
        return isinstance(error, DeviceTimeout)

    @property
    def readings(self) -> list[Reading]:
        return [r for v in self.values for r in v.readings()]

    @property
    def timed_out(self) -> bool:
        return any(self.no_reply(f.error) for f in self.failures)

    @property
    def silent(self) -> bool:
        """No reply, or no link: the bus owner backs the unit off."""
        return self.reason in ("timeout", "connection")

    def failed_parts(self) -> dict[str, str]:
        return {f.block: str(f) for f in self.failures}

    @property
    def error(self) -> str | None:
        return "; ".join(map(str, self.failures)) if self.failures else None

    @property
    def reason(self) -> str | None:
        """One word for metrics: timeout, refused, garbled, connection (None when clean)."""
        if not self.failures:
            return None
        if self.timed_out:
            return "timeout"
        kinds = {type(f.error) for f in self.failures}
        if kinds == {DeviceRefused}:
            return "refused"
        if kinds <= {DeviceRefused, DeviceGarbled}:
            return "garbled"
        return "connection"


class PolledUnit(Protocol):
    """One unit of a link, as the driver polls it."""

    @property
    def address(self) -> int | str:
        """Where the unit sits on its link (a Modbus unit id), for /health and the logs."""

    @property
    def backoff_max(self) -> float:
        """Seconds (of the config's clock): the cap of the delay after silent polls."""

    # A unit may also have `details() -> dict`: its driver's own lines in /health (the
    # identifiers a DL/T 645 meter said it lacks, say), merged into the unit's entry.


class PolledLink(Protocol):
    """One link of a polled driver, with its units; an async context manager that holds the
    connection. The owner calls `read` for one unit at a time, never two at once, and
    `finish` on the result while the next unit's read is on the wire."""

    units: Sequence[PolledUnit]  # in the order of the devices the link was opened with
    requests: int  # requests sent so far (the benchmark's and the tests' count)

    async def __aenter__(self) -> PolledLink: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def read(self, unit: Any) -> Awaitable[Any]:
        """The unit's requests on the wire (an awaitable: a coroutine of the driver's own
        will do); failures come back in the result, not raised."""

    def finish(self, unit: Any, raw: Any) -> PollOutcome:
        """Decode what `read` returned (off the wire)."""

    def reset(self) -> None:
        """Every unit fell silent: drop the connection; the next read opens it afresh."""


@dataclass(frozen=True)
class OneRead:
    """What `energyd read` shows of one poll: `title` names what was read, `facts` are
    the driver's own lines of its JSON (the profile, say), the decoded readings, the
    quantities the device sent as not available (with the device's own word for why, when
    it has one: an OPC UA status name; NaN otherwise), and (part, why) per part that
    failed."""

    title: str
    facts: dict[str, Any] = field(default_factory=dict)
    readings: list[Reading] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    unavailable_as: dict[str, str] = field(default_factory=dict)  # quantity -> device's word

    def why_unavailable(self, quantity: str) -> str:
        return self.unavailable_as.get(quantity, "NaN")

    def document(self, device: str) -> dict[str, Any]:
        """`energyd read --json`: each value with its unit, the errors, what was not there."""
        return {
            "device": device, **self.facts,
            "time": self.readings[0].time.isoformat() if self.readings else None,
            "values": {r.quantity: {"value": r.value, "unit": QUANTITIES[r.quantity].unit,
                                    "quality": r.quality.name.lower()}
                       for r in self.readings},
            "errors": [{"block": part, "error": why} for part, why in self.failures],
            "unavailable": list(self.unavailable),
        }


@dataclass(frozen=True)
class ScanReport:
    """What `energyd scan` found on a link: `rows` for --json, `table` (columns, then one
    line of text per unit) for the terminal, under `title`; `notes`, lines about the link
    as a whole (what a broadcast heard, say), said before the table (on stderr with
    --json)."""

    title: str
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    table: list[tuple[str, ...]]
    notes: tuple[str, ...] = ()


class BadScanTarget(ValueError):
    """A scan's link or units that cannot be: `option` is the command-line option to fix."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Polled:
    """A polled driver: which link each device is on, and how to open one."""

    link_of: Callable[[Any], str]  # a device's link id (one owner per id)
    open_link: Callable[[str, list[Any], Clock], PolledLink]  # link id, its devices, clock


@dataclass(frozen=True)
class SessionMetric:
    """A metric an owned driver counts in, one series per device (`labels` are the others):
    registered once by the daemon, kept across reloads."""

    name: str  # as exported, e.g. energyd_opcua_reconnects (a counter gains _total)
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()


class MetricSeries(Protocol):
    """One series of a SessionMetric: a counter is increased, a gauge set."""

    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...


class SessionServices(Protocol):
    """What the daemon hands an owned device's session, and all it may use."""

    @property
    def clock(self) -> Clock:
        """The daemon's clock: receipt times are read from it."""

    def submit(self, readings: list[Reading]) -> None:
        """Readings to the store. Those stamped on receipt (quality RECEIVED) while the
        wall clock could not be trusted are flagged CLOCK_SUSPECT and counted, as every
        acquisition does; a reading with the device's own time stands as it is."""

    def clock_suspect(self, when: datetime) -> str | None:
        """Why a time stamped now from the wall clock cannot be trusted; None if it can."""

    def record_poll(self, error: str | None) -> None:
        """The device's status (`energyd status`): a poll now, with its error or None."""

    def metric(self, name: str, **labels: str) -> MetricSeries:
        """The device's series of one of the plugin's SessionMetrics."""

    def show(self, health: Callable[[], dict[str, Any]]) -> None:
        """What the device's entry in /health holds, asked for at each request."""


class DeviceSession(Protocol):
    """An owned device's connection, as its driver keeps it."""

    async def run(self, services: SessionServices) -> None:
        """Connect, read, reconnect after a loss... until cancelled; releases what it holds
        in `finally`. A failure that escapes is logged and the daemon restarts it."""


@dataclass(frozen=True)
class Owned:
    """A driver whose devices each hold a connection of their own."""

    open_session: Callable[[Any], DeviceSession]  # the device's options model
    metrics: tuple[SessionMetric, ...] = ()


@dataclass(frozen=True)
class DriverPlugin:
    name: str  # the `driver:` value
    read_once: Callable[[Any], Awaitable[OneRead]] | None = None
    # the link as the driver's section would give it (transport, host, port, serial_port,
    # baudrate, parity; an option not given is absent: the driver's default), the units to
    # probe as the user wrote them ("" when not given: the driver's default), seconds per unit
    scan: Callable[[dict[str, Any], str, float], Awaitable[ScanReport]] | None = None
    polled: Polled | None = None
    subscribed: bool = False
    owned: Owned | None = None
