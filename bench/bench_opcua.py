"""OPC UA acquisition: readings/s and CPU per poll and per data change, against a bare loop
of asyncua's own client.

    .venv/bin/python bench/bench_opcua.py [--compressors 10] [--rate 10] [--speed 600]
                                          [--seconds 5] [--rounds 2]

The controller is `energyd simulate opcua` in a process of its own (its CPU is not
counted), `--compressors` compressors of 7 variables, the plant stepped `--rate` times a
second and run `--speed` times faster than real time (so that a running compressor's
variables move at every step). Measured in this process, with the other side's cost excluded:

1. Polls: back-to-back reads of every node of every compressor, one request per
   compressor. Bare: asyncua's `read_attributes` in a loop. energyd: the driver's poll path
   (`Session.read` and the values turned into Readings). Reported: polls/s and CPU us per
   poll; target: energyd's CPU per poll <= 1.3 x the bare loop's (the rate is shown too,
   but it is the server's: both clients wait on the same Python server).
2. Data changes: one subscription per compressor (the daemon's shape), sampling 0 ms,
   publishing 100 ms. Bare: asyncua's subscription with a handler that counts. energyd:
   `OpcuaSource` (session, watchdog, handler, Readings). Reported: changes/s received and
   CPU us per 1000 changes; target: energyd's CPU per change <= 1.5 x the bare one's.

Rounds alternate bare and energyd, and the medians are compared, so load from elsewhere
falls on both alike. The store is not in the path (bench_store measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from asyncua import Client, ua  # noqa: E402

from energyd.drivers.opcua.driver import OpcuaSource, readings_of  # noqa: E402
from energyd.drivers.opcua.options import OpcuaOptions  # noqa: E402
from energyd.drivers.opcua.session import Session  # noqa: E402
from energyd.simulators.opcua import NAMESPACE, VARIABLES, free_port  # noqa: E402


def _now() -> datetime:
    return datetime.now(UTC)


def _cpu() -> float:
    return time.process_time()


async def bare_polls(url: str, devices: list[str], seconds: float) -> tuple[int, float]:
    async with Client(url, timeout=4) as client:
        ns = await client.get_namespace_index(NAMESPACE)
        groups = [[client.get_node(f"ns={ns};s={d}.{var}") for var, _ in VARIABLES.values()]
                  for d in devices]
        polls, cpu0, end = 0, _cpu(), time.monotonic() + seconds
        while time.monotonic() < end:
            for nodes in groups:
                values = await client.read_attributes(nodes, ua.AttributeIds.Value)
                assert len(values) == len(nodes)
                polls += 1
        return polls, _cpu() - cpu0


async def energyd_polls(options: list[OpcuaOptions], devices: list[str], seconds: float
                        ) -> tuple[int, float]:
    sessions = [Session(options=o) for o in options]
    for s in sessions:
        await s.open()
    try:
        polls, readings, cpu0, end = 0, 0, _cpu(), time.monotonic() + seconds
        receipts: dict[str, int] = {}
        while time.monotonic() < end:
            for name, o, s in zip(devices, options, sessions, strict=True):
                readings += len(readings_of(name, o, await s.read(), _now(), receipts,
                                            nodes=s.nodes))
                polls += 1
        assert readings == polls * len(VARIABLES)
        return polls, _cpu() - cpu0
    finally:
        for s in sessions:
            await s.close()


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.n += 1


async def bare_changes(url: str, devices: list[str], seconds: float) -> tuple[int, float]:
    async with Client(url, timeout=4) as client:
        ns = await client.get_namespace_index(NAMESPACE)
        count = _Count()
        for d in devices:
            sub = await client.create_subscription(100, count)
            await sub.subscribe_data_change(
                [client.get_node(f"ns={ns};s={d}.{var}") for var, _ in VARIABLES.values()],
                queuesize=10, sampling_interval=0)
        await asyncio.sleep(1.0)  # the first values
        n0, cpu0 = count.n, _cpu()
        await asyncio.sleep(seconds)
        return count.n - n0, _cpu() - cpu0


async def energyd_changes(options: list[OpcuaOptions], devices: list[str], seconds: float
                          ) -> tuple[int, float]:
    got = [0]

    def take(readings: list[Any]) -> None:
        got[0] += len(readings)

    sources = [OpcuaSource(d, options=o, interval=1.0, on_readings=take, now=_now)
               for d, o in zip(devices, options, strict=True)]
    tasks = [asyncio.create_task(s.run()) for s in sources]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_subscribed() for s in sources)), 30)
        await asyncio.sleep(1.0)
        n0, cpu0 = got[0], _cpu()
        await asyncio.sleep(seconds)
        return got[0] - n0, _cpu() - cpu0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def main(args: argparse.Namespace) -> bool:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "energyd.cli", "simulate", "opcua",
                            "--port", str(port), "--station", "b", "--compressors",
                            str(args.compressors), "--rate", str(args.rate),
                            "--speed", str(args.speed)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        lines = []
        for line in sim.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        entries = json.loads("".join(lines))["devices"]
        devices = [e["name"] for e in entries]
        url = entries[0]["opcua"]["endpoint"]
        options = [OpcuaOptions.model_validate(dict(e["opcua"], sampling_interval=0,
                                                    publishing_interval=0.1,
                                                    backfill=False)) for e in entries]
        results: dict[str, list[tuple[int, float]]] = {k: [] for k in
                                                       ("bare_poll", "energyd_poll",
                                                        "bare_change", "energyd_change")}
        for _ in range(args.rounds):
            results["bare_poll"].append(await bare_polls(url, devices, args.seconds))
            results["energyd_poll"].append(await energyd_polls(options, devices, args.seconds))
            results["bare_change"].append(await bare_changes(url, devices, args.seconds))
            results["energyd_change"].append(await energyd_changes(options, devices,
                                                                   args.seconds))
    finally:
        sim.terminate()
        sim.wait(15)

    def rate(key: str) -> float:
        return statistics.median(n / args.seconds for n, _ in results[key])

    def cpu_us(key: str, per: int) -> float:
        return statistics.median(c / max(n, 1) * per * 1e6 for n, c in results[key])

    print(f"controller: {args.compressors} compressors x {len(VARIABLES)} variables, plant "
          f"stepped {args.rate:g}/s; {args.rounds} rounds of {args.seconds:g} s, medians")
    bare, mine = rate("bare_poll"), rate("energyd_poll")
    bare_cpu, mine_cpu = cpu_us("bare_poll", 1), cpu_us("energyd_poll", 1)
    ok_poll = mine_cpu <= 1.3 * bare_cpu
    print(f"polls (one request per compressor, {len(VARIABLES)} readings each):")
    print(f"  asyncua bare loop   {bare:9.1f} polls/s  {bare_cpu:8.0f} us CPU per poll")
    print(f"  energyd             {mine:9.1f} polls/s  {mine_cpu:8.0f} us CPU per poll  "
          f"({mine * len(VARIABLES):.0f} readings/s)")
    print(f"  energyd / bare      {mine / bare * 100:9.1f} % of the rate (the server's load "
          "moves it),")
    print(f"                      {mine_cpu / bare_cpu:9.2f} x the CPU per poll (ceiling 1.3 x)"
          f"{'' if ok_poll else '  MISSED'}")
    b, m = cpu_us("bare_change", 1000), cpu_us("energyd_change", 1000)
    ok_change = m <= 1.5 * b
    print("data changes (a subscription per compressor, publishing every 100 ms):")
    print(f"  asyncua bare handler {rate('bare_change'):8.1f} changes/s  {b:8.0f} us CPU per "
          "1000")
    print(f"  energyd              {rate('energyd_change'):8.1f} changes/s  {m:8.0f} us CPU "
          "per 1000 (readings made)")
    print(f"  energyd / bare CPU   {m / b:8.2f} x  (ceiling 1.5 x)"
          f"{'' if ok_change else '  MISSED'}")
    return ok_poll and ok_change


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compressors", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    # the plant runs fast so that every variable of a running compressor moves at each step
    parser.add_argument("--speed", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    ok = asyncio.run(main(parser.parse_args()))
    print("targets met" if ok else "TARGETS MISSED")
    sys.exit(0 if ok else 1)
