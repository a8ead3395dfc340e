"""Sinks: store-and-forward of readings, rollups, alerts and air_hourly.

    forwarder.Forwarder   the policy: cursors, chunks, backoff, bisection, drain rate
    transport.Transport   the I/O under it: `write(body)` / `close()`
    lineprotocol          the InfluxDB schema of DESIGN.md as line protocol
    registry              one line per sink type: its options model and its code
    influxdb_v1/          InfluxDB 1.x `/write`
    influxdb_v2/          the v2 write API through influxdb-client (synchronous)
    file/                 line protocol appended to a file

`for_sink(sink, config, store)` builds a configured forwarder; the daemon runs one per
`sinks:` entry and per `influxdb:` entry (energyd/daemon/forwarding.py). The names below are
loaded when first used, so that the config can import the registry (and the sinks' options)
without this package's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.config.schema import Config
    from energyd.sinks.forwarder import Forwarder, Outcome
    from energyd.sinks.lineprotocol import Encoder
    from energyd.sinks.transport import Transport
    from energyd.store.sqlite import Store

__all__ = ["Encoder", "Forwarder", "Outcome", "Point", "Transport", "backlog", "backoff_delay",
           "encoder_for", "for_sink", "forward_once", "make_transport"]

_LAZY = {"Encoder": "energyd.sinks.lineprotocol", "Point": "energyd.sinks.lineprotocol",
         "Forwarder": "energyd.sinks.forwarder", "Outcome": "energyd.sinks.forwarder",
         "backlog": "energyd.sinks.forwarder",
         "backoff_delay": "energyd.retry", "Transport": "energyd.sinks.transport"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_transport(sink: Any) -> Transport:
    from energyd.sinks.registry import transport

    return transport(sink)


def encoder_for(config: Config) -> Encoder:
    from energyd.sinks.lineprotocol import Encoder

    roles: dict[str, str] = {}
    for device in config.devices:
        roles[device.name] = device.role
        # an MQTT topic template stands for several devices, all with the entry's role
        for name in getattr(device.mqtt, "devices", None) or []:
            roles.setdefault(name, device.role)
    return Encoder(config.site.name, roles, gateway=config.site.gateway)


def for_sink(sink: Any, config: Config, store: Store, *, metrics: Any = None,
             report: Callable[[Outcome], None] | None = None,
             transport: Transport | None = None) -> Forwarder:
    """`sink`: a `sinks:` entry or an `influxdb:` one; `report`: see Forwarder."""
    from energyd.sinks.forwarder import Forwarder

    return Forwarder(
        sink.name, store, transport or make_transport(sink), encoder=encoder_for(config),
        chunk_size=sink.chunk_size, max_points_per_second=sink.max_points_per_second,
        interval=sink.interval, backoff_max=sink.backoff_max, metrics=metrics, report=report)


def describe(sink: Any) -> tuple[str, str]:
    """(kind, where) of a sink for tables and reports: `v1`/`v2` and its (redacted) URL for
    the InfluxDB sinks, the type and its target for others."""
    from energyd.config.secrets import redact_url

    url = getattr(sink, "url", None)
    if url is not None:
        return getattr(sink, "api", sink.type), redact_url(url)
    return sink.type, str(getattr(sink, "path", ""))


def forward_once(config: Config, *, sinks: list[str] | None = None, timeout: float = 600.0,
                 reporter: Callable[[str, Store], Callable[[Outcome], None]] | None = None
                 ) -> list[dict[str, Any]]:
    """Forward what the configured sinks have not sent yet, once, and report per sink:
    `energyd forward` (commissioning, or pushing a backfill while the daemon is stopped).
    A sink that fails is reported with its error and the others still run. `reporter(sink,
    store)` gives each forwarder its `report` (where refused points go: `energyd forward`
    makes them an alert episode, energyd/daemon/forwarding.py); without one they are counted
    and kept in the store's rejected table only."""
    from energyd.errors import SinkError
    from energyd.store.sqlite import Store

    configured = config.all_sinks
    chosen = [s for s in configured if sinks is None or s.name in sinks]
    unknown = set(sinks or ()) - {s.name for s in configured}
    if unknown:
        raise ValueError(f"no influxdb sink named {', '.join(sorted(unknown))}")
    report = []
    with Store.open(config.storage.path) as store:
        for sink in chosen:
            report_to = reporter(sink.name, store) if reporter is not None else None
            forwarder = for_sink(sink, config, store, report=report_to)
            kind, where = describe(sink)
            entry: dict[str, Any] = {"sink": sink.name, "api": kind, "url": where}
            try:
                entry["forwarded"] = forwarder.drain(timeout=timeout)
                entry["error"] = None
            except (SinkError, TimeoutError) as exc:
                entry["forwarded"], entry["error"] = None, str(exc)
            finally:
                forwarder.close()
            entry["backlog"] = forwarder.backlog().count
            entry["rejected"] = store.cursors.rejected_count(sink.name)
            report.append(entry)
    return report

