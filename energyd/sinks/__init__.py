"""InfluxDB sinks: store-and-forward of readings, rollups, alerts and air_hourly.

    forwarder.Forwarder   the policy: cursors, chunks, backoff, bisection, drain rate
    transport.Transport   the I/O under it: `write(body)` / `close()`
    v1.V1Transport        InfluxDB 1.x `/write` (plain HTTP)
    v2.V2Transport        the v2 write API through influxdb-client (synchronous)
    lineprotocol          the InfluxDB schema of DESIGN.md as line protocol

`for_sink(sink, config, store)` builds a configured forwarder; the daemon runs one per
`influxdb:` entry (energyd/daemon/forwarding.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from energyd.config.schema import Config, InfluxDB
from energyd.config.secrets import redact_url
from energyd.sinks.forwarder import Forwarder, Outcome, backoff_delay
from energyd.sinks.lineprotocol import Encoder, Point
from energyd.sinks.transport import Transport
from energyd.store.sqlite import Store

__all__ = ["Encoder", "Forwarder", "Outcome", "Point", "Transport", "backoff_delay",
           "encoder_for", "for_sink", "forward_once", "make_transport"]


def make_transport(sink: InfluxDB) -> Transport:
    if sink.api == "v1":
        from energyd.sinks.v1 import V1Transport

        return V1Transport(sink)
    from energyd.sinks.v2 import V2Transport

    return V2Transport(sink)


def encoder_for(config: Config) -> Encoder:
    roles: dict[str, str] = {}
    for device in config.devices:
        roles[device.name] = device.role
        # an MQTT topic template stands for several devices, all with the entry's role
        for name in getattr(device.mqtt, "devices", None) or []:
            roles.setdefault(name, device.role)
    return Encoder(config.site.name, roles, gateway=config.site.gateway)


def for_sink(sink: InfluxDB, config: Config, store: Store, *, metrics: Any = None,
             now_ms: Callable[[], int] | None = None,
             transport: Transport | None = None) -> Forwarder:
    return Forwarder(
        sink.name, store, transport or make_transport(sink), encoder=encoder_for(config),
        chunk_size=sink.chunk_size, max_points_per_second=sink.max_points_per_second,
        interval=sink.interval, backoff_max=sink.backoff_max, metrics=metrics, now_ms=now_ms)


def forward_once(config: Config, *, sinks: list[str] | None = None,
                 timeout: float = 600.0) -> list[dict[str, Any]]:
    """Forward what the configured sinks have not sent yet, once, and report per sink:
    `energyd forward` (commissioning, or pushing a backfill while the daemon is stopped).
    A sink that fails is reported with its error and the others still run."""
    from energyd.errors import SinkError

    chosen = [s for s in config.influxdb if sinks is None or s.name in sinks]
    unknown = set(sinks or ()) - {s.name for s in config.influxdb}
    if unknown:
        raise ValueError(f"no influxdb sink named {', '.join(sorted(unknown))}")
    report = []
    with Store.open(config.storage.path) as store:
        for sink in chosen:
            forwarder = for_sink(sink, config, store)
            entry: dict[str, Any] = {"sink": sink.name, "api": sink.api,
                                     "url": redact_url(sink.url)}
            try:
                entry["forwarded"] = forwarder.drain(timeout=timeout)
                entry["error"] = None
            except (SinkError, TimeoutError) as exc:
                entry["forwarded"], entry["error"] = None, str(exc)
            finally:
                forwarder.close()
            entry["backlog"] = store.backlog(sink.name).count
            entry["rejected"] = store.rejected_count(sink.name)
            report.append(entry)
    return report
