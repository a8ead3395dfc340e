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
    (the file's top-level `mqtt:`), mapped by the driver's own code.

The daemon hands a polled link only what is here: the devices of the link (their options
models), the clock, and the calls below. Readings go back as energyd.model.Reading.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from energyd.clock import Clock
from energyd.model import QUANTITIES, Reading


class PollOutcome(Protocol):
    """What one poll of one unit gave, once decoded."""

    readings: list[Reading]

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
    quantities the device sent as not available, and (part, why) per part that failed."""

    title: str
    facts: dict[str, Any] = field(default_factory=dict)
    readings: list[Reading] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def document(self, device: str) -> dict[str, Any]:
        """`energyd read --json`: each value with its unit, the errors, what was not there."""
        return {
            "device": device, **self.facts,
            "time": self.readings[0].time.isoformat() if self.readings else None,
            "values": {r.quantity: {"value": r.value, "unit": QUANTITIES[r.quantity].unit}
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
class DriverPlugin:
    name: str  # the `driver:` value
    read_once: Callable[[Any], Awaitable[OneRead]] | None = None
    # the link as the driver's section would give it (transport, host, port, serial_port,
    # baudrate, parity; an option not given is absent: the driver's default), the units to
    # probe as the user wrote them ("" when not given: the driver's default), seconds per unit
    scan: Callable[[dict[str, Any], str, float], Awaitable[ScanReport]] | None = None
    polled: Polled | None = None
    subscribed: bool = False
