"""The command line. Thin: each command parses its options and calls the packages below.

Exit codes: 0 success, 1 a runtime failure, 2 bad input (config, CSV, arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table

from energyd import __version__
from energyd.config import Config, load_config
from energyd.errors import ConfigError, EnergydError, ImportRejected
from energyd.model import Quality, from_ms

CONFIG_HELP = "configuration file (YAML)"
EXIT_BAD_INPUT = 2

console = Console(highlight=False)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: str, *, runnable: bool = False) -> Config:
    try:
        return load_config(path, runnable=runnable)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_BAD_INPUT)


def _parse_time(value: str, option: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=option) from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset, e.g. {value}+00:00",
                                 param_hint=option)
    return when


def _existing_store(config: Config) -> Any:
    """The configured store for a command that reads or recomputes: if there is none yet,
    say so and exit 1 rather than leave an empty one behind."""
    from energyd.store import Store

    try:
        return Store.open(config.storage.path, quota=config.storage.quota, must_exist=True)
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)


@contextlib.contextmanager
def _csv_import(config: Config, csv_file: str) -> Iterator[tuple[TextIO, Any]]:
    """The CSV file and the store for an import; an unreadable file or refused rows exit 2
    (the import's transaction has rolled back by then: nothing of the file is stored).
    Bytes that are not UTF-8 are kept as escapes, so the import names their line; lines end
    at LF (CRLF included) only, so line numbers are those an editor shows."""
    from energyd.store import Store

    try:
        with open(csv_file, newline="\n", encoding="utf-8-sig", errors="surrogateescape") as f, \
                Store.open(config.storage.path, quota=config.storage.quota) as store:
            yield f, store
    except OSError as exc:
        click.echo(f"{csv_file}: cannot read: {exc.strerror}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except ImportRejected as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)


def _print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="energyd")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def cli(log_level: str) -> None:
    """energyd: energy-meter telemetry for plant gateways."""
    _setup_logging(log_level)


# --- configuration ----------------------------------------------------------------------


@cli.command("check-config")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
def check_config(config_path: str) -> None:
    """Validate a configuration and print a summary (exit 2 on errors)."""
    config = _load(config_path, runnable=True)
    from energyd.config.summary import summary_tables

    for table in summary_tables(config):
        console.print(table)
    click.echo(f"{config_path}: OK")


# --- the daemon -------------------------------------------------------------------------


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
def run(config_path: str) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    config = _load(config_path, runnable=True)
    from energyd.daemon.app import Daemon, preflight

    try:
        preflight(config)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        code = asyncio.run(Daemon(config, config_path=config_path).run())
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@cli.command()
@click.option("--dir", "workdir", default="demo-data", show_default=True,
              type=click.Path(file_okay=False), help="working directory: store, config, log")
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="the plant to simulate (default: config/demo.yaml)")
@click.option("--speed", default=360.0, show_default=True, type=click.FloatRange(min=1),
              help="simulated seconds per wall second")
@click.option("--duration", default=None, type=click.FloatRange(min=0),
              help="stop after this many wall seconds (default: until Ctrl-C)")
@click.option("--broker", default="auto", show_default=True,
              type=click.Choice(["auto", "mosquitto", "amqtt"]),
              help="MQTT broker: Mosquitto when installed, else the embedded amqtt")
@click.option("--live/--no-live", default=None,
              help="live view (default: when the terminal is interactive)")
@click.option("--influx", "influx_url", default=None, metavar="URL",
              help="also forward to this InfluxDB, e.g. http://127.0.0.1:8086")
@click.option("--influx-api", default="v1", show_default=True, type=click.Choice(["v1", "v2"]))
@click.option("--influx-database", default="energy", show_default=True,
              help="v1 database (v2: the bucket when --influx-bucket is not given)")
@click.option("--influx-org", default=None, help="v2 organisation")
@click.option("--influx-bucket", default=None, help="v2 bucket")
@click.option("--influx-username", default=None, help="v1 user")
@click.option("--influx-password-file", default=None, type=click.Path(dir_okay=False),
              help="v1 password, read from this file")
@click.option("--influx-token-file", default=None, type=click.Path(dir_okay=False),
              help="v2 token, read from this file")
def demo(workdir: str, config_path: str | None, speed: float, duration: float | None,
         broker: str, live: bool | None, influx_url: str | None, influx_api: str,
         influx_database: str, influx_org: str | None, influx_bucket: str | None,
         influx_username: str | None, influx_password_file: str | None,
         influx_token_file: str | None) -> None:
    """A whole simulated plant in one process, time accelerated; no servers needed."""
    from pathlib import Path

    from energyd.demo import SOURCE_CONFIG, DemoOptions, InfluxTarget, run_demo

    source = Path(config_path) if config_path else SOURCE_CONFIG
    if not source.exists():
        raise click.BadParameter(f"{source} does not exist (run from energyd's source tree, "
                                 "or give --config)", param_hint="--config")
    influx = None
    if influx_url:
        influx = InfluxTarget(influx_url, api=influx_api, database=influx_database,
                              org=influx_org, bucket=influx_bucket, username=influx_username,
                              password_file=influx_password_file,
                              token_file=influx_token_file)
    options = DemoOptions(workdir=Path(workdir), config=source, speed=speed,
                          duration=duration, influx=influx, broker=broker, live=live)
    try:
        code = asyncio.run(run_demo(options, console))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_BAD_INPUT)
    except EnergydError as exc:
        click.echo(f"energyd demo: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(config_path: str, as_json: bool) -> None:
    """Per device last reading and error; store size; backlog per sink."""
    config = _load(config_path)
    from energyd.daemon.status import collect_status, status_tables

    try:
        payload = collect_status(config)
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    if as_json:
        _print_json(payload)
    else:
        for table in status_tables(payload):
            console.print(table)


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1),
              help="at most this many episodes (active ones always shown)")
def alerts(config_path: str, as_json: bool, limit: int) -> None:
    """Alert episodes, active and resolved: rule, device, start, end, the figures."""
    config = _load(config_path)
    from energyd.alerts.report import collect_episodes, episodes_table

    with _existing_store(config) as store:
        rows = collect_episodes(store, limit=limit)
    if as_json:
        _print_json(rows)
    elif rows:
        console.print(episodes_table(rows))
    else:
        console.print("no alert episodes")


# --- commissioning ---------------------------------------------------------------------


@cli.command("read")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def read_cmd(config_path: str, device: str, as_json: bool) -> None:
    """Poll one DEVICE once and print its decoded values (nothing is stored)."""
    config = _load(config_path)
    try:
        dev = config.device(device)
    except KeyError:
        click.echo(f"{config_path}: no device named {device!r}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    from energyd.drivers.registry import plugin
    from energyd.model import QUANTITIES

    read_once = plugin(dev.driver).read_once
    if read_once is None:
        click.echo(f"{device}: `energyd read` polls a device on demand; a {dev.driver} "
                   "device sends its readings when it likes (watch `energyd status`)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    done = asyncio.run(read_once(dev))
    summary = done.document(device)
    values = summary["values"]
    if as_json:
        _print_json(summary)
    else:
        table = Table(title=done.title)
        for col in ("quantity", "value", "unit"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for q, v in values.items():
            table.add_row(q, f"{v['value']:.6g}", v["unit"])
        for q in summary["unavailable"]:
            table.add_row(q, f"n/a ({done.why_unavailable(q)})", QUANTITIES[q].unit)
        console.print(table)
        for part, why in done.failures:
            click.echo(f"{device}: {part}: {why}", err=True)
    sys.exit(0 if values else 1)


@cli.command()
@click.option("--driver", default="modbus", show_default=True,
              help="the driver whose bus is scanned")
@click.option("--host", default=None, help="TCP meter or serial gateway to probe")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="[default: the driver's (Modbus 502)]")
@click.option("--rtu-over-tcp", is_flag=True, help="the gateway tunnels RTU frames")
@click.option("--serial-port", default=None, help="scan an RS485 bus on this serial device")
@click.option("--baudrate", default=None, type=int, help="[default: the driver's (Modbus 9600, "
              "DL/T 645 2400)]")
@click.option("--parity", default=None, type=click.Choice(["N", "E", "O"]),
              help="[default: the driver's (Modbus N, DL/T 645 E)]")
@click.option("--units", default="", help="the units to probe, as the driver names them "
              "[default: the driver's: Modbus unit ids 1-247; DL/T 645 the meter that answers "
              "the broadcast, or addresses such as 1-20,000012345678, or `search`]")
@click.option("--timeout", default=0.5, show_default=True, type=click.FloatRange(min=0.01),
              help="seconds to wait for each unit")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def scan(driver: str, host: str | None, port: int | None, rtu_over_tcp: bool,
         serial_port: str | None, baudrate: int | None, parity: str | None, units: str,
         timeout: float, as_json: bool) -> None:
    """Find the units that answer on a bus and name the profile that fits each."""
    from energyd.drivers.contracts import BadScanTarget
    from energyd.drivers.registry import DRIVERS, plugin

    scanners = [name for name in DRIVERS if plugin(name).scan is not None]
    if driver not in scanners:
        raise click.BadParameter(f"{driver!r}: energyd scans the buses of "
                                 f"{', '.join(scanners)}", param_hint="--driver")
    if (host is None) == (serial_port is None):
        raise click.UsageError("give either --host (TCP) or --serial-port (RTU)")
    if serial_port is not None:
        link: dict[str, Any] = {"transport": "rtu", "serial_port": serial_port,
                                "baudrate": baudrate, "parity": parity}
    else:
        link = {"transport": "rtu_over_tcp" if rtu_over_tcp else "tcp", "host": host,
                "port": port}
    # an option not given is the driver's default, not ours
    link = {k: v for k, v in link.items() if v is not None}
    run_scan = plugin(driver).scan
    assert run_scan is not None
    try:
        report = asyncio.run(run_scan(link, units, timeout))
    except BadScanTarget as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    except EnergydError as exc:
        click.echo(f"energyd scan: {exc}", err=True)
        sys.exit(1)
    for note in report.notes:
        click.echo(note, err=as_json)
    if as_json:
        _print_json(report.rows)
        return
    table = Table(title=report.title)
    for col in report.columns:
        table.add_column(col)
    for row in report.table:
        table.add_row(*row)
    console.print(table)


# --- readings in and out ----------------------------------------------------------------


@cli.group()
def readings() -> None:
    """Import and export raw readings as CSV (time,device,quantity,value[,quality])."""


@readings.command("import")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.argument("csv_file", type=click.Path(dir_okay=False))
def readings_import(config_path: str, csv_file: str) -> None:
    """Import a CSV file whole, or nothing of it."""
    config = _load(config_path)
    from energyd.store.csvio import import_readings

    names = {d.name for d in config.devices}
    with _csv_import(config, csv_file) as (f, store):
        result = import_readings(store, f, csv_file, known_device=names.__contains__)
    conflicts = len(result.conflicts)
    click.echo(f"{csv_file}: {result.rows} rows, {result.inserted} new readings stored "
               f"({result.rows - result.inserted - conflicts} already stored with the same value)")
    if conflicts:
        click.echo(f"{csv_file}: {conflicts} rows have another value than the store holds for "
                   "their device, quantity and time; the stored values stand, the rows are "
                   "kept as conflicts (energyd readings conflicts):", err=True)
        for c in result.conflicts[:20]:
            click.echo(f"  {from_ms(c.time_ms).isoformat()} {c.device} {c.quantity}: "
                       f"{c.value!r} (stored {c.stored!r})", err=True)
        if conflicts > 20:
            click.echo(f"  ... and {conflicts - 20} more", err=True)


@readings.command("conflicts")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--device", default=None, help="only this device")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of CSV")
def readings_conflicts(config_path: str, device: str | None, limit: int,
                       as_json: bool) -> None:
    """Readings that came with another value for a time the store holds (the first stands)."""
    config = _load(config_path)
    with _existing_store(config) as store:
        found = store.readings.conflicts(device, limit)
    rows = [{"time": from_ms(c.time_ms).isoformat(timespec="milliseconds"),
             "device": c.device, "quantity": c.quantity, "value": c.value,
             "stored": c.stored, "quality": Quality(c.quality).name.lower()} for c in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("time,device,quantity,value,stored,quality")
    for r in rows:
        click.echo(f"{r['time']},{r['device']},{r['quantity']},{r['value']!r},"
                   f"{r['stored']!r},{r['quality']}")


@readings.command("export")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--from", "start", required=True, help="start, ISO 8601 with offset (inclusive)")
@click.option("--to", "end", required=True, help="end, ISO 8601 with offset (exclusive)")
@click.option("--device", default=None, help="only this device")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="write here instead of stdout")
@click.option("--validation", is_flag=True,
              help="add a column saying which counter readings the accounting sets aside "
                   "and why (the stored values are never changed)")
def readings_export(config_path: str, start: str, end: str, device: str | None,
                    output: str | None, validation: bool) -> None:
    """Export readings in [--from, --to) as CSV."""
    config = _load(config_path)
    t0, t1 = _parse_time(start, "--from"), _parse_time(end, "--to")
    from energyd.model import to_ms
    from energyd.store.csvio import ExportProgress, export_readings

    progress = ExportProgress()
    with _existing_store(config) as store:
        try:
            notes = None
            if validation:
                acc = _accountant(config, store, _factors(config))
                notes = acc.validation_notes(to_ms(t0), to_ms(t1), device)
            if output:
                with open(output, "w", newline="", encoding="utf-8") as f:
                    n = export_readings(store, f, t0, t1, device, progress, notes)
                click.echo(f"{output}: {n} readings", err=True)
            else:
                export_readings(store, sys.stdout, t0, t1, device, progress, notes)
        except (EnergydError, OSError) as exc:
            sys.stdout.flush()
            upto = (f", the last at {progress.last_time}" if progress.last_time else "")
            click.echo(f"energyd: the export stopped after {progress.rows:,} readings{upto}: "
                       f"{exc}. The CSV {('in ' + output) if output else 'written'} is "
                       f"incomplete", err=True)
            sys.exit(1)


@cli.group()
def store() -> None:
    """Check the store file, and recover what can be read of a damaged one."""


@store.command("check")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--full", is_flag=True,
              help="integrity_check (indexes against tables too) instead of quick_check")
def store_check(config_path: str, full: bool) -> None:
    """Check every page of the store (exit 0 intact, 1 damaged)."""
    config = _load(config_path)
    from energyd.store.repair import check_file

    path = config.storage.path
    try:
        problems = check_file(path, full=full)
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    if not problems:
        click.echo(f"{path}: intact ({'integrity_check' if full else 'quick_check'})")
        return
    for problem in problems:
        click.echo(f"{path}: {problem}", err=True)
    click.echo(f"{path}: damaged. Stop energyd, then `energyd store recover -c {config_path} "
               f"--to NEW_FILE` copies what can be read into a new store", err=True)
    sys.exit(1)


@store.command("recover")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--to", "target", required=True, type=click.Path(dir_okay=False),
              help="the new store file (must not exist)")
@click.option("--no-shell", is_flag=True,
              help="copy table by table at once, without trying the sqlite3 shell's .recover")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def store_recover(config_path: str, target: str, no_shell: bool, as_json: bool) -> None:
    """Copy what can be read of the store into a new file; the store is left as it is."""
    config = _load(config_path)
    from pathlib import Path

    from energyd.store.repair import recover

    try:
        result = recover(config.storage.path, Path(target), shell=None if no_shell else "sqlite3")
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    if as_json:
        _print_json({**result.__dict__, "path": str(result.path)})
    else:
        click.echo(f"{result.path}: recovered with {result.method} in {result.seconds} s")
        for table, n in sorted(result.rows.items()):
            click.echo(f"  {table}: {n:,} rows")
        if result.lost_and_found:
            click.echo(f"  lost_and_found: {result.lost_and_found:,} rows that could not be "
                       f"placed in their table")
        if result.shell_error:
            click.echo(f"  (the sqlite3 shell's .recover was not used: {result.shell_error})")
        for stretch in result.damaged:
            click.echo(f"  lost on damaged pages: {stretch}")
        for problem in result.problems:
            click.echo(f"  the new store: {problem}", err=True)
        click.echo(f"the store {config.storage.path} was left as it is; point storage.path at "
                   f"{result.path} (or move it in place while energyd is stopped)")
    if result.problems:
        sys.exit(1)


@readings.command("held")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--reviewed", is_flag=True,
              help="mark the readings listed as reviewed: retention may then remove them")
def readings_held(config_path: str, as_json: bool, reviewed: bool) -> None:
    """Readings held for review: stamped while the gateway's clock could not be trusted.

    They stay out of the rollups for good (their times are wrong); retention keeps them
    until they are marked reviewed. Export them with `readings export` over their span.
    """
    config = _load(config_path)
    from energyd.model import from_ms

    with _existing_store(config) as store:
        held = [{"device": d, "quantity": q, "readings": n,
                 "first": from_ms(a).isoformat(timespec="seconds"),
                 "last": from_ms(b).isoformat(timespec="seconds")}
                for d, q, n, a, b in store.readings.held()]
        marked = store.readings.mark_held_reviewed() if reviewed else 0
    if as_json:
        click.echo(json.dumps({"held": held, "marked_reviewed": marked}, indent=2))
        return
    for h in held:
        click.echo(f"{h['device']} {h['quantity']}: {h['readings']} readings, "
                   f"{h['first']} .. {h['last']}")
    total = sum(h["readings"] for h in held)
    click.echo(f"{total} readings held for review" if total else "no readings held for review")
    if reviewed:
        click.echo(f"{marked} readings marked reviewed: retention may remove them now")


@cli.group()
def simulate() -> None:
    """Run a simulator alone (a Modbus meter, an MQTT compressor station, an OPC UA
    compressor controller)."""


@simulate.command("meter")
@click.option("--profile", default="eastron_sdm630", show_default=True,
              help="built-in profile name or profile file")
@click.option("--port", default=5020, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: any free port)")
@click.option("--units", default="1", show_default=True, help="unit ids, e.g. 1,2,3 or 1-10")
@click.option("--framer", default="socket", show_default=True,
              type=click.Choice(["socket", "rtu"]), help="Modbus TCP, or RTU frames over TCP")
@click.option("--serial-port", default=None, help="serve RTU on this serial device instead")
@click.option("--baudrate", default=9600, show_default=True, type=int)
@click.option("--fault", "faults", multiple=True,
              help="UNIT:KIND[=VALUE]; kinds: no_reply, drop=N, exception=ADDR[/CODE], "
                   "slow=SECONDS, "
                   "swap[=ORDER], spike=FACTOR, reset, wrap[=ROLLOVER], "
                   "garble=N[/short|exception|function] (repeatable)")
@click.option("--base-kw", default=50.0, show_default=True, type=float,
              help="full-production load per unit in kW (negative: generation)")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="simulated seconds per wall second")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="stop after this many wall seconds (default: run until Ctrl-C)")
def simulate_meter(profile: str, port: int, units: str, framer: str, serial_port: str | None,
                   baudrate: int, faults: tuple[str, ...], base_kw: float, speed: float,
                   duration: float | None) -> None:
    """Serve simulated meters over Modbus on 127.0.0.1 (several units, like a gateway)."""
    from energyd.drivers.modbus.scan import parse_units
    from energyd.simulators.meter import run_cli

    try:
        unit_ids = parse_units(units)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--units") from None
    if serial_port is not None:
        framer = "rtu"
    try:
        asyncio.run(run_cli(profile=profile, port=port, units=unit_ids, framer=framer,
                            serial_port=serial_port, baudrate=baudrate, faults=list(faults),
                            base_kw=base_kw, speed=speed, duration=duration,
                            announce=lambda text: click.echo(text, err=True)))
    except (ValueError, ConfigError) as exc:
        click.echo(f"energyd simulate meter: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:
        click.echo(f"energyd simulate meter: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


@simulate.command("dlt645")
@click.option("--addresses", default="000000000001", show_default=True,
              help="meter addresses on the bus, e.g. 1-3,000012345678")
@click.option("--port", default=8899, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: any free port)")
@click.option("--serial-port", default=None, help="serve on this serial device instead")
@click.option("--baudrate", default=2400, show_default=True, type=int)
@click.option("--fault", "faults", multiple=True, help="ADDRESS:KIND[=VALUE]; kinds: "
              "no_reply, error=HEX, refuse=DI, slow=SECONDS, parts=N, trickle=SECONDS "
              "(repeatable)")
@click.option("--base-kw", default=40.0, show_default=True, type=click.FloatRange(-79, 79),
              help="full-production load per meter in kW")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="simulated seconds per wall second")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="stop after this many wall seconds (default: run until Ctrl-C)")
def simulate_dlt645(addresses: str, port: int, serial_port: str | None, baudrate: int,
                    faults: tuple[str, ...], base_kw: float, speed: float,
                    duration: float | None) -> None:
    """Serve simulated DL/T 645 meters on one bus (127.0.0.1 TCP or a serial device)."""
    from energyd.drivers.dlt645.scan import parse_addresses
    from energyd.simulators.dlt645 import run_cli

    try:
        asyncio.run(run_cli(addresses=parse_addresses(addresses), port=port,
                            serial_port=serial_port, baudrate=baudrate, faults=list(faults),
                            base_kw=base_kw, speed=speed, duration=duration,
                            announce=lambda text: click.echo(text, err=True)))
    except ValueError as exc:
        click.echo(f"energyd simulate dlt645: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:
        click.echo(f"energyd simulate dlt645: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


@simulate.command("compressor")
@click.option("--broker", default="127.0.0.1:1883", show_default=True,
              help="MQTT broker HOST:PORT (loopback only)")
@click.option("--station", default="air1", show_default=True, help="station name")
@click.option("--compressors", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option("--rate", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="messages per (simulated) second per compressor")
@click.option("--leak", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="extra demand in m3/min, off-shift too (an air leak)")
@click.option("--malformed", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="share of extra malformed messages")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="simulated seconds per wall second")
@click.option("--topic-prefix", default="plant/air", show_default=True)
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="stop after this many wall seconds (default: run until Ctrl-C)")
def simulate_compressor(broker: str, station: str, compressors: int, rate: float, leak: float,
                        malformed: float, speed: float, topic_prefix: str,
                        duration: float | None) -> None:
    """Publish a compressor station's telemetry over MQTT (QoS 1, JSON)."""
    from energyd.simulators.compressor import run_cli

    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{broker!r} is not HOST:PORT", param_hint="--broker")
    try:
        asyncio.run(run_cli(host.strip("[]"), int(port), station=station,
                            compressors=compressors, rate=rate, leak=leak, malformed=malformed,
                            speed=speed, topic_prefix=topic_prefix, duration=duration))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None
    except KeyboardInterrupt:
        pass


@simulate.command("opcua")
@click.option("--port", default=4840, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (0: any free port)")
@click.option("--station", default="air1", show_default=True, help="station name")
@click.option("--compressors", default=2, show_default=True, type=click.IntRange(1, 100))
@click.option("--rate", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="updates per (simulated) second")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.001),
              help="simulated seconds per wall second")
@click.option("--security", default="None", show_default=True,
              type=click.Choice(["None", "Basic256Sha256"]))
@click.option("--pki-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the controller keeps its generated key and certificate")
@click.option("--trust", "trusted", multiple=True, type=click.Path(dir_okay=False,
              exists=True, path_type=Path), help="a client certificate to trust (repeatable)")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="stop after this many wall seconds (default: run until Ctrl-C)")
def simulate_opcua(port: int, station: str, compressors: int, rate: float, speed: float,
                   security: str, pki_dir: Path | None, trusted: tuple[Path, ...],
                   duration: float | None) -> None:
    """Serve an OPC UA compressor controller on 127.0.0.1 (the MQTT station's physics)."""
    from energyd.simulators.opcua import run_cli

    try:
        asyncio.run(run_cli("127.0.0.1", port, station=station, compressors=compressors,
                            rate=rate, speed=speed, security=security, pki_dir=pki_dir,
                            trusted=list(trusted), duration=duration))
    except (ValueError, OSError) as exc:
        click.echo(f"energyd simulate opcua: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT if isinstance(exc, ValueError) else 1)
    except KeyboardInterrupt:
        pass


@cli.group()
def invoices() -> None:
    """Supplier billing statements."""


def _factors(config: Config) -> Any:
    """The emission-factor table, checked before anything is opened (exit 2 if bad)."""
    from energyd.accounting.factors import load_factors

    try:
        return load_factors(config.accounting.emission_factors)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_BAD_INPUT)


def _accountant(config: Config, store: Any, factors: Any) -> Any:
    from energyd.accounting.service import Accountant

    return Accountant(store, config, factors)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


@invoices.command("import")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.argument("csv_file", type=click.Path(dir_okay=False))
def invoices_import(config_path: str, csv_file: str) -> None:
    """Import statements (account,period_start,period_end,energy_kwh[,supplier,document])
    whole or not at all, and recompute the hours of their periods."""
    config = _load(config_path)
    factors = _factors(config)

    from energyd.daemon.reconciliation import record_reconciliation

    with _csv_import(config, csv_file) as (f, store):
        now = _now_ms()
        rows, result = _accountant(config, store, factors).import_statements(f, csv_file, now)
        record_reconciliation(store, config, result, now)
    click.echo(f"{csv_file}: {len(rows)} statements stored; rollups recomputed, "
               f"{result.written} device-hours changed")
    for finding in result.findings:
        click.echo(f"reconciliation: statement {finding.statement} for "
                   f"{finding.account}: {finding.statement_kwh:g} kWh billed, "
                   f"{finding.metered_kwh:g} kWh metered "
                   + (f"in the period alone: below the meter; {finding.gap_hours} gap hours "
                      "keep an estimate until the readings or the statement are corrected or "
                      f"it is accepted (energyd invoices accept --statement "
                      f"{finding.statement})" if finding.below_metered
                      else f"({finding.difference_share:.1%} apart)"), err=True)


@invoices.command("accept")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--statement", "statement_id", required=True, type=int,
              help="the statement's id (the report's `statements` and `reconciliation`)")
@click.option("--reason", required=True, help="why the statement stands as it is")
@click.option("--by", "by", default=None, help="who accepts it (default: the login name)")
def invoices_accept(config_path: str, statement_id: int, reason: str, by: str | None) -> None:
    """Accept a statement that is below the metered energy of its period: its gap hours keep
    their estimate and its month can be final. Stored with who, when and why; shown in the
    report."""
    import getpass

    config = _load(config_path)
    factors = _factors(config)
    from energyd.daemon.reconciliation import record_reconciliation

    with _existing_store(config) as store:
        accountant = _accountant(config, store, factors)
        now = _now_ms()
        try:
            acc = accountant.accept_statement(
                statement_id, reason, by if by is not None else getpass.getuser(), now)
        except ValueError as exc:
            click.echo(f"energyd: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        record_reconciliation(store, config, accountant.reconcile([statement_id]), now)
    f = acc["finding"]
    click.echo(f"statement {statement_id} ({f['account']}, {f['statement_kwh']:g} kWh billed, "
               f"{f['metered_kwh']:g} kWh metered) accepted by {acc['by']} at {acc['at']}: "
               f"{acc['reason']}")


@cli.group()
def certificates() -> None:
    """Granular certificates (hourly-matched Scope 2)."""


@certificates.command("import")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.argument("csv_file", type=click.Path(dir_okay=False))
def certificates_import(config_path: str, csv_file: str) -> None:
    """Import granular certificates (id,production_start,production_end,wh,market,device,
    technology[,location,storage_discharge,registry,backs]) whole or not at all; each id is
    stored once, so a file imported again adds nothing."""
    config = _load(config_path)
    factors = _factors(config)
    from energyd.accounting.granular import import_certificates
    from energyd.accounting.scope2_report import annual_instruments

    with _csv_import(config, csv_file) as (f, store):
        got = import_certificates(store, f, csv_file, config.site.tz, _now_ms(),
                                  annual_instruments(_accountant(config, store, factors)))
    click.echo(f"{csv_file}: {len(got.added)} certificates stored, {len(got.already)} "
               "already stored (left as they were)")


@cli.command()
@click.argument("directories", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "json", "csv"]))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="write to this file instead of standard output")
def consolidate(directories: tuple[str, ...], fmt: str, output: str | None) -> None:
    """The organisation's month from its sites' evidence folders (`report --evidence`), each
    verified as `energyd verify` does: per site and in total, Scope 1, Scope 2 location,
    annual-market and hourly-market. Exit 1 naming each site whose folder does not verify."""
    from energyd.accounting.consolidate import (
        ConsolidationError,
        organisation_csv,
        organisation_lines,
    )
    from energyd.accounting.consolidate import (
        consolidate as combine_sites,
    )

    logging.getLogger("energyd.accounting").setLevel(logging.WARNING)
    try:
        org = combine_sites(directories)
    except ConsolidationError as exc:
        click.echo(f"energyd consolidate: {exc}", err=True)
        sys.exit(1)
    text = (json.dumps(org, indent=2) + "\n" if fmt == "json" else organisation_csv(org)
            if fmt == "csv" else "".join(f"{line}\n" for line in organisation_lines(org)))
    if output is None:
        click.echo(text, nl=False)
        return
    Path(output).write_text(text, encoding="utf-8")
    click.echo(f"organisation: {output}", err=True)


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--from", "start", required=True, help="start, ISO 8601 with offset (inclusive)")
@click.option("--to", "end", required=True, help="end, ISO 8601 with offset (exclusive)")
@click.option("--device", "devices", multiple=True, help="only this device (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
def rollup(config_path: str, start: str, end: str, devices: tuple[str, ...],
           as_json: bool) -> None:
    """(Re)compute hourly rollups in [--from, --to); complete hours only."""
    config = _load(config_path)
    t0, t1 = _parse_time(start, "--from"), _parse_time(end, "--to")
    factors = _factors(config)
    from energyd.daemon.reconciliation import record_reconciliation
    from energyd.model import to_ms

    with _existing_store(config) as store:
        acc = _accountant(config, store, factors)
        names = [d.name for d in acc.devices]
        for d in devices:
            if d not in names:
                raise click.BadParameter(f"{d!r} is not an enabled device of the configuration",
                                         param_hint="--device")
        span = (to_ms(t0), to_ms(t1))
        now = _now_ms()
        result = acc.recompute({d: span for d in (devices or names)}, now)
        record_reconciliation(store, config, result, now)
    if as_json:
        _print_json([r.as_json() for r in result.rows])
        return
    from energyd.accounting.report import rollup_lines

    for line in rollup_lines(result.rows):
        click.echo(line)
    click.echo(f"{len(result.rows)} device-hours, {result.written} changed")


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--month", required=True, help="YYYY-MM, the site's calendar month")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "json", "csv", "html"]))
@click.option("--evidence", default=None, type=click.Path(file_okay=False),
              help="also write the month's evidence (readings, statements, factors, "
                   "rollups, report, SHA-256 manifest) into this new directory")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="write the report to this file instead of standard output")
@click.option("--grid-mix", default=None, type=click.Path(dir_okay=False, exists=True),
              help="CSV hour,clean_share: the region's carbon-free share per hour, for CFE%")
def report(config_path: str, month: str, fmt: str, evidence: str | None,
           output: str | None, grid_mix: str | None) -> None:
    """Monthly MWh by source, coverage, tCO2 (location, market, fuel) with provenance;
    `--format html`: one self-contained document with charts, for people and for print."""
    config = _load(config_path)
    factors = _factors(config)
    from energyd.accounting.report import report_csv, report_lines
    from energyd.store import Store

    try:
        with Store.open(config.storage.path, must_exist=True) as store:
            acc = _accountant(config, store, factors)
            try:
                payload = acc.report(month, _now_ms())
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--month") from None
            if grid_mix:
                _with_grid_mix(acc, month, payload, grid_mix)
            if evidence:
                info = acc.export_evidence(month, evidence, _now_ms())
                click.echo(f"evidence: {info['directory']} ({info['readings']} readings, "
                           f"{info['rows']} rollups, {info['statements']} statements; "
                           f"MANIFEST.sha256)", err=True)
            if fmt == "html":
                text = _report_html(acc, store, month, payload, evidence)
    except (EnergydError, OSError) as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    if fmt == "json":
        text = json.dumps(payload, indent=2, default=str) + "\n"
    elif fmt == "csv":
        text = report_csv(payload)
    elif fmt == "table":
        text = "".join(f"{line}\n" for line in report_lines(payload, month))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        click.echo(f"energyd: {output}: cannot write the report: {exc}", err=True)
        sys.exit(1)
    click.echo(f"report: {output}", err=True)


def _with_grid_mix(acc: Any, month: str, payload: dict[str, Any], path: str) -> None:
    from energyd.accounting.granular import parse_grid_mix
    from energyd.accounting.scope2_report import scope2_section

    try:
        with open(path, newline="\n", encoding="utf-8-sig", errors="surrogateescape") as f:
            mix = parse_grid_mix(f, path, acc.tz)
    except ImportRejected as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
    payload["scope2"] = scope2_section(acc, month, acc.rows(*acc.month_bounds(month)),
                                       grid_mix=mix)


def _report_html(acc: Any, store: Any, month: str, payload: dict[str, Any],
                 evidence: str | None) -> str:
    from energyd.accounting.report_html import (
        alerts_in_month,
        read_manifest,
        render_html,
        report_series,
    )
    from energyd.alerts.report import collect_episodes

    rows = acc.rows(*acc.month_bounds(month))
    alerts = alerts_in_month(payload, collect_episodes(store, limit=None))
    manifest = read_manifest(Path(evidence) / "MANIFEST.sha256") if evidence else None
    return render_html(payload, report_series(payload, rows), alerts=alerts, manifest=manifest)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print the verdict as JSON")
@click.option("--html", "html_out", default=None, type=click.Path(dir_okay=False),
              help="also write the folder's report as one self-contained HTML document, "
                   "with what the verification found")
def verify(directory: str, as_json: bool, html_out: str | None) -> None:
    """Recompute a month from its evidence folder alone (`report --evidence`) and compare:
    exit 0 when every hour and total equals the folder's, 1 naming each hour that differs,
    2 when the folder does not match its manifest."""
    from energyd.accounting.evidence import verify_evidence

    # the scratch store's recompute is not news
    logging.getLogger("energyd.accounting").setLevel(logging.WARNING)
    try:
        verdict = verify_evidence(directory)
    except (EnergydError, OSError, ValueError, KeyError) as exc:
        click.echo(f"energyd: {directory}: cannot verify: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        _print_json({"month": verdict.month, "ok": verdict.ok, "problems": verdict.problems,
                     "hours": [{"hour": h, "device": d, "difference": w}
                               for h, d, w in verdict.hours],
                     "totals": verdict.totals,
                     "notes": [{"hour": h, "device": d, "note": w} for h, d, w in verdict.notes],
                     "rows": verdict.checked_rows})
    else:
        for problem in verdict.problems:
            click.echo(f"manifest: {problem}")
        by_hour: dict[tuple[str, str], list[str]] = {}
        for hour, device, what in verdict.hours:
            by_hour.setdefault((hour, device), []).append(what)
        for (hour, device), whats in by_hour.items():
            click.echo(f"hour {hour} {device}: {'; '.join(whats)}")
        for what in verdict.totals:
            click.echo(f"total: {what}")
        for hour, device, what in verdict.notes[:20]:
            click.echo(f"note: hour {hour} {device}: same figures, provenance differs: {what}")
        if len(verdict.notes) > 20:
            click.echo(f"note: {len(verdict.notes) - 20} more hours with other provenance")
        if verdict.ok:
            click.echo(f"{directory}: {verdict.month}: {verdict.checked_rows} hours and the "
                       "totals recomputed from the folder equal the report")
        elif not verdict.problems:
            hours = len({(h, d) for h, d, _ in verdict.hours})
            click.echo(f"{directory}: {verdict.month}: {hours} hours and "
                       f"{len(verdict.totals)} totals differ")
    if html_out and not verdict.problems:
        # a folder that does not match its manifest gets no document: it would vouch for it
        _verified_html(directory, verdict, html_out)
    if verdict.problems:
        sys.exit(EXIT_BAD_INPUT)
    if not verdict.ok:
        sys.exit(1)


def _verified_html(directory: str, verdict: Any, html_out: str) -> None:
    from energyd.accounting.report_html import evidence_html

    if verdict.ok:
        found = [f"energyd {__version__} verify: the manifest matches, and the "
                 f"{verdict.checked_rows} hours and the totals recomputed from the folder "
                 "equal the report"]
    else:
        found = [f"verify: hour {h} {d}: {w}" for h, d, w in verdict.hours[:50]]
        found += [f"verify: total: {w}" for w in verdict.totals]
    try:
        Path(html_out).write_text(evidence_html(directory, found), encoding="utf-8")
    except (OSError, ValueError, KeyError) as exc:
        click.echo(f"energyd: {html_out}: cannot write the document: {exc}", err=True)
        sys.exit(1)
    click.echo(f"report: {html_out}", err=True)


# --- forwarding ---------------------------------------------------------------------------


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--sink", "sinks", multiple=True, help="only this sink (repeatable)")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=1),
              help="give up after this many seconds")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def forward(config_path: str, sinks: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Forward what the sinks have not sent yet, once, and exit (while the daemon is
    stopped: commissioning, or pushing a backfill). Exit 1 if a sink failed."""
    config = _load(config_path)
    from energyd.daemon.forwarding import rejection_reporter
    from energyd.sinks import forward_once

    try:
        report = forward_once(config, sinks=list(sinks) or None, timeout=timeout,
                              reporter=rejection_reporter)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sink") from None
    if as_json:
        _print_json(report)
    else:
        for r in report:
            state = f"failed: {r['error']}" if r["error"] else f"{r['forwarded']:,} items sent"
            click.echo(f"{r['sink']} ({r['api']} {r['url']}): {state}; "
                       f"{r['backlog']:,} readings unsent, {r['rejected']:,} rejected")
    if any(r["error"] for r in report):
        sys.exit(1)


def main() -> None:
    from energyd.store.sqlite import DatabaseError

    try:
        cli()
    except EnergydError as exc:  # a command that did not catch it: a message, not a traceback
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    except DatabaseError as exc:  # the store failed part way through a command
        click.echo(f"energyd: the store cannot be read or written: {exc}; if it is damaged, "
                   f"`energyd store check -c CONFIG` says what is wrong", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
