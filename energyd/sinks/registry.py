"""Every sink energyd has: one line each, `type:` -> the package of its folder. A new sink
is a folder beside this file and a line here.

A sink's folder holds `options.py` (its options model, exported as `OPTIONS`, whose
`type: Literal[...]` is the sink's type), `transport.py` (`make(options)` returns its
Transport), README.md documenting every option and sample.yaml, which a test parses.

The config builds the `sinks:` entries from the options models (a union told apart by
`type:`); the code, which may pull in a client library, is imported only when a sink of
its type is built (`transport()`), so loading the config never does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from energyd.sinks.transport import Transport

PLUGINS = {
    "influxdb_v1": "energyd.sinks.influxdb_v1",
    "influxdb_v2": "energyd.sinks.influxdb_v2",
    "file": "energyd.sinks.file",
}


class Entry(NamedTuple):
    options: type[Any]  # the sink's options model
    code: str  # the module whose `make(options)` returns the sink's Transport


def _entry(package: str) -> Entry:
    return Entry(importlib.import_module(f"{package}.options").OPTIONS, f"{package}.transport")


SINKS: dict[str, Entry] = {name: _entry(package) for name, package in PLUGINS.items()}


def transport(options: Any) -> Transport:
    """The transport for a configured sink (a `sinks:` entry or an `influxdb:` one)."""
    made: Transport = importlib.import_module(SINKS[options.type].code).make(options)
    return made
