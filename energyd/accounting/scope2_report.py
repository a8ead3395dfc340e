"""The month's Scope 2 by the hour, from the stored rows, certificates and export counters.

Gathers plain data for the rules in `scope2` and lays out the report's `scope2` section:
both market-based modes side by side (per device and in total), on-site generation per hour,
CFE% per hour and for the month, and the hourly-matching gap by local hour of day.

- `annual`: the rows' market-based figures as the rollups computed them (the instruments of
  `accounting.certificates`, unchanged), plus the stored granular certificates counted by
  volume within their vintage (the local year they were produced in) and market, on what
  those instruments left, hours in time order from the start of the vintage.
- `hourly`: granular certificates only in their own hour and market; annual instruments
  cover nothing without hourly production to back them, and the section lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from energyd.accounting.energy import HOUR_MS, hourly
from energyd.accounting.factors import day_start_ms
from energyd.accounting.granular import to_certificate
from energyd.accounting.rollup import PURCHASED_ROLES, RollupRow
from energyd.accounting.scope2 import (
    GranularCertificate,
    Instrument,
    Load,
    Matching,
    cfe,
    cfe_total,
    gap_by_hour_of_day,
    iso,
    market_tco2,
    match_annual,
    match_hourly,
    self_consumption,
)

if TYPE_CHECKING:
    from energyd.accounting.service import Accountant

EXPORT = "active_energy_export_kwh"


def _r(x: float) -> float:
    return round(x + 0.0, 6)


def site_market(acc: Accountant) -> str:
    """The site's market boundary: the country part of its grid region (as the annual
    instruments have always been matched)."""
    return acc.config.site.grid_region.split("-")[0]


def site_markets(acc: Accountant) -> set[str]:
    """The names a certificate's market may give the site's boundary: the country, or the
    grid region itself (a certificate issued for the regional grid the site draws from)."""
    return {site_market(acc), acc.config.site.grid_region}


def annual_instruments(acc: Accountant) -> dict[str, Instrument]:
    """The configured annual instruments the site can use, as the rules take them: what a
    granular certificate may detail the hourly production of (`backs`)."""
    return {c.id: Instrument(c.id, c.mwh, c.market, c.start_ms, c.end_ms, c.devices)
            for c in acc.certificates}


def vintage_bounds(acc: Accountant, month_start: int) -> tuple[int, int]:
    year = datetime.fromtimestamp(month_start / 1000, acc.tz).year
    return (day_start_ms(date(year, 1, 1), acc.tz), day_start_ms(date(year + 1, 1, 1), acc.tz))


def vintage_certificates(acc: Accountant, month_start: int) -> list[GranularCertificate]:
    """The granular certificates produced in the month's local year: what annual matching
    may use in the month."""
    a, b = vintage_bounds(acc, month_start)
    return [to_certificate(r) for r in acc.store.certificates.produced_between(a, b)]


def _purchased(acc: Accountant, rows: Sequence[RollupRow]) -> list[RollupRow]:
    roles = {d.name: d.role for d in acc.devices}
    return [r for r in rows if roles.get(r.device, r.detail.get("role")) in PURCHASED_ROLES]


def _leftover(rows: Sequence[RollupRow]) -> list[Load]:
    """What the instruments of the configuration left of each purchased hour."""
    out = []
    for r in rows:
        covered = sum(c["mwh"] for c in (r.detail.get("market") or {}).get("certificates", ()))
        out.append(Load(r.device, r.hour, max(r.mwh - covered, 0.0)))
    return out


def granular_annual(acc: Accountant, start: int, certs: Sequence[GranularCertificate],
                    month_rows: Sequence[RollupRow],
                    used_before: Mapping[str, float] | None) -> tuple[Matching, dict[str, float]]:
    """Annual matching of granular certificates over the month; `used_before` (what the
    vintage's hours before the month took of each; computed from the stored rows when None)."""
    market = site_markets(acc)
    a, b = vintage_bounds(acc, start)
    # a certificate that details an annual instrument's production is in that instrument's
    # volume already: counted by volume again, it would be counted twice
    instruments = [Instrument(c.id, c.mwh, c.market, a, b, None, "granular")
                   for c in sorted(certs, key=lambda c: (c.start_ms, c.id)) if not c.backs]
    if not instruments:
        return Matching(), {}
    if used_before is None:
        earlier = _purchased(acc, acc.rows(a, start)) if start > a else []
        used_before = match_annual(_leftover(earlier), instruments, market).used \
            if earlier else {}
    used_before = {k: v for k, v in used_before.items() if v > 0}
    return match_annual(_leftover(month_rows), instruments, market, used_before), used_before


def export_by_hour(acc: Accountant, start: int, end: int) -> dict[int, float] | None:
    """Exported MWh per hour from the grid meters' export counters; None when no grid meter
    has one (the site does not export). An hour the counter does not cover whole is left
    out: its self-consumption is unknown, not guessed."""
    from energyd.accounting.service import Source

    hours = list(range(start - start % HOUR_MS, end, HOUR_MS))
    found = False
    out: dict[int, float] = {}
    partial: set[int] = set()
    for d in acc.devices:
        if d.role not in PURCHASED_ROLES:
            continue
        sid = acc._series_id(d.name, EXPORT)
        if sid is None:
            continue
        found = True
        trace = acc._trace(d, Source("counter", EXPORT, sid), hours[0], end) if hours else None
        for he in hourly(trace, hours) if trace is not None else ():
            if he.missing_ms:
                partial.add(he.hour)
            out[he.hour] = out.get(he.hour, 0.0) + max(he.measured, 0.0) / 1000.0
    if not found:
        return None
    return {h: v for h, v in out.items() if h not in partial}


def scope2_section(acc: Accountant, month: str, rows: Sequence[RollupRow], *,
                   grid_mix: Mapping[int, float] | None = None,
                   annual_used_before: Mapping[str, float] | None = None,
                   ) -> dict[str, Any]:
    start, end = acc.month_bounds(month)
    market = site_market(acc)
    hours_in_month = set(range(start - start % HOUR_MS + (HOUR_MS if start % HOUR_MS else 0),
                               end, HOUR_MS))
    rows = [r for r in rows if r.hour in hours_in_month]
    purchased = _purchased(acc, rows)
    vintage = vintage_certificates(acc, start)
    # by the hour they cover, which belongs to the month its start falls in (as the rows do)
    month_certs = [c for c in vintage if c.hour in hours_in_month]
    # the production of an instrument limited to some grid meters covers only those
    limits = {i.id: i.devices for i in annual_instruments(acc).values()}
    month_certs = [replace(c, devices=limits.get(c.backs)) if c.backs else c
                   for c in month_certs]
    hourly_m = match_hourly(purchased, month_certs, site_markets(acc))
    annual_g, used_before = granular_annual(acc, start, vintage, purchased, annual_used_before)

    per_device: dict[str, dict[str, Any]] = {}
    annual_by_hour: dict[int, float] = {}
    hourly_by_hour: dict[int, float] = {}
    purchased_by_hour: dict[int, float] = {}
    null: dict[str, list[str]] = {"annual": [], "hourly": []}
    config_annual_in_month: dict[str, float] = {}
    for r in purchased:
        d = per_device.setdefault(r.device, {
            "device": r.device, "mwh": 0.0,
            "annual": {"covered_mwh": 0.0, "instruments_mwh": 0.0,
                       "granular_mwh": 0.0, "tco2": 0.0},
            "hourly": {"covered_mwh": 0.0, "tco2": 0.0}})
        market_detail = r.detail.get("market") or {}
        residual = (market_detail.get("residual") or {}).get("value")
        instruments = sum(c["mwh"] for c in market_detail.get("certificates", ()))
        for c in market_detail.get("certificates", ()):
            config_annual_in_month[c["id"]] = config_annual_in_month.get(c["id"], 0.0) + c["mwh"]
        granular_a = annual_g.covered(r.device, r.hour)
        covered_a = instruments + granular_a
        covered_h = hourly_m.covered(r.device, r.hour)
        t_a = r.tco2_market if granular_a <= 0 else market_tco2(r.mwh, covered_a, residual)
        t_h = market_tco2(r.mwh, covered_h, residual)
        d["mwh"] += r.mwh
        d["annual"]["covered_mwh"] += covered_a
        d["annual"]["instruments_mwh"] += instruments
        d["annual"]["granular_mwh"] += granular_a
        d["hourly"]["covered_mwh"] += covered_h
        for mode, t in (("annual", t_a), ("hourly", t_h)):
            if t is None or d[mode]["tco2"] is None:
                d[mode]["tco2"] = None
                if t is None:
                    null[mode].append(f"{r.device} {iso(r.hour)}")
            else:
                d[mode]["tco2"] += t
        annual_by_hour[r.hour] = annual_by_hour.get(r.hour, 0.0) + covered_a
        hourly_by_hour[r.hour] = hourly_by_hour.get(r.hour, 0.0) + covered_h
        purchased_by_hour[r.hour] = purchased_by_hour.get(r.hour, 0.0) + r.mwh
    devices = []
    for name in sorted(per_device):
        d = per_device[name]
        d["mwh"] = _r(d["mwh"])
        for mode in ("annual", "hourly"):
            for k, v in d[mode].items():
                d[mode][k] = None if v is None else _r(v)
        devices.append(d)

    # on-site generation: generation meters' rows, export from the grid meters' counters
    roles = {dv.name: dv.role for dv in acc.devices}
    generation: dict[int, float] = {}
    for r in rows:
        if roles.get(r.device, r.detail.get("role")) == "generation":
            generation[r.hour] = generation.get(r.hour, 0.0) + r.mwh
    export = export_by_hour(acc, start, end) if generation else None
    onsite = self_consumption(generation, export) if generation else []
    self_consumed = {o.hour: o.self_consumed_mwh or 0.0 for o in onsite}
    cfe_hours = cfe(purchased_by_hour, self_consumed, hourly_by_hour, grid_mix)
    onsite_by = {o.hour: o for o in onsite}
    hours_out = []
    for c in cfe_hours:
        o = onsite_by.get(c.hour)
        hours_out.append({
            "hour": iso(c.hour), "purchased_mwh": _r(purchased_by_hour.get(c.hour, 0.0)),
            "generation_mwh": _r(o.generation_mwh) if o else 0.0,
            "export_mwh": (None if o.export_mwh is None else _r(o.export_mwh)) if o else None,
            "self_consumed_mwh": (None if o.self_consumed_mwh is None
                                  else _r(o.self_consumed_mwh)) if o else 0.0,
            "annual_matched_mwh": _r(annual_by_hour.get(c.hour, 0.0)),
            "hourly_matched_mwh": _r(hourly_by_hour.get(c.hour, 0.0)),
            "load_mwh": _r(c.load_mwh), "clean_mwh": _r(c.clean_mwh),
            "grid_clean_mwh": None if c.grid_clean_mwh is None else _r(c.grid_clean_mwh),
            "cfe": c.cfe})
    total_purchased = sum(purchased_by_hour.values())
    total_self = sum(v for v in self_consumed.values())
    notes = []
    backing: dict[str, list[GranularCertificate]] = {}
    for c in month_certs:
        if c.backs:
            backing.setdefault(c.backs, []).append(c)
    for cid in sorted(set(config_annual_in_month) | set(backing)):
        mwh = config_annual_in_month.get(cid, 0.0)
        backed = backing.get(cid)
        if not backed:
            notes.append(f"annual instrument {cid}: {mwh:.6g} MWh in annual mode, none in "
                         "hourly mode: no hourly production backs it")
            continue
        used = sum(hourly_m.used.get(c.id, 0.0) for c in backed)
        notes.append(f"annual instrument {cid}: {mwh:.6g} MWh in annual mode; in hourly mode "
                     f"its hourly production ({len(backed)} certificates, "
                     f"{sum(c.mwh for c in backed):.6g} MWh) covers {used:.6g} MWh")
    for cid, why in sorted(hourly_m.refused.items()):
        notes.append(f"certificate {cid} covers nothing: {why}")
    if generation and export is None:
        notes.append("no grid meter has an export counter (active_energy_export_kwh): all "
                     "on-site generation is taken as consumed on site")
    unknown = [o for o in onsite if o.self_consumed_mwh is None]
    if unknown:
        notes.append(f"{len(unknown)} hours with generation but no whole export figure: "
                     f"their self-consumption is unknown and counted as 0 in CFE% (first "
                     f"{iso(unknown[0].hour)})")
    above = [o for o in onsite if o.export_above_generation_mwh > 1e-9]
    if above:
        notes.append(f"{len(above)} hours export more than the generation meters measured "
                     f"({_r(sum(o.export_above_generation_mwh for o in above))} MWh): listed, "
                     f"not netted off (first {iso(above[0].hour)})")
    if grid_mix is None:
        notes.append("no grid mix given: CFE% counts matched and self-consumed energy only")
    else:
        missing = [c for c in cfe_hours if c.grid_clean_mwh is None and c.load_mwh > 0]
        if missing:
            notes.append(f"{len(missing)} hours without a grid clean share (first "
                         f"{iso(missing[0].hour)})")
    for mode in ("annual", "hourly"):
        if null[mode]:
            notes.append(f"{mode} tCO2 null: {len(null[mode])} hours without a residual "
                         f"factor (first {null[mode][0]})")

    def total(mode: str, key: str) -> float | None:
        vals = [d[mode][key] for d in devices]
        return None if any(v is None for v in vals) else _r(sum(vals))

    used_ids = sorted(cid for cid, m in hourly_m.used.items() if m > 0)
    annual_ids = sorted(cid for cid, m in annual_g.used.items() if m > 0)
    return {
        "market": market,
        "totals": {
            "purchased_mwh": _r(total_purchased),
            "annual_covered_mwh": total("annual", "covered_mwh"),
            "annual_market_tco2": total("annual", "tco2"),
            "hourly_covered_mwh": total("hourly", "covered_mwh"),
            "hourly_market_tco2": total("hourly", "tco2"),
            "generation_mwh": _r(sum(generation.values())),
            "export_mwh": _r(sum(o.export_mwh or 0.0 for o in onsite)),
            "self_consumed_mwh": _r(total_self),
            "self_consumed_share": _r(total_self / (total_purchased + total_self))
            if total_purchased + total_self > 0 else None,
            "cfe": cfe_total(cfe_hours),
            "gap_mwh": _r(sum(max(annual_by_hour.get(h, 0.0) - hourly_by_hour.get(h, 0.0), 0.0)
                              for h in annual_by_hour)),
        },
        "devices": devices,
        "granular_certificates": {
            "in_month": len(month_certs),
            "mwh": _r(sum(c.mwh for c in month_certs)),
            "hourly_used_mwh": _r(hourly_m.total),
            "hourly_excess_mwh": _r(sum(hourly_m.unused.values())),
            "refused": dict(sorted(hourly_m.refused.items())),
            "hourly_used_ids": used_ids,
            "annual_used_mwh": _r(annual_g.total),
            "annual_used_ids": annual_ids,
            "vintage_count": len(vintage),
            "annual_used_before_month_mwh": {k: round(v, 9)
                                             for k, v in sorted(used_before.items())},
        },
        "gap_by_hour_of_day": gap_by_hour_of_day(annual_by_hour, hourly_by_hour, acc.tz),
        "cfe_by_hour_of_day": _cfe_by_hour_of_day(cfe_hours, acc.tz),
        "hours": hours_out,
        "notes": notes,
        "method": {
            "annual": "instruments by volume within their vintage and market (the rollups' "
                      "market figures), and granular certificates by volume within the year "
                      "they were produced in, residual factor for the rest",
            "hourly": "granular certificates only in the hour they were produced in and the "
                      "site's market, no banking; annual instruments cover nothing; residual "
                      "factor for the rest",
            "on_site": "self-consumed = generation - export per hour, never negative; not "
                       "purchased, no Scope 2; export never netted off",
            "cfe": "per hour (self-consumed + hourly-matched, capped at load) + grid clean "
                   "share x the rest, over load (purchased + self-consumed)",
        },
    }


def _cfe_by_hour_of_day(hours: Sequence[Any], tz: Any) -> list[dict[str, Any]]:
    """The month's CFE per local hour of day: the hours' clean MWh over their load."""
    out = [{"hour_of_day": i, "load_mwh": 0.0, "clean_mwh": 0.0, "cfe": None} for i in range(24)]
    for c in hours:
        slot = out[datetime.fromtimestamp(c.hour / 1000, tz).hour]
        slot["load_mwh"] += c.load_mwh
        slot["clean_mwh"] += c.clean_mwh
    for slot in out:
        slot["cfe"] = round(slot["clean_mwh"] / slot["load_mwh"], 9) \
            if slot["load_mwh"] > 1e-9 else None
        slot["load_mwh"], slot["clean_mwh"] = _r(slot["load_mwh"]), _r(slot["clean_mwh"])
    return out


def scope2_lines(section: Mapping[str, Any]) -> list[str]:
    """The section for a terminal."""
    t = section["totals"]

    def f(x: float | None, places: int = 3) -> str:
        return "null" if x is None else f"{x:.{places}f}"

    lines = [f"scope 2 market-based, side by side ({section['market']}): annual "
             f"{f(t['annual_market_tco2'])} t ({f(t['annual_covered_mwh'])} MWh covered), "
             f"hourly {f(t['hourly_market_tco2'])} t ({f(t['hourly_covered_mwh'])} MWh "
             f"covered); gap {f(t['gap_mwh'])} MWh"]
    for d in section["devices"]:
        lines.append(f"  {d['device']:<20} {d['mwh']:>10.3f} MWh  annual "
                     f"{f(d['annual']['tco2']):>10} t  hourly {f(d['hourly']['tco2']):>10} t")
    cfe_text = "n/a" if t["cfe"] is None else f"{t['cfe']:.1%}"
    share = "n/a" if t["self_consumed_share"] is None else f"{t['self_consumed_share']:.1%}"
    lines.append(f"  on-site: generation {f(t['generation_mwh'])} MWh, exported "
                 f"{f(t['export_mwh'])} MWh, self-consumed {f(t['self_consumed_mwh'])} MWh "
                 f"({share} of consumption); CFE {cfe_text}")
    by_hod = [c for c in section.get("cfe_by_hour_of_day", ()) if c["cfe"] is not None]
    if by_hod:
        lines.append("  CFE by hour of day: " + ", ".join(
            f"{c['hour_of_day']:02d}h {c['cfe']:.0%}" for c in by_hod))
    gaps = [g for g in section["gap_by_hour_of_day"] if g["gap_mwh"] > 0]
    if gaps:
        lines.append("  hourly-matching gap by hour of day (MWh annual covers, hourly does "
                     "not): " + ", ".join(f"{g['hour_of_day']:02d}h {g['gap_mwh']:.3f}"
                                          for g in gaps))
    lines += [f"  note: {n}" for n in section["notes"]]
    return lines


SCOPE2_CSV_COLUMNS = ["hour", "purchased_mwh", "generation_mwh", "export_mwh",
                      "self_consumed_mwh", "annual_matched_mwh", "hourly_matched_mwh",
                      "load_mwh", "clean_mwh", "cfe"]


def scope2_csv_rows(section: Mapping[str, Any]) -> list[list[Any]]:
    """Rows for the report's CSV: the two modes per device and in total, the gap by hour of
    day, and every hour."""
    t = section["totals"]

    def b(x: Any) -> Any:
        return "" if x is None else x

    out: list[list[Any]] = [[], ["scope2", "device", "mwh", "annual_covered_mwh",
                                 "annual_market_tco2", "hourly_covered_mwh",
                                 "hourly_market_tco2"]]
    for d in section["devices"]:
        out.append(["scope2", d["device"], d["mwh"], d["annual"]["covered_mwh"],
                    b(d["annual"]["tco2"]), d["hourly"]["covered_mwh"], b(d["hourly"]["tco2"])])
    out.append(["scope2", "TOTAL", t["purchased_mwh"], b(t["annual_covered_mwh"]),
                b(t["annual_market_tco2"]), b(t["hourly_covered_mwh"]),
                b(t["hourly_market_tco2"])])
    out.append(["on_site", "generation_mwh", t["generation_mwh"], "export_mwh", t["export_mwh"],
                "self_consumed_mwh", t["self_consumed_mwh"], "cfe", b(t["cfe"])])
    out.append(["gap", "hour_of_day", "annual_mwh", "hourly_mwh", "gap_mwh"])
    out += [["gap", g["hour_of_day"], g["annual_mwh"], g["hourly_mwh"], g["gap_mwh"]]
            for g in section["gap_by_hour_of_day"]]
    out.append(["hourly", *SCOPE2_CSV_COLUMNS])
    out += [["hourly", *(b(h[k]) for k in SCOPE2_CSV_COLUMNS)] for h in section["hours"]]
    return out
