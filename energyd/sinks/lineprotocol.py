"""InfluxDB line protocol for energyd's four streams (DESIGN.md, "InfluxDB schema").

    energy_reading     tags site, device, role[, gateway]; one float field per quantity;
                       one point per device per poll; time = the reading's time
    energy_hourly      tags site, device, role, source[, gateway]; fields mwh, coverage,
                       tco2_location, tco2_market, ef_location (NULLs left out); the
                       hour's other sources get mwh = tco2 = 0 (see `rollups`)
    energy_alert       tags site, device, rule, state[, gateway]; numeric entries of the
                       alert's detail as float fields plus `text`; one point at `started`
                       (state "active"), one at `ended` (the row's final state)
    energy_air_hourly  tags site, device[, gateway]; fields kwh, m3, specific_power,
                       loaded_share (NULLs left out)

Timestamps are written in milliseconds (`precision=ms`), the store's unit. Every numeric
field is written as a float (`1500.0`, never `1500i`), so no later value can conflict with an
earlier one's type. A replayed point has the same measurement, tags and time as the first
write and overwrites it: forwarding is at-least-once, and replays are harmless.

A `Point` carries the line and the store items it was made from, so a point the server
refuses for good can be kept in the store as rejected, item by item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from energyd.model import ENERGY_SOURCES

READING = "energy_reading"
HOURLY = "energy_hourly"
ALERT = "energy_alert"
AIR_HOURLY = "energy_air_hourly"

_ZEROED = "mwh=0.0,tco2_location=0.0,tco2_market=0.0"
_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ ", "\n": " ", "\r": " "})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": " ", "\r": " "})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": " ", "\r": " "})


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT)


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys share one escaping."""
    out = text.translate(_KEY)
    # a trailing backslash would escape the separator that follows it
    return out[:-1] + "_" if out.endswith("\\") and not out.endswith("\\\\") else out


def string_field(text: str) -> str:
    return '"' + text.translate(_STRING) + '"'


def float_field(value: float) -> str | None:
    """`repr` of a float is exact and always a float literal; None for NaN and infinities,
    which line protocol cannot carry."""
    v = float(value)
    return repr(v) if math.isfinite(v) else None


def series_key(measurement: str, tags: Mapping[str, str | None]) -> str:
    """Measurement and tags, sorted by key (InfluxDB's own order); empty tags left out."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value is not None and value != "":
            parts.append(f"{escape_key(key)}={escape_key(str(value))}")
    return ",".join(parts)


class Point(NamedTuple):
    # A named tuple, not a frozen dataclass: a backlog makes one per device and poll, and
    # a tuple is built several times faster.
    line: str
    items: tuple[int, ...] = ()  # change sequence numbers of the table rows it carries
    count: int = 1  # store items in it: readings of the poll, or 1 for a row
    poll: tuple[str, int] | None = None  # readings: (device, time_ms), to find their ids


def body(points: Sequence[Point]) -> bytes:
    return "\n".join(p.line for p in points).encode()


def _fields(values: Iterable[tuple[str, Any]]) -> str:
    out = []
    for key, value in values:
        if value is None:
            continue
        text = float_field(value)
        if text is not None:
            out.append(f"{escape_key(key)}={text}")
    return ",".join(out)


class Encoder:
    """Turns store rows into points for one site. `roles` maps device -> role from the
    configuration; a device no longer configured keeps its other tags and has no role."""

    def __init__(self, site: str, roles: Mapping[str, str], gateway: str | None = None):
        self.site = site
        self.roles = dict(roles)
        self.gateway = gateway
        self._series_info: dict[int, tuple[str, str]] = {}  # series id -> (prefix, "field=")
        self._prefixes: dict[str, str] = {}
        self._devices: dict[str, str] = {}  # prefix -> device

    def _tags(self, device: str, **extra: str | None) -> dict[str, str | None]:
        return {"site": self.site, "gateway": self.gateway, "device": device, **extra}

    # --- readings -------------------------------------------------------------------------

    def _series(self, sid: int, names: Mapping[int, tuple[str, str]]) -> tuple[str, str]:
        device, quantity = names[sid]
        prefix = series_key(READING, self._tags(device, role=self.roles.get(device)))
        prefix = self._prefixes.setdefault(prefix, prefix)  # one object per device: `is` works
        self._devices[prefix] = device
        info = self._series_info[sid] = (prefix, escape_key(quantity) + "=")
        return info

    def readings(self, rows: Iterable[Sequence[Any]],
                 names: Mapping[int, tuple[str, str]]) -> list[Point]:
        """Rows (series id, time_ms, value) in insertion order, `names` mapping a series id
        to (device, quantity) -> one point per device and time, in the order of their first
        reading. A poll split across two chunks gives two points with the same series and
        time; the server merges their fields. Raises KeyError for a series not in `names`.

        This loop is the forwarder's hot path: no per-reading objects beyond the field text."""
        if not isinstance(rows, list):
            rows = list(rows)
        if not math.isfinite(math.fsum(map(itemgetter(2), rows))):
            # the store refuses NaN and infinities; should one be there, it must not spoil
            # a chunk (fsum is exact, so only a non-finite value makes it non-finite)
            rows = [r for r in rows if math.isfinite(r[2])]
        try:
            groups = self._group(rows)
        except KeyError:  # a series seen for the first time
            for sid in {r[0] for r in rows} - self._series_info.keys():
                self._series(sid, names)
            groups = self._group(rows)
        devices = self._devices
        return [Point(f"{k} {','.join(f)} {t}", (), len(f), (devices[k], t))
                for (k, t), f in groups.items()]

    def _group(self, rows: list[Sequence[Any]]) -> dict[tuple[str, int], list[str]]:
        info = self._series_info
        groups: dict[tuple[str, int], list[str]] = {}
        if not rows:
            return groups
        key: str | None = None
        at = fields = None
        # The values' text in one call: orjson writes the shortest text that reads back as
        # the same double (as repr does, only some exponents are spelled differently), at a
        # fraction of repr's cost per value, which was the largest part of this loop.
        texts = orjson.dumps(list(map(itemgetter(2), rows))).decode()[1:-1].split(",")
        for (sid, t, _), text in zip(rows, texts, strict=True):
            prefix, field = info[sid]
            if prefix is not key or t != at:
                # a poll's readings are usually contiguous: the dict sees each poll once
                fields = groups.get((prefix, t))
                if fields is None:
                    fields = groups[(prefix, t)] = []
                key, at = prefix, t
            fields.append(field + text)  # type: ignore[union-attr]
        return groups

    # --- hourly rollups -------------------------------------------------------------------

    def rollups(self, rows: Iterable[Sequence[Any]]) -> list[Point]:
        """Rows (seq, device, hour_ms, mwh, source, coverage, tco2_location, tco2_market,
        ef_location)."""
        # `source` is a tag, so an hour recomputed from `estimated` to `invoice` lands in
        # another series and the old point would stay, counted twice by every sum. Writing
        # zeros to the hour's other sources overwrites whatever an earlier version left.
        points = []
        for seq, device, hour, mwh, source, coverage, tco2_l, tco2_m, ef_l in rows:
            fields = _fields((("mwh", mwh), ("coverage", coverage), ("tco2_location", tco2_l),
                              ("tco2_market", tco2_m), ("ef_location", ef_l)))
            if not fields:
                continue
            role = self.roles.get(device)
            lines = [f"{series_key(HOURLY, self._tags(device, role=role, source=source))} "
                     f"{fields} {hour}"]
            for other in ENERGY_SOURCES:
                if other != source:
                    key = series_key(HOURLY, self._tags(device, role=role, source=other))
                    lines.append(f"{key} {_ZEROED} {hour}")
            points.append(Point("\n".join(lines), (seq,)))
        return points

    # --- compressed air -------------------------------------------------------------------

    def air_hourly(self, rows: Iterable[Sequence[Any]]) -> list[Point]:
        """Rows (seq, device, hour_ms, kwh, m3, specific_power, loaded_share)."""
        points = []
        for seq, device, hour, kwh, m3, specific_power, loaded_share in rows:
            fields = _fields((("kwh", kwh), ("m3", m3), ("specific_power", specific_power),
                              ("loaded_share", loaded_share)))
            if fields:
                key = series_key(AIR_HOURLY, self._tags(device))
                points.append(Point(f"{key} {fields} {hour}", (seq,)))
        return points

    # --- alerts ---------------------------------------------------------------------------

    def alerts(self, rows: Iterable[Sequence[Any]]) -> list[Point]:
        """Rows (seq, rule, device, state, started_ms, ended_ms, detail JSON).

        The start point is always tagged `active`, so forwarding the row again after it
        resolved overwrites that point instead of adding a second start; the end point
        carries the row's final state (`resolved`, ...)."""
        points = []
        for seq, rule, device, state, started, ended, detail_text in rows:
            detail = _detail(detail_text)
            numbers = [(k, v) for k, v in detail.items()
                       if isinstance(v, int | float) and not isinstance(v, bool) and k != "text"]
            numeric = _fields(sorted(numbers))
            sep = "," if numeric else ""
            start_text = _alert_text(rule, device, "active", detail)
            key = series_key(ALERT, self._tags(device, rule=rule, state="active"))
            points.append(Point(f"{key} {numeric}{sep}text={string_field(start_text)} "
                                f"{started}", (seq,)))
            if ended is not None:
                end_state = state if state != "active" else "resolved"
                end_text = _alert_text(rule, device, end_state, detail)
                key = series_key(ALERT, self._tags(device, rule=rule, state=end_state))
                points.append(Point(f"{key} {numeric}{sep}text={string_field(end_text)} "
                                    f"{ended}", (seq,)))
        return points


def _detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"message": str(text)}
    return value if isinstance(value, dict) else {"value": value}


def _alert_text(rule: str, device: str, state: str, detail: Mapping[str, Any]) -> str:
    head = f"{rule} {state} on {device}"
    message = detail.get("message") or detail.get("text")
    if isinstance(message, str) and message:
        return f"{head}: {message}"
    shown = [f"{k}={v}" for k, v in sorted(detail.items())
             if isinstance(v, int | float | str) and not isinstance(v, bool)]
    return f"{head}: {', '.join(shown)}" if shown else head
