"""`energyd demo`: a whole simulated plant in one process, with time accelerated.

What runs, all on loopback ports picked at start:

- a Modbus gateway simulator (energyd.simulators.meter) for every `host:port` of the
  config's Modbus devices, serving each unit with the device's own profile; a meter's
  full-production load is 45 % of its `rated_power_kw`;
- an MQTT broker: Mosquitto when it is installed, else the embedded amqtt;
- a compressor station (energyd.simulators.compressor) for every `station` of the config's
  MQTT devices, publishing to the topics the config subscribes to;
- the real daemon (energyd.daemon.app.Daemon) polling all of it into a store in the
  working directory, rolling hours into MWh and tCO2 and raising alerts, with an
  AcceleratedClock (360x by default: a simulated hour every 10 seconds);
- with `influx`, the daemon also forwards to that InfluxDB, so the dashboards fill.

The scenario: the plant starts on a weekday at 20:00 site time, at least half a day in
the past (so that, forwarded to InfluxDB, the data sits in Grafana's usual ranges). One
simulated hour in, the first grid_import meter draws four times its load for an hour (the
spike); two hours in, the first compressor station starts leaking 10 m3/min, after the
shift has ended (the leak). The config's alert rules (config/demo.yaml: a threshold on the
incomer, off-shift load on the compressors) report both.

The terminal view shows the devices with their current kW and status, the latest hourly
rows (MWh, source, tCO2) and the alerts. Ctrl-C (or `duration`) stops everything cleanly;
the store, the configuration that ran and the logs stay in the working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from ruamel.yaml import YAML

from energyd.clock import AcceleratedClock
from energyd.config.loader import load_config
from energyd.config.schema import Config
from energyd.errors import EnergydError

log = logging.getLogger(__name__)

SOURCE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
LOOPBACK = "127.0.0.1"
DEFAULT_SPEED = 360.0
LOAD_SHARE = 0.45  # full-production load of a simulated meter, as a share of its rating
SPIKE_FACTOR = 4.0
LEAK_M3_MIN = 10.0
SPIKE_AT_H, SPIKE_HOURS, LEAK_AT_H = 1.0, 1.0, 2.0
START_LOCAL = dtime(20, 0)  # production ends at 22:00: the leak runs into the night
MESSAGES_EVERY_S = 30.0  # a compressor publishes every 30 simulated seconds
REFRESH_S = 0.5


class DemoError(EnergydError):
    """The demo cannot run as configured (the message says why)."""


@dataclass
class InfluxTarget:
    url: str
    api: str = "v1"
    database: str = "energy"
    org: str | None = None
    bucket: str | None = None
    username: str | None = None
    password_file: str | None = None
    token_file: str | None = None

    def sink(self) -> dict[str, Any]:
        s: dict[str, Any] = {"name": "influxdb", "api": self.api, "url": self.url,
                             "timeout": "5s", "backoff_max": "10s"}
        if self.api == "v1":
            s["database"] = self.database
            if self.username:
                s["username"] = self.username
            if self.password_file:
                s["password_file"] = str(Path(self.password_file).resolve())
        else:
            s.update(org=self.org or "-", bucket=self.bucket or self.database)
            if self.token_file:
                s["token_file"] = str(Path(self.token_file).resolve())
        return s


@dataclass
class DemoOptions:
    workdir: Path = Path("demo-data")
    config: Path = SOURCE_CONFIG
    speed: float = DEFAULT_SPEED
    duration: float | None = None  # wall seconds; None: until Ctrl-C
    influx: InfluxTarget | None = None
    broker: str = "auto"  # auto | mosquitto | amqtt
    live: bool | None = None  # None: when the terminal is interactive


# --- start time and emission factors -----------------------------------------------------


def demo_start(now: datetime, tz: ZoneInfo) -> datetime:
    """The latest weekday 20:00 (site time) at least 12 hours before `now`."""
    latest = (now - timedelta(hours=12)).astimezone(tz)
    day = latest.date()
    while True:
        candidate = datetime.combine(day, START_LOCAL, tz)
        if candidate <= latest and candidate.weekday() < 5:
            return candidate.astimezone(UTC)
        day -= timedelta(days=1)


# --- the MQTT broker -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


class Broker:
    """Mosquitto as a child process, or amqtt inside this process."""

    def __init__(self, kind: str, workdir: Path):
        self.port = _free_port()
        self.workdir = workdir
        self.binary = _mosquitto_binary()
        if kind == "auto":
            kind = "mosquitto" if self.binary else "amqtt"
        if kind == "mosquitto" and not self.binary:
            raise DemoError("mosquitto is not installed (apt-get install mosquitto), "
                            "or use --broker amqtt")
        self.kind = kind
        self._proc: subprocess.Popen[bytes] | None = None
        self._amqtt: Any = None

    async def start(self) -> None:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            lines = [f"listener {self.port} {LOOPBACK}", "allow_anonymous true",
                     "persistence false", "log_dest stderr"]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            with open(self.workdir / "mosquitto.log", "ab") as out:
                self._proc = subprocess.Popen([str(self.binary), "-c", str(conf)],
                                              stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)
        else:
            from amqtt.broker import Broker as AmqttBroker

            # amqtt logs every connection at INFO; the demo's log would drown in it
            logging.getLogger("amqtt").setLevel(logging.WARNING)
            self._amqtt = AmqttBroker({
                "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": True}},
            })
            await self._amqtt.start()
        deadline = time.monotonic() + 10
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise DemoError(f"mosquitto exited at start (see {self.workdir}/mosquitto.log)")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoError(f"the MQTT broker did not listen on {self.port}") from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._amqtt is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._amqtt.shutdown(), 5)
            self._amqtt = None


# --- the plant -------------------------------------------------------------------------------


@dataclass
class Event:
    when: datetime
    text: str


@dataclass
class Plant:
    """The simulators and the daemon's effective configuration."""

    config_tree: dict[str, Any]
    meters: list[Any] = field(default_factory=list)  # MeterSimulator
    meter_of: dict[str, tuple[Any, int]] = field(default_factory=dict)  # device -> (sim, unit)
    stations: list[Any] = field(default_factory=list)  # CompressorStation
    events: list[Event] = field(default_factory=list)


def _read_tree(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DemoError(f"{path}: cannot read: {exc.strerror}") from None
    tree = YAML(typ="safe").load(text)
    if not isinstance(tree, dict):
        raise DemoError(f"{path}: not a configuration mapping")
    return tree


async def start_meters(plant: Plant, config: Config, clock: Any, tz: ZoneInfo) -> None:
    from energyd.simulators.meter import MeterSimulator

    links: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "modbus" and d.enabled:
            assert d.modbus is not None
            if d.modbus.transport == "rtu":
                raise DemoError(f"device {d.name}: the demo simulates gateways on TCP only "
                                "(transport tcp or rtu_over_tcp)")
            links.setdefault(d.modbus.link, []).append(d)
    trees = {t["name"]: t for t in plant.config_tree.get("devices", [])}
    for seed, devices in enumerate(links.values(), start=1):
        units = [d.modbus.unit for d in devices]
        if len(set(units)) != len(units):
            raise DemoError(f"devices {', '.join(d.name for d in devices)} share a link and "
                            "a unit id")
        sim = MeterSimulator(
            profile={d.modbus.unit: d.profile or "eastron_sdm630" for d in devices},
            units=units, host=LOOPBACK, port=0,
            framer="rtu" if devices[0].modbus.transport == "rtu_over_tcp" else "socket",
            clock=clock, tz=tz, seed=seed,
            base_kw={d.modbus.unit: LOAD_SHARE * (d.rated_power_kw or 100.0) for d in devices})
        await sim.start()
        plant.meters.append(sim)
        for d in devices:
            plant.meter_of[d.name] = (sim, d.modbus.unit)
            entry = trees[d.name]
            entry["modbus"] = {**entry["modbus"], "host": LOOPBACK, "port": sim.port}


async def start_stations(plant: Plant, config: Config, broker: Broker, clock: Any,
                         tz: ZoneInfo) -> None:
    from energyd.simulators.air import AirSystem
    from energyd.simulators.compressor import CompressorStation

    stations: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "mqtt" and d.enabled:
            assert d.mqtt is not None
            if not d.mqtt.station:
                raise DemoError(f"device {d.name}: the demo simulates MQTT devices as "
                                "compressor stations; give it `mqtt.station`")
            stations.setdefault(d.mqtt.station, []).append(d)
    for seed, (name, devices) in enumerate(stations.items(), start=1):
        prefix = devices[0].mqtt.topic.rsplit("/", 2)[0]
        system = AirSystem.build(len(devices), prefix=f"{name}-c", seed=seed, tz=tz)
        station = CompressorStation(broker=(LOOPBACK, broker.port), station=name,
                                    compressors=len(devices), clock=clock,
                                    rate=1.0 / MESSAGES_EVERY_S, topic_prefix=prefix,
                                    client_id=f"energyd-demo-{name}", seed=seed, system=system)
        for d in devices:
            if d.name not in station.devices or d.mqtt.topic != station.topic(d.name):
                raise DemoError(
                    f"device {d.name}: the simulated station {name!r} publishes "
                    f"{', '.join(station.topic(n) for n in station.devices)}; name its "
                    f"compressors {', '.join(station.devices)} with those topics")
        await station.__aenter__()
        plant.stations.append(station)
    plant.config_tree["mqtt"] = {**plant.config_tree.get("mqtt", {}),
                                 "host": LOOPBACK, "port": broker.port}


async def scenario(plant: Plant, config: Config, clock: Any, start: datetime) -> None:
    """The spike and the leak, at their simulated times."""
    incomer = next((d.name for d in config.devices
                    if d.role == "grid_import" and d.name in plant.meter_of), None)

    async def at(hours: float) -> None:
        await clock.sleep(max(0.0, (start + timedelta(hours=hours) - clock.now())
                              .total_seconds()))

    await at(SPIKE_AT_H)
    if incomer:
        sim, unit = plant.meter_of[incomer]
        sim.unit(unit).faults.spike = SPIKE_FACTOR
        plant.events.append(Event(clock.now(), f"spike: {incomer} draws {SPIKE_FACTOR:g}x "
                                               f"its load for an hour"))
        await at(SPIKE_AT_H + SPIKE_HOURS)
        sim.unit(unit).faults.spike = 1.0
        plant.events.append(Event(clock.now(), f"spike over: {incomer} back to normal"))
    await at(LEAK_AT_H)
    if plant.stations:
        station = plant.stations[0]
        station.inject_leak(LEAK_M3_MIN)
        plant.events.append(Event(clock.now(), f"leak: {LEAK_M3_MIN:g} m3/min at station "
                                               f"{station.station}, from now on"))


# --- what the view shows ---------------------------------------------------------------------


@dataclass
class Snapshot:
    now: datetime
    devices: list[dict[str, Any]]
    hourly: list[tuple]
    air: list[tuple]
    alerts: list[tuple]
    readings: int
    backlog: int | None


def snapshot(store: Any, config: Config, now: datetime) -> Snapshot:
    latest = {}
    for d in config.devices:
        r = store.latest(d.name, "active_power_kw")
        if r is not None:
            latest[d.name] = (r.time_ms, r.value)
    status = store.device_status()
    now_ms = int(now.timestamp() * 1000)
    devices = []
    for d in config.devices:
        t, kw = latest.get(d.name, (None, None))
        st = status.get(d.name, {})
        if t is None:
            state = st.get("last_error") or "waiting"
        elif st.get("last_error") and (st.get("last_error_time") or 0) >= (
                st.get("last_success") or 0):
            state = f"error: {st['last_error']}"
        elif now_ms - t > 5 * d.interval * 1000 + 120_000:
            state = "silent"
        else:
            state = "ok"
        devices.append({"name": d.name, "role": d.role, "driver": d.driver, "kw": kw,
                        "last_ms": t,
                        "polls": st.get("polls"), "errors": st.get("errors"), "state": state})
    hourly = store.execute(
        "SELECT hour, device, mwh, source, coverage, tco2_location, tco2_market FROM rollups "
        "ORDER BY hour DESC, device LIMIT 12")
    stations = sorted({d.mqtt.station for d in config.devices if d.mqtt and d.mqtt.station})
    air = store.execute(
        "SELECT hour, device, kwh, m3, specific_power, loaded_share FROM air_hourly WHERE "
        f"device IN ({','.join('?' * len(stations))}) ORDER BY hour DESC LIMIT 4",
        stations) if stations else []
    alerts = store.execute(
        "SELECT rule, device, state, started, ended, detail FROM alerts "
        "ORDER BY started DESC LIMIT 8")
    readings = store.count_readings()
    backlog = None
    if config.all_sinks:
        from energyd.sinks import backlog as sink_backlog

        backlog = sink_backlog(store, config.all_sinks[0].name).count
    return Snapshot(now, devices, hourly, air, alerts, readings, backlog)


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _local(ms: int | None, tz: ZoneInfo, fmt: str = "%a %H:%M") -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, tz).strftime(fmt)


def _alert_text(detail: str) -> str:
    try:
        d = json.loads(detail or "{}")
    except ValueError:
        return str(detail)[:60]
    if not isinstance(d, dict):
        return str(d)[:60]
    if isinstance(d.get("message"), str):
        return d["message"][:70]
    shown = [f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in sorted(d.items())
             if isinstance(v, int | float | str) and not isinstance(v, bool)]
    return ", ".join(shown)[:70]


ROLE_ORDER = {"grid_import": 0, "generation": 1, "submeter": 2, "compressor": 3, "fuel": 4}


class _Table:
    """A table whose optional columns (marked `+`) are left out on narrow terminals, and
    whose last column is the one that gives way (cut with an ellipsis) when space is short."""

    def __init__(self, title: str, columns: list[tuple[str, str]], wide: bool):
        self.title = title
        self.keep = [wide or not col.startswith("+") for col, _ in columns]
        self.columns = [(col.lstrip("+"), just) for (col, just), k in zip(columns, self.keep,
                                                                           strict=True) if k]
        self.rows: list[list[Any]] = []

    def add_row(self, *cells: Any) -> None:
        self.rows.append([c for c, k in zip(cells, self.keep, strict=True) if k])

    @property
    def table(self) -> Table:
        # a title line, a header and a rule: three lines of frame, so the view fits a terminal
        t = Table(title=self.title, title_justify="left", title_style="bold", expand=True,
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        last = len(self.columns) - 1
        for i, (col, just) in enumerate(self.columns):
            width = max([len(col)] + [Text(c).cell_len if isinstance(c, str) else c.cell_len
                                      for c in (r[i] for r in self.rows)])
            t.add_column(col, justify=just, no_wrap=True,  # type: ignore[arg-type]
                         overflow="ellipsis", min_width=None if i == last else width)
        for r in self.rows:
            t.add_row(*r)
        return t


def render(snap: Snapshot, *, config: Config, tz: ZoneInfo, speed: float, workdir: Path,
           events: list[Event], wall_s: float, influx: str | None, http_port: int | None,
           height: int | None = None, width: int | None = None) -> Group:
    """The view. With `height` (a live terminal) the hourly rows, the air table and the
    scenario take only the lines left after the devices and the alerts; below 110 columns
    the less telling columns are left out."""
    wide = width is None or width >= 110
    head = Text.assemble(
        ("energyd demo", "bold"), f"  {config.site.name}  ",
        (snap.now.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z"), "bold cyan"),
        f"  {speed:g}x, {wall_s:.0f} s  {snap.readings:,} readings in "
        f"{workdir / 'energyd.db'}")
    if influx:
        head.append(f"  InfluxDB {influx} (backlog {snap.backlog})")
    if http_port:
        head.append(f"  metrics 127.0.0.1:{http_port}")

    dev = _Table("devices", [("device", "left"), ("role", "left"), ("+driver", "left"),
                             ("kW now", "right"), ("last reading", "right"),
                             ("+polls", "right"), ("+errors", "right"), ("status", "left")],
                 wide)
    for d in snap.devices:
        dev.add_row(d["name"], d["role"], d["driver"], _fmt(d["kw"], 1),
                    _local(d["last_ms"], tz, "%H:%M:%S") or "-",
                    "-" if d["polls"] is None else str(d["polls"]),
                    "-" if d["errors"] is None else str(d["errors"]),
                    Text(d["state"], style="green" if d["state"] == "ok" else "yellow"))

    alerts = _Table("alerts", [("rule", "left"), ("device", "left"), ("state", "left"),
                               ("started", "left"), ("+ended", "left"), ("detail", "left")],
                    wide)
    for rule, device, state, started, ended, detail in snap.alerts[:5]:
        alerts.add_row(rule, device, Text(state, style="bold red" if state == "active"
                                          else "green"),
                       _local(started, tz), _local(ended, tz), _alert_text(detail))
    if not snap.alerts:
        alerts.add_row("(none yet)", "", "", "", "", "")

    left = None if height is None else height - 1 - (3 + len(snap.devices)) \
        - (3 + max(1, min(5, len(snap.alerts))))
    roles = {d.name: ROLE_ORDER.get(d.role, 9) for d in config.devices}
    rows = sorted(snap.hourly, key=lambda r: (-r[0], roles.get(r[1], 9), r[1]))
    n_hourly = len(rows) if left is None else max(2, min(len(rows), left - 3))
    hourly = _Table("hourly rollups (latest)", [
        ("hour", "left"), ("device", "left"), ("MWh", "right"), ("source", "left"),
        ("+coverage", "right"), ("tCO2 location", "right"), ("tCO2 market", "right")], wide)
    for hour, device, mwh, source, coverage, tco2_l, tco2_m in rows[:n_hourly]:
        hourly.add_row(_local(hour, tz), device, _fmt(mwh, 4), source,
                       _fmt(None if coverage is None else 100 * coverage, 0) + " %",
                       _fmt(tco2_l, 4), _fmt(tco2_m, 4))
    if not rows:
        hourly.add_row("(after the first full hour)", "", "", "", "", "", "")
    parts: list[Any] = [head, dev.table, alerts.table, hourly.table]
    if left is not None:
        left -= 3 + max(1, n_hourly)

    n_air = len(snap.air) if left is None else min(len(snap.air), left - 3)
    if n_air > 0:
        air = _Table("compressed air (station, hourly)", [
            ("hour", "left"), ("station", "left"), ("kWh", "right"), ("m3", "right"),
            ("kW per m3/min", "right"), ("loaded", "right")], wide)
        for hour, device, kwh, m3, sp, loaded in snap.air[:n_air]:
            air.add_row(_local(hour, tz), device, _fmt(kwh, 1), _fmt(m3, 0), _fmt(sp, 3),
                        "-" if loaded is None else f"{100 * loaded:.0f} %")
        parts.append(air.table)
        if left is not None:
            left -= 3 + n_air
    n_events = min(len(events), 4) if left is None else min(len(events), 4, left - 1)
    if n_events > 0:
        parts.append(Text("scenario", style="bold"))
        parts.extend(Text(f"  {e.when.astimezone(tz):%a %H:%M}  {e.text}")
                     for e in events[-n_events:])
    return Group(*parts)


# --- running ---------------------------------------------------------------------------------


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
    tree = _read_tree(options.config)
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
