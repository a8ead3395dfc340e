"""The command line. Thin: each command parses its options and calls the packages below.

Exit codes: 0 success, 1 a runtime failure, 2 bad input (config, CSV, arguments).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from energyd import __version__
from energyd.config import Config, load_config
from energyd.errors import ConfigError, EnergydError, ImportRejected

CONFIG_HELP = "configuration file (YAML)"
EXIT_BAD_INPUT = 2

console = Console(highlight=False)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every job run at INFO: at a 1 s poll that drowns the journal
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))


def _load(path: str) -> Config:
    try:
        return load_config(path)
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
    config = _load(config_path)
    from energyd.config.summary import summary_tables

    for table in summary_tables(config):
        console.print(table)
    click.echo(f"{config_path}: OK")


# --- the daemon -------------------------------------------------------------------------


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
def run(config_path: str) -> None:
    """Run the daemon in the foreground (systemd Type=notify)."""
    config = _load(config_path)
    from energyd.daemon.app import Daemon

    try:
        code = asyncio.run(Daemon(config, config_path=config_path).run())
    except EnergydError as exc:
        click.echo(f"energyd: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@cli.command()
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(config_path: str, as_json: bool) -> None:
    """Per device last reading and error; store size; backlog per sink."""
    config = _load(config_path)
    from energyd.daemon.status import collect_status, status_tables

    payload = collect_status(config)
    if as_json:
        _print_json(payload)
    else:
        for table in status_tables(payload):
            console.print(table)


# --- readings in and out ----------------------------------------------------------------


@cli.group()
def readings() -> None:
    """Import and export raw readings as CSV (time,device,quantity,value)."""


@readings.command("import")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.argument("csv_file", type=click.Path(dir_okay=False))
def readings_import(config_path: str, csv_file: str) -> None:
    """Import a CSV file whole, or nothing of it."""
    config = _load(config_path)
    from energyd.store import Store
    from energyd.store.csvio import import_readings

    names = {d.name for d in config.devices}
    try:
        with open(csv_file, newline="", encoding="utf-8") as f, \
                Store.open(config.storage.path, quota=config.storage.quota) as store:
            result = import_readings(store, f, csv_file, known_device=names.__contains__)
    except OSError as exc:
        click.echo(f"{csv_file}: cannot read: {exc.strerror}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except ImportRejected as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"{csv_file}: {result.rows} rows, {result.inserted} new readings stored "
                  f"({result.rows - result.inserted} already present)")


@readings.command("export")
@click.option("-c", "--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--from", "start", required=True, help="start, ISO 8601 with offset (inclusive)")
@click.option("--to", "end", required=True, help="end, ISO 8601 with offset (exclusive)")
@click.option("--device", default=None, help="only this device")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="write here instead of stdout")
def readings_export(config_path: str, start: str, end: str, device: str | None,
                    output: str | None) -> None:
    """Export readings in [--from, --to) as CSV."""
    config = _load(config_path)
    t0, t1 = _parse_time(start, "--from"), _parse_time(end, "--to")
    from energyd.store import Store
    from energyd.store.csvio import export_readings

    with Store.open(config.storage.path) as store:
        if output:
            with open(output, "w", newline="", encoding="utf-8") as f:
                n = export_readings(store, f, t0, t1, device)
            click.echo(f"{output}: {n} readings", err=True)
        else:
            export_readings(store, sys.stdout, t0, t1, device)


@cli.group()
def simulate() -> None:
    """Run a simulator alone (a Modbus meter, an MQTT compressor station)."""


@cli.group()
def invoices() -> None:
    """Supplier billing statements."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
