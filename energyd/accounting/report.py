"""The monthly report: MWh by source, coverage, tCO2 by location and market, with provenance.

The month is the site's calendar month (its time zone, daylight saving included: a March in
Europe/Berlin has 743 hours, an October 745); rows are stored per UTC hour and an hour
belongs to the month its start falls in. The month is `final` only when it has ended, every
accounted device has a row for every hour, no hour is estimated (but for the gap hours of an
accepted statement below the meter), no statement below the meter is left unaccepted, and no
factor used was provisional or missing; otherwise `provisional`, with the reasons listed. A
tCO2 total that includes an hour without a factor is null, with the reason in `tco2_null`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from energyd.accounting.rollup import PURCHASED_ROLES, SOURCES, RollupRow, iso

CSV_COLUMNS = ["device", "role", "scope", "mwh", "meter_mwh", "meter_interpolated_mwh",
               "invoice_mwh", "estimated_mwh", "power_integrated_mwh", "hours", "missing_hours",
               "coverage", "tco2_location", "tco2_market", "certificates_mwh", "status"]


def _r(x: float, n: int = 6) -> float:
    return round(x + 0.0, n)


def build_report(
    *,
    site: dict[str, Any],
    month: str,
    timezone: str,
    hours: Sequence[int],
    devices: Sequence[tuple[str, str]],  # (name, role) of every accounted device
    rows: Iterable[RollupRow],
    findings: Sequence[dict[str, Any]],
    certificates: Sequence[dict[str, Any]],
    complete: bool,
    acceptances: Mapping[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`acceptances`: statement id -> the recorded acceptance (by, at, reason) of a statement
    below the metered energy of its period; its gap hours' estimates then stand."""
    accepted = acceptances or {}
    expected = set(hours)
    per: dict[str, dict[str, Any]] = {}
    roles = dict(devices)
    factors: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    for name, role in devices:
        per[name] = _empty(name, role)
    for row in rows:
        if row.hour not in expected:
            continue
        d = per.setdefault(row.device, _empty(row.device, row.detail.get("role", "?")))
        d["_hours"].add(row.hour)
        d["mwh"] += row.mwh
        parts = row.detail.get("kwh", {})
        whole = sum(parts.values())
        share = row.mwh / whole if whole > 0 else 0.0  # counter units -> MWh (fuel too)
        for src in SOURCES:
            d["by_source"][src] += parts.get(src, 0.0) * share
        d["hours_by_source"][row.source] += 1
        conflicts = [st["id"] for st in row.detail.get("statements", ())
                     if st.get("conflict") == "below_metered"]
        if row.source == "estimated" and conflicts and all(i in accepted for i in conflicts):
            d["_accepted_estimates"] += 1
        if row.detail.get("power_integrated"):
            d["power_integrated_mwh"] += row.mwh
        d["_coverage"] += row.coverage
        d["tco2_location"] += row.tco2_location or 0.0
        d["tco2_market"] += row.tco2_market or 0.0
        if row.tco2_location is None:
            d["_null"]["location"].setdefault(
                row.detail.get("no_factor") or "no location factor", []).append(row.hour)
        if row.tco2_market is None:
            d["_null"]["market"].setdefault(
                (row.detail.get("market") or {}).get("no_factor") or "no residual factor",
                []).append(row.hour)
        if row.detail.get("provisional"):
            d["provisional_hours"] += 1
        if row.tco2_location is None and row.detail.get("scope") == 2:
            d["_no_factor"] += 1
        for fdet in (row.detail.get("factor"),
                     (row.detail.get("market") or {}).get("residual")):
            if fdet:
                f = factors.setdefault(fdet["id"], {**{k: fdet.get(k) for k in (
                    "id", "value", "source", "region", "method")}, "hours": 0,
                    "provisional_hours": 0})
                f["hours"] += 1
                f["provisional_hours"] += bool(fdet.get("provisional"))
        for c in (row.detail.get("market") or {}).get("certificates", []):
            d["certificates_mwh"] += c["mwh"]
        if row.detail.get("fuel"):
            d["fuel_amount"] += row.detail["fuel"]["amount"]
            d["fuel_quantity"] = row.detail["fuel"]["quantity"]
            d["fuel_parameters"] = {k: v for k, v in row.detail["fuel"].items() if k != "amount"}
    out_devices = []
    for name in sorted(per):
        d = per[name]
        got = d.pop("_hours")
        missing = len(expected - got)
        d["hours"] = len(got)
        d["missing_hours"] = missing
        d["coverage"] = _r(d.pop("_coverage") / len(expected)) if expected else 0.0
        no_factor = d.pop("_no_factor")
        for src in SOURCES:
            d["by_source"][src] = _r(d["by_source"][src])
        for k in ("mwh", "tco2_location", "tco2_market", "power_integrated_mwh",
                  "certificates_mwh", "fuel_amount"):
            d[k] = _r(d[k])
        # A total that lacks a factor for some of its hours is unknown, not smaller.
        null = d.pop("_null")
        for method in ("location", "market"):
            if null[method]:
                d[f"tco2_{method}"] = None
                d.setdefault("tco2_null", {})[method] = [
                    f"{len(hrs)} hours from {iso(min(hrs))}: {why}"
                    for why, hrs in sorted(null[method].items(), key=lambda x: min(x[1]))]
        if d["fuel_quantity"] is None:
            for k in ("fuel_quantity", "fuel_amount", "fuel_parameters"):
                d.pop(k)
        problems = []
        if missing:
            problems.append(f"{missing} hours without a rollup")
        accepted_estimates = d.pop("_accepted_estimates")
        if accepted_estimates:
            d["accepted_estimated_hours"] = accepted_estimates
        open_estimates = d["hours_by_source"]["estimated"] - accepted_estimates
        if open_estimates:
            problems.append(f"{open_estimates} estimated hours "
                            "(no statement yet, or one in conflict with the meter)")
        if no_factor:
            problems.append(f"{no_factor} hours without an emission factor")
        elif d["provisional_hours"] > d["hours_by_source"]["estimated"]:
            problems.append("provisional emission factors")
        d["status"] = "provisional" if problems else "final"
        reasons.extend(f"{name}: {p}" for p in problems)
        out_devices.append(d)
    if not complete:
        reasons.insert(0, "the month has not ended")
    # A fully metered period that disagrees with its statement is flagged, not provisional:
    # the meter stands (DESIGN.md), the difference is for people to look into.
    flags = []
    out_findings = []
    for f in findings:
        name = f"statement {f.get('document') or f['statement']} for {f['account']}"
        if f.get("kind") == "statement_below_metered":
            acc = accepted.get(f["statement"])
            f = {**f, "accepted": acc}
            text = (f"{name}: {f['statement_kwh']:g} kWh billed, below the "
                    f"{f['metered_kwh']:g} kWh the meter measured in the period alone; its "
                    f"{f['gap_hours']} gap hours keep an estimate "
                    f"({f['estimated_kwh']:g} kWh)")
            if acc is None:
                reasons.append(f"{text}: not final until the readings or the statement are "
                               f"corrected, or the difference is accepted "
                               f"(energyd invoices accept --statement {f['statement']})")
            else:
                flags.append(f"{text}; accepted by {acc['by']} at {acc['at']}: "
                             f"{acc['reason']}")
        else:
            flags.append(f"{name}: {f['statement_kwh']:g} kWh billed, {f['metered_kwh']:g} kWh "
                         f"metered ({f['difference_share']:.1%} apart, tolerance "
                         f"{f['tolerance']:.0%})")
        out_findings.append(f)
    purchased = [d for d in out_devices if d["role"] in PURCHASED_ROLES]
    fuel = [d for d in out_devices if d["scope"] == 1]
    totals = {
        "purchased_mwh": _r(sum(d["mwh"] for d in purchased)),
        "purchased_by_source_mwh": {s: _r(sum(d["by_source"][s] for d in purchased))
                                    for s in SOURCES},
        "scope2_location_tco2": _sum(d["tco2_location"] for d in purchased),
        "scope2_market_tco2": _sum(d["tco2_market"] for d in purchased),
        "certificates_mwh": _r(sum(d["certificates_mwh"] for d in purchased)),
        "scope1_fuel_tco2": _sum(d["tco2_location"] for d in fuel),
        "generation_mwh": _r(sum(d["mwh"] for d in out_devices if d["role"] == "generation")),
        "submeter_mwh": _r(sum(d["mwh"] for d in out_devices
                               if d["role"] in ("submeter", "compressor"))),
        "purchased_coverage": _r(sum(d["coverage"] for d in purchased) / len(purchased))
        if purchased else None,
    }
    totals["total_location_tco2"] = _sum((totals["scope1_fuel_tco2"],
                                          totals["scope2_location_tco2"]))
    totals["total_market_tco2"] = _sum((totals["scope1_fuel_tco2"],
                                        totals["scope2_market_tco2"]))
    null_reasons = [f"{d['device']} tCO2 {method}: {why}"
                    for d in out_devices if d["role"] in PURCHASED_ROLES or d["scope"] == 1
                    for method, whys in d.get("tco2_null", {}).items() for why in whys]
    if null_reasons:
        totals["tco2_null"] = null_reasons
    return {
        "site": site,
        "month": month,
        "timezone": timezone,
        "period": {"start": iso(hours[0]) if hours else None,
                   "end": iso(hours[-1] + 3_600_000) if hours else None,
                   "hours": len(hours)},
        "status": "provisional" if reasons else "final",
        "reasons": reasons,
        "flags": flags,
        "totals": totals,
        "devices": out_devices,
        "factors": sorted(factors.values(), key=lambda f: f["id"]),
        "certificates": list(certificates),
        "reconciliation": out_findings,
        "acceptances": [accepted[k] for k in sorted(accepted)],
        "method": {
            "purchased": "grid_import devices; submeters, compressors and on-site generation "
                         "are reported but not added",
            "location": "MWh x the grid region's factor valid on the hour's local date",
            "market": "certificates allocated MWh for MWh in time order, residual factor for "
                      "the rest (location factor where no residual factor is published)",
            "fuel": "tCO2 = quantity x NCV x carbon content x oxidation x 44/12",
        },
        "roles": roles,
    }


def _sum(values: Iterable[float | None]) -> float | None:
    """A sum that is null when any part is: a total that lacks a factor is not 0."""
    total = 0.0
    for v in values:
        if v is None:
            return None
        total += v
    return _r(total)


def _empty(name: str, role: str) -> dict[str, Any]:
    return {"device": name, "role": role,
            "scope": 2 if role in PURCHASED_ROLES else (1 if role == "fuel" else None),
            "mwh": 0.0, "by_source": dict.fromkeys(SOURCES, 0.0),
            "hours_by_source": dict.fromkeys(SOURCES, 0), "power_integrated_mwh": 0.0,
            "tco2_location": 0.0, "tco2_market": 0.0, "certificates_mwh": 0.0,
            "provisional_hours": 0, "fuel_quantity": None, "fuel_amount": 0.0,
            "fuel_parameters": None, "_hours": set(), "_coverage": 0.0, "_no_factor": 0,
            "_accepted_estimates": 0,
            "_null": {"location": {}, "market": {}}}


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in report["devices"]:
        w.writerow([d["device"], d["role"], d["scope"] or "", d["mwh"],
                    d["by_source"]["meter"], d["by_source"]["meter_interpolated"],
                    d["by_source"]["invoice"], d["by_source"]["estimated"],
                    d["power_integrated_mwh"], d["hours"], d["missing_hours"], d["coverage"],
                    _blank(d["tco2_location"]), _blank(d["tco2_market"]), d["certificates_mwh"],
                    d["status"]])
    t = report["totals"]
    w.writerow(["TOTAL purchased", "grid_import", 2, t["purchased_mwh"],
                *(t["purchased_by_source_mwh"][s] for s in SOURCES), "", "", "",
                t["purchased_coverage"] if t["purchased_coverage"] is not None else "",
                _blank(t["scope2_location_tco2"]), _blank(t["scope2_market_tco2"]),
                t["certificates_mwh"],
                report["status"]])
    w.writerow(["TOTAL fuel", "fuel", 1, "", "", "", "", "", "", "", "", "",
                _blank(t["scope1_fuel_tco2"]), _blank(t["scope1_fuel_tco2"]), "",
                report["status"]])
    if report.get("scope2"):
        from energyd.accounting.scope2_report import scope2_csv_rows

        # after a blank line, each section's rows start with its name
        w.writerows(scope2_csv_rows(report["scope2"]))
    return out.getvalue()


# --- for a terminal --------------------------------------------------------------------------


def _blank(x: float | None) -> Any:
    return "" if x is None else x


def _fmt(x: float | None, places: int = 4) -> str:
    return "" if x is None else f"{x:.{places}f}"


def _fmt3(x: float | None) -> str:
    return "null" if x is None else f"{x:.3f}"


def rollup_lines(rows: Iterable[RollupRow]) -> list[str]:
    """Hourly rows as `energyd rollup` prints them: one line per device-hour."""
    lines = [f"{'hour (UTC)':<20} {'device':<20} {'MWh':>10} {'source':<18} {'cover':>6} "
             f"{'tCO2 loc':>10} {'tCO2 mkt':>10}  factor"]
    for r in rows:
        flag = " (power)" if r.detail.get("power_integrated") else ""
        lines.append(f"{r.as_json()['hour']:<20} {r.device:<20} {r.mwh:>10.4f} "
                     f"{r.source + flag:<18} {r.coverage:>6.0%} {_fmt(r.tco2_location):>10} "
                     f"{_fmt(r.tco2_market):>10}  {r.ef_id or ''}")
    return lines


def report_lines(report: dict[str, Any], month: str) -> list[str]:
    """The monthly report as `energyd report` prints it: devices, totals, factors, flags."""
    t = report["totals"]
    lines = [f"{report['site']['name']} {month} ({report['timezone']}, "
             f"{report['period']['hours']} hours): {report['status']}",
             f"{'device':<20} {'role':<12} {'MWh':>10} {'meter':>10} {'interp.':>10} "
             f"{'invoice':>10} {'estimated':>10} {'cover':>6} {'tCO2 loc':>10} "
             f"{'tCO2 mkt':>10}  status"]
    for d in report["devices"]:
        b = d["by_source"]
        lines.append(f"{d['device']:<20} {d['role']:<12} {d['mwh']:>10.3f} "
                     f"{b['meter']:>10.3f} {b['meter_interpolated']:>10.3f} "
                     f"{b['invoice']:>10.3f} {b['estimated']:>10.3f} {d['coverage']:>6.1%} "
                     f"{_fmt3(d['tco2_location']):>10} {_fmt3(d['tco2_market']):>10}  "
                     f"{d['status']}")
    lines.append(f"purchased {t['purchased_mwh']:.3f} MWh; scope 2 location "
                 f"{_fmt3(t['scope2_location_tco2'])} t, market {_fmt3(t['scope2_market_tco2'])} t "
                 f"({t['certificates_mwh']:.3f} MWh of certificates); scope 1 fuel "
                 f"{_fmt3(t['scope1_fuel_tco2'])} t")
    lines += [f"  factor {f['id']}: {f['value']} tCO2/MWh, {f['hours']} hours ({f['source']})"
              for f in report["factors"]]
    lines += [f"  provisional: {reason}" for reason in report["reasons"]]
    lines += [f"  tCO2 null: {why}" for why in t.get("tco2_null", [])]
    lines += [f"  flag: {flag}" for flag in report["flags"]]
    if report.get("scope2"):
        from energyd.accounting.scope2_report import scope2_lines

        lines += scope2_lines(report["scope2"])
    return lines
