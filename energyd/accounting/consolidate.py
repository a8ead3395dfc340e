"""The organisation's month from its sites' evidence folders.

Each site's gateway writes its month as a verifiable folder (`report --evidence`). The
organisation's month is built from those folders only after each is verified as `energyd
verify` does (manifest, then a recompute from the folder alone); a folder that fails makes
the whole consolidation fail, naming its site, so a total never rests on a figure nobody can
recompute.

`combine` is the rule, pure over the sites' `report.json`: per site and in total, Scope 1
(fuel), Scope 2 location-based, market-based annual and hourly, purchased, generated and
self-consumed MWh and CFE%, each site's status (final or provisional) and why. Sites may
span time zones: each site's month is its own calendar month in its own time zone (the
period is listed per site). A total is null when a site's figure is null (never 0). Refused
(`ConsolidationError`): folders of different months, a site twice, a certificate claimed by
two sites.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energyd.errors import EnergydError

FIGURES = ("scope1_tco2", "scope2_location_tco2", "scope2_market_annual_tco2",
           "scope2_market_hourly_tco2", "purchased_mwh", "generation_mwh", "self_consumed_mwh",
           "clean_mwh", "load_mwh")


class ConsolidationError(EnergydError):
    """A folder that does not verify, or sites that cannot be added up."""


@dataclass(frozen=True)
class SiteMonth:
    folder: str
    report: Mapping[str, Any]


def _r(x: float) -> float:
    return round(x + 0.0, 6)


def _sum(values: Iterable[float | None]) -> float | None:
    total = 0.0
    for v in values:
        if v is None:
            return None
        total += v
    return _r(total)


def site_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """One site's month as the organisation adds it up."""
    t = report["totals"]
    s2 = report.get("scope2") or {}
    st = s2.get("totals") or {}
    hours = s2.get("hours") or []
    return {
        "site": report["site"]["name"],
        "timezone": report["timezone"],
        "period": report["period"],
        "status": report["status"],
        "reasons": list(report.get("reasons", [])),
        "scope1_tco2": t.get("scope1_fuel_tco2"),
        "scope2_location_tco2": t.get("scope2_location_tco2"),
        # a report without the hourly section has the annual mode only
        "scope2_market_annual_tco2": st.get("annual_market_tco2", t.get("scope2_market_tco2")),
        "scope2_market_hourly_tco2": st.get("hourly_market_tco2") if s2 else None,
        "purchased_mwh": t.get("purchased_mwh"),
        "generation_mwh": st.get("generation_mwh", t.get("generation_mwh")),
        "self_consumed_mwh": st.get("self_consumed_mwh", 0.0),
        "load_mwh": _r(sum(h["load_mwh"] for h in hours)),
        "clean_mwh": _r(sum(h["clean_mwh"] for h in hours)),
        "cfe": st.get("cfe"),
    }


def _claimed(report: Mapping[str, Any]) -> set[str]:
    """Certificates the site's month used: granular (either mode) and annual instruments."""
    g = (report.get("scope2") or {}).get("granular_certificates") or {}
    ids = set(g.get("hourly_used_ids", ())) | set(g.get("annual_used_ids", ()))
    ids |= {c["id"] for c in report.get("certificates", ())
            if c.get("allocated_in_month_mwh", 0) > 0}
    return ids


def combine(sites: Sequence[SiteMonth]) -> dict[str, Any]:
    """The organisation's month from its sites' verified reports (see the module's rules)."""
    if not sites:
        raise ConsolidationError("no site folders given")
    months = {s.report["month"] for s in sites}
    if len(months) > 1:
        raise ConsolidationError("the folders hold different months: " + ", ".join(
            f"{s.report['site']['name']} {s.report['month']} ({s.folder})" for s in sites))
    seen: dict[str, str] = {}
    claimed: dict[str, str] = {}
    problems = []
    for s in sites:
        name = s.report["site"]["name"]
        if name in seen:
            problems.append(f"site {name} twice ({seen[name]} and {s.folder}): it would be "
                            "counted twice")
        seen[name] = s.folder
        for cid in sorted(_claimed(s.report)):
            if cid in claimed and claimed[cid] != name:
                problems.append(f"certificate {cid} is claimed by site {claimed[cid]} and by "
                                f"site {name}: a certificate is counted once")
            claimed.setdefault(cid, name)
    if problems:
        raise ConsolidationError("\n".join(problems))
    per = [site_figures(s.report) for s in sorted(sites, key=lambda s: s.report["site"]["name"])]
    total: dict[str, Any] = {k: _sum(p[k] for p in per) for k in FIGURES}
    load = total["load_mwh"]
    total["cfe"] = _r(total["clean_mwh"] / load) if load else None
    total["total_location_tco2"] = _sum((total["scope1_tco2"], total["scope2_location_tco2"]))
    total["total_market_annual_tco2"] = _sum((total["scope1_tco2"],
                                              total["scope2_market_annual_tco2"]))
    total["total_market_hourly_tco2"] = _sum((total["scope1_tco2"],
                                              total["scope2_market_hourly_tco2"]))
    provisional = [p for p in per if p["status"] != "final"]
    return {
        "month": months.pop(),
        "sites": per,
        "totals": total,
        "status": "provisional" if provisional else "final",
        "reasons": [f"{p['site']}: {r}" for p in provisional for r in p["reasons"]]
        or [f"{p['site']}: provisional" for p in provisional],
    }


def consolidate(folders: Sequence[str | Path],
                verify: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Verify each folder (`evidence.verify_evidence`) and combine them; raise
    ConsolidationError naming every site whose folder does not verify."""
    if verify is None:
        from energyd.accounting.evidence import verify_evidence as verify
    sites, failed = [], []
    for folder in map(Path, folders):
        name = _site_name(folder)
        try:
            verdict = verify(folder)
        except (EnergydError, OSError, ValueError, KeyError) as exc:
            failed.append(f"site {name} ({folder}): cannot verify: {exc}")
            continue
        if not verdict.ok:
            what = (verdict.problems + [f"hour {h} {d}: {w}" for h, d, w in verdict.hours]
                    + [f"total: {w}" for w in verdict.totals])
            failed.append(f"site {name} ({folder}): does not verify: {'; '.join(what[:5])}"
                          + (f" (and {len(what) - 5} more)" if len(what) > 5 else ""))
            continue
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        sites.append(SiteMonth(str(folder), report))
    if failed:
        raise ConsolidationError("\n".join(failed))
    return combine(sites)


def _site_name(folder: Path) -> str:
    """The site's name as its folder says it, even when the folder fails: its report, else
    its configuration, else the folder's name."""
    for file, path in (("report.json", ("site", "name")), ("config.json", ("site", "name"))):
        try:
            obj: Any = json.loads((folder / file).read_text(encoding="utf-8"))
            for k in path:
                obj = obj[k]
            if isinstance(obj, str):
                return obj
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return folder.name


CSV_COLUMNS = ["site", "timezone", "period_start", "period_end", "status",
               "scope1_tco2", "scope2_location_tco2", "scope2_market_annual_tco2",
               "scope2_market_hourly_tco2", "purchased_mwh", "generation_mwh",
               "self_consumed_mwh", "cfe", "reasons"]


def organisation_csv(org: Mapping[str, Any]) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)

    def b(x: Any) -> Any:
        return "" if x is None else x

    for p in org["sites"]:
        w.writerow([p["site"], p["timezone"], p["period"]["start"], p["period"]["end"],
                    p["status"], *(b(p[k]) for k in CSV_COLUMNS[5:13]), "; ".join(p["reasons"])])
    t = org["totals"]
    w.writerow(["TOTAL", "", "", "", org["status"], *(b(t[k]) for k in CSV_COLUMNS[5:13]),
                "; ".join(org["reasons"])])
    return out.getvalue()


def organisation_lines(org: Mapping[str, Any]) -> list[str]:
    def f(x: float | None) -> str:
        return "null" if x is None else f"{x:.3f}"

    lines = [f"organisation {org['month']}: {org['status']}",
             f"{'site':<20} {'tz':<16} {'scope 1':>9} {'s2 loc':>9} {'s2 annual':>10} "
             f"{'s2 hourly':>10} {'MWh':>10}  status"]
    for p in org["sites"]:
        lines.append(f"{p['site']:<20} {p['timezone']:<16} {f(p['scope1_tco2']):>9} "
                     f"{f(p['scope2_location_tco2']):>9} {f(p['scope2_market_annual_tco2']):>10} "
                     f"{f(p['scope2_market_hourly_tco2']):>10} {f(p['purchased_mwh']):>10}  "
                     f"{p['status']}")
    t = org["totals"]
    lines.append(f"{'TOTAL':<20} {'':<16} {f(t['scope1_tco2']):>9} "
                 f"{f(t['scope2_location_tco2']):>9} {f(t['scope2_market_annual_tco2']):>10} "
                 f"{f(t['scope2_market_hourly_tco2']):>10} {f(t['purchased_mwh']):>10}  "
                 f"{org['status']}")
    lines += [f"  provisional: {r}" for r in org["reasons"]]
    return lines
