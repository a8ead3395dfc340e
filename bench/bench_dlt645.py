"""DL/T 645 acquisition benchmark: meters on transparent serial servers, read back to back.

    .venv/bin/python bench/bench_dlt645.py [--buses 10] [--meters 8] [--duration 10] [--rounds 3]

The simulators run in a child process (--buses DL/T 645 buses on 127.0.0.1 TCP ports, as
transparent serial servers offer them, --meters meters each). In this process, one after
the other in --rounds rounds (so a change in the machine's load weighs on both alike),
each for --duration s, every bus read as fast as its server answers:

- ceiling: a bare client loop per bus: the read-data frames of the profile's identifiers
  built once, each sent and its reply taken off the socket by its length field, with no
  checks and no decoding: what the server and the sockets cost;
- energyd: the driver's poll path per bus (Dlt645Link, MeterPoller: frames built per
  request, replies checked for checksum, address, code and identifier, BCD decoded into
  Readings).

Printed: requests/s, readings/s, CPU microseconds of this process per poll, and energyd's
request rate as a share of the bare loop's; the simulator process's CPU use beside each,
to show whether the server was the limit. The target is the one a real bus sets: on the
standard's 2400 baud 8E1 line (11 bits a byte) a poll's frames alone hold the bus for
about 2.1 s, and energyd's CPU per poll must stay below 1 % of that, so that one gateway
core serves a hundred buses with room to spare. The bare loop is no target: it checks and
decodes nothing, and says what the sockets and the event loop cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _proc import cpu_seconds  # noqa: E402

PROFILE = "dlt645_2007"
BITS_PER_BYTE = 11  # 8E1: start, 8 data, parity, stop
BAUD = 2400
CPU_SHARE_OF_WIRE = 0.01


def wire_seconds_per_poll() -> float:
    """The time a poll's requests and replies take on a 2400 baud line (preambles too)."""
    from energyd.drivers.dlt645.profile import load_profile

    frames = sum(2 * (4 + 12 + 4) + i.size for i in load_profile(PROFILE).identifiers)
    return frames * BITS_PER_BYTE / BAUD


def address(bus: int, meter: int) -> str:
    return f"{bus * 1000 + meter + 1:012d}"


async def serve(buses: int, meters: int) -> None:
    from energyd.simulators.dlt645 import Dlt645Simulator

    sims = [Dlt645Simulator(addresses=[address(b, m) for m in range(meters)])
            for b in range(buses)]
    for s in sims:
        await s.start()
    print(json.dumps([s.port for s in sims]), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for s in sims:
        await s.stop()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def bare_bus(port: int, meters: int, until: float, counts: list[int]) -> None:
    from energyd.drivers.dlt645 import codec
    from energyd.drivers.dlt645.profile import load_profile

    profile = load_profile(PROFILE)
    frames = [codec.read_data(a, i.di)
              for a in (address(port_bus[port], m) for m in range(meters))
              for i in profile.identifiers]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            for frame in frames:
                writer.write(frame)
                buf = b""
                while True:
                    buf += await reader.read(512)
                    start = buf.find(0x68)
                    if start >= 0 and len(buf) >= start + 10 and \
                            len(buf) >= start + 12 + buf[start + 9]:
                        break
                counts[0] += 1
            counts[1] += meters
    finally:
        writer.close()


async def energyd_bus(port: int, meters: int, until: float, counts: list[int]) -> None:
    from energyd.drivers.dlt645.link import BusSettings, Dlt645Link, MeterPoller
    from energyd.drivers.dlt645.profile import load_profile

    profile = load_profile(PROFILE)
    pollers = [MeterPoller(f"m{m}", address(port_bus[port], m), profile)
               for m in range(meters)]
    async with Dlt645Link(BusSettings(transport="tcp", host="127.0.0.1", port=port)) as link:
        while time.monotonic() < until:
            for p in pollers:
                result = await p.poll(link)
                if result.failures:
                    raise RuntimeError(result.error)
                counts[2] += sum(len(v.values) for v in result.values)
            counts[1] += meters
        counts[0] += link.requests


port_bus: dict[int, int] = {}


async def run_one(kind: str, ports: list[int], meters: int, duration: float,
                  sim_pid: int) -> dict[str, float]:
    counts = [0, 0, 0]  # requests, polls, readings
    until = time.monotonic() + duration
    cpu0, sim0, t0 = _cpu(), cpu_seconds(sim_pid), time.monotonic()
    fn = bare_bus if kind == "bare" else energyd_bus
    await asyncio.gather(*(fn(p, meters, until, counts) for p in ports))
    wall = time.monotonic() - t0
    cpu, sim = _cpu() - cpu0, cpu_seconds(sim_pid) - sim0
    if kind == "bare":  # the bare loop decodes nothing: readings are what it fetched
        from energyd.drivers.dlt645.profile import load_profile

        counts[2] = counts[1] * len(load_profile(PROFILE).quantities)
    return {"requests": counts[0], "polls": counts[1], "readings": counts[2], "wall": wall,
            "cpu": cpu, "sim_cpu": sim}


async def main_async(args: argparse.Namespace) -> int:
    # imports and the profile's loading are not part of either loop's cost
    from energyd.drivers.dlt645 import link  # noqa: F401
    from energyd.drivers.dlt645.profile import load_profile

    load_profile(PROFILE)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(args.buses),
                             str(args.meters)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        port_bus.update({p: b for b, p in enumerate(ports)})
        totals: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for kind in ("bare", "energyd"):
                r = await run_one(kind, ports, args.meters, args.duration, proc.pid)
                t = totals.setdefault(kind, dict.fromkeys(r, 0.0))
                for k, v in r.items():
                    t[k] += v
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    profile = load_profile(PROFILE)
    print(f"{args.buses} buses x {args.meters} meters ({PROFILE}, "
          f"{len(profile.quantities)} quantities in {len(profile.identifiers)} requests a "
          f"poll), {args.rounds} rounds of "
          f"{args.duration:g} s each")
    for kind, label in (("bare", "bare client loop"), ("energyd", "energyd driver")):
        t = totals[kind]
        print(f"  {label:18} {t['requests'] / t['wall']:8.0f} requests/s "
              f"{t['readings'] / t['wall']:8.0f} readings/s "
              f"{t['cpu'] / t['polls'] * 1e6:7.0f} us CPU per poll  "
              f"(simulator CPU {t['sim_cpu'] / t['wall'] * 100:.0f} %)")
    share = (totals["energyd"]["requests"] / totals["energyd"]["wall"]) / (
        totals["bare"]["requests"] / totals["bare"]["wall"])
    print(f"  energyd / bare     {share * 100:8.1f} %  of the bare loop's requests/s")
    wire = wire_seconds_per_poll()
    cpu = totals["energyd"]["cpu"] / totals["energyd"]["polls"]
    ceiling = wire * CPU_SHARE_OF_WIRE
    ok = cpu <= ceiling
    print(f"  CPU per poll       {cpu * 1e6:8.0f} us  (ceiling {ceiling * 1e6:.0f} us: "
          f"{CPU_SHARE_OF_WIRE * 100:.0f} % of the {wire:.2f} s a poll holds a {BAUD} baud "
          f"line{'' if ok else '; MISSED'})")
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buses", type=int, default=10)
    parser.add_argument("--meters", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=3)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
