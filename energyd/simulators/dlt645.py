'''DL/T 645-2007 meter simulator: several meters on one bus, over TCP or a serial port.

One simulator is one RS485 bus: every meter on it hears every request and the one
addressed answers, over a TCP listener (what a transparent serial server offers) or a
serial device (e.g. one end of a socat pty pair). The values are the Modbus simulator's
physics (simulators/meter.py: a load shape, three phases, a power factor about 0.93,
counters that integrate the power over the clock's time), served in every identifier of
the built-in DL/T 645 profiles, in the standard's BCD formats.

Python API::

    from energyd.simulators.dlt645 import Dlt645Simulator

    async with Dlt645Simulator(addresses=["000000000001", "000000000002"], port=0,
                               clock=clock, base_kw=40.0) as sim:
        sim.port                            # the TCP port bound (serial_port=...: a tty)
        sim.served("000000000001")          # {quantity: value as encoded} at clock.now()
        meter = sim.meter("000000000002")
        meter.faults.no_reply = True        # the meter goes silent
        meter.faults.error = 0x02           # every read gets an abnormal reply, error 02
        meter.faults.refuse.add("0201FF00") # this identifier: "no such data"
        meter.faults.slow = 0.3             # each reply 0.3 s late (wall time)
        meter.faults.parts = 2              # replies in parts of 2 value bytes (follow-ups)
        meter.faults.trickle = 0.2          # each reply's last 6 bytes 0.2 s late
        sim.control_codes                   # Counter of every control code received
        sim.unexpected                      # control codes other than 0x11, 0x12, 0x13

A request to a shortened address (AA in some bytes; AA..AA for the broadcast read address)
is answered by every meter it selects at once: with more than one, the replies collide on
the wire, and the simulator sends what a collision leaves, bytes with a wrong checksum.
'''

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from energyd.clock import Clock, RealClock
from energyd.config.profiles import Profile
from energyd.drivers.dlt645 import codec
from energyd.drivers.dlt645.codec import Frame, FrameError
from energyd.drivers.dlt645.profile import Identifier, builtin_names, load_profile
from energyd.simulators.loopback import check_loopback
from energyd.simulators.meter import SimulatedMeter

READ_CODES = {0x11, 0x12, 0x13}


@dataclass
class Dlt645Faults:
    no_reply: bool = False
    error: int | None = None  # error byte of an abnormal reply to every read
    refuse: set[str] = field(default_factory=set)  # identifiers answered "no such data"
    slow: float = 0.0  # wall seconds before each reply
    parts: int = 0  # > 0: value bytes sent in parts of this size (read follow-up)
    # > 0: a reply is sent but for its last 6 bytes, which follow this many wall seconds
    # later (a reply still on the line)
    trickle: float = 0.0


def identifier_table() -> dict[str, Identifier]:
    """Every identifier of the built-in profiles (they agree on the formats)."""
    table: dict[str, Identifier] = {}
    for name in builtin_names():
        for ident in load_profile(name).identifiers:
            table.setdefault(ident.di, ident)
    return table


def reply_frame(address: str, control: int, data: bytes, *, preamble: bool = True) -> bytes:
    """A meter's frame with any control code (the simulator is the meter; energyd's codec
    builds read requests only)."""
    body = bytes([codec.START]) + codec.address_bytes(address) + bytes(
        [codec.START, control, len(data)]) + codec.add_offset(data)
    frame = body + bytes([sum(body) & 0xFF, codec.END])
    return codec.PREAMBLE + frame if preamble else frame


class SimulatedDlt645Meter:
    def __init__(self, address: str, index: int, *, clock: Clock, base_kw: float):
        self.address = address
        self.faults = Dlt645Faults()
        self.physics = SimulatedMeter(index, Profile("dlt645", "DL/T 645 simulator", ()),
                                      clock=clock, base_kw=base_kw)
        self.requests = 0

    def values(self) -> dict[str, float]:
        return self.physics.values()


class Dlt645Simulator:
    """One bus of simulated DL/T 645 meters (the module docstring has the API)."""

    def __init__(self, *, addresses: Iterable[str], host: str = "127.0.0.1", port: int = 0,
                 serial_port: str | None = None, baudrate: int = 2400, parity: str = "E",
                 clock: Clock | None = None, base_kw: float = 40.0):
        check_loopback(host)
        if abs(base_kw) >= 80:  # XX.XXXX kW holds at most 79.9999
            raise ValueError("base_kw must stay below 80 kW: the standard's power format "
                             "XX.XXXX kW holds no more")
        self.clock = clock or RealClock()
        self.meters = {a: SimulatedDlt645Meter(codec.address_text(codec.address_bytes(a)),
                                               i, clock=self.clock, base_kw=base_kw)
                       for i, a in enumerate(addresses, start=1)}
        self.table = identifier_table()
        self.host, self.port = host, port
        self.serial_port, self.baudrate, self.parity = serial_port, baudrate, parity
        self.control_codes: Counter[int] = Counter()
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._serial: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[Any] = set()

    def meter(self, address: str) -> SimulatedDlt645Meter:
        return self.meters[address]

    @property
    def unexpected(self) -> set[int]:
        return set(self.control_codes) - READ_CODES

    # --- values -------------------------------------------------------------------------

    def _value_bytes(self, meter: SimulatedDlt645Meter, ident: Identifier) -> bytes:
        values = meter.values()
        out = b""
        for spec in ident.values:
            # the phases' factors (not kept by energyd): the total's, in this physics
            v = values[spec.quantity] if spec.quantity else values["power_factor"]
            out += codec.encode_bcd(v / spec.scale, spec.size, spec.decimals, spec.signed)
        return out

    def served(self, address: str) -> dict[str, float]:
        """What the meter serves now, as its BCD digits say (every built-in identifier)."""
        meter = self.meters[address]
        out: dict[str, float] = {}
        for ident in self.table.values():
            out.update(ident.decode(self._value_bytes(meter, ident)))
        return out

    # --- the bus ------------------------------------------------------------------------

    def _heard(self, frame: Frame, send: Any) -> None:
        """One request on the bus: every meter hears it, the addressed one answers."""
        self.requests += 1
        self.control_codes[frame.control] += 1
        if frame.is_reply:
            return
        selected = [m for m in self.meters.values() if codec.selects(frame.address, m.address)]
        for m in selected:
            m.requests += 1
        answering = [m for m in selected if not m.faults.no_reply]
        replies = [(m, self._answer(m, frame)) for m in answering]
        if len(replies) == 1:
            self._later(*replies[0], send=send)
        elif replies:  # a collision: the replies' bytes overlaid on the wire
            mixed = bytearray(max(len(r) for _, r in replies))
            mixed[:] = b"\xff" * len(mixed)
            for _, r in replies:
                for i, b in enumerate(r):
                    mixed[i] &= b  # RS485 idles high: a 0 bit wins
            self._later(replies[0][0], bytes(mixed), send=send)

    def _answer(self, m: SimulatedDlt645Meter, frame: Frame) -> bytes:
        code = frame.control
        if code == 0x13:
            return reply_frame(m.address, 0x93, codec.address_bytes(m.address))
        if code not in (0x11, 0x12) or len(frame.data) < 4:
            return reply_frame(m.address, 0xC0 | code, bytes([0x01]))  # other error
        di = frame.data[:4][::-1].hex().upper()
        ident = self.table.get(di)
        if m.faults.error is not None:
            return reply_frame(m.address, 0xC0 | code, bytes([m.faults.error]))
        if ident is None or di in m.faults.refuse:
            return reply_frame(m.address, 0xC0 | code, bytes([0x02]))
        value = self._value_bytes(m, ident)
        parts = m.faults.parts
        if parts <= 0:
            return reply_frame(m.address, 0x91, frame.data[:4] + value)
        chunks = [value[i:i + parts] for i in range(0, len(value), parts)]
        seq = frame.data[4] if code == 0x12 and len(frame.data) > 4 else 0
        if seq >= len(chunks):
            return reply_frame(m.address, 0xC0 | code, bytes([0x01]))
        more = 0x20 if seq + 1 < len(chunks) else 0
        tail = bytes([seq]) if code == 0x12 else b""
        return reply_frame(m.address, 0x80 | more | code, frame.data[:4] + chunks[seq] + tail)

    def _later(self, m: SimulatedDlt645Meter, data: bytes, *, send: Any) -> None:
        slow, trickle = m.faults.slow, m.faults.trickle
        if slow <= 0 and trickle <= 0:
            send(data)
            return

        async def late() -> None:
            await asyncio.sleep(slow)
            if trickle > 0:
                send(data[:-6])
                await asyncio.sleep(trickle)
                data_ = data[-6:]
            else:
                data_ = data
            send(data_)

        task = asyncio.get_running_loop().create_task(late())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _feed(self, buffer: bytearray, send: Any) -> None:
        while True:
            try:
                frame = codec.take_frame(buffer)
            except FrameError:
                continue  # a damaged request: a meter stays silent
            if frame is None:
                return
            self._heard(frame, send)

    # --- serving ------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buffer = bytearray()

        def send(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        try:
            while data := await reader.read(4096):
                buffer += data
                self._feed(buffer, send)
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self) -> Dlt645Simulator:
        if self.serial_port is not None:
            import serial

            self._serial = serial.Serial(self.serial_port, baudrate=self.baudrate,
                                         parity=self.parity, timeout=0, write_timeout=0)
            buffer = bytearray()
            fd = self._serial.fileno()

            loop = asyncio.get_running_loop()

            def readable() -> None:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    return
                except OSError:  # the other end is gone (a pty closed): the bus is quiet
                    loop.remove_reader(fd)
                    return
                buffer.extend(data)
                self._feed(buffer, self._serial.write)

            loop.add_reader(fd, readable)
        else:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._serial is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
            self._serial.close()
            self._serial = None
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Dlt645Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def apply_fault(sim: Dlt645Simulator, spec: str) -> None:
    """'ADDRESS:KIND[=VALUE]': no_reply, error=HEX, refuse=DI, slow=SECONDS, parts=N,
    trickle=SECONDS."""
    address, _, rest = spec.partition(":")
    kind, _, value = rest.partition("=")
    address = address.zfill(12)
    if address not in sim.meters:
        raise ValueError(f"fault {spec!r}: no meter at address {address}")
    f = sim.meters[address].faults
    try:
        if kind == "no_reply":
            f.no_reply = True
        elif kind == "error":
            f.error = int(value or "02", 16)
        elif kind == "refuse":
            f.refuse.add(value.upper())
        elif kind == "slow":
            f.slow = float(value)
        elif kind == "parts":
            f.parts = int(value)
        elif kind == "trickle":
            f.trickle = float(value)
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except ValueError as exc:
        raise ValueError(f"fault {spec!r}: {exc} (kinds: no_reply, error=HEX, refuse=DI, "
                         "slow=SECONDS, parts=N, trickle=SECONDS)") from None


async def run_cli(*, addresses: list[str], port: int, serial_port: str | None = None,
                  baudrate: int = 2400, parity: str = "E", faults: list[str] | None = None,
                  base_kw: float = 40.0, speed: float = 1.0, duration: float | None = None,
                  announce: Any = print) -> None:
    """`energyd simulate dlt645`: serve until cancelled (or for `duration` wall seconds)."""
    from energyd.clock import AcceleratedClock

    clock: Clock = AcceleratedClock(speed) if speed != 1.0 else RealClock()
    sim = Dlt645Simulator(addresses=addresses, port=port, serial_port=serial_port,
                          baudrate=baudrate, parity=parity, clock=clock, base_kw=base_kw)
    for spec in faults or []:
        apply_fault(sim, spec)
    async with sim:
        where = serial_port or f"127.0.0.1:{sim.port}"
        announce(f"simulating DL/T 645 meters {','.join(sim.meters)} on {where}")
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
