"""The Grafana dashboards of energyd, written as data and rendered to dashboards/*.json.

    python deploy/grafana/build_dashboards.py          # rewrite the JSON files
    python deploy/grafana/build_dashboards.py --check  # exit 1 if a JSON file is stale

Every query is InfluxQL over energyd's InfluxDB schema (DESIGN.md, "InfluxDB schema"), the
dialect InfluxDB 1.x, 2.x (with a DBRP mapping) and 3.x all answer:

    energy_reading     tags site, device, role[, gateway]; one field per quantity
    energy_hourly      tags site, device, role, source[, gateway]; mwh, coverage,
                       tco2_location, tco2_market, ef_location
    energy_air_hourly  tags site, device[, gateway]; kwh, m3, specific_power, loaded_share
    energy_alert       tags site, device, rule, state[, gateway]; text and the alert's figures

tests/test_grafana.py runs every query below against an InfluxDB that energyd filled.
Standard library only, so it runs with any Python 3.11.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = {"type": "influxdb", "uid": "${datasource}"}

SITE = '"site" =~ /^$site$/'
DEVICES = '"device" =~ /^$device$/'
GRID = "\"role\" = 'grid_import'"


# --- building blocks -------------------------------------------------------------------------


def target(query: str, ref: str = "A", alias: str = "", fmt: str = "time_series") -> dict:
    t = {"datasource": DS, "refId": ref, "rawQuery": True, "query": query,
         "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def panel(kind: str, title: str, queries: list[dict], x: int, y: int, w: int, h: int,
          *, unit: str = "", description: str = "", decimals: int | None = None,
          options: dict | None = None, custom: dict | None = None,
          time_from: str | None = None, transformations: list | None = None,
          overrides: list | None = None) -> dict:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom:
        defaults["custom"] = custom
    p: dict[str, Any] = {
        "type": kind, "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": queries,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
    }
    if description:
        p["description"] = description
    if options:
        p["options"] = options
    if time_from:
        p["timeFrom"] = time_from
    if transformations:
        p["transformations"] = transformations
    return p


def stat(title: str, query: str, x: int, y: int, unit: str, time_from: str | None = None,
         description: str = "", decimals: int = 2, w: int = 4) -> dict:
    return panel("stat", title, [target(query)], x, y, w, 4, unit=unit, decimals=decimals,
                 time_from=time_from, description=description,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": ""},
                          "colorMode": "value", "graphMode": "none", "textMode": "value"})


def series(title: str, queries: list[dict], x: int, y: int, w: int = 12, h: int = 8,
           unit: str = "", description: str = "", bars: bool = False, stack: bool = False,
           decimals: int | None = None) -> dict:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
                              "fillOpacity": 60 if bars else 10, "spanNulls": False,
                              "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return panel("timeseries", title, queries, x, y, w, h, unit=unit, custom=custom,
                 description=description, decimals=decimals,
                 options={"legend": {"displayMode": "table", "placement": "bottom",
                                     "calcs": ["mean", "max", "lastNotNull"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}})


def table(title: str, queries: list[dict], x: int, y: int, w: int = 12, h: int = 8,
          description: str = "", transformations: list | None = None,
          time_from: str | None = None, unit: str = "") -> dict:
    return panel("table", title, queries, x, y, w, h, description=description, unit=unit,
                 transformations=transformations, time_from=time_from,
                 options={"showHeader": True, "cellHeight": "sm"})


def text(title: str, content: str, x: int, y: int, w: int = 12, h: int = 6) -> dict:
    return {"type": "text", "title": title, "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "options": {"mode": "markdown", "content": content}}


def row(title: str, y: int) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def query_var(name: str, label: str, query: str, *, multi: bool = False,
              include_all: bool = False) -> dict:
    v: dict[str, Any] = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 1,
        "multi": multi, "includeAll": include_all, "current": {}, "options": [],
        "hide": 0, "regex": "",
    }
    return v


# the provisioned data source (provisioning/datasources/energyd.yaml) unless one picks another
DATASOURCE_VAR = {"name": "datasource", "label": "InfluxDB", "type": "datasource",
                  "query": "influxdb", "hide": 0, "refresh": 1, "regex": "", "options": [],
                  "current": {"text": "energyd InfluxDB", "value": "energyd-influxdb"}}

SITE_VAR = query_var("site", "Site", 'SHOW TAG VALUES FROM "energy_reading" WITH KEY = "site"')


def device_var(where: str = "", name: str = "device", label: str = "Device",
               measurement: str = "energy_reading", multi: bool = True) -> dict:
    cond = f" AND {where}" if where else ""
    return query_var(name, label, f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "device" '
                                  f"WHERE {SITE}{cond}", multi=multi, include_all=multi)


ALERT_ANNOTATION = {
    "name": "energyd alerts", "datasource": DS, "enable": True, "iconColor": "red",
    "query": 'SELECT "text", "rule", "device", "state" FROM "energy_alert" '
             f"WHERE {SITE} AND $timeFilter",
    "textColumn": "text", "tagsColumn": "rule,device,state",
}
BUILTIN_ANNOTATION = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
    "type": "dashboard",
}


def dashboard(uid: str, title: str, description: str, panels: list[dict],
              variables: list[dict], time_from: str = "now-24h",
              annotation: dict | None = None) -> dict:
    ann = dict(ALERT_ANNOTATION)
    if annotation:
        ann.update(annotation)
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["energyd"], "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "1m",
        "time": {"from": time_from, "to": "now"}, "timezone": "browser",
        "templating": {"list": [DATASOURCE_VAR, SITE_VAR, *variables]},
        "annotations": {"list": [BUILTIN_ANNOTATION, ann]},
        "links": [{"type": "dashboards", "tags": ["energyd"], "asDropdown": True,
                   "title": "energyd", "includeVars": True, "keepTime": True}],
        "panels": panels,
    }


# --- the dashboards ----------------------------------------------------------------------------


def plant_overview() -> dict:
    hourly_grid = f'FROM "energy_hourly" WHERE {SITE} AND {GRID} AND $timeFilter'
    power_now = ('SELECT sum("kw") FROM (SELECT last("active_power_kw") AS "kw" '
                 f'FROM "energy_reading" WHERE {SITE} AND {GRID} AND $timeFilter '
                 'GROUP BY "device")')
    panels = [
        stat("Purchased power now", power_now, 0, 0, "kwatt", "15m",
             description="Sum of the latest active power of every grid_import meter "
                         "(readings of the last 15 minutes).", w=4),
        stat("Today: MWh", f'SELECT sum("mwh") {hourly_grid}', 4, 0, "none", "now/d",
             "Purchased electricity since midnight (site time in Grafana's time zone), "
             "from the hourly rollups.", decimals=3),
        stat("Today: tCO2 (location)", f'SELECT sum("tco2_location") {hourly_grid}', 8, 0,
             "none", "now/d", decimals=3),
        stat("Today: tCO2 (market)", f'SELECT sum("tco2_market") {hourly_grid}', 12, 0,
             "none", "now/d", decimals=3),
        stat("This month: MWh", f'SELECT sum("mwh") {hourly_grid}', 16, 0, "none", "now/M",
             decimals=2),
        stat("This month: tCO2 (location)", f'SELECT sum("tco2_location") {hourly_grid}', 20,
             0, "none", "now/M", decimals=2),
        series("Active power by device", [target(
            'SELECT mean("active_power_kw") FROM "energy_reading" '
            f'WHERE {SITE} AND {DEVICES} AND $timeFilter '
            'GROUP BY time($__interval), "device" fill(null)', alias="$tag_device")],
            0, 4, w=16, h=9, unit="kwatt"),
        table("Top consumers (MWh in range)", [target(
            'SELECT sum("mwh") AS "MWh", sum("tco2_location") AS "tCO2 location" '
            "FROM \"energy_hourly\" WHERE "
            f"{SITE} AND \"role\" =~ /^(submeter|compressor)$/ AND $timeFilter "
            'GROUP BY "device"', fmt="table")], 16, 4, w=8, h=9,
            description="Submeters and compressors by energy in the selected range.",
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {"excludeByName": {"Time": True}}},
                {"id": "sortBy", "options": {"sort": [{"field": "MWh", "desc": True}]}}]),
        series("Hourly MWh by role", [target(
            f'SELECT sum("mwh") FROM "energy_hourly" WHERE {SITE} AND $timeFilter '
            'GROUP BY time(1h), "role" fill(none)', alias="$tag_role")],
            0, 13, w=16, h=8, unit="none", bars=True, decimals=3,
            description="grid_import is what was purchased; submeters are inside it."),
        table("Alerts", [target(
            'SELECT "rule", "device", "state", "text" FROM "energy_alert" '
            f"WHERE {SITE} AND $timeFilter", fmt="table")], 16, 13, w=8, h=8,
            transformations=[{"id": "sortBy",
                              "options": {"sort": [{"field": "Time", "desc": True}]}}]),
    ]
    return dashboard("energyd-plant-overview", "energyd: plant overview",
                     "Power now, today's and this month's purchased MWh and tCO2, "
                     "top consumers, alerts.", panels, [device_var()])


def meter_detail() -> dict:
    m = '"device" =~ /^$meter$/'
    reading = f'FROM "energy_reading" WHERE {m} AND $timeFilter'
    by_time = 'GROUP BY time($__interval), "device" fill(null)'
    panels = [
        series("Active, reactive and apparent power", [
            target(f'SELECT mean("active_power_kw") AS "P kW", '
                   f'mean("reactive_power_kvar") AS "Q kvar", '
                   f'mean("apparent_power_kva") AS "S kVA" {reading} {by_time}',
                   alias="$tag_device $col")], 0, 0, w=12, h=8),
        series("Phase voltages (L-N)", [
            target(f'SELECT mean("voltage_l1_v") AS "L1", mean("voltage_l2_v") AS "L2", '
                   f'mean("voltage_l3_v") AS "L3" {reading} {by_time}',
                   alias="$tag_device $col")], 12, 0, w=12, h=8, unit="volt"),
        series("Phase currents", [
            target(f'SELECT mean("current_l1_a") AS "L1", mean("current_l2_a") AS "L2", '
                   f'mean("current_l3_a") AS "L3" {reading} {by_time}',
                   alias="$tag_device $col")], 0, 8, w=12, h=8, unit="amp"),
        series("Power factor and frequency", [
            target(f'SELECT mean("power_factor") AS "PF" {reading} {by_time}',
                   alias="$tag_device PF"),
            target(f'SELECT mean("frequency_hz") AS "Hz" {reading} {by_time}', ref="B",
                   alias="$tag_device Hz")], 12, 8, w=12, h=8),
        series("Import counter", [
            target(f'SELECT last("active_energy_import_kwh") {reading} {by_time}',
                   alias="$tag_device kWh")], 0, 16, w=12, h=8, unit="kwatth",
            description="The meter's cumulative counter as read; a step back is a reset, "
                        "a wrap or a replaced meter, which the hourly rollup tells apart."),
        series("Hourly energy by source", [
            target('SELECT sum("mwh") FROM "energy_hourly" '
                   f'WHERE {m} AND $timeFilter GROUP BY time(1h), "source" fill(none)',
                   alias="$tag_source")], 12, 16, w=12, h=8, bars=True, stack=True,
            decimals=3, description="meter: counter read at both hour boundaries; "
            "meter_interpolated: a polling gap spread over its hours; invoice / estimated: "
            "filled where the counter cannot be trusted."),
        series("Data quality: hourly coverage", [
            target('SELECT mean("coverage") FROM "energy_hourly" '
                   f'WHERE {m} AND $timeFilter GROUP BY time(1h), "device" fill(none)',
                   alias="$tag_device")], 0, 24, w=12, h=7, unit="percentunit",
            description="Share of each hour the counter was read at most "
                        "accounting.max_interpolation_gap apart."),
        series("Data quality: readings per interval", [
            target(f'SELECT count("active_power_kw") {reading} '
                   'GROUP BY time($__interval), "device" fill(0)', alias="$tag_device")],
            12, 24, w=12, h=7, bars=True,
            description="Polls that reached the store; a drop to zero is a gap."),
    ]
    return dashboard("energyd-meter-detail", "energyd: meter detail",
                     "One power meter: power, voltages, currents, energy, data quality.",
                     panels, [device_var("\"role\" != 'compressor'", name="meter",
                                         label="Meter", multi=False)],
                     annotation={"query": 'SELECT "text", "rule", "device", "state" FROM '
                                          f'"energy_alert" WHERE {SITE} AND {m} '
                                          'AND $timeFilter'})


def compressed_air() -> dict:
    c = '"device" =~ /^$compressor$/'
    reading = f'FROM "energy_reading" WHERE {SITE} AND {c} AND $timeFilter'
    by_time = 'GROUP BY time($__interval), "device" fill(null)'
    air = f'FROM "energy_air_hourly" WHERE {SITE} AND $timeFilter'
    panels = [
        series("Specific power (kWh/m³, lower is better)", [
            target(f'SELECT mean("specific_power") {air} GROUP BY time(1h), "device" '
                   "fill(none)", alias="$tag_device")], 0, 0, w=12, h=8, decimals=3,
            description="Electric energy per m³ of free air delivered, per hour: per "
                        "compressor and for the station."),
        series("Load / unload: loaded share of each hour", [
            target(f'SELECT mean("loaded_share") {air} GROUP BY time(1h), "device" '
                   "fill(none)", alias="$tag_device")], 12, 0, w=12, h=8,
            unit="percentunit"),
        panel("state-timeline", "Compressor state (0 off, 1 unloaded, 2 loaded)", [
            target(f'SELECT last("compressor_state") {reading} {by_time}',
                   alias="$tag_device")], 0, 8, 24, 5,
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
            custom={"fillOpacity": 80},
            overrides=[]),
        series("Network pressure", [
            target(f'SELECT mean("pressure_bar") {reading} {by_time}', alias="$tag_device")],
            0, 13, w=12, h=8, unit="pressurebar"),
        series("Power and flow", [
            target(f'SELECT mean("active_power_kw") {reading} {by_time}',
                   alias="$tag_device kW"),
            target(f'SELECT mean("flow_m3_min") {reading} {by_time}', ref="B",
                   alias="$tag_device m³/min")], 12, 13, w=12, h=8),
        series("Leak baseline: the quietest hour of each day", [
            target(f'SELECT min("kwh") AS "kWh" {air} GROUP BY time(1d), "device" fill(none)',
                   alias="$tag_device min kWh/h"),
            target(f'SELECT min("flow_m3_min") {reading} GROUP BY time(1d), "device" '
                   "fill(none)", ref="B", alias="$tag_device min m³/min")],
            0, 21, w=12, h=8, bars=True,
            description="When nothing is produced, what the compressors still deliver "
                        "feeds leaks. A baseline that creeps up is a leak growing; the "
                        "off_shift alert rule watches the same thing hour by hour."),
        series("Hourly energy and free air delivered", [
            target(f'SELECT sum("kwh") AS "kWh" {air} GROUP BY time(1h), "device" '
                   "fill(none)", alias="$tag_device kWh"),
            target(f'SELECT sum("m3") AS "m3" {air} GROUP BY time(1h), "device" fill(none)',
                   ref="B", alias="$tag_device m³")], 12, 21, w=12, h=8, bars=True),
    ]
    return dashboard("energyd-compressed-air", "energyd: compressed air",
                     "Specific power, load and unload, pressure, leak baseline.", panels,
                     [device_var("\"role\" = 'compressor'", name="compressor",
                                 label="Compressor")])


def carbon() -> dict:
    grid = f'FROM "energy_hourly" WHERE {SITE} AND {GRID} AND $timeFilter'
    panels = [
        stat("MWh purchased (range)", f'SELECT sum("mwh") {grid}', 0, 0, "none", decimals=3,
             w=6),
        stat("tCO2 location-based (range)", f'SELECT sum("tco2_location") {grid}', 6, 0,
             "none", decimals=3, w=6),
        stat("tCO2 market-based (range)", f'SELECT sum("tco2_market") {grid}', 12, 0, "none",
             decimals=3, w=6),
        stat("Grid factor in use (tCO2/MWh)", f'SELECT last("ef_location") {grid}', 18, 0,
             "none", decimals=4, w=6),
        series("Hourly purchased MWh by source", [
            target(f'SELECT sum("mwh") {grid} GROUP BY time(1h), "source" fill(none)',
                   alias="$tag_source")], 0, 4, w=12, h=9, bars=True, stack=True, decimals=3,
            description="Meter first, invoice fallback: where a counter could not be "
                        "trusted, the supplier statement (or a provisional estimate) fills in."),
        series("tCO2: location-based vs market-based", [
            target(f'SELECT sum("tco2_location") AS "location-based", '
                   f'sum("tco2_market") AS "market-based" {grid} GROUP BY time(1h) '
                   "fill(none)", alias="$col")], 12, 4, w=12, h=9, decimals=4,
            description="Location-based: MWh x the grid region's factor for that hour. "
                        "Market-based: certificates and contracts first, a residual factor "
                        "for the rest."),
        series("Factors in use (tCO2/MWh)", [
            target(f'SELECT last("ef_location") AS "grid (location)" {grid} '
                   "GROUP BY time(1h) fill(none)", alias="$col"),
            target(f'SELECT sum("tco2_market") / sum("mwh") AS "market (effective)" {grid} '
                   "GROUP BY time(1h) fill(none)", ref="B", alias="$col")],
            0, 13, w=12, h=8, decimals=4),
        table("By source and role (range)", [target(
            'SELECT sum("mwh") AS "MWh", sum("tco2_location") AS "tCO2 location", '
            'sum("tco2_market") AS "tCO2 market", count("coverage") AS "hours" '
            f'FROM "energy_hourly" WHERE {SITE} AND $timeFilter GROUP BY "role", "source"',
            fmt="table")], 12, 13, w=12, h=8,
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
    ]
    return dashboard("energyd-carbon", "energyd: carbon", "Hourly MWh by source, tCO2 "
                     "location-based vs market-based, the factors in use.", panels, [],
                     time_from="now-7d")


def data_quality() -> dict:
    hourly = f'FROM "energy_hourly" WHERE {SITE} AND {DEVICES} AND $timeFilter'
    reading = f'FROM "energy_reading" WHERE {SITE} AND {DEVICES} AND $timeFilter'
    panels = [
        series("Hourly coverage by device", [
            target(f'SELECT mean("coverage") {hourly} GROUP BY time(1h), "device" fill(none)',
                   alias="$tag_device")], 0, 0, w=12, h=8, unit="percentunit",
            description="Share of each hour the counter was read at most "
                        "accounting.max_interpolation_gap apart (China's online-monitoring "
                        "rules ask for 90 % completeness)."),
        series("Readings per interval (a dip is a gap)", [
            target(f'SELECT count("active_power_kw") {reading} '
                   'GROUP BY time($__interval), "device" fill(0)', alias="$tag_device")],
            12, 0, w=12, h=8, bars=True),
        # energyd zeroes mwh and tCO2 of an hour's other sources (so that sums stay right
        # when a source changes); those points carry no coverage, so counting coverage
        # counts each hour once, under the source it has
        table("Hours by source (gaps are every source but meter)", [target(
            f'SELECT count("coverage") AS "hours", mean("coverage") AS "coverage" {hourly} '
            'GROUP BY "device", "source"', fmt="table")], 0, 8, w=12, h=8,
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        table("Last reading per device", [target(
            f'SELECT last("active_power_kw") AS "kW" {reading} GROUP BY "device"',
            fmt="table")], 12, 8, w=12, h=8,
            description="Time is the newest reading InfluxDB holds for the device: a "
                        "device that stopped, or a gateway whose forwarding is behind."),
        table("Alerts by rule", [target(
            'SELECT count("text") AS "events" FROM "energy_alert" '
            f'WHERE {SITE} AND $timeFilter GROUP BY "rule", "state"', fmt="table")],
            0, 16, w=12, h=7,
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        text("Backlog and rejected points", (
            "Forwarding backlog and points InfluxDB refused are not in InfluxDB: what "
            "has not arrived cannot be queried here. energyd keeps both in its store and "
            "shows them in\n\n"
            "* `energyd status -c /etc/energyd/energyd.yaml` (backlog and oldest unsent "
            "reading per sink and stream),\n"
            "* `/metrics` on the gateway: `energyd_sink_backlog`, "
            "`energyd_sink_oldest_unsent_age_seconds`, `energyd_sink_rejected_total`, "
            "`energyd_sink_errors_total`,\n"
            "* an alert rule of type `backlog`, whose episodes appear in *Alerts by rule* "
            "and as annotations.\n\n"
            "Here, a gateway that is behind shows as an old *Last reading* and as a "
            "dip in *Readings per interval* that fills in once the backlog drains."),
            12, 16, w=12, h=7),
    ]
    return dashboard("energyd-data-quality", "energyd: data quality",
                     "Coverage, gaps, arrival of readings, alerts.", panels, [device_var()],
                     time_from="now-2d")


DASHBOARDS = {
    "plant-overview.json": plant_overview,
    "meter-detail.json": meter_detail,
    "compressed-air.json": compressed_air,
    "carbon.json": carbon,
    "data-quality.json": data_quality,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [n for n, text in rendered.items()
                 if not (OUT / n).exists() or (OUT / n).read_text(encoding="utf-8") != text]
        for n in stale:
            print(f"{OUT / n} is stale: run python {__file__}")
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
