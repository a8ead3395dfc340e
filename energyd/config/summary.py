"""What `check-config` prints when a file is valid: what will run, at a glance."""

from __future__ import annotations

from rich.table import Table

from energyd.config.schema import Config, Device
from energyd.config.secrets import redact_url


def _fmt_seconds(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def _source(d: Device) -> str:
    if d.modbus is not None:
        m = d.modbus
        where = m.serial_port if m.transport == "rtu" else f"{m.host}:{m.port}"
        what = d.profile or f"{len(d.registers)} inline registers"
        return f"modbus {m.transport} {where} unit {m.unit}, {what}"
    if d.dlt645 is not None:
        o = d.dlt645
        where = o.serial_port if o.transport == "serial" else f"{o.host}:{o.port}"
        return f"dlt645 {o.transport} {where} address {o.address}, {o.profile}"
    assert d.mqtt is not None
    if d.mqtt.devices:
        # a template entry: one line, but every device it stands for is named
        return (f"mqtt {d.mqtt.topic} ({d.mqtt.format}), level {d.mqtt.device_level} names "
                f"{len(d.mqtt.devices)} devices: {', '.join(d.mqtt.devices)}")
    return f"mqtt {d.mqtt.topic} ({d.mqtt.format})"


def summary_tables(config: Config) -> list[Table]:
    site = Table(title="site", show_header=False)
    site.add_row("name", config.site.name)
    site.add_row("timezone", config.site.timezone)
    site.add_row("grid region", config.site.grid_region)
    retention = _fmt_seconds(config.storage.retention)
    quota = f", quota {config.storage.quota} bytes" if config.storage.quota else ""
    site.add_row("store", f"{config.storage.path} (retention {retention}{quota})")
    if config.http.enabled:
        site.add_row("health", f"http://{config.http.host}:{config.http.port}/health")
    if config.mqtt is not None:
        site.add_row("mqtt broker", f"{config.mqtt.host}:{config.mqtt.port}"
                     f" as {config.mqtt.client_id}" + (" (TLS)" if config.mqtt.tls else ""))

    devices = Table(title=f"devices ({len(config.devices)})")
    for col in ("name", "role", "interval", "source"):
        devices.add_column(col)
    for d in config.devices:
        devices.add_row(d.name + ("" if d.enabled else " (disabled)"), d.role,
                        _fmt_seconds(d.interval), _source(d))

    sinks = Table(title=f"sinks ({len(config.all_sinks)})")
    for col in ("name", "api", "url", "target", "credentials"):
        sinks.add_column(col)
    for s in config.all_sinks:
        if getattr(s, "url", None) is None:  # a sink that is not an InfluxDB server
            sinks.add_row(s.name, s.type, "", str(getattr(s, "path", "")), "none")
            continue
        target = f"{s.org or '-'}/{s.bucket}" if s.api == "v2" else \
            f"{s.database}" + (f".{s.retention_policy}" if s.retention_policy else "")
        creds = ("token" if getattr(s, "token", None) else
                 "user+password" if getattr(s, "password", None) else "none")
        sinks.add_row(s.name, s.api, redact_url(s.url), target, creds)

    tables = [site, devices, sinks]
    if config.alerts.rules:
        alerts = Table(title=f"alert rules ({len(config.alerts.rules)})")
        for col in ("name", "type", "applies to"):
            alerts.add_column(col)
        for r in config.alerts.rules:
            alerts.add_row(r.name, r.type, ", ".join(r.devices) if r.devices else (r.role or "all"))
        tables.append(alerts)
    return tables
