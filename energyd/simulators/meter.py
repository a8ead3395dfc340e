'''Modbus meter simulator: a pymodbus server that serves energyd's meter profiles.

One server plays a serial gateway: several units (meters) behind one TCP port (Modbus TCP
framing, or RTU frames over TCP), or behind one serial port (RTU, e.g. one end of a socat
pty pair). Each unit serves any built-in profile or profile file, and its values are
physically consistent: a daily and weekly load shape, three phases with a small
imbalance, a power factor around 0.93, about 50 Hz, and energy counters that integrate the
power over the clock's time (an AcceleratedClock runs a plant fast, a ManualClock stands
still until a test advances it).

Python API::

    from energyd.simulators import MeterSimulator

    async with MeterSimulator(profile="eastron_sdm630", units=[1, 2, 3],
                              host="127.0.0.1", port=0,          # 0: a free port
                              framer="socket",                   # or "rtu" (RTU over TCP)
                              clock=clock, base_kw=80.0) as sim:
        sim.port                                   # the TCP port actually bound
        meter = sim.unit(2)                        # a SimulatedMeter
        meter.values()                             # {quantity: value} at clock.now()
        meter.power_kw(), meter.import_kwh         # the physical state
        meter.faults.no_reply = True               # the unit goes silent
        meter.faults.drop = 2                      # the next 2 requests go unanswered
        meter.faults.garble = 1                    # the next reply is garbled (one register
        meter.faults.garble_kind = "short"         #   short; "exception": a code no device
                                                   #   sends; "function": fc3's reply to fc4)
        meter.faults.exceptions[52] = 2            # reads touching wire 52 get exception 2
        meter.faults.delay = 0.3                   # every reply 0.3 s late (wall time)
        meter.faults.order = "BADC"                # serve with the bytes of each register swapped
        meter.faults.spike = 3.0                   # load x3 while set (1.0 = off)
        meter.faults.overrides["voltage_l3_v"] = float("nan")   # serve this value instead
        meter.reset_counters()                     # counters restart at 0
        meter.wrap_counters(rollover=None)         # counters wrap at the register's limit soon
        sim.function_codes                         # Counter of every function code received
        sim.requests                               # requests received in all

Arguments (keyword only):
    profile     a profile name, path or Profile for every unit, or {unit: profile}
    units       unit ids served (1..247)
    host, port  TCP listener (loopback only); ignored with serial_port
    framer      "socket" (Modbus TCP) or "rtu" (RTU frames, over TCP or the serial port)
    serial_port serve RTU on this serial device instead of TCP (baudrate=9600)
    clock       energyd.clock Clock (default RealClock)
    base_kw     full-production load of each unit in kW, or {unit: kW}; negative = generation
    faults      {unit: Faults} or a list of CLI specs such as "2:no_reply" (see parse_fault)
    tz          time zone of the load shape (default UTC)
    seed        varies the wander between otherwise equal simulators

Requests are served one at a time, as on a real RS485 bus behind a gateway. A request to a
unit that is not there gets no reply, as on a serial bus. Write requests are refused with
exception 1 and, like every request, counted in `function_codes`.
'''

from __future__ import annotations

import asyncio
import cmath
import contextlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.transaction import TransactionManager

from energyd.clock import Clock, RealClock
from energyd.config.profiles import Profile, RegisterSpec, load_profile
from energyd.drivers.modbus.decode import encode
from energyd.simulators.loadshape import load_factor
from energyd.simulators.loopback import check_loopback

NOMINAL_V = 230.0
RTU_SILENCE = 0.002  # seconds between RTU frames on the simulated bus
SQRT3 = math.sqrt(3.0)
_A = cmath.exp(-2j * math.pi / 3)  # phase rotation L1 -> L2


@dataclass
class Faults:
    """Switches a test or an operator can flip while the simulator runs."""

    no_reply: bool = False
    drop: int = 0  # the next this many requests go unanswered (a noisy line), then replies
    # the next this many replies are garbled (a noisy line whose damage the checksum missed):
    # "short" one register fewer than asked, "exception" an exception code no device sends,
    # "function" the reply of the other register read (fc3 for fc4 and back)
    garble: int = 0
    garble_kind: str = "short"
    exceptions: dict[int, int] = field(default_factory=dict)  # wire address -> exception code
    delay: float = 0.0  # wall seconds added before each reply
    order: str | None = None  # serve every value in this byte order instead of the profile's
    spike: float = 1.0  # load multiplier
    overrides: dict[str, float] = field(default_factory=dict)  # quantity -> value served (NaN too)


class SimulatedMeter:
    """One unit: its physical state and the registers it serves."""

    def __init__(self, unit: int, profile: Profile, *, clock: Clock, base_kw: float,
                 seed: int = 0, tz: tzinfo | None = None, faults: Faults | None = None):
        self.unit = unit
        self.profile = profile
        self.clock = clock
        self.base_kw = base_kw
        self.seed = seed + unit
        self.tz = tz
        self.faults = faults or Faults()
        self.requests = 0
        s = self.seed
        split = [1 + 0.05 * math.sin(s + 2.1 * i) for i in range(3)]
        self._split = [x / sum(split) for x in split]
        # a meter that has been in service a while
        self.import_kwh = round(abs(base_kw) * 24 * 300 + 1000.0 * unit, 1)
        self.export_kwh = round(10.0 * unit, 1)
        self.reactive_kvarh = round(self.import_kwh * 0.4, 1)
        self.rollover: float | None = None
        self._last = clock.now()
        ranges: dict[int, list[RegisterSpec]] = {}
        for spec in profile.registers:
            ranges.setdefault(spec.function, []).append(spec)
        self._by_function = ranges

    # --- physics ------------------------------------------------------------------------

    def power_kw(self, t: datetime | None = None) -> float:
        """Total active power at `t` (default now), + = import."""
        t = t or self.clock.now()
        return self.base_kw * load_factor(t, self.seed, self.tz) * self.faults.spike

    def _pf(self, ts: float) -> float:
        return 0.93 + 0.03 * math.sin(ts / 1800.0 + self.seed)

    def advance(self) -> None:
        """Integrate the counters up to the clock's now."""
        now = self.clock.now()
        dt = (now - self._last).total_seconds()
        if dt <= 0:
            return
        steps = min(2000, max(1, math.ceil(dt / 60.0)))
        h = dt / steps
        t0 = self._last.timestamp()
        prev = self.power_kw(self._last)
        for i in range(1, steps + 1):
            t = datetime.fromtimestamp(t0 + i * h, self._last.tzinfo)
            p = self.power_kw(t)
            avg = (prev + p) / 2
            kwh = avg * h / 3600.0
            if kwh >= 0:
                self.import_kwh += kwh
            else:
                self.export_kwh -= kwh
            pf = self._pf(t.timestamp())
            self.reactive_kvarh += abs(kwh) * math.tan(math.acos(pf))
            prev = p
        if self.rollover:
            self.import_kwh %= self.rollover
            self.export_kwh %= self.rollover
            self.reactive_kvarh %= self.rollover
        self._last = now

    def values(self) -> dict[str, float]:
        """Every quantity the simulator knows, at the clock's now (counters advanced)."""
        self.advance()
        t = self.clock.now()
        ts = t.timestamp()
        p = self.power_kw(t)
        pf = self._pf(ts)
        volts = [NOMINAL_V * (1 + 0.01 * math.sin(ts / 97.0 + self.seed + 2.1 * i))
                 for i in range(3)]
        phase_p = [p * share for share in self._split]
        amps = [abs(pp) * 1000.0 / (v * pf) for pp, v in zip(phase_p, volts, strict=True)]
        phasor_v = [volts[i] * _A**i for i in range(3)]
        phi = math.acos(pf)
        i_n = abs(sum(amps[i] * _A**i * cmath.exp(-1j * phi) for i in range(3)))
        q = abs(p) * math.tan(phi)
        out = {
            "active_power_kw": p,
            "active_power_l1_kw": phase_p[0],
            "active_power_l2_kw": phase_p[1],
            "active_power_l3_kw": phase_p[2],
            "reactive_power_kvar": q,
            "apparent_power_kva": abs(p) / pf,
            "power_factor": pf,
            "frequency_hz": 50.0 + 0.04 * math.sin(ts / 300.0 + self.seed),
            "voltage_l1_v": volts[0],
            "voltage_l2_v": volts[1],
            "voltage_l3_v": volts[2],
            "voltage_l12_v": abs(phasor_v[0] - phasor_v[1]),
            "voltage_l23_v": abs(phasor_v[1] - phasor_v[2]),
            "voltage_l31_v": abs(phasor_v[2] - phasor_v[0]),
            "current_l1_a": amps[0],
            "current_l2_a": amps[1],
            "current_l3_a": amps[2],
            "current_n_a": i_n,
            "active_energy_import_kwh": self.import_kwh,
            "active_energy_export_kwh": self.export_kwh,
            "reactive_energy_import_kvarh": self.reactive_kvarh,
        }
        out.update(self.faults.overrides)
        return out

    # --- counter faults -----------------------------------------------------------------

    def reset_counters(self) -> None:
        """The meter was reset (or replaced): every counter starts again at 0."""
        self.advance()
        self.import_kwh = self.export_kwh = self.reactive_kvarh = 0.0

    def wrap_counters(self, rollover: float | None = None, *, minutes: float = 1.0) -> float:
        """Counters wrap at `rollover` (default: the largest value the profile's import
        register holds); they are set so the import counter wraps in about `minutes` of
        load. Returns the rollover used."""
        self.advance()
        if rollover is None:
            rollover = _counter_limit(self.profile)
        self.rollover = rollover
        margin = max(abs(self.base_kw) * minutes / 60.0 * 0.3, 0.01)
        self.import_kwh = rollover - margin
        return rollover

    # --- registers ----------------------------------------------------------------------

    def read(self, function: int, address: int, count: int) -> list[int] | ExcCodes:
        """The words (or bits) this unit answers to a read, or the exception it replies."""
        specs = self._by_function.get(function)
        if not specs:
            return ExcCodes.ILLEGAL_FUNCTION
        lo = min(s.address for s in specs)
        hi = max(s.address + s.count for s in specs)
        end = address + count
        if address < lo or end > hi:
            return ExcCodes.ILLEGAL_ADDRESS
        # a range the profile says is answered whole is answered only whole: a read across
        # its edge is refused, as a meter whose register list stops there would
        for first, last in self.profile.readable.get(function, ()):
            if address <= last and end > first and (address < first or end - 1 > last):
                return ExcCodes.ILLEGAL_ADDRESS
        for wire, code in self.faults.exceptions.items():
            if address <= wire < end:
                return ExcCodes(code)
        values = self.values()
        words = [0] * count
        for spec in specs:
            if spec.address + spec.count <= address or spec.address >= end:
                continue
            value = values.get(spec.quantity, 0.0)
            if function in (1, 2):
                encoded = [1 if value else 0]
            else:
                if spec.transform == "four_quadrant_pf":
                    value = value if value >= 0 else -2 - value
                encoded = encode(value, spec.type, self.faults.order or spec.order,
                                 spec.scale, spec.offset)
            for i, word in enumerate(encoded):
                j = spec.address - address + i
                if 0 <= j < count:
                    words[j] = word
        return words


def _counter_limit(profile: Profile) -> float:
    try:
        spec = profile.register("active_energy_import_kwh")
    except KeyError:
        return 1_000_000.0
    if spec.type.startswith("float"):
        return 1_000_000.0
    bits = 16 * spec.count
    top = 2**bits - 1 if spec.type.startswith("u") else 2 ** (bits - 1) - 1
    return top * spec.scale + spec.offset


def parse_fault(spec: str) -> tuple[int, str, str | None]:
    """"UNIT:KIND[=VALUE]" -> (unit, kind, value). Kinds: no_reply, drop=N, exception=ADDR[/CODE],
    slow=SECONDS, swap[=ORDER], spike=FACTOR, reset, wrap[=ROLLOVER],
    garble=N[/short|exception|function]."""
    try:
        unit_text, rest = spec.split(":", 1)
        unit = int(unit_text)
    except ValueError:
        raise ValueError(f"fault {spec!r}: expected UNIT:KIND[=VALUE], e.g. 2:no_reply") from None
    kind, _, value = rest.partition("=")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault {spec!r}: unknown kind {kind!r} "
                         f"(one of {', '.join(sorted(FAULT_KINDS))})")
    return unit, kind, value or None


FAULT_KINDS = {"no_reply", "drop", "exception", "slow", "swap", "spike", "reset", "wrap",
               "garble"}
GARBLED_EXCEPTION = 0x5A  # an exception code outside the standard's (1-4, 5, 6, 8, 10, 11)


def apply_fault(meter: SimulatedMeter, kind: str, value: str | None) -> None:
    f = meter.faults
    try:
        if kind == "no_reply":
            f.no_reply = True
        elif kind == "drop":
            f.drop = int(value or 1)
        elif kind == "garble":
            count, _, how = (value or "1").partition("/")
            if how not in ("", "short", "exception", "function"):
                raise ValueError(f"garble kind {how!r}: short, exception or function")
            f.garble, f.garble_kind = int(count), how or "short"
        elif kind == "exception":
            if value is None:
                raise ValueError("exception needs =ADDRESS[/CODE]")
            addr, _, code = value.partition("/")
            f.exceptions[int(addr, 0)] = int(code or 2)
        elif kind == "slow":
            f.delay = float(value or 0.5)
        elif kind == "swap":
            f.order = value or {"ABCD": "BADC", "CDAB": "DCBA", "BADC": "ABCD",
                                "DCBA": "CDAB"}[meter.profile.registers[0].order]
        elif kind == "spike":
            f.spike = float(value or 3.0)
        elif kind == "reset":
            meter.reset_counters()
        elif kind == "wrap":
            meter.wrap_counters(float(value) if value else None)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"fault {meter.unit}:{kind}: {exc}") from None


class _Handler(ServerRequestHandler):
    """Serves each request from the PDU it arrived with (the stock handler reads the last
    PDU of the connection after awaiting, so a slow reply could go out under the next
    request's transaction id), and lets the simulator see every function code."""

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        sim: MeterSimulator = self.server.energyd_sim
        try:
            used = TransactionManager.callback_data(self, data, addr)
        except ModbusIOException as exc:
            sim._count(exc.fcode or 0)
            response = ExceptionResponse(exc.fcode or 0, ExcCodes.ILLEGAL_FUNCTION,
                                         device_id=exc.dev_id or 0,
                                         transaction=exc.transaction_id or 0)
            self.server_send(response, addr)
            return len(data)
        if self.last_pdu:
            pdu, where = self.last_pdu, self.last_addr
            task = asyncio.get_running_loop().create_task(sim._serve(self, pdu, where))
            sim._tasks.add(task)
            task.add_done_callback(sim._tasks.discard)
        return used


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _SerialServer(ModbusSerialServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class MeterSimulator:
    """Several simulated meters behind one listener; an async context manager."""

    def __init__(self, *, profile: str | Profile | Mapping[int, str | Profile] = "eastron_sdm630",
                 units: Iterable[int] = (1,), host: str = "127.0.0.1", port: int = 0,
                 framer: str = "socket", serial_port: str | None = None,
                 baudrate: int = 9600, clock: Clock | None = None,
                 base_kw: float | Mapping[int, float] = 50.0,
                 faults: Mapping[int, Faults] | Iterable[str] | None = None,
                 tz: tzinfo | None = None, seed: int = 0):
        units = list(units)
        if not units or any(not 1 <= u <= 247 for u in units):
            raise ValueError("units must be ids from 1 to 247")
        check_loopback(host, "the simulator's listening address")
        if framer not in ("socket", "rtu"):
            raise ValueError("framer must be 'socket' or 'rtu'")
        if serial_port is not None and framer != "rtu":
            raise ValueError("a serial port carries RTU frames: use framer='rtu'")
        self.clock = clock or RealClock()
        self.host, self.port, self.framer = host, port, framer
        self.serial_port, self.baudrate = serial_port, baudrate
        self.units: dict[int, SimulatedMeter] = {}
        for u in units:
            ref = profile if isinstance(profile, str | Profile) else profile[u]
            kw = base_kw if isinstance(base_kw, int | float) else base_kw[u]
            prof = ref if isinstance(ref, Profile) else load_profile(ref)
            self.units[u] = SimulatedMeter(u, prof, clock=self.clock,
                                           base_kw=float(kw), seed=seed, tz=tz)
        if isinstance(faults, Mapping):
            for u, f in faults.items():
                self.units[u].faults = f
        elif faults is not None:
            for text in faults:
                u, kind, value = parse_fault(text)
                if u not in self.units:
                    raise ValueError(f"fault {text!r}: unit {u} is not simulated")
                apply_fault(self.units[u], kind, value)
        self.function_codes: Counter[int] = Counter()
        self.requests = 0
        self._server: Any = None
        self._bus = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def unit(self, unit: int) -> SimulatedMeter:
        return self.units[unit]

    def _count(self, function_code: int) -> None:
        self.requests += 1
        self.function_codes[function_code] += 1

    def _context(self) -> list[SimDevice]:
        devices = []
        for u, meter in self.units.items():
            specs = meter.profile.registers
            lo = min(s.address for s in specs)
            hi = max(s.address + s.count for s in specs)
            devices.append(SimDevice(
                id=u, simdata=[SimData(lo, count=hi - lo, values=0, datatype=DataType.REGISTERS)],
                action=self._action(meter)))
        return devices

    def _action(self, meter: SimulatedMeter) -> Any:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         current: list[int], set_values: Any) -> ExcCodes | None:
            if set_values is not None or function_code not in (1, 2, 3, 4):
                return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are not writable
            if function_code in (1, 2):
                return ExcCodes.ILLEGAL_FUNCTION  # profiles in this package hold no bits
            words = meter.read(function_code, address, count)
            if isinstance(words, ExcCodes):
                return words
            base = address - start_address
            current[base:base + count] = words
            return None

        return action

    async def _serve(self, handler: _Handler, pdu: Any, addr: Any) -> None:
        self._count(pdu.function_code)
        meter = self.units.get(pdu.dev_id)
        if meter is None:
            return  # nobody at that address on the bus: silence
        async with self._bus:
            meter.requests += 1
            if meter.faults.no_reply:
                return
            if meter.faults.drop > 0:
                meter.faults.drop -= 1
                return
            if meter.faults.delay > 0:
                await asyncio.sleep(meter.faults.delay)
            try:
                response = await pdu.datastore_update(self._server.context, pdu.dev_id)
            except Exception:  # noqa: BLE001 - a malformed request gets what a meter sends
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
            if meter.faults.garble > 0:
                meter.faults.garble -= 1
                if meter.faults.garble_kind == "exception":
                    response = ExceptionResponse(pdu.function_code, GARBLED_EXCEPTION)
                elif meter.faults.garble_kind == "function" and pdu.function_code in (3, 4):
                    # the reply of the other register read: right length, wrong request
                    other = (ReadInputRegistersResponse if pdu.function_code == 3
                             else ReadHoldingRegistersResponse)
                    response = other(registers=list(getattr(response, "registers", [])))
                elif getattr(response, "registers", None):
                    response.registers = response.registers[:-1]
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            handler.server_send(response, addr)
            if self.framer == "rtu":
                # a bus is silent between frames (3.5 characters); without it a late reply
                # and the next one could reach the master as one chunk
                await asyncio.sleep(RTU_SILENCE)

    async def start(self) -> MeterSimulator:
        framer = FramerType.SOCKET if self.framer == "socket" else FramerType.RTU
        if self.serial_port is not None:
            self._server = _SerialServer(self._context(), framer=FramerType.RTU,
                                         port=self.serial_port, baudrate=self.baudrate)
        else:
            self._server = _TcpServer(self._context(), address=(self.host, self.port),
                                      framer=framer)
        self._server.energyd_sim = self
        await self._server.serve_forever(background=True)
        if self.serial_port is None:
            self.port = self._server.transport.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
            self._server = None

    async def __aenter__(self) -> MeterSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_cli(*, profile: str, port: int, units: list[int], framer: str = "socket",
                  host: str = "127.0.0.1", serial_port: str | None = None, baudrate: int = 9600,
                  faults: list[str] | None = None, base_kw: float = 50.0, speed: float = 1.0,
                  duration: float | None = None, announce: Any = print) -> None:
    """`energyd simulate meter`: serve until cancelled (or for `duration` wall seconds)."""
    from energyd.clock import AcceleratedClock

    clock: Clock = AcceleratedClock(speed) if speed != 1.0 else RealClock()
    sim = MeterSimulator(profile=profile, units=units, host=host, port=port, framer=framer,
                         serial_port=serial_port, baudrate=baudrate, clock=clock,
                         base_kw=base_kw, faults=faults or [])
    async with sim:
        where = serial_port or f"{host}:{sim.port}"
        announce(f"simulating {profile} units {','.join(map(str, units))} on {where} "
                 f"({'RTU' if framer == 'rtu' else 'Modbus TCP'} framing)")
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
