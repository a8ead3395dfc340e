"""The demo's terminal view: devices, alerts, hourly rollups and compressed air, drawn from
the status API (energyd.daemon.status.recent_activity) over the running daemon's store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from energyd.config.schema import Config
from energyd.daemon.status import recent_activity
from energyd.demo.plant import Event


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
    activity = recent_activity(store, config)
    now_ms = int(now.timestamp() * 1000)
    devices = []
    for d in activity["devices"]:
        t, error = d["last_reading_ms"], d["last_error"]
        if t is None:
            state = error or "waiting"
        elif error and (d["last_error_ms"] or 0) >= (d["last_success_ms"] or 0):
            state = f"error: {error}"
        elif now_ms - max(t, d["last_success_ms"] or 0) > 5 * d["interval_s"] * 1000 + 120_000:
            # heard from neither a reading of its power nor a poll: a device that reports
            # changes only (an OPC UA subscription) sends no new power while it holds steady
            state = "silent"
        else:
            state = "ok"
        devices.append({"name": d["device"], "role": d["role"], "driver": d["driver"],
                        "kw": d["kw"], "last_ms": t, "polls": d["polls"],
                        "errors": d["errors"], "state": state})
    hourly = [(r["hour"], r["device"], r["mwh"], r["source"], r["coverage"],
               r["tco2_location"], r["tco2_market"]) for r in activity["hourly"]]
    air = [(r["hour"], r["station"], r["kwh"], r["m3"], r["specific_power"],
            r["loaded_share"]) for r in activity["air"]]
    alerts = [(e["rule"], e["device"], e["state"], e["started"], e["ended"], e["detail"])
              for e in activity["alerts"]]
    return Snapshot(now, devices, hourly, air, alerts, activity["readings"],
                    activity["backlog"])


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _local(ms: int | None, tz: ZoneInfo, fmt: str = "%a %H:%M") -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, tz).strftime(fmt)


def _alert_text(detail: dict[str, Any]) -> str:
    if isinstance(detail.get("message"), str):
        return detail["message"][:70]
    shown = [f"{k}={round(v, 2) if isinstance(v, float) else v}"
             for k, v in sorted(detail.items())
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
