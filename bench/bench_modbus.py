"""Modbus acquisition benchmark: 200 meters on 20 gateways, polled every second.

    .venv/bin/python bench/bench_modbus.py [--duration 60] [--capacity-duration 60] [--rounds 6]
    taskset -c 0 .venv/bin/python bench/bench_modbus.py     # a one-core gateway (make bench)

Pinned to one CPU (`taskset -c 0`), energyd and its committer run on that core alone, as on
a one-core gateway, and the simulators are moved to the machine's other cores: the meters
are not on the gateway. (On a one-CPU machine they share it, and energyd / bare is then
printed but not a target: it would measure the simulators' share of the core.)

The simulators run in a child process (20 Modbus TCP gateways on 127.0.0.1, 10 Eastron
SDM630 units each). In this process:

0. requests per poll: for every built-in profile, the reads the planner makes against the
   fewest its `readable:` ranges and the gap rule allow (found by trying every split);
1. scheduled: the daemon's polling component (LinkOwner per gateway with its tick on the
   monotonic clock, the SQLite store through the writer) polls all 200 meters every second
   for --duration s: requests per poll against the fewest for the profile,
   polls/s achieved against the 200/s scheduled, lateness of each poll's first request
   against its slot (p50, p99, max), CPU seconds of this process per 1,000 polls, and this
   process's peak RSS (targets: p99 lateness < 100 ms, RSS < 150 MB); the CPU of the
   store's committer process (energyd.store.committer) is counted with this process's;
   its CPU per poll is compared, at the end, with the CPU per request of the `energyd`
   capacity run x requests per poll (target: at most 1.5 x: a scheduled poll costs about
   what its requests cost at full speed);
2. capacity, the same server for all three, each as fast as the server answers:
   - ceiling: the bare pymodbus client loop, one AsyncModbusTcpClient per gateway issuing
     the same reads (each meter's two planned blocks) back to back;
   - energyd: the same owners' production poll path (driver, planner, decoding, readings
     into the store writer, poll records, metrics): every unit is queued to its owner as if
     due, again as soon as the owner's worker has read them all, instead of by the clock;
     the worker decodes and stores each poll while the next request is on the wire, as in
     the daemon; every reading is committed to SQLite within the slice that read it;
   - the same with the store writer discarding what it is given: the acquisition alone,
     which tells the Modbus layer's cost from the durable store's;
   requests/s and CPU microseconds per request of each (the committer's included), and the
   ratio to the bare loop (target: energyd >= 80 %). The three are alternated in rounds
   (10 s slices by default) so a change in the machine's load weighs on all alike; each
   `energyd` slice ends with a wait for the committer to commit the slice's last batch,
   which weighs less the longer the slice. The simulator process's CPU use is printed beside
   each, to show whether the server was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _proc import cpu_seconds, peak_rss_mb  # noqa: E402

PROFILE = "eastron_sdm630"


# --- the simulator process -------------------------------------------------------------------


async def serve(gateways: int, units: int) -> None:
    from energyd.simulators import MeterSimulator

    sims = [MeterSimulator(profile=PROFILE, units=range(1, units + 1), seed=g)
            for g in range(gateways)]
    for s in sims:
        await s.start()
    print(json.dumps([s.port for s in sims]), flush=True)
    # until the parent closes our stdin
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for s in sims:
        await s.stop()


# --- helpers ---------------------------------------------------------------------------------


def config_text(ports: list[int], units: int, interval: float, db: Path) -> str:
    lines = [f"storage: {{path: {db}, flush_interval: 1}}", "http: {enabled: false}",
             "devices:"]
    for g, port in enumerate(ports):
        for u in range(1, units + 1):
            lines += [f"  - name: gw{g:02d}-m{u:02d}", "    driver: modbus",
                      f"    profile: {PROFILE}", f"    interval: {interval}",
                      f"    modbus: {{host: 127.0.0.1, port: {port}, unit: {u}, timeout: 1}}"]
    return "\n".join(lines) + "\n"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class ChildCpu:
    def __init__(self, pid: int):
        self.pid = pid
        self.mark()

    def mark(self) -> None:
        self._cpu, self._wall = cpu_seconds(self.pid), time.perf_counter()

    def share(self) -> float:
        return (cpu_seconds(self.pid) - self._cpu) / (time.perf_counter() - self._wall)


class CommitterCpu:
    """CPU seconds and peak RSS of the store's committer process: part of energyd's cost."""

    def __init__(self, writer: Any):
        self.writer = writer

    def seconds(self) -> float:
        pid = self.writer.committer_pid
        return 0.0 if pid is None else cpu_seconds(pid)

    def peak_rss_mb(self) -> float:
        pid = self.writer.committer_pid
        return 0.0 if pid is None else peak_rss_mb(pid)


def _region(s: Any, ranges: tuple[tuple[int, int], ...]) -> int | None:
    for i, (first, last) in enumerate(ranges):
        if first <= s.address and s.address + s.count - 1 <= last:
            return i
    return None


def _one_read(part: list[Any], ranges: tuple[tuple[int, int], ...], max_gap: int,
              max_registers: int) -> bool:
    if max(s.address + s.count for s in part) - part[0].address > max_registers:
        return False
    where = {_region(s, ranges) for s in part}
    if len(where) > 1:
        return False
    if where == {None}:
        return all(b.address - (a.address + a.count) <= max_gap
                   for a, b in zip(part, part[1:], strict=False))
    return True


def fewest_reads(profile: Any, max_gap: int = 10, max_registers: int = 125) -> int:
    """The fewest requests that read every value of `profile`, found by trying every split
    (not by the planner's rule): a read spans at most `max_registers`, never splits a value,
    and holds values of one `readable:` range only, or else only values outside every range
    with at most `max_gap` registers between two of them."""
    total = 0
    for function in sorted({s.function for s in profile.registers}):
        ranges = profile.readable.get(function, ())
        values = sorted((s for s in profile.registers if s.function == function),
                        key=lambda s: s.address)
        best = [0] + [len(values) + 1] * len(values)  # best[j]: fewest for values[:j]
        for j in range(1, len(values) + 1):
            best[j] = min(best[i] + 1 for i in range(j)
                          if _one_read(values[i:j], ranges, max_gap, max_registers))
        total += best[-1]
    return total


def requests_per_profile() -> list[tuple[str, int, int]]:
    """(profile, requests the planner makes per poll, fewest possible) for every built-in."""
    from energyd.config.profiles import builtin_names, load_profile
    from energyd.drivers.modbus.planner import plan

    rows = []
    for name in builtin_names():
        p = load_profile(name)
        rows.append((name, len(plan(p.registers, readable=p.readable)), fewest_reads(p)))
    return rows


# --- phases ----------------------------------------------------------------------------------


async def scheduled(config_text_: str, duration: float) -> dict[str, float]:
    from energyd.config.loader import parse_config
    from energyd.daemon import polling
    from energyd.daemon.app import Daemon

    daemon = Daemon(parse_config(config_text_, "bench.yaml"), builders=[polling.build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await asyncio.wait_for(daemon.ready.wait(), 30)
    ctx = daemon.context
    assert ctx is not None
    await asyncio.sleep(2.0)  # every device has had its first slot
    owners = [fn.__self__ for k, fn in ctx.health.items() if k.endswith(".poll")]
    for o in owners:
        o.lateness.clear()
    polls0 = sum(o.polls for o in owners)
    requests0 = sum(o._link.requests for o in owners)
    committer = CommitterCpu(ctx.writer)
    cpu0, t0 = time.process_time() + committer.seconds(), time.perf_counter()
    await asyncio.sleep(duration)
    await ctx.writer.flush()
    cpu1, t1 = time.process_time() + committer.seconds(), time.perf_counter()
    polls = sum(o.polls for o in owners) - polls0
    requests = sum(o._link.requests for o in owners) - requests0
    lateness = [x for o in owners for x in o.lateness]
    errors = sum(st.errors for o in owners for st in o.states)
    missed = sum(st.missed for o in owners for st in o.states)
    committed = ctx.writer.committed
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    committer_rss_mb = committer.peak_rss_mb()
    daemon.stop()
    await asyncio.wait_for(task, 30)
    wall = t1 - t0
    return {
        "devices": sum(len(o.states) for o in owners), "links": len(owners),
        "seconds": wall, "polls": polls, "polls_per_s": polls / wall,
        "requests_per_poll": requests / polls if polls else float("nan"),
        "requests_per_s": requests / wall, "errors": errors, "missed": missed,
        "late_p50_ms": pct(lateness, 50) * 1000, "late_p99_ms": pct(lateness, 99) * 1000,
        "late_max_ms": max(lateness) * 1000 if lateness else float("nan"),
        "cpu_s_per_1000_polls": (cpu1 - cpu0) / polls * 1000 if polls else float("nan"),
        "cpu_share": (cpu1 - cpu0) / wall, "peak_rss_mb": rss_mb,
        "committer_rss_mb": committer_rss_mb, "committed": committed,
    }


async def capacity(ports: list[int], units: int, text: str, duration: float,
                   rounds: int, cpu: ChildCpu) -> dict[str, dict[str, float]]:
    """Three runs against the same server, alternated in `rounds` short slices so that a
    change in the machine's load weighs on all alike:
    bare   the bare pymodbus client loop (the ceiling)
    full   energyd's poll path, readings going into the durable store
    acq    the same with the store writer discarding what it is given (acquisition alone)
    """
    from pymodbus.client import AsyncModbusTcpClient

    from energyd.config.loader import parse_config
    from energyd.config.profiles import load_profile
    from energyd.daemon import polling
    from energyd.daemon.app import Daemon
    from energyd.drivers.modbus.planner import plan

    profile = load_profile(PROFILE)
    blocks = plan(profile.registers, readable=profile.readable)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1, retries=0) for p in ports]
    for c in clients:
        await c.connect()
    # the owners run as in the daemon, with a schedule too slow to fire during the run;
    # their queues are then kept full (mine_gateway)
    daemon = Daemon(parse_config(text.replace("interval: 1.0", "interval: 3600"),
                                 "bench.yaml"), builders=[polling.build])
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await asyncio.wait_for(daemon.ready.wait(), 30)
    ctx = daemon.context
    assert ctx is not None
    await asyncio.sleep(1.5)  # the first (jittered) slots have passed
    owners = [fn.__self__ for k, fn in ctx.health.items() if k.endswith(".poll")]
    writer = ctx.writer
    committer = CommitterCpu(writer)
    real = (writer.submit_values, writer.record_polls)
    slice_s = duration / rounds
    totals = {k: {"requests": 0.0, "s": 0.0, "cpu": 0.0, "sim_cpu": 0.0, "polls": 0.0,
                  "committer": 0.0}
              for k in ("bare", "full", "acq")}

    async def bare_gateway(client: AsyncModbusTcpClient, stop: float) -> int:
        n = 0
        while time.perf_counter() < stop:
            for u in range(1, units + 1):
                for b in blocks:
                    rr = await client.read_input_registers(b.address, count=b.count,
                                                           device_id=u)
                    assert not rr.isError()
                    n += 1
        return n

    async def mine_gateway(owner: Any, stop: float) -> None:
        # every unit queued at once, as if all were due: the owner's worker reads them in
        # turn and decodes and stores each while the next request is on the wire, which is
        # how the daemon polls
        while time.perf_counter() < stop:
            for st in owner.states:
                st.queued = True
                st.polled_slot = time.monotonic()
                owner.enqueue(st)
            await owner._queue.join()
            await asyncio.sleep(0)  # the last unit's decoding, queued by the worker, runs
        errors = sum(st.errors for st in owner.states)
        assert not errors, f"{owner.link_id}: {errors} polls failed"

    async def run(kind: str) -> None:
        if kind == "acq":
            writer.submit_values = lambda polls: None
            writer.record_polls = lambda polls: None
        else:
            writer.submit_values, writer.record_polls = real
        req0 = sum(o._link.requests for o in owners)
        polls0 = sum(o.polls for o in owners)
        cpu.mark()
        t0, own0, com0 = time.perf_counter(), time.process_time(), committer.seconds()
        if kind == "bare":
            counts = await asyncio.gather(*(bare_gateway(c, t0 + slice_s) for c in clients))
        else:
            await asyncio.gather(*(mine_gateway(o, t0 + slice_s) for o in owners))
            # what was read is stored within the slice that read it, so the store's work is
            # charged to `full` and none of it spills into the next slice
            await writer.flush()
        wall = time.perf_counter() - t0
        t = totals[kind]
        t["committer"] += committer.seconds() - com0
        t["cpu"] += time.process_time() - own0 + committer.seconds() - com0
        t["sim_cpu"] += cpu.share() * wall
        t["s"] += wall
        if kind == "bare":
            t["requests"] += sum(counts)
            t["polls"] += sum(counts) / len(blocks)
        else:
            t["requests"] += sum(o._link.requests for o in owners) - req0
            t["polls"] += sum(o.polls for o in owners) - polls0

    try:
        for _ in range(rounds):
            for kind in ("bare", "full", "acq"):
                await run(kind)
    finally:
        writer.submit_values, writer.record_polls = real
        for c in clients:
            c.close()
        daemon.stop()
        await asyncio.wait_for(task, 30)
    return {kind: {"rate": t["requests"] / t["s"], "polls": t["polls"] / t["s"],
                   "us": t["cpu"] / t["requests"] * 1e6, "share": t["cpu"] / t["s"],
                   "committer_us": t["committer"] / t["requests"] * 1e6,
                   "sim_share": t["sim_cpu"] / t["s"]}
            for kind, t in totals.items()}


async def main_async(args: argparse.Namespace) -> None:
    from energyd.config.profiles import load_profile

    child = subprocess.Popen([sys.executable, __file__, "--serve", str(args.gateways),
                              str(args.meters // args.gateways)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        units = args.meters // args.gateways
        cpu = ChildCpu(child.pid)
        # Pinned (`taskset -c 0`), energyd and its committer have one core, as on a one-core
        # gateway; the simulated meters are not on the gateway, so they go to the other cores
        # where there are any (sharing energyd's core, each of their replies would preempt it)
        cpus = sorted(os.sched_getaffinity(0))
        pinned = len(cpus) == 1
        others = set(range(os.cpu_count() or 1)) - set(cpus)
        shared = pinned and not others
        if pinned and others:
            os.sched_setaffinity(child.pid, others)
        where = ("the simulators share it" if shared else
                 f"the simulators on CPU {', '.join(map(str, sorted(others)))}")
        print(f"energyd pinned to CPU {cpus[0]} ({where})" if pinned
              else f"on CPUs {', '.join(map(str, cpus))}")
        print("requests per poll, planned / fewest the device allows:")
        profiles_ok = True
        for name, planned, fewest in requests_per_profile():
            profiles_ok &= planned == fewest
            print(f"  {name:22}{planned:4d} / {fewest}{'' if planned == fewest else '  MISSED'}")
        with tempfile.TemporaryDirectory() as tmp:
            text = config_text(ports, units, 1.0, Path(tmp) / "scheduled.db")
            print(f"scheduled: {args.meters} meters on {args.gateways} gateways, every 1 s, "
                  f"{args.duration:g} s ...", flush=True)
            cpu.mark()
            s = await scheduled(text, args.duration)
            sim_share = cpu.share()
            print(f"  polls/s achieved        {s['polls_per_s']:8.1f}  (scheduled "
                  f"{s['devices']:.0f}/s; {s['polls']:.0f} polls, {s['errors']:.0f} errors, "
                  f"{s['missed']:.0f} missed)")
            fewest = fewest_reads(load_profile(PROFILE))
            print(f"  requests/s              {s['requests_per_s']:8.1f}  ("
                  f"{s['requests_per_poll']:.2f} per poll; fewest the {PROFILE} allows: "
                  f"{fewest})")
            print(f"  lateness p50 / p99 / max {s['late_p50_ms']:7.1f} / {s['late_p99_ms']:.1f}"
                  f" / {s['late_max_ms']:.1f} ms   (target p99 < 100 ms)")
            print(f"  CPU s per 1000 polls    {s['cpu_s_per_1000_polls']:8.3f}  "
                  f"(energyd with its committer at {s['cpu_share'] * 100:.0f} % of a core; "
                  f"simulators {sim_share * 100:.0f} %)")
            print(f"  peak RSS                {s['peak_rss_mb']:8.1f} MB  (target < 150 MB; "
                  f"the store's committer process {s['committer_rss_mb']:.1f} MB besides)")

            print(f"capacity against the same server, {args.capacity_duration:g} s each, "
                  f"alternated in {args.rounds} rounds ...", flush=True)
            text2 = config_text(ports, units, 1.0, Path(tmp) / "capacity.db")
            c = await capacity(ports, units, text2, args.capacity_duration, args.rounds, cpu)
            labels = {"bare": "bare pymodbus loop", "full": "energyd poll path",
                      "acq": "  without the store"}
            for kind, label in labels.items():
                r = c[kind]
                committer_us = (f", {r['committer_us']:.0f} of them in the committer"
                                if kind == "full" else "")
                print(f"  {label:22}{r['rate']:8.1f} requests/s  ({r['us']:.0f} us CPU per "
                      f"request{committer_us}; client side at {r['share'] * 100:.0f} %, "
                      f"simulators at {r['sim_share'] * 100:.0f} % of a core)")
            bare, mine = c["bare"]["rate"], c["full"]["rate"]
            # on one core the simulators take their share of it from both loops alike, so
            # the rates compare the two loops' costs plus the simulators', not the loops'
            target = ("not a target: the simulators share the core" if shared else
                      "target >= 80 %")
            print(f"  energyd / bare          {mine / bare * 100:8.1f} %  ({target}; "
                  f"without the store {c['acq']['rate'] / bare * 100:.1f} %)")
            # a scheduled poll should cost about what its requests cost at full speed: the
            # wake-ups, timers and bookkeeping of a slot add at most half of that
            per_poll_us = s["cpu_s_per_1000_polls"] * 1000
            ceiling_us = 1.5 * c["full"]["us"] * s["requests_per_poll"]
            print(f"  scheduled CPU per poll  {per_poll_us:8.0f} us  (ceiling 1.5 x "
                  f"{c['full']['us']:.0f} us per request at full speed x "
                  f"{s['requests_per_poll']:.2f} requests per poll = {ceiling_us:.0f} us; "
                  f"{per_poll_us / ceiling_us * 1.5:.2f} x)")
            ok = (s["late_p99_ms"] < 100 and s["peak_rss_mb"] < 150
                  and (shared or mine >= 0.8 * bare)
                  and s["polls_per_s"] >= 0.95 * s["devices"] and per_poll_us <= ceiling_us
                  and abs(s["requests_per_poll"] - fewest) < 0.01 and profiles_ok)
            print("targets met" if ok else "TARGETS MISSED")
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of scheduled polling (default 60)")
    parser.add_argument("--capacity-duration", type=float, default=60.0,
                        help="seconds of each back-to-back capacity run (default 60)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternations of the three capacity runs (default 6)")
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--gateways", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
