"""The monthly report as one self-contained HTML document, for people and for print.

`render_html(report, series, ...)` is a pure function: the report dict of `build_report` (the
very one `--format json` prints, so every figure is the JSON's, written as JSON writes it)
plus the month's hourly `series` (`report_series`, from the same rollup rows) in, an HTML
string out. Styles are inline and the charts are SVG drawn here: a chart library would have
to ship inside the wheel and run script in the reader's browser, for a few rectangles, and a
document a verifier files should not depend on script. Nothing in the page loads anything:
no script, no font, no image, no link outside the page. Every text that comes from data
(device and site names, statement documents, reasons) is escaped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from energyd.accounting.rollup import PURCHASED_ROLES, SOURCES, RollupRow

HOUR_MS = 3_600_000
SOURCE_LABEL = {"meter": "meter", "meter_interpolated": "interpolated", "invoice": "invoice",
                "estimated": "estimated", "missing": "no rollup"}
# colour-blind-safe (Okabe-Ito); a missing hour is white with a grey edge
SOURCE_COLOUR = {"meter": "#0072B2", "meter_interpolated": "#56B4E9", "invoice": "#E69F00",
                 "estimated": "#D55E00", "missing": "#ffffff"}
LOCATION_COLOUR, MARKET_COLOUR = "#555555", "#009E73"


def report_series(report: Mapping[str, Any], rows: Iterable[RollupRow]) -> dict[str, Any]:
    """What the charts need from the month's rollup rows: per grid meter the source of each
    hour of the month (None: no row), per local day the purchased MWh by source and tCO2, per
    device the counter events. The MWh split is the report's (a row's kWh split scaled to its
    MWh), so the days add up to the totals."""
    tz = ZoneInfo(report["timezone"])
    start = _ms(report["period"]["start"]) if report["period"]["start"] else 0
    n = report["period"]["hours"]
    roles = report.get("roles", {})
    meters = sorted(d for d, r in roles.items() if r in PURCHASED_ROLES)
    grid: dict[str, list[dict[str, Any] | None]] = {m: [None] * n for m in meters}
    days: dict[str, dict[str, Any]] = {}
    for i in range(n):
        day = _local(start + i * HOUR_MS, tz).date().isoformat()
        days.setdefault(day, {"date": day, "mwh_by_source": dict.fromkeys(SOURCES, 0.0),
                              "tco2_location": 0.0, "tco2_market": 0.0, "null": []})
    events: dict[str, dict[str, int]] = {}
    hourly: list[float | None] = [None] * n
    for row in rows:
        i = (row.hour - start) // HOUR_MS
        if not 0 <= i < n:
            continue
        for e in row.detail.get("events", ()):
            kinds = events.setdefault(row.device, {})
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        if roles.get(row.device) not in PURCHASED_ROLES:
            continue
        grid.setdefault(row.device, [None] * n)[i] = {"source": row.source, "mwh": row.mwh}
        hourly[i] = (hourly[i] or 0.0) + row.mwh
        day = days[_local(row.hour, tz).date().isoformat()]
        parts = row.detail.get("kwh", {})
        whole = sum(parts.values())
        share = row.mwh / whole if whole > 0 else 0.0
        for src in SOURCES:
            day["mwh_by_source"][src] += parts.get(src, 0.0) * share
        for method in ("location", "market"):
            value = getattr(row, f"tco2_{method}")
            if value is None:
                day["null"].append(method)
            else:
                day[f"tco2_{method}"] += value
    for day in days.values():
        for method in ("location", "market"):
            if method in day["null"]:
                day[f"tco2_{method}"] = None
        day["null"] = sorted(set(day["null"]))
    return {"start": start, "hours": n, "meters": grid, "days": list(days.values()),
            "events": events, "hourly_mwh": hourly}


def alerts_in_month(report: Mapping[str, Any],
                    episodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The alert episodes (`energyd alerts --json`) that overlap the report's month."""
    if not report["period"]["start"]:
        return []
    lo, hi = _ms(report["period"]["start"]), _ms(report["period"]["end"])
    out = []
    for e in episodes:
        started = _ms(e["started"])
        ended = _ms(e["ended"]) if e.get("ended") else None
        if started < hi and (ended is None or ended > lo):
            out.append(dict(e))
    return sorted(out, key=lambda e: (e["started"], e["rule"], e["device"]))


def render_html(report: Mapping[str, Any], series: Mapping[str, Any], *,
                alerts: Sequence[Mapping[str, Any]] = (),
                manifest: Sequence[tuple[str, str]] | None = None,
                verification: Sequence[str] | None = None) -> str:
    """The document. `manifest`: (SHA-256, file name) of the evidence folder written with
    the report; `verification`: the lines `energyd verify` found, when rendered from a folder."""
    tz = ZoneInfo(report["timezone"])
    site = report["site"]
    title = f"{site.get('name', '')} {report['month']}: energy and emissions"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # the page may load nothing at all, not even what a later edit adds by mistake
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'style-src \'unsafe-inline\'; img-src data:">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p class=sub>site time zone {_e(report['timezone'])}, "
        f"{_e(report['period']['start'])} to {_e(report['period']['end'])} (UTC), "
        f"<span data-key=period.hours>{report['period']['hours']}</span> hours; grid region "
        f"{_e(site.get('grid_region'))}, residual region {_e(site.get('residual_region'))}"
        "</p></header>",
        _status(report),
        _totals(report),
        _alerts(alerts, series, tz) if alerts else "",
        _hourly(series, tz, alerts),
        _heat_maps(report, series, tz, alerts),
        _daily(series),
        _devices(report, series),
        _reconciliation(report),
        _factors(report),
        _scope2(report) if report.get("scope2") else "",
        _evidence(manifest, verification) if manifest is not None else "",
        f"<footer>method: {_e(report['method']['location'])}; market: "
        f"{_e(report['method']['market'])}; {_e(report['method']['purchased'])}.</footer>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


# --- sections ---------------------------------------------------------------------------------


def _status(report: Mapping[str, Any]) -> str:
    status = report["status"]
    items = "".join(f"<li>{_e(r)}</li>" for r in report["reasons"])
    flags = "".join(f"<li>{_e(f)}</li>" for f in report["flags"])
    why = (f"<p>Provisional because:</p><ul class=reasons>{items}</ul>" if items
           else "<p>Every hour is accounted, no estimate stands open and every factor is "
                "published: the month is final.</p>")
    return (f'<section id=status><h2>Status: <span class="badge {_e(status)}" '
            f'data-key=status>{_e(status)}</span></h2>{why}'
            + (f"<p>Flags (the figures stand; for people to look into):</p><ul>{flags}</ul>"
               if flags else "") + "</section>")


TOTAL_ROWS = (
    ("purchased_mwh", "Purchased electricity", "MWh"),
    ("purchased_by_source_mwh.meter", "… from the meter", "MWh"),
    ("purchased_by_source_mwh.meter_interpolated", "… interpolated over a polling gap", "MWh"),
    ("purchased_by_source_mwh.invoice", "… filled from a statement", "MWh"),
    ("purchased_by_source_mwh.estimated", "… estimated", "MWh"),
    ("purchased_coverage", "Metered coverage of purchased hours", "share"),
    ("scope1_fuel_tco2", "Scope 1, fuel", "tCO2"),
    ("scope2_location_tco2", "Scope 2, location-based", "tCO2"),
    ("scope2_market_tco2", "Scope 2, market-based", "tCO2"),
    ("certificates_mwh", "Certificates applied", "MWh"),
    ("total_location_tco2", "Scope 1 + 2, location-based", "tCO2"),
    ("total_market_tco2", "Scope 1 + 2, market-based", "tCO2"),
    ("generation_mwh", "On-site generation (not added)", "MWh"),
    ("submeter_mwh", "Submeters and compressors (not added)", "MWh"),
)


def _totals(report: Mapping[str, Any]) -> str:
    t = report["totals"]
    rows = []
    for key, label, unit in TOTAL_ROWS:
        value: Any = t
        for k in key.split("."):
            value = value.get(k) if isinstance(value, Mapping) else None
        rows.append(f"<tr><th>{_e(label)}</th><td class=num data-key=totals.{key}>"
                    f"{_e(_num(value))}</td><td>{unit}</td></tr>")
    null = "".join(f"<li>{_e(w)}</li>" for w in t.get("tco2_null", []))
    return ("<section id=totals><h2>Totals</h2><table class=totals>" + "".join(rows)
            + "</table>" + (f"<p>A tCO2 figure is null where an hour has no factor:</p>"
                            f"<ul>{null}</ul>" if null else "") + "</section>")


def _alerts(alerts: Sequence[Mapping[str, Any]], series: Mapping[str, Any],
            tz: ZoneInfo) -> str:
    rows = []
    for a in alerts:
        figures = ", ".join(f"{k} {_short(v)}" for k, v in (a.get("figures") or {}).items()
                            if v is not None and not isinstance(v, (dict, list)))
        rows.append(f"<tr class=alert><td>{_e(a['rule'])}</td><td>{_e(a.get('type') or '')}"
                    f"</td><td>{_e(a['device'])}</td><td>{_e(_local_text(a['started'], tz))}"
                    f"</td><td>{_e(_local_text(a['ended'], tz) if a.get('ended') else 'active')}"
                    f"</td><td>{_e(figures)}</td></tr>")
    return ("<section id=alerts><h2>Alert episodes</h2><table><tr><th>rule</th><th>type</th>"
            "<th>device</th><th>started (site time)</th><th>ended</th><th>figures that fired "
            "it</th></tr>" + "".join(rows) + "</table><p class=note>A grid meter's hours under "
            "an episode of its own are outlined in its heat map.</p></section>")


CELL_W, CELL_H, LABEL_W, HEAD_H = 22, 14, 64, 16


def _heat_maps(report: Mapping[str, Any], series: Mapping[str, Any], tz: ZoneInfo,
               alerts: Sequence[Mapping[str, Any]]) -> str:
    start, n = series["start"], series["hours"]
    local = [_local(start + i * HOUR_MS, tz) for i in range(n)]
    first_day = local[0].date() if local else date(1970, 1, 1)
    slots: dict[tuple[date, int], int] = {}
    for t in local:
        slots[(t.date(), t.hour)] = slots.get((t.date(), t.hour), 0) + 1
    ndays = (local[-1].date() - first_day).days + 1 if local else 0
    width, height = LABEL_W + 24 * CELL_W + 4, HEAD_H + ndays * CELL_H + 2
    out = ["<section id=heatmap><h2>Hours by source, per grid meter</h2>",
           f"<p class=note>One cell per hour of the month ({n}), site time: a row per day, "
           "a column per hour of the day. A clock change shows as a day of 23 hours (a blank "
           "cell) or of 25 (the repeated hour split in two).</p>", _legend(SOURCE_COLOUR)]
    for meter, hours in sorted(series["meters"].items()):
        flagged = _alert_hours(alerts, meter, start, n)
        svg = [f'<svg class=heat data-device="{_e(meter)}" viewBox="0 0 {width} {height}" '
               f'width="{width}" height="{height}" role="img" '
               f'aria-label="hours by source, {_e(meter)}">']
        for h in range(0, 24, 3):
            svg.append(f'<text x="{LABEL_W + h * CELL_W + 2}" y="11" class=ax>{h:02d}</text>')
        for d in range(ndays):
            day = date.fromordinal(first_day.toordinal() + d)
            svg.append(f'<text x="0" y="{HEAD_H + d * CELL_H + 11}" class=ax>'
                       f'{day.strftime("%a %d")}</text>')
        for i, t in enumerate(local):
            cell = hours[i]
            src = cell["source"] if cell else "missing"
            twice = slots[(t.date(), t.hour)] > 1
            w = CELL_W / 2 if twice else CELL_W
            x = LABEL_W + t.hour * CELL_W + (t.fold * w if twice else 0)
            y = HEAD_H + (t.date() - first_day).days * CELL_H
            mwh = f", {cell['mwh']!r} MWh" if cell else ""
            edge = " alerted" if i in flagged else ""
            svg.append(f'<rect class="hour {src}{edge}" x="{x:g}" y="{y}" width="{w - 1:g}" '
                       f'height="{CELL_H - 1}" fill="{SOURCE_COLOUR[src]}" '
                       f'data-hour="{_iso(start + i * HOUR_MS)}"><title>'
                       f'{_e(t.strftime("%Y-%m-%d %H:%M %Z"))}: {SOURCE_LABEL[src]}{mwh}'
                       '</title></rect>')
        svg.append("</svg>")
        counts = {s: sum(1 for c in hours if (c["source"] if c else "missing") == s)
                  for s in SOURCE_COLOUR}
        summary = ", ".join(f"{SOURCE_LABEL[s]} {c}" for s, c in counts.items() if c)
        out.append(f"<figure><figcaption>{_e(meter)}: {summary}</figcaption>"
                   f"{''.join(svg)}</figure>")
    if not series["meters"]:
        out.append("<p>No grid meter is accounted.</p>")
    out.append("</section>")
    return "".join(out)


CHART_W, CHART_H, AXIS_W, FOOT_H = 900, 220, 56, 30


def _daily(series: Mapping[str, Any]) -> str:
    days = series["days"]
    if not days:
        return ""
    mwh = [sum(d["mwh_by_source"].values()) for d in days]
    bars = _bar_chart(
        days, _nice(max(mwh, default=0.0)), "MWh",
        lambda d: [(SOURCE_COLOUR[s], d["mwh_by_source"][s], SOURCE_LABEL[s]) for s in SOURCES],
        stacked=True)
    tmax = max([d[f"tco2_{m}"] or 0.0 for d in days for m in ("location", "market")],
               default=0.0)
    tco2 = _bar_chart(
        days, _nice(tmax), "tCO2",
        lambda d: [(LOCATION_COLOUR, d["tco2_location"], "location"),
                   (MARKET_COLOUR, d["tco2_market"], "market")], stacked=False)
    return ("<section id=daily><h2>Purchased electricity by day</h2>"
            + _legend({k: SOURCE_COLOUR[k] for k in SOURCES}) + bars
            + "<h2>Scope 2 by day: location- and market-based</h2>"
            + _legend({"location": LOCATION_COLOUR, "market": MARKET_COLOUR}) + tco2
            + "<p class=note>Days by the site's calendar; a day without a factor for some "
              "hour has no bar (its tCO2 is null).</p></section>")


def _bar_chart(days: Sequence[Mapping[str, Any]], top: float, unit: str, parts: Any, *,
               stacked: bool) -> str:
    plot_w = CHART_W - AXIS_W - 8
    step = plot_w / len(days)
    scale = (CHART_H - 10) / top if top > 0 else 0.0
    base = CHART_H
    svg = [f'<svg class=chart viewBox="0 0 {CHART_W} {CHART_H + FOOT_H}" width="{CHART_W}" '
           f'height="{CHART_H + FOOT_H}" role="img" aria-label="{unit} by day">']
    for k in range(5):
        v = top * k / 4
        y = base - v * scale
        svg.append(f'<line x1="{AXIS_W}" x2="{CHART_W - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'class=grid /><text x="{AXIS_W - 4}" y="{y + 4:.1f}" class="ax r">'
                   f'{_tick(v)}</text>')
    svg.append(f'<text x="2" y="12" class=ax>{unit}</text>')
    for i, d in enumerate(days):
        x0 = AXIS_W + i * step + step * 0.12
        w = step * 0.76
        y = base
        pieces = parts(d)
        for j, (colour, value, label) in enumerate(pieces):
            if value is None:
                continue
            h = value * scale
            if stacked:
                y -= h
                rx, rw, ry = x0, w, y
            else:
                rw = w / len(pieces)
                rx, ry = x0 + j * rw, base - h
            svg.append(f'<rect class=bar x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" '
                       f'height="{h:.2f}" fill="{colour}"><title>{_e(d["date"])} {label}: '
                       f'{value:.6g} {unit}</title></rect>')
        svg.append(f'<text x="{x0 + w / 2:.1f}" y="{base + 14}" class="ax c">'
                   f'{int(d["date"][8:])}</text>')
    svg.append("</svg>")
    return "".join(svg)


def _hourly(series: Mapping[str, Any], tz: ZoneInfo,
            alerts: Sequence[Mapping[str, Any]]) -> str:
    """Purchased MWh hour by hour over the month, the alert episodes shaded behind."""
    values = series["hourly_mwh"]
    present = [i for i, v in enumerate(values) if v is not None]
    if not present:
        return ""
    # the span with rollups: a month still running, or a short run, is not a sliver
    first, last = present[0], present[-1] + 1
    values = values[first:last]
    start, n = series["start"] + first * HOUR_MS, last - first
    top = _nice(max((v for v in values if v is not None), default=0.0))
    plot_w = CHART_W - AXIS_W - 8
    step = plot_w / n
    h = 160
    scale = (h - 10) / top
    svg = [f'<svg class=chart viewBox="0 0 {CHART_W} {h + FOOT_H}" width="{CHART_W}" '
           f'height="{h + FOOT_H}" role="img" aria-label="purchased MWh by hour">']
    end = start + n * HOUR_MS
    for k, a in enumerate(alerts):
        # an active episode runs on to the last hour shown
        t0 = max(start, _ms(a["started"]))
        t1 = min(end, _ms(a["ended"])) if a.get("ended") else end
        if t1 <= t0:
            continue
        x = AXIS_W + (t0 - start) / HOUR_MS * step
        w = max((t1 - t0) / HOUR_MS * step, 2)
        svg.append(f'<rect class=episode x="{x:.1f}" y="0" width="{w:.1f}"'
                   f' height="{h}"><title>{_e(a["rule"])} ({_e(a["device"])})</title></rect>'
                   f'<text x="{x + 2:.1f}" y="{12 + 11 * (k % 4)}" class=ep>'
                   f'{_e(a["rule"])}</text>')
    for k in range(5):
        v = top * k / 4
        y = h - v * scale
        svg.append(f'<line x1="{AXIS_W}" x2="{CHART_W - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'class=grid /><text x="{AXIS_W - 4}" y="{y + 4:.1f}" class="ax r">'
                   f'{_tick(v)}</text>')
    svg.append('<text x="2" y="12" class=ax>MWh</text>')
    for i, v in enumerate(values):
        if v:
            t = _local(start + i * HOUR_MS, tz)
            svg.append(f'<rect class=mwh x="{AXIS_W + i * step:.2f}" y="{h - v * scale:.2f}" '
                       f'width="{max(step, 1.0):.2f}" height="{v * scale:.2f}" '
                       f'fill="{SOURCE_COLOUR["meter"]}"><title>'
                       f'{_e(t.strftime("%Y-%m-%d %H:%M %Z"))}: {v!r} MWh</title></rect>')
    long = n > 72  # a month: every other day at noon; a short run: every third hour
    for i in range(n):
        t = _local(start + i * HOUR_MS, tz)
        if (t.hour == 0 and t.day % 2 == 1) if long else t.hour % 3 == 0:
            x = AXIS_W + (i + (12 if long else 0.5)) * step
            svg.append(f'<text x="{x:.1f}" y="{h + 14}" class="ax c">'
                       f'{t.day if long else t.strftime("%d %H:00")}</text>')
    svg.append("</svg>")
    return ("<section id=hourly><h2>Purchased electricity hour by hour</h2>"
            + "".join(svg) + f"<p class=note>Every grid meter together, site time, "
              f"{_e(_local(start, tz).strftime('%Y-%m-%d %H:%M'))} to "
              f"{_e(_local(start + n * HOUR_MS, tz).strftime('%Y-%m-%d %H:%M'))} (the hours "
              "with a rollup); the month's alert episodes shaded.</p></section>")


def _devices(report: Mapping[str, Any], series: Mapping[str, Any]) -> str:
    head = ("<tr><th>device</th><th>role</th><th>MWh</th><th>meter</th><th>interp.</th>"
            "<th>invoice</th><th>estimated</th><th>hours</th><th>missing</th><th>coverage</th>"
            "<th>tCO2 loc.</th><th>tCO2 mkt.</th><th>counter events</th><th>status</th></tr>")
    rows = []
    for d in report["devices"]:
        b = d["by_source"]
        ev = series["events"].get(d["device"], {})
        events = ", ".join(f"{k} {v}" for k, v in sorted(ev.items())) or "none"
        cells = [d["mwh"], b["meter"], b["meter_interpolated"], b["invoice"], b["estimated"],
                 d["hours"], d["missing_hours"], d["coverage"], d["tco2_location"],
                 d["tco2_market"]]
        rows.append(f'<tr data-device="{_e(d["device"])}"><td>{_e(d["device"])}</td>'
                    f"<td>{_e(d['role'])}</td>"
                    + "".join(f"<td class=num>{_e(_num(c))}</td>" for c in cells)
                    + f"<td>{_e(events)}</td><td class={_e(d['status'])}>{_e(d['status'])}"
                      "</td></tr>")
    return ("<section id=devices><h2>Devices</h2><table class=devices>" + head + "".join(rows)
            + "</table><p class=note>MWh by source as the JSON report; coverage is the share "
              "of the month's hours backed by meter readings. Only grid_import devices are "
              "purchased electricity.</p></section>")


def _reconciliation(report: Mapping[str, Any]) -> str:
    rows = []
    for f in report["reconciliation"]:
        acc = f.get("accepted")
        state = (f"accepted by {acc['by']} at {acc['at']}: {acc['reason']}" if acc
                 else "open" if f.get("kind") == "statement_below_metered" else "meter stands")
        rows.append(f"<tr><td>{_e(f.get('document') or f['statement'])}</td>"
                    f"<td>{_e(f['account'])}</td><td>{_e(f.get('kind', ''))}</td>"
                    f"<td>{_e(f['period_start'])} to {_e(f['period_end'])}</td>"
                    f"<td class=num>{_e(_num(f['statement_kwh']))}</td>"
                    f"<td class=num>{_e(_num(f['metered_kwh']))}</td><td>{_e(state)}</td></tr>")
    stmts = "".join(
        f"<tr><td>{_e(s.get('document') or s.get('id'))}</td><td>{_e(s.get('account'))}</td>"
        f"<td>{_e(s.get('supplier') or '')}</td><td>{_e(s.get('period_start'))} to "
        f"{_e(s.get('period_end'))}</td><td class=num>{_e(_num(s.get('kwh')))}</td></tr>"
        for s in report.get("statements", []))
    body = ("<table><tr><th>statement</th><th>account</th><th>finding</th><th>period (UTC)"
            "</th><th>billed kWh</th><th>metered kWh</th><th>state</th></tr>" + "".join(rows)
            + "</table>") if rows else "<p>No finding: every statement agrees with the meter.</p>"
    return ("<section id=reconciliation><h2>Statements and reconciliation</h2>" + body
            + ("<table><tr><th>statement</th><th>account</th><th>supplier</th><th>period "
               "(UTC)</th><th>kWh</th></tr>" + stmts + "</table>" if stmts else
               "<p>No supplier statement covers the month.</p>") + "</section>")


def _factors(report: Mapping[str, Any]) -> str:
    factors = "".join(
        f"<tr><td>{_e(f['id'])}</td><td>{_e(f.get('method'))}</td><td>{_e(f.get('region'))}"
        f"</td><td class=num>{_e(_num(f['value']))}</td><td class=num>{f['hours']}</td>"
        f"<td class=num>{f['provisional_hours']}</td><td>{_e(f.get('source'))}</td></tr>"
        for f in report["factors"])
    certs = "".join(
        f"<tr><td>{_e(c['id'])}</td><td>{_e(c.get('type'))}</td><td>{_e(c.get('vintage'))}</td>"
        f"<td>{_e(c.get('market'))}</td><td class=num>{_e(_num(c['mwh']))}</td>"
        f"<td class=num>{_e(_num(c['allocated_in_month_mwh']))}</td>"
        f"<td class=num>{_e(_num(c['remaining_mwh']))}</td></tr>"
        for c in report["certificates"])
    return ("<section id=factors><h2>Emission factors and certificates</h2>"
            + ("<table><tr><th>factor</th><th>method</th><th>region</th><th>tCO2/MWh</th>"
               "<th>hours</th><th>provisional hours</th><th>source</th></tr>" + factors
               + "</table>" if factors else "<p>No factor applied to any hour.</p>")
            + ("<table><tr><th>certificate</th><th>type</th><th>vintage</th><th>market</th>"
               "<th>MWh</th><th>applied this month</th><th>remaining</th></tr>" + certs
               + "</table>" if certs else "<p>No certificates.</p>") + "</section>")


def _scope2(report: Mapping[str, Any]) -> str:
    """Both market-based modes side by side, on-site generation, CFE% and the hourly-matching
    gap by hour of day, as `report["scope2"]` has them."""
    s2 = report["scope2"]
    t = s2["totals"]
    rows = "".join(
        f"<tr><td>{_e(d['device'])}</td><td class=num>{_e(_num(d['mwh']))}</td>"
        f"<td class=num>{_e(_num(d['annual']['covered_mwh']))}</td>"
        f"<td class=num>{_e(_num(d['annual']['tco2']))}</td>"
        f"<td class=num>{_e(_num(d['hourly']['covered_mwh']))}</td>"
        f"<td class=num>{_e(_num(d['hourly']['tco2']))}</td></tr>" for d in s2["devices"])
    rows += (f"<tr><th>total</th><td class=num>{_e(_num(t['purchased_mwh']))}</td>"
             f"<td class=num data-key=scope2.annual_covered_mwh>"
             f"{_e(_num(t['annual_covered_mwh']))}</td>"
             f"<td class=num data-key=scope2.annual_market_tco2>"
             f"{_e(_num(t['annual_market_tco2']))}</td>"
             f"<td class=num data-key=scope2.hourly_covered_mwh>"
             f"{_e(_num(t['hourly_covered_mwh']))}</td>"
             f"<td class=num data-key=scope2.hourly_market_tco2>"
             f"{_e(_num(t['hourly_market_tco2']))}</td></tr>")
    onsite = "".join(
        f"<tr><th>{_e(label)}</th><td class=num data-key=scope2.{key}>{_e(_num(t[key]))}</td>"
        f"</tr>" for key, label in (
            ("generation_mwh", "On-site generation, MWh"), ("export_mwh", "Exported, MWh"),
            ("self_consumed_mwh", "Self-consumed, MWh (not purchased, no Scope 2)"),
            ("self_consumed_share", "Share of consumption self-consumed"),
            ("cfe", "Carbon-free share (CFE%, hourly)"),
            ("gap_mwh", "Hourly-matching gap, MWh")))
    gap = "".join(
        f"<tr><td>{g['hour_of_day']:02d}:00</td><td class=num>{_e(_num(g['annual_mwh']))}</td>"
        f"<td class=num>{_e(_num(g['hourly_mwh']))}</td>"
        f"<td class=num>{_e(_num(g['gap_mwh']))}</td></tr>" for g in s2["gap_by_hour_of_day"])
    notes = "".join(f"<li>{_e(n)}</li>" for n in s2["notes"])
    return ("<section id=scope2><h2>Scope 2 market-based: annual and hourly matching</h2>"
            "<table><tr><th>device</th><th>MWh</th><th>annual: covered MWh</th>"
            "<th>annual: tCO2</th><th>hourly: covered MWh</th><th>hourly: tCO2</th></tr>"
            + rows + "</table><table class=totals>" + onsite + "</table>"
            "<h3>The hourly-matching gap by hour of day (site time)</h3>"
            "<table><tr><th>hour</th><th>annual covers, MWh</th><th>hourly covers, MWh</th>"
            "<th>annual covers, hourly not, MWh</th></tr>" + gap + "</table>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</section>")


def _evidence(manifest: Sequence[tuple[str, str]], verification: Sequence[str] | None) -> str:
    rows = "".join(f"<tr><td>{_e(name)}</td><td class=hash>{_e(digest)}</td></tr>"
                   for digest, name in manifest)
    checked = "".join(f"<li>{_e(v)}</li>" for v in verification or ())
    return ("<section id=evidence><h2>Evidence (MANIFEST.sha256)</h2>"
            + (f"<ul class=verify>{checked}</ul>" if checked else "")
            + "<table><tr><th>file</th><th>SHA-256</th></tr>" + rows
            + "</table><p class=note>Check with <code>sha256sum -c MANIFEST.sha256</code>; "
              "<code>energyd verify DIR</code> recomputes the month from the folder."
              "</p></section>")


# --- helpers ----------------------------------------------------------------------------------


def _legend(colours: Mapping[str, str]) -> str:
    return "<p class=legend>" + "".join(
        f'<span><i style="background:{c}"></i>{_e(SOURCE_LABEL.get(k, k))}</span>'
        for k, c in colours.items()) + "</p>"


def _alert_hours(alerts: Sequence[Mapping[str, Any]], device: str, start: int,
                 n: int) -> set[int]:
    out: set[int] = set()
    for a in alerts:
        if a["device"] != device:
            continue
        lo = max(0, (_ms(a["started"]) - start) // HOUR_MS)
        hi = n if not a.get("ended") else min(n, -(-(_ms(a["ended"]) - start) // HOUR_MS))
        out.update(range(lo, hi))
    return out


def _num(x: Any) -> str:
    """A figure as the JSON report writes it, so the page and the JSON read the same."""
    if x is None:
        return "null"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return json.dumps(x)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _tick(v: float) -> str:
    return f"{v:.3g}"


def _nice(x: float) -> float:
    """The axis top: x rounded up to 1, 2 or 5 times a power of ten."""
    if x <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(x))
    return next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= x)


def _e(x: Any) -> str:
    return escape("" if x is None else str(x), quote=True)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _local(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz)


def _local_text(text: str | None, tz: ZoneInfo) -> str:
    if not text:
        return ""
    return _local(_ms(text), tz).strftime("%Y-%m-%d %H:%M %Z")


CSS = """
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#222;margin:24px auto;max-width:1000px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px;
border-bottom:1px solid #ccc;padding-bottom:2px}
.sub,.note,footer{color:#555}.note{font-size:12px}
table{border-collapse:collapse;margin:6px 0 10px}
th,td{padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.devices{font-size:12px}td.hash{font-family:monospace;font-size:11px}
.badge{padding:1px 8px;border-radius:4px;color:#fff}
.badge.final{background:#1a7f37}.badge.provisional{background:#b35900}
td.provisional{color:#b35900}td.final{color:#1a7f37}
tr.alert td:first-child{font-weight:600;color:#b30000}
.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;
border:1px solid #999;vertical-align:-1px}
figure{margin:6px 0 12px}figcaption{font-weight:600;margin-bottom:2px}
svg{max-width:100%;height:auto;display:block}
svg text{font-size:10px;fill:#444}svg text.r{text-anchor:end}svg text.c{text-anchor:middle}
rect.hour.missing{stroke:#bbb;stroke-width:.5}
rect.hour.alerted{stroke:#d00;stroke-width:2}
line.grid{stroke:#e6e6e6}
rect.episode{fill:#d00;fill-opacity:.13}
svg text.ep{fill:#b30000;font-weight:600}
footer{margin-top:20px;font-size:11px}
@page{size:A4;margin:12mm}
@media print{body{margin:0;max-width:none}section{break-inside:avoid}
figure{break-inside:avoid}h2{break-after:avoid}}
"""


def evidence_html(folder: Any, verification: Sequence[str] | None = None) -> str:
    """The document of an evidence folder (`report --evidence`), from its `report.json`,
    `rollups.csv` and `MANIFEST.sha256` alone: what the verifier was given."""
    import csv
    from pathlib import Path

    folder = Path(folder)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    rows = []
    with open(folder / "rollups.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(RollupRow(
                r["device"], _ms(r["hour"]), float(r["mwh"]), r["source"], float(r["coverage"]),
                float(r["tco2_location"]) if r["tco2_location"] else None,
                float(r["tco2_market"]) if r["tco2_market"] else None,
                float(r["ef_location"]) if r["ef_location"] else None, r["ef_id"] or None,
                json.loads(r["detail"])))
    return render_html(report, report_series(report, rows),
                       manifest=read_manifest(folder / "MANIFEST.sha256"),
                       verification=verification)


def read_manifest(path: Any) -> list[tuple[str, str]]:
    from pathlib import Path

    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            out.append((digest, name))
    return out
