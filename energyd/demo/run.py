"""`energyd demo` as it runs: the plant, the broker and the real daemon on an accelerated
clock, the scenario on its way and the view refreshed until Ctrl-C or the duration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from ruamel.yaml import YAML

from energyd.clock import AcceleratedClock
from energyd.config.loader import load_config
from energyd.demo.broker import Broker
from energyd.demo.options import DemoError, DemoOptions
from energyd.demo.plant import (
    Plant,
    read_tree,
    start_controllers,
    start_meters,
    start_stations,
)
from energyd.demo.scenario import demo_start, scenario
from energyd.demo.view import render, snapshot

log = logging.getLogger("energyd.demo")

REFRESH_S = 0.5


def _setup_log(workdir: Path) -> Callable[[], None]:
    """The daemon's log goes to a file while the view owns the terminal."""
    root = logging.getLogger()
    handler = logging.FileHandler(workdir / "energyd.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = [(h, h.level) for h in root.handlers]
    for h, _ in saved:
        h.setLevel(logging.CRITICAL + 1)
    root.addHandler(handler)

    def restore() -> None:
        root.removeHandler(handler)
        handler.close()
        for h, level in saved:
            h.setLevel(level)

    return restore


def prepare_workdir(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # every run simulates its own days from the start: an old store would mix two runs
    for name in ("energyd.db", "energyd.db-wal", "energyd.db-shm", "energyd.log"):
        with contextlib.suppress(FileNotFoundError):
            (workdir / name).unlink()


async def run_demo(options: DemoOptions, console: Console) -> int:
    from energyd.daemon.app import Daemon

    source = load_config(options.config)  # a bad demo.yaml stops here, with its lines
    if not console.is_terminal and console.width < 130:
        # a log file or a pipe: wide enough that the tables keep whole device names
        console = Console(file=console.file, width=130, highlight=False)
    tree = read_tree(options.config)
    workdir = options.workdir.resolve()
    prepare_workdir(workdir)
    tz = source.site.tz
    start = demo_start(datetime.now(UTC), tz)
    clock = AcceleratedClock(options.speed, start)

    tree.setdefault("storage", {})["path"] = str(workdir / "energyd.db")
    # The shipped factor table as it is: the latest published factor is carried forward
    # (provisional, within accounting.max_factor_age) to the demo's dates.
    if source.accounting.emission_factors is not None:
        tree.setdefault("accounting", {})["emission_factors"] = str(
            source.accounting.emission_factors)
    if options.influx is not None:
        tree["influxdb"] = [options.influx.sink()]

    plant = Plant(tree)
    broker = Broker(options.broker, workdir) if any(
        d.driver == "mqtt" and d.enabled for d in source.devices) else None
    live_mode = console.is_terminal if options.live is None else options.live
    restore_log = _setup_log(workdir)
    daemon: Daemon | None = None
    daemon_task: asyncio.Task[int] | None = None
    scenario_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    wall0 = time.monotonic()
    try:
        await start_meters(plant, source, clock, tz)
        await start_controllers(plant, source, clock, tz)
        if broker is not None:
            await broker.start()
            await start_stations(plant, source, broker, clock, tz)
        effective = workdir / "energyd.yaml"
        with open(effective, "w", encoding="utf-8") as f:
            f.write("# The configuration `energyd demo` ran: config/demo.yaml with the ports it "
                    "bound.\n")
            YAML(typ="safe", pure=True).dump(tree, f)
        config = load_config(effective)
        daemon = Daemon(config, config_path=effective, clock=clock)
        daemon_task = asyncio.create_task(daemon.run(handle_signals=False), name="demo.daemon")
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({ready, daemon_task}, timeout=30,
                           return_when=asyncio.FIRST_COMPLETED)
        if not daemon.ready.is_set():
            ready.cancel()
            if daemon_task.done():
                daemon_task.result()  # raises what stopped it
            raise DemoError(f"the daemon did not start (see {workdir / 'energyd.log'})")
        scenario_task = asyncio.create_task(scenario(plant, config, clock, start),
                                            name="demo.scenario")
        console.print(f"energyd demo: {len(config.devices)} devices, broker "
                      f"{broker.kind if broker else '-'}, {options.speed:g}x "
                      f"(a simulated hour every {3600 / options.speed:.0f} s); "
                      f"Ctrl-C stops it. Log: {workdir / 'energyd.log'}")
        influx_url = options.influx.url if options.influx else None

        def view() -> Group:
            snap = snapshot(daemon.store, config, clock.now())
            return render(snap, config=config, tz=tz, speed=options.speed, workdir=workdir,
                          events=plant.events, wall_s=time.monotonic() - wall0,
                          influx=influx_url, http_port=daemon.http_port,
                          height=console.height if live_mode else None,
                          width=console.width)

        deadline = None if options.duration is None else wall0 + options.duration
        printed_events = 0
        with Live(console=console, auto_refresh=False, transient=False,
                  vertical_overflow="crop") if live_mode \
                else contextlib.nullcontext() as live:
            while not stop.is_set():
                if daemon_task.done():
                    break
                if live is not None:
                    live.update(await asyncio.to_thread(view), refresh=True)
                else:
                    for e in plant.events[printed_events:]:
                        console.print(f"{e.when.astimezone(tz):%a %H:%M}  {e.text}")
                    printed_events = len(plant.events)
                timeout = REFRESH_S if deadline is None else max(
                    0.0, min(REFRESH_S, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout)
                if deadline is not None and time.monotonic() >= deadline:
                    break
        if not live_mode:
            console.print(await asyncio.to_thread(view))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if scenario_task is not None:
            if scenario_task.done() and not scenario_task.cancelled() \
                    and scenario_task.exception() is not None:
                # the view would only show a plant that never spiked nor leaked
                log.error("the demo's scenario failed", exc_info=scenario_task.exception())
            scenario_task.cancel()
        end = clock.now()
        hours = (end - start).total_seconds() / 3600
        # the daemon ended by itself (it never does unless something broke)
        crashed = daemon_task is not None and daemon_task.done()
        if daemon is not None and daemon_task is not None:
            daemon.stop()
            try:
                await asyncio.wait_for(daemon_task, 20)
            except Exception:
                log.exception("the daemon did not stop cleanly")
        for station in plant.stations:
            with contextlib.suppress(Exception):
                await station.close(wait=2.0)
        if broker is not None:
            await broker.stop()
        for sim in plant.meters:
            with contextlib.suppress(Exception):
                await sim.stop()
        for controller in plant.controllers:
            with contextlib.suppress(Exception):
                await controller.close()
        restore_log()
    rel = os.path.relpath(workdir)
    shown = rel if not rel.startswith("..") else str(workdir)
    if crashed:
        console.print(f"\nThe daemon stopped by itself: see {shown}/energyd.log")
    t0 = start.astimezone(tz).isoformat(timespec="minutes")
    t1 = end.astimezone(tz).isoformat(timespec="minutes")
    console.print(
        f"\nStopped after {hours:.1f} simulated hours. The data is in {shown}/: energyd.db "
        f"(the store), energyd.yaml (the configuration that ran), energyd.log.\n"
        f"  energyd status -c {shown}/energyd.yaml\n"
        f"  energyd alerts -c {shown}/energyd.yaml\n"
        f"  energyd report -c {shown}/energyd.yaml --month {start.astimezone(tz):%Y-%m}\n"
        f"  energyd readings export -c {shown}/energyd.yaml --from {t0} --to {t1}",
        markup=False, soft_wrap=True)
    return 1 if crashed else 0

