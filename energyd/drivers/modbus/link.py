"""Modbus driver: a link (one connection to a bus) and a device poller on top of it.

Transports (`ModbusOptions.transport`):

    tcp           Modbus TCP (MBAP framing) to a meter or a TCP gateway, default port 502
    rtu_over_tcp  RTU frames tunnelled through a serial-to-Ethernet gateway's TCP port
    rtu           RTU on a local serial port (RS485 adapter), baudrate/parity/bytesize/stopbits

One `ModbusLink` owns one connection; every unit behind it shares it and its requests go
one at a time (`daemon/polling.py` makes sure a link has exactly one owner).

Read only. The link's single request path, `ModbusLink.read`, takes a `ReadCode`: coils (1),
discrete inputs (2), holding registers (3), input registers (4). Any other function code is
refused before anything is sent. energyd never writes to a meter on a plant network, and
there is no code in this package that could.

Options per device (options.py `ModbusOptions`): `timeout` per request (default 1 s), `retries`
after a timeout (0), `pause_after_connect`, `pause_between_requests`, `close_after_poll`
(devices that accept one master only), `single_register`, `max_gap`, `max_registers`.

Failures are mapped at this edge onto energyd's own errors:

    no reply within the timeout (after retries)  -> DeviceTimeout
    an exception reply (illegal address, busy)   -> DeviceRefused(exception_code)
    a reply of the wrong length or to another
    function, an exception code no device
    sends, a frame pymodbus cannot decode        -> DeviceGarbled
    cannot connect, connection dropped           -> DeviceError

Garbage never reaches the decoder: a reply is checked for its length before its words are
handed on, and a block that still fails to decode is a DeviceGarbled failure of that block.

Only the device's own word that an address or function is wrong (exception 1, 2 or 3) changes
how it is read: a refused read of merged registers is retried value by value in the same
poll, and those values stay isolated (see planner.py) until `reprobe_after` seconds later,
when the merged reads are tried again (a firmware update, a meter replaced). A garbled reply,
busy or a device failure is a failed block of this poll, nothing more. A timeout (or a
gateway's exception 10 or 11: the unit behind it did not answer) ends that unit's poll,
because a unit that does not answer would otherwise cost one timeout per block of the bus's
time.

One time per poll: every reading of a unit's poll, whatever block it came in, carries the
clock's time taken just before the poll's first request was sent. A poll is one
observation of the meter, and InfluxDB makes one point of the readings that share device
and time (deploy/influxdb/README.md: one point per device per poll); a time per block
split a poll into points a few milliseconds apart, each with part of the fields. The start
rather than the end or the middle: it is known before anything can fail, so a poll cut
short by a timeout keeps the same instant for what it read, and the blocks' reads lie
within the poll's duration (milliseconds on TCP, up to about a second on a slow RS485 bus)
after it, never before.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from energyd.clock import Clock, RealClock
from energyd.config.profiles import Profile, RegisterSpec
from energyd.drivers import contracts
from energyd.drivers.contracts import PartFailure
from energyd.drivers.modbus.planner import Block, key, plan
from energyd.errors import DeviceError, DeviceGarbled, DeviceRefused, DeviceTimeout
from energyd.model import PollValues

log = logging.getLogger(__name__)

# pymodbus logs every unanswered request at ERROR with a frame dump; energyd reports a unit's
# failure once on the way in and once on recovery instead (a level set by the user stays).
if logging.getLogger("pymodbus.logging").level == logging.NOTSET:
    logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 8: "memory parity error",
    10: "gateway path unavailable", 11: "gateway target failed to respond",
}
# exception replies that say the request itself is wrong for this device: the read plan
# changes for them, and only for them
PLAN_EXCEPTIONS = frozenset({1, 2, 3})
# a gateway's word that the unit behind it did not answer: as good as a timeout
GATEWAY_SILENCE = frozenset({10, 11})
REPROBE_AFTER = 3600.0  # seconds before isolated values are tried in merged reads again


class ReadCode(enum.IntEnum):
    """The only Modbus requests energyd can send."""

    COILS = 1
    DISCRETE_INPUTS = 2
    HOLDING_REGISTERS = 3
    INPUT_REGISTERS = 4


# The client methods behind each read code, and nothing else.
_READERS: dict[ReadCode, str] = {
    ReadCode.COILS: "read_coils",
    ReadCode.DISCRETE_INPUTS: "read_discrete_inputs",
    ReadCode.HOLDING_REGISTERS: "read_holding_registers",
    ReadCode.INPUT_REGISTERS: "read_input_registers",
}


@dataclass(frozen=True)
class LinkSettings:
    """How to reach a bus (the part of ModbusOptions shared by every unit on it)."""

    transport: str = "tcp"
    host: str | None = None
    port: int = 502
    serial_port: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    pause_after_connect: float = 0.0
    connect_timeout: float = 3.0

    @classmethod
    def from_options(cls, options: Any) -> LinkSettings:
        return cls(transport=options.transport, host=options.host, port=options.port,
                   serial_port=options.serial_port, baudrate=options.baudrate,
                   parity=options.parity, bytesize=options.bytesize, stopbits=options.stopbits,
                   pause_after_connect=options.pause_after_connect,
                   connect_timeout=max(1.0, options.timeout))

    def describe(self) -> str:
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}@{self.baudrate}{self.parity}"
        return f"{self.transport}:{self.host}:{self.port}"


class _FramerRTU(FramerRTU):
    """pymodbus 3.16's RTU framer, except that a decoded frame consumes only its own bytes.

    The stock decode() reports the whole receive buffer as used, so when a unit's late reply
    and the next unit's reply arrive in one chunk, the stale frame is skipped and the good
    one thrown away with it: one slow unit would cost its neighbour a timeout.
    """

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        data_len = len(data)
        for start in range(data_len):
            if data_len - start < self.MIN_SIZE:
                return 0, 0, 0, self.EMPTY
            dev_id = int(data[start])
            if not (pdu_class := self.decoder.lookupPduClass(data[start:])):
                continue
            if not (size := pdu_class.calculateRtuFrameSize(data[start:])):
                return 0, dev_id, 0, self.EMPTY
            if data_len < start + size:
                return 0, dev_id, 0, self.EMPTY
            crc_start = start + size - 2
            crc = data[crc_start:crc_start + 2]
            if not FramerRTU.check_CRC(data[start:crc_start], (crc[0] << 8) + crc[1]):
                return data_len, 0, 0, self.EMPTY  # garbage: drop it, as pymodbus does
            return start + size, dev_id, 0, data[start + 1:crc_start]
        return 0, 0, 0, self.EMPTY


class _RegisterReply(ReadHoldingRegistersResponse):
    """A register reply (function 3), decoded by one struct call rather than pymodbus's one
    per word, and its registers kept as the bytes they came in (`raw`), which the block
    decoder unpacks as they are rather than packing the words back first.

    Its text is short: pymodbus makes the text of every reply it decodes for its debug log,
    whether that log is on or not, and 125 registers cost more to format than to read.
    Registered with the client (`register()`, pymodbus's way to add reply classes) for
    functions 3 and 4 only; pymodbus keeps the others."""

    def decode(self, data: bytes) -> None:
        size = data[0]
        if size >= len(data):
            raise ModbusIOException(f"byte count {size} > length of packet {len(data)}",
                                    function_code=self.function_code)
        self.raw = data[1:1 + size]  # an odd count is garbled: the link says so
        self.registers = struct.unpack_from(f">{size // 2}H", data, 1)

    def __str__(self) -> str:
        return (f"{type(self).__name__}(dev_id={self.dev_id}, "
                f"transaction_id={self.transaction_id}, {len(self.registers)} registers)")


class _InputRegisterReply(_RegisterReply):
    function_code = 4


class ModbusLink:
    """One connection to a bus; an async context manager.

        async with ModbusLink(LinkSettings(transport="tcp", host="127.0.0.1", port=5020)) as link:
            words = await link.read(ReadCode.INPUT_REGISTERS, 0, 2, unit=1, timeout=0.5)

    Connecting is lazy and repeated on the next read after a drop; a failed connect raises
    DeviceError and is tried again on the next read (the caller paces that).
    """

    def __init__(self, settings: LinkSettings):
        self.settings = settings
        s = settings
        common: dict[str, Any] = {"timeout": s.connect_timeout, "retries": 0,
                                  "reconnect_delay": 0}  # reconnects are the owner's policy
        if s.transport == "rtu":
            if not s.serial_port:
                raise ValueError("transport rtu needs a serial_port")
            self._client: Any = AsyncModbusSerialClient(
                s.serial_port, framer=FramerType.RTU, baudrate=s.baudrate, parity=s.parity,
                bytesize=s.bytesize, stopbits=s.stopbits, **common)
        elif s.transport in ("tcp", "rtu_over_tcp"):
            if not s.host:
                raise ValueError(f"transport {s.transport} needs a host")
            framer = FramerType.SOCKET if s.transport == "tcp" else FramerType.RTU
            self._client = AsyncModbusTcpClient(s.host, port=s.port, framer=framer, **common)
        else:
            raise ValueError(f"unknown transport {s.transport!r}")
        if s.transport != "tcp":
            self._client.ctx.framer = _FramerRTU(self._client.ctx.framer.decoder)
        for reply in (_RegisterReply, _InputRegisterReply):
            self._client.register(reply)
        # Silence from one dead unit behind a gateway must not close the link of the others
        # (pymodbus closes after retries+3 unanswered requests); the owner decides instead.
        self._client.set_max_no_responses(1_000_000)
        # the bound client methods, keyed by the four read codes and nothing else
        self._readers = {code: getattr(self._client, name) for code, name in _READERS.items()}
        self.requests = 0

    async def __aenter__(self) -> ModbusLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> None:
        if self._client.connected:
            return
        self._client.comm_params.timeout_connect = self.settings.connect_timeout
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:
            raise DeviceError(f"cannot connect to {self.settings.describe()}: {exc}") from exc
        if not ok:
            raise DeviceError(f"cannot connect to {self.settings.describe()}")
        if self.settings.pause_after_connect > 0:
            await asyncio.sleep(self.settings.pause_after_connect)

    def close(self) -> None:
        self._client.close()

    async def read(self, code: ReadCode | int, address: int, count: int, *, unit: int,
                   timeout: float, retries: int = 0) -> list[int]:
        """Read `count` registers (or bits, as 0/1) starting at wire `address`."""
        got = await self.read_raw(code, address, count, unit=unit, timeout=timeout,
                                  retries=retries)
        if isinstance(got, bytes):
            return list(struct.unpack(f">{count}H", got))
        return got

    async def read_raw(self, code: ReadCode | int, address: int, count: int, *, unit: int,
                       timeout: float, retries: int = 0) -> bytes | list[int]:
        """As read(), with registers as the bytes they came in (big-endian, two each)."""
        method = self._readers.get(code)  # type: ignore[call-overload]
        if method is None:
            raise ValueError(f"function code {code!r} is not a read (energyd sends 1-4 only)")
        if not self._client.connected:
            await self.connect()
        for attempt in range(retries + 1):
            self._client.ctx.comm_params.timeout_connect = timeout
            self.requests += 1
            try:
                rr = await method(address, count=count, device_id=unit)
            except ConnectionException as exc:
                what = _what(code, address, count, unit)
                raise DeviceError(f"{what}: connection lost ({exc})") from exc
            except ModbusIOException as exc:
                what = _what(code, address, count, unit)
                if "no response" in str(exc).lower():
                    if attempt < retries:
                        continue
                    raise DeviceTimeout(f"{what}: no reply within {timeout:g} s") from exc
                raise DeviceError(f"{what}: {exc}") from exc
            except ModbusException as exc:
                raise DeviceError(f"{_what(code, address, count, unit)}: {exc}") from exc
            except (struct.error, ValueError, IndexError, TypeError, KeyError) as exc:
                # pymodbus choking on a frame it could not make sense of
                raise DeviceGarbled(
                    f"{_what(code, address, count, unit)}: garbled reply ({exc})") from exc
            if rr.isError():
                code_ = getattr(rr, "exception_code", None)
                if code_ not in EXCEPTION_NAMES:
                    raise DeviceGarbled(f"{_what(code, address, count, unit)}: garbled reply "
                                        f"(exception code {code_}, which no device sends)")
                if code_ == 6 and attempt < retries:  # busy: worth another try
                    continue
                name = EXCEPTION_NAMES[code_]
                raise DeviceRefused(
                    f"{_what(code, address, count, unit)}: exception {code_} ({name})", code_)
            if getattr(rr, "function_code", int(code)) != int(code):
                # pymodbus hands on whatever reply came under the transaction id
                raise DeviceGarbled(f"{_what(code, address, count, unit)}: garbled reply "
                                    f"(function code {rr.function_code})")
            if code in (1, 2):
                bits = getattr(rr, "bits", None) or []
                if len(bits) < count:
                    raise DeviceGarbled(f"{_what(code, address, count, unit)}: garbled reply "
                                        f"({len(bits)} bits for {count} asked)")
                return [int(b) for b in bits[:count]]
            registers = getattr(rr, "registers", None) or []
            if len(registers) != count:
                raise DeviceGarbled(f"{_what(code, address, count, unit)}: garbled reply "
                                    f"({len(registers)} registers for {count} asked)")
            raw = getattr(rr, "raw", None)  # a _RegisterReply's
            if raw is None:
                return struct.pack(f">{count}H", *registers)
            if len(raw) != 2 * count:
                raise DeviceGarbled(f"{_what(code, address, count, unit)}: garbled reply "
                                    f"({len(raw)} bytes for {count} registers)")
            return raw
        # not reached: the last attempt returns or raises
        raise DeviceTimeout(f"{_what(code, address, count, unit)}: no reply")


def _what(code: int, address: int, count: int, unit: int) -> str:
    return f"unit {unit} fc{int(code)} {address}+{count}"


BlockFailure = PartFailure  # a register block that failed


@dataclass
class PollResult(contracts.PollResult):
    unavailable: list[str] = field(default_factory=list)  # quantities the meter sent as NaN

    @staticmethod
    def no_reply(error: DeviceError) -> bool:
        """A timeout, or a gateway saying the unit behind it did not answer."""
        return isinstance(error, DeviceTimeout) or (
            isinstance(error, DeviceRefused) and error.exception_code in GATEWAY_SILENCE)


class DevicePoller:
    """Reads one unit's profile through a link, block by block."""

    def __init__(self, name: str, unit: int, profile: Profile, *, timeout: float = 1.0,
                 retries: int = 0, pause_between_requests: float = 0.0,
                 single_register: bool = False, max_gap: int = 10, max_registers: int = 125,
                 clock: Clock | None = None, backoff_max: float = 300.0,
                 close_after_poll: bool = False):
        if not profile.registers:
            raise ValueError(f"device {name}: the profile has no registers")
        self.name = name
        self.unit = unit
        self.profile = profile
        self.timeout = timeout
        self.retries = retries
        self.pause = pause_between_requests
        self.single = single_register
        self.max_gap = max_gap
        self.max_registers = max_registers
        self.clock = clock or RealClock()
        self.backoff_max = backoff_max  # config seconds: the bus owner's cap after timeouts
        self.close_after_poll = close_after_poll
        self.isolated: set[tuple[int, int]] = set()
        self.reprobe_after = REPROBE_AFTER
        self._reprobe_at: float | None = None  # monotonic: merged reads tried again then
        self._reprobed: set[tuple[int, int]] = set()  # isolated before the last re-probe
        self.blocks = self._plan()

    @classmethod
    def from_device(cls, device: Any, clock: Clock | None = None) -> DevicePoller:
        from energyd.config.profiles import device_profile

        o = device.modbus
        return cls(device.name, o.unit, device_profile(device), timeout=o.timeout,
                   retries=o.retries, pause_between_requests=o.pause_between_requests,
                   single_register=o.single_register, max_gap=o.max_gap,
                   max_registers=o.max_registers, clock=clock, backoff_max=o.backoff_max,
                   close_after_poll=o.close_after_poll)

    @property
    def address(self) -> int:
        """The unit id, for /health and the logs."""
        return self.unit

    def _plan(self) -> list[Block]:
        return plan(self.profile.registers, max_registers=self.max_registers,
                    max_gap=self.max_gap, single=self.single, isolated=self.isolated,
                    readable=self.profile.readable)

    async def poll(self, link: ModbusLink) -> PollResult:
        """Read every block and decode it."""
        return self.decode(await self.read(link))

    async def read(self, link: ModbusLink) -> PollResult:
        """Read every block; the words are decoded later by decode(), so a bus owner can
        send the next unit's request first and decode while it is on the wire."""
        result = PollResult(self.name)
        first = True
        self._maybe_reprobe()
        queue: list[Block] = list(self.blocks)
        when = self.clock.now()  # the poll's one instant (the module docstring says why)
        while queue:
            block = queue.pop(0)
            if not first and self.pause > 0:
                await asyncio.sleep(self.pause)
            first = False
            try:
                words = await link.read_raw(block.function, block.address, block.count,
                                            unit=self.unit, timeout=self.timeout,
                                            retries=self.retries)
            except DeviceRefused as exc:
                if exc.exception_code in GATEWAY_SILENCE:
                    result.failures.append(BlockFailure(str(block), exc))
                    break
                if len(block.specs) > 1 and exc.exception_code in PLAN_EXCEPTIONS:
                    # Which value is refused is unknown: read them alone, now and until the
                    # next re-probe.
                    keys = {key(s) for s in block.specs}
                    self.isolated.update(keys)
                    self.blocks = self._plan()
                    queue[:0] = plan(block.specs, single=True)
                    if self._reprobe_at is None:
                        self._reprobe_at = time.monotonic() + self.reprobe_after
                    # refused again at a re-probe: said already
                    level = logging.DEBUG if keys <= self._reprobed else logging.INFO
                    log.log(level, "%s: %s refused (%s); its values are read one by one for "
                            "the next %.0f s", self.name, block, exc, self.reprobe_after)
                    continue
                result.failures.append(BlockFailure(str(block), exc))
                continue
            except DeviceGarbled as exc:
                result.failures.append(BlockFailure(str(block), exc))
                continue
            except DeviceTimeout as exc:
                result.failures.append(BlockFailure(str(block), exc))
                break
            except DeviceError as exc:
                result.failures.append(BlockFailure(str(block), exc))
                break
            result.raw.append((block, when, words))
        if self._reprobed and not result.timed_out:
            back = self._reprobed - self.isolated
            if back:
                log.info("%s: merged reads work again for %d values that were refused",
                         self.name, len(back))
            self._reprobed = set()
        return result

    def _maybe_reprobe(self) -> None:
        if (self._reprobe_at is None or not self.isolated
                or time.monotonic() < self._reprobe_at):
            return
        self._reprobed = set(self.isolated)
        self.isolated.clear()
        self.blocks = self._plan()
        self._reprobe_at = None
        log.debug("%s: trying merged reads again for %d isolated values", self.name,
                  len(self._reprobed))

    def decode(self, result: PollResult) -> PollResult:
        """Turn the words read into Readings (stamped with the poll's time)."""
        name = self.name
        for block, when, words in result.raw:
            try:
                values = block.numbers(words)
            except (struct.error, ValueError, IndexError, TypeError) as exc:
                # read() checked the length already; whatever else cannot be decoded is garbage
                result.failures.append(BlockFailure(str(block), DeviceGarbled(
                    f"unit {self.unit} {block}: garbled reply ({exc})")))
                continue
            quantities = block.quantities
            if not all(map(math.isfinite, values)):
                # meters send NaN for what they do not measure (an unwired phase)
                result.unavailable += [q for q, v in zip(quantities, values, strict=True)
                                       if not math.isfinite(v)]
                kept = [(q, v) for q, v in zip(quantities, values, strict=True)
                        if math.isfinite(v)]
                if not kept:
                    continue
                quantities, values = tuple(q for q, _ in kept), [v for _, v in kept]
            result.values.append(PollValues(when, name, quantities, values))
        result.raw.clear()
        return result


def describe_blocks(blocks: Sequence[Block]) -> list[str]:
    return [f"{b} ({', '.join(s.quantity for s in b.specs)})" for b in blocks]


__all__ = ["BlockFailure", "DevicePoller", "LinkSettings", "ModbusLink", "PollResult",
           "ReadCode", "RegisterSpec"]
