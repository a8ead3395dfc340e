"""One DL/T 645 bus (a serial port, or a transparent serial server's TCP port) and the
poller of one meter on it.

A `Dlt645Link` owns the connection; every meter on the bus shares it and its requests go
one at a time (the daemon gives a bus exactly one owner, through plugin.py). A request is sent, then
frames are taken from what comes back until one is the reply from the asked address to the
asked code, or the timeout passes:

    no reply within the timeout                       -> DeviceTimeout
    an abnormal reply (C bit 6 set; its error byte)   -> DeviceRefused(exception_code=ERR)
    a bad checksum or end byte, the wrong identifier
    echoed, value bytes the profile does not expect,
    digits that are not BCD                           -> DeviceGarbled
    cannot open the port, connection dropped          -> DeviceError

A frame from another address (a slow meter's late reply, an adapter's echo of the request)
is passed over, not taken for the reply: a late meter never costs its neighbour its poll.
Whatever was left in the receive buffer is dropped before each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from energyd.clock import Clock, RealClock
from energyd.drivers import contracts
from energyd.drivers.contracts import PartFailure
from energyd.drivers.dlt645 import codec
from energyd.drivers.dlt645.codec import Frame, FrameError, ReadCode
from energyd.drivers.dlt645.profile import Dlt645Profile, Identifier, load_profile
from energyd.errors import DeviceError, DeviceGarbled, DeviceRefused, DeviceTimeout
from energyd.model import PollValues

log = logging.getLogger(__name__)

REPROBE_AFTER = 3600.0  # seconds before an identifier a meter said it lacks is asked again
MAX_FOLLOW_UPS = 16  # a reply in more parts than this is not a meter's
NO_SUCH_DATA = 0x02  # the error bit of a meter that does not have what was asked


@dataclass(frozen=True)
class BusSettings:
    """How to reach a bus (the part of Dlt645Options every meter on it shares)."""

    transport: str = "serial"
    serial_port: str | None = None
    host: str | None = None
    port: int | None = None
    baudrate: int = 2400
    parity: str = "E"
    bytesize: int = 8
    stopbits: int = 1
    preamble: bool = True
    connect_timeout: float = 3.0

    @classmethod
    def from_options(cls, o: Any) -> BusSettings:
        return cls(transport=o.transport, serial_port=o.serial_port, host=o.host, port=o.port,
                   baudrate=o.baudrate, parity=o.parity, bytesize=o.bytesize,
                   stopbits=o.stopbits, preamble=o.preamble,
                   connect_timeout=max(1.0, o.timeout))

    def line_seconds(self, size: int) -> float:
        """The time `size` bytes take on the serial line (0 over TCP: the serial server's
        line speed is its own setting, unknown here)."""
        if self.transport != "serial":
            return 0.0
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return size * bits / self.baudrate

    def describe(self) -> str:
        if self.transport == "serial":
            return f"serial:{self.serial_port}@{self.baudrate}{self.parity}"
        return f"tcp:{self.host}:{self.port}"


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: Dlt645Link):
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost()


class Dlt645Link:
    """One connection to a bus; an async context manager.

        async with Dlt645Link(BusSettings(transport="tcp", host="127.0.0.1", port=8899)) as bus:
            value_bytes = await bus.read("000000000001", "00010000", timeout=1.0)

    Connecting is lazy and repeated on the next request after a drop.
    """

    def __init__(self, settings: BusSettings):
        if settings.transport == "serial" and not settings.serial_port:
            raise ValueError("transport serial needs a serial_port")
        if settings.transport == "tcp" and (not settings.host or settings.port is None):
            raise ValueError("transport tcp needs a host and a port")
        if settings.transport not in ("serial", "tcp"):
            raise ValueError(f"unknown transport {settings.transport!r}")
        self.settings = settings
        self._buffer = bytearray()
        # a future the receiving side completes when bytes arrive: cheaper per request
        # than an Event waited on through wait_for, which makes a task each time
        self._waiter: asyncio.Future[None] | None = None
        self._frames: dict[tuple[str, str], bytes] = {}  # read-data requests, built once
        self._tcp: asyncio.Transport | None = None
        self._serial: Any = None
        self._lock = asyncio.Lock()
        self.requests = 0
        self.passed_over = 0  # frames from other addresses or to other requests

    async def __aenter__(self) -> Dlt645Link:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._tcp is not None or self._serial is not None

    async def connect(self) -> None:
        if self.connected:
            return
        s = self.settings
        try:
            if s.transport == "tcp":
                loop = asyncio.get_running_loop()
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _TcpProtocol(self), s.host, s.port),
                    s.connect_timeout)
                self._tcp = transport  # type: ignore[assignment]
            else:
                self._open_serial()
        except (OSError, TimeoutError) as exc:
            raise DeviceError(f"cannot connect to {s.describe()}: {exc or 'timed out'}") \
                from exc

    def _open_serial(self) -> None:
        import termios

        import serial  # pyserial, which pymodbus[serial] brings

        s = self.settings
        try:
            port = serial.Serial(s.serial_port, baudrate=s.baudrate, parity=s.parity,
                                 bytesize=s.bytesize, stopbits=s.stopbits, timeout=0,
                                 write_timeout=0)
        except (serial.SerialException, termios.error, ValueError) as exc:
            # termios refuses settings a port cannot take (or a pty whose other end is
            # gone); pyserial lets that through as it is
            raise OSError(str(exc)) from exc
        self._serial = port
        asyncio.get_running_loop().add_reader(port.fileno(), self._serial_readable)

    def _serial_readable(self) -> None:
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._received(data)
        else:  # the other end went away (a pty closed, an adapter unplugged)
            self._lost()
            self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def _lost(self) -> None:
        self._tcp = None
        self._wake()

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        if self._serial is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None

    def _send(self, frame: bytes) -> None:
        if self._tcp is not None:
            self._tcp.write(frame)
        elif self._serial is not None:
            try:
                self._serial.write(frame)
            except Exception as exc:  # pyserial's SerialException is an OSError or not
                self.close()
                raise DeviceError(f"{self.settings.describe()}: write failed ({exc})") \
                    from exc
        else:
            raise DeviceError(f"{self.settings.describe()}: not connected")

    async def exchange(self, frame: bytes, address: str, code: ReadCode, *,
                       timeout: float, what: str, abnormal_too: bool = False) -> Frame:
        """Send one request and wait for the reply from `address` (a meter it selects,
        when it holds AA bytes) to `code`. An abnormal reply raises DeviceRefused, unless
        `abnormal_too` (which wants only to know who answered)."""
        async with self._lock:
            if not self.connected:
                await self.connect()
            self._buffer.clear()
            self.requests += 1
            self._send(frame)
            loop = asyncio.get_running_loop()
            # the timeout counts from when the request has left the wire (at 2400 baud a
            # read request takes 80 ms to send)
            deadline = loop.time() + timeout + self.settings.line_seconds(len(frame))
            had = -1  # bytes in the buffer when the deadline was last moved
            while True:
                try:
                    reply = codec.take_frame(self._buffer)
                except FrameError as exc:
                    raise DeviceGarbled(f"{what}: garbled reply ({exc})") from None
                if reply is not None:
                    if (not reply.is_reply or reply.function != code
                            or not codec.selects(address, reply.address)):
                        self.passed_over += 1
                        continue
                    if reply.abnormal and not abnormal_too:
                        err = reply.data[0] if reply.data else 0
                        raise DeviceRefused(f"{what}: abnormal reply, error {err:02X} "
                                            f"({codec.describe_error(err)})", err)
                    return reply
                if not self.connected:
                    raise DeviceError(f"{what}: connection lost")
                if loop.time() >= deadline:
                    rest = self._rest_of_frame()
                    if not rest or len(self._buffer) == had:
                        raise DeviceTimeout(f"{what}: no reply within {timeout:g} s")
                    # a reply under way when the time is up: wait for the bytes it still
                    # needs at the line's speed, for as long as they keep coming
                    had = len(self._buffer)
                    deadline = loop.time() + self.settings.line_seconds(rest) + 0.05
                self._waiter = waiter = loop.create_future()
                timer = loop.call_at(deadline, self._wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None

    def _rest_of_frame(self) -> int:
        """Bytes still missing from a frame begun in the receive buffer (0: none begun)."""
        buf = self._buffer
        start = buf.find(codec.START)
        if start < 0 or self.settings.transport != "serial":
            return 0
        have = len(buf) - start
        if have < 10:
            return 10 - have  # up to its length byte, then the rest is known
        return max(0, 12 + buf[start + 9] - have)

    async def read(self, address: str, di: str, *, timeout: float) -> bytes:
        """The value bytes of identifier `di` from the meter at `address` (read data, and
        read follow-up while the meter says more follows)."""
        what = f"meter {address} {di}"
        p = self.settings.preamble
        frame = self._frames.get((address, di))
        if frame is None:
            if len(self._frames) > 4096:  # addresses probed by a scan: no unbounded growth
                self._frames.clear()
            frame = self._frames[address, di] = codec.read_data(address, di, preamble=p)
        reply = await self.exchange(frame, address, ReadCode.READ_DATA, timeout=timeout,
                                    what=what)
        echo = codec.identifier_bytes(di)
        if reply.data[:4] != echo:
            raise DeviceGarbled(f"{what}: garbled reply (identifier "
                                f"{reply.data[:4][::-1].hex().upper()} echoed)")
        value = reply.data[4:]
        seq = 0
        while reply.follows:
            seq += 1
            if seq > MAX_FOLLOW_UPS:
                raise DeviceGarbled(f"{what}: garbled reply (more than {MAX_FOLLOW_UPS} parts)")
            reply = await self.exchange(codec.read_follow_up(address, di, seq, preamble=p),
                                        address, ReadCode.READ_FOLLOW_UP, timeout=timeout,
                                        what=f"{what} part {seq + 1}")
            if reply.data[:4] != echo or len(reply.data) < 5:
                raise DeviceGarbled(f"{what}: garbled follow-up reply")
            value += reply.data[4:-1]  # the last byte is the part's sequence number
        return value

    async def who_answers(self, pattern: str, di: str, *, timeout: float) -> str:
        """The address of the one meter that answers a read of `di` sent to `pattern` (a
        shortened address, AA in its high bytes); several answering at once garble each
        other (DeviceGarbled), none is a DeviceTimeout. A meter that refuses the
        identifier still says who it is."""
        reply = await self.exchange(
            codec.read_data(pattern, di, preamble=self.settings.preamble), pattern,
            ReadCode.READ_DATA, timeout=timeout, what=f"read {di} at {pattern}",
            abnormal_too=True)
        return reply.address

    async def read_address(self, *, timeout: float) -> str:
        """The broadcast read-address request: the address of the one meter on the bus.
        Several meters answer at once and garble each other (DeviceGarbled)."""
        reply = await self.exchange(codec.read_address(preamble=self.settings.preamble),
                                    codec.BROADCAST, ReadCode.READ_ADDRESS, timeout=timeout,
                                    what="read address (broadcast)")
        if len(reply.data) != 6:
            raise DeviceGarbled(f"read address: garbled reply ({len(reply.data)} bytes)")
        return codec.address_text(reply.data)


IdentifierFailure = PartFailure  # a data identifier that failed


class PollResult(contracts.PollResult):
    """One poll of one meter (a PollOutcome for the bus owner, drivers/contracts.py)."""


class MeterPoller:
    """Reads one meter's profile through a link, identifier by identifier.

    One time per poll, as the Modbus poller does (drivers/modbus.py says why): every
    reading carries the clock's time taken before the first request. A refused or garbled
    identifier is a failure of that identifier, and the others are read on; a timeout ends
    the meter's poll, because a meter that does not answer would otherwise cost the bus one
    timeout per identifier.

    Only the meter's own word that it has no such data (error bit 02) changes what is
    asked: that identifier is set aside (logged, listed in `set_aside`) and asked again
    `reprobe_after` seconds later (a firmware update, a meter replaced), since at 2400 baud
    each request the meter cannot answer holds the bus for a quarter of a second."""

    def __init__(self, name: str, address: str, profile: Dlt645Profile, *,
                 timeout: float = 1.0, pause_between_requests: float = 0.0,
                 clock: Clock | None = None, backoff_max: float = 300.0):
        if not profile.identifiers:
            raise ValueError(f"device {name}: the profile has no identifiers")
        self.name = name
        self.address = address
        self.profile = profile
        self.timeout = timeout
        self.pause = pause_between_requests
        self.clock = clock or RealClock()
        self.backoff_max = backoff_max  # the config's seconds (the owner converts)
        self.reprobe_after = REPROBE_AFTER
        self.set_aside: dict[str, float] = {}  # identifier -> monotonic time to ask again

    @classmethod
    def from_device(cls, device: Any, clock: Clock | None = None) -> MeterPoller:
        o = device.dlt645
        return cls(device.name, o.address, load_profile(o.profile), timeout=o.timeout,
                   pause_between_requests=o.pause_between_requests, clock=clock,
                   backoff_max=o.backoff_max)

    def details(self) -> dict[str, Any]:
        """The meter's own lines in /health: the identifiers it said it does not have,
        not asked until their re-probe."""
        return {"set_aside": sorted(self.set_aside)}

    async def poll(self, link: Dlt645Link) -> PollResult:
        return self.decode(await self.read(link))

    async def read(self, link: Dlt645Link) -> PollResult:
        result = PollResult(self.name)
        when = self.clock.now()
        now = time.monotonic()
        asked = 0
        for ident in self.profile.identifiers:
            if ident.di in self.set_aside:
                if now < self.set_aside[ident.di]:
                    continue
                del self.set_aside[ident.di]
            if asked and self.pause > 0:
                await asyncio.sleep(self.pause)
            asked += 1
            try:
                data = await link.read(self.address, ident.di, timeout=self.timeout)
            except DeviceRefused as exc:
                result.failures.append(IdentifierFailure(ident.di, exc))
                if (exc.exception_code or 0) & NO_SUCH_DATA:
                    self.set_aside[ident.di] = time.monotonic() + self.reprobe_after
                    log.info("%s: meter %s has no %s; not asked for the next %.0f s",
                             self.name, self.address, ident.di, self.reprobe_after)
                continue
            except DeviceGarbled as exc:
                result.failures.append(IdentifierFailure(ident.di, exc))
                continue
            except DeviceError as exc:  # silent, or the bus is gone: the poll ends here
                result.failures.append(IdentifierFailure(ident.di, exc))
                break
            result.raw.append((ident, when, data))  # type: ignore[arg-type]
        return result

    def decode(self, result: PollResult) -> PollResult:
        for ident, when, data in result.raw:
            assert isinstance(ident, Identifier)
            try:
                values = ident.decode(data)
            except FrameError as exc:
                result.failures.append(IdentifierFailure(ident.di, DeviceGarbled(
                    f"meter {self.address} {ident.di}: garbled reply ({exc})")))
                continue
            if values:
                result.values.append(PollValues(when, self.name, tuple(q for q, _ in values),
                                                [v for _, v in values]))
        result.raw.clear()
        return result


async def read_device(device: Any, clock: Clock | None = None
                      ) -> tuple[Dlt645Profile, PollResult]:
    """Poll one configured device once (`energyd read`): (its profile, the PollResult)."""
    poller = MeterPoller.from_device(device, clock)
    async with Dlt645Link(BusSettings.from_options(device.dlt645)) as link:
        result = await poller.poll(link)
    return poller.profile, result
