"""A month's evidence: written from the store, and recomputed from the folder alone.

`export_evidence` writes everything the month's rows and totals depend on into a new folder,
byte-identical for the same store and configuration, with `MANIFEST.sha256` over it (see the
accounting README, "Evidence", for the files and their columns). `verify_evidence` checks the
manifest, loads the folder into a scratch store, recomputes the month with the same
`Accountant.recompute` and `report` the daemon uses, and lists every hour and total that
differs from the folder's `rollups.csv` and `report.json`.

What the month depends on, and so what the folder holds:

- the readings of the hours computed together with the month: the month, widened to the whole
  periods of the statements that touch it (a statement's residual depends on all of its
  period), plus a margin either side and, for every accounted counter, the samples just
  outside that the edge hours are interpolated from (however far they are);
- those statements whole, and any acceptance recorded for them;
- the readings before that window that a recompute reads too: the like days estimates are
  drawn from (`LIKE_LOOKBACK_DAYS`), the week before them from which a counter without a
  rating learns its limit, and the context the validation decides in (the same after it);
  the stored rows of those like days are there as `profile_inputs.csv`, for reference;
- the factor table, the certificates and what earlier hours already took of them;
- the accounting part of the configuration (site, devices' roles, ratings, rollovers, fuel
  parameters, `accounting:`); no driver, network or secret settings.
"""

from __future__ import annotations

import bisect
import csv
import functools
import hashlib
import json
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from energyd import __version__
from energyd.accounting.energy import HOUR_MS
from energyd.accounting.factors import load_factors
from energyd.accounting.rollup import LIKE_LOOKBACK_DAYS, RollupRow, iso
from energyd.accounting.scope2_report import scope2_section, vintage_certificates
from energyd.accounting.validation import DAY_MS, LEARN_DAYS
from energyd.config.schema import Config
from energyd.errors import StoreError
from energyd.store.certificates import CertificateRecord
from energyd.store.sqlite import Store
from energyd.store.statements import Acceptance, StoredStatement

if TYPE_CHECKING:
    from energyd.accounting.service import Accountant

FORMAT = 1
MANIFEST = "MANIFEST.sha256"
# A device's connection settings are not evidence: they say nothing about the figures, and
# name hosts and credential files.
_DRIVER_KEYS = {"driver", "interval", "profile", "registers", "modbus", "mqtt", "dlt645"}
_ROW_FLOATS = ("mwh", "coverage", "tco2_location", "tco2_market", "ef_location")
# Figures are stored rounded (MWh and tCO2 to 1e-9, the kWh split to 1e-6): two roundings
# of the same figure may be one unit of the last place apart.
TOLERANCE = 1.5e-9
KWH_TOLERANCE = 1.5e-6


def export_evidence(acc: Accountant, month: str, directory: str | Path,
                    now_ms: int) -> dict[str, Any]:
    """Write the month's evidence into `directory` (new or empty)."""
    from energyd.accounting import service as st

    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out}: not empty; evidence is never written over")
    start, end = acc.month_bounds(month)
    limit = st.floor_hour(now_ms)
    # the hours the daemon computes: none before a device was first seen (a reading or a
    # statement), as in Accountant.run; but from the month's first stored row where one was
    # computed earlier (`energyd rollup` over the whole month)
    since = {name: st.floor_hour(t) for name, t in acc.known_since().items()}
    first_rows = acc.store.rollups.first_hours(st.floor_hour(start), end)
    want = {}
    for d in acc.devices:
        firsts = [t for t in (since.get(d.name), first_rows.get(d.name)) if t is not None]
        if firsts:
            want[d.name] = (max(st.floor_hour(start), min(firsts)),
                            min(st.ceil_hour(end), limit))
    want = {k: v for k, v in want.items() if v[1] > v[0]}
    statements = acc.widen(want, limit) if want else []  # what recompute reads with them
    lo = min([a for a, _ in want.values()], default=st.floor_hour(start))
    hi = max([b for _, b in want.values()], default=st.ceil_hour(end))
    until = min(limit, hi)
    report = acc.report(month, now_ms)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    def done(name: str) -> None:
        files.append(name)

    # a recompute reads around its window: the like days an estimate is drawn from (and
    # the week a counter without a rating learns its limit from before them), and the
    # context its validation decides in
    read_before = (LIKE_LOOKBACK_DAYS + LEARN_DAYS + 1) * DAY_MS + st.CONTEXT_MS
    read_after = st.CONTEXT_MS + max(acc.max_gap_ms, HOUR_MS)
    readings = _write_readings(acc, out / "readings.csv", lo - read_before, hi + read_after)
    n = len(readings)
    done("readings.csv")

    accounts = acc.accounts()
    replaced = acc.store.statements.replaced(lo, hi)
    with open(out / "invoices.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "account", "period_start", "period_end", "energy_kwh", "supplier",
                    "document", "devices", "replaced_by"])
        lines = [(s.id, s.account, iso(s.start_ms), iso(s.end_ms), repr(s.kwh),
                  s.supplier or "", s.document or "", " ".join(s.devices), "")
                 for s in statements]
        # replaced statements are not used, but they are part of the record
        lines += [(s.id, s.account, iso(s.start_ms), iso(s.end_ms), repr(s.kwh),
                   s.supplier or "", s.document or "", " ".join(accounts.get(s.account, ())),
                   s.replaced_by) for s in replaced]
        w.writerows(sorted(lines))
    done("invoices.csv")
    _write_json(out / "acceptances.json",
                list(acc.acceptances([s.id for s in statements]).values()))
    done("acceptances.json")

    rows = acc.rows(start, end)
    sources = {d.name: acc.source(d).quantity for d in acc.devices}
    _write_rows(out / "rollups.csv", rows, inputs_digests(readings, rows, sources))
    done("rollups.csv")
    history = [r for name, (a, _) in sorted(want.items())
               for r in acc.rows(a - LIKE_LOOKBACK_DAYS * DAY_MS, a, [name])]
    _write_rows(out / "profile_inputs.csv", history)
    done("profile_inputs.csv")

    _write_json(out / "factors.yaml", {"factors": [f.as_dict() for f in acc.factors.factors]})
    done("factors.yaml")
    used_ids = {f["id"] for f in report["factors"]}
    _write_json(out / "factors.json", {
        "table": acc.factors.origin,
        "used": [acc.factors.by_id(i).as_dict() for i in sorted(used_ids)
                 if acc.factors.by_id(i) is not None],
        "all": [f.as_dict() for f in acc.factors.factors]})
    done("factors.json")
    before = acc.store.allocations.used_before(lo)
    _write_json(out / "certificates.json", {
        "certificates": report["certificates"],
        "allocated_before_window_mwh": {k: before[k] for k in sorted(before)},
        # the granular certificates of the month's vintage: what both Scope 2 modes use
        "granular": [c.as_dict() for c in vintage_certificates(acc, start)]})
    done("certificates.json")
    _write_json(out / "config.json", accounting_config(acc.config))
    done("config.json")
    _write_json(out / "devices.json", [
        {"name": d.name, "role": d.role, "rated_power_kw": d.rated_power_kw,
         "counter_rollover": d.counter_rollover,
         "fuel": d.fuel.model_dump() if d.fuel else None} for d in acc.devices]
        + [{"accounts": {k: list(v) for k, v in acc.accounts().items()},
            "max_interpolation_gap_s": acc.config.accounting.max_interpolation_gap,
            "reconciliation_tolerance": acc.config.accounting.reconciliation_tolerance,
            "timezone": acc.config.site.timezone}])
    done("devices.json")
    _write_json(out / "evidence.json", {
        "format": FORMAT, "energyd": __version__, "month": month,
        "timezone": acc.config.site.timezone,
        "month_start": iso(start), "month_end": iso(end),
        "window_start": iso(lo), "window_end": iso(hi), "computed_until": iso(until),
        "windows": {name: [iso(a), iso(b)] for name, (a, b) in sorted(want.items())},
        "complete": now_ms >= end, "profile_days": LIKE_LOOKBACK_DAYS,
        "readings_before_s": read_before // 1000, "readings_after_s": read_after // 1000})
    done("evidence.json")
    _write_json(out / "report.json", report)
    done("report.json")
    manifest = [f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}\n"
                for name in files]
    (out / MANIFEST).write_text("".join(manifest), encoding="utf-8")
    return {"directory": str(out), "files": files, "readings": n, "rows": len(rows),
            "statements": len(statements), "status": report["status"]}


def accounting_config(config: Config) -> dict[str, Any]:
    """The configuration the figures depend on, as plain data a Config can be rebuilt from."""
    acc = config.accounting.model_dump(mode="json")
    acc["emission_factors"] = "factors.yaml"
    return {
        "site": config.site.model_dump(mode="json"),
        "devices": [{k: v for k, v in d.model_dump(mode="json").items()
                     if k not in _DRIVER_KEYS} for d in config.devices],
        "accounting": acc,
    }


Line = tuple[int, str, str, str]  # time ms, device, quantity, the line of readings.csv


def inputs_digests(lines: Iterable[Line], rows: Iterable[RollupRow],
                   sources: Mapping[str, str | None]) -> dict[tuple[int, str], str]:
    """(hour, device) -> SHA-256 of the `readings.csv` lines the hour rests on: its counter's
    (or power's) readings in the hour and the one on either side, in file order. A reading
    altered in the folder then names its hours even where the figures happen not to move (a
    sample inside an hour of a straight counter)."""
    series: dict[str, list[Line]] = {}
    for r in lines:
        if sources.get(r[1]) == r[2]:
            series.setdefault(r[1], []).append(r)
    for got in series.values():
        got.sort()
    times = {d: [r[0] for r in got] for d, got in series.items()}
    out = {}
    for row in rows:
        got = series.get(row.device)
        if got is None:
            continue
        t = times[row.device]
        i = max(bisect.bisect_left(t, row.hour) - 1, 0)
        j = bisect.bisect_left(t, row.hour + HOUR_MS) + 1
        text = "".join(r[3] for r in got[i:j])
        out[(row.hour, row.device)] = hashlib.sha256(text.encode()).hexdigest()
    return out


READINGS_HEADER = ["time", "device", "quantity", "value", "quality"]


def _write_readings(acc: Accountant, path: Path, lo: int, hi: int) -> list[Line]:
    """Every reading in [lo, hi), and for each accounted series the samples just outside."""
    store = acc.store
    edges: dict[tuple[str, str], list[int]] = {}
    for device in acc.devices:
        src = acc.source(device)
        if src.series is None or src.quantity is None:
            continue
        got = [t for t in (store.readings.series_time_before(src.series, lo),
                           store.readings.series_time_from(src.series, hi)) if t is not None]
        if got:
            edges[(device.name, src.quantity)] = got
    rows = list(store.readings.readings_in(lo, hi, by_series=True))
    for (device, quantity), times in edges.items():
        for t in times:
            rows.extend(r for r in store.readings.readings_in(t, t + 1, device=device)
                        if r[2] == quantity)
    rows.sort(key=lambda r: (r[1], r[2], r[0]))
    # device names and quantities never need CSV quoting (config.schema's name pattern)
    lines = [(t, d, q, f"{_iso_ms(t)},{d},{q},{v!r},{qual}\n") for t, d, q, v, qual in rows]
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(READINGS_HEADER) + "\n")
        f.writelines(r[3] for r in lines)
    return lines


def _write_rows(path: Path, rows: Iterable[RollupRow],
                digests: Mapping[tuple[int, str], str] | None = None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["hour", "device", "mwh", "source", "coverage", "tco2_location",
                    "tco2_market", "ef_location", "ef_id", "detail", "inputs_sha256"])
        for r in rows:
            w.writerow([iso(r.hour), r.device, _num(r.mwh), r.source, _num(r.coverage),
                        _num(r.tco2_location), _num(r.tco2_market), _num(r.ef_location),
                        r.ef_id or "", _dumps(r.detail),
                        (digests or {}).get((r.hour, r.device), "")])


def _num(x: float | None) -> str:
    return "" if x is None else repr(x)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + days).isoformat()


def _iso_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds: exact both ways (and quick: a month has millions)."""
    s, milli = divmod(ms, 1000)
    days, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{_day(days)}T{h:02d}:{m:02d}:{s:02d}.{milli:03d}Z"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")


# --- verifying --------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What `energyd verify` found: `problems` with the folder itself (a file missing or not
    matching the manifest), `hours` whose figures differ (hour, device, what), `totals` that
    differ; `notes`: hours whose figures agree but whose provenance (`detail`) does not."""

    month: str = ""
    problems: list[str] = field(default_factory=list)
    hours: list[tuple[str, str, str]] = field(default_factory=list)
    totals: list[str] = field(default_factory=list)
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # provenance only
    checked_rows: int = 0

    @property
    def ok(self) -> bool:
        return not (self.problems or self.hours or self.totals)


def check_manifest(folder: Path) -> list[str]:
    path = folder / MANIFEST
    if not path.is_file():
        return [f"{path}: missing"]
    problems = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name  # sha256sum's text or binary mode
        if not sep or len(digest) != 64 or not name:
            problems.append(f"{path}:{n}: not `SHA256  NAME`")
            continue
        if name == MANIFEST:  # a manifest made with `sha256sum *` lists its old self
            continue
        file = folder / name
        if not file.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: does not match its SHA-256 in the manifest")
    return problems


def verify_evidence(folder: str | Path) -> Verdict:
    """Recompute the folder's month from the folder alone and compare."""
    from energyd.accounting.service import Accountant

    folder = Path(folder)
    verdict = Verdict(problems=check_manifest(folder))
    if verdict.problems:
        return verdict
    meta = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        verdict.problems.append(f"evidence.json: format {meta.get('format')!r}, this energyd "
                                f"reads format {FORMAT}")
        return verdict
    verdict.month = meta["month"]
    with tempfile.TemporaryDirectory(prefix="energyd-verify-") as scratch:
        config = _rebuild_config(folder, Path(scratch) / "verify.db")
        factors = load_factors(folder / "factors.yaml")
        with Store.open(config.storage.path) as store:
            readings = _load_store(folder, store)
            acc = Accountant(store, config, factors)
            sources = {d.name: acc.source(d).quantity for d in acc.devices}
            until = _ms(meta["computed_until"])
            start, end = _ms(meta["month_start"]), _ms(meta["month_end"])
            acc.recompute({name: (_ms(a), _ms(b)) for name, (a, b) in meta["windows"].items()},
                          until)
            rows = acc.rows(start, end)
            now = end if meta["complete"] else end - 1
            report = acc.report(meta["month"], now)
            expected = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            if "scope2" in expected:
                # the vintage's hours before the month are not in the folder: what they took
                # of each granular certificate is, as for the annual instruments
                before = expected["scope2"]["granular_certificates"][
                    "annual_used_before_month_mwh"]
                report["scope2"] = scope2_section(acc, meta["month"], rows,
                                                  annual_used_before=before)
    stored = {(r["hour"], r["device"]): r for r in _read_rows(folder / "rollups.csv")}
    mine = {(iso(r.hour), r.device): r for r in rows}
    digests = inputs_digests(readings, rows, sources)
    verdict.checked_rows = len(stored)
    for key in sorted(set(stored) | set(mine)):
        hour, device = key
        a, b = stored.get(key), mine.get(key)
        if a is None:
            verdict.hours.append((hour, device, "recomputed, but not in rollups.csv"))
            continue
        if b is None:
            verdict.hours.append((hour, device, "in rollups.csv, but not recomputed"))
            continue
        found = _row_differences(a, b)
        if a.get("inputs_sha256") and a["inputs_sha256"] != digests.get((b.hour, device)):
            found.append("its readings in readings.csv are not those it was exported with "
                         "(inputs_sha256)")
        for what in found:
            verdict.hours.append((hour, device, what))
        if not found:
            verdict.notes += [(hour, device, what) for what in _detail_notes(a, b)]
    verdict.totals = _report_differences(expected, report)
    return verdict


def _rebuild_config(folder: Path, db: Path) -> Config:
    plain = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    # A stand-in driver so the device validates: the folder's readings replace the polling.
    devices = [{**d, "driver": "modbus", "modbus": {"host": "127.0.0.1", "port": 1},
                "registers": [{"quantity": "active_energy_import_kwh", "address": 0}]}
               for d in plain["devices"]]
    accounting = {**plain["accounting"], "emission_factors": str(folder / "factors.yaml")}
    return Config.model_validate({"site": plain["site"], "storage": {"path": str(db)},
                                  "http": {"enabled": False}, "devices": devices,
                                  "accounting": accounting})


def _load_store(folder: Path, store: Store) -> list[Line]:
    with open(folder / "readings.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if next(reader, None) != READINGS_HEADER:
            raise ValueError("readings.csv: header must be time,device,quantity,value,quality")
        lines: list[Line] = []
        readings = []
        for t, d, q, v, qual in reader:
            ms = _ms(t)
            lines.append((ms, d, q, f"{t},{d},{q},{v},{qual}\n"))
            readings.append((ms, d, q, float(v), int(qual)))
    # by time, so the readings of one instant share a sample as when they were polled
    readings.sort(key=lambda r: (r[0], r[1], r[2]))
    history = _read_rows(folder / "profile_inputs.csv")
    with open(folder / "invoices.csv", newline="", encoding="utf-8") as f:
        invoices = list(csv.DictReader(f))
    acceptances = json.loads((folder / "acceptances.json").read_text(encoding="utf-8"))
    certs = json.loads((folder / "certificates.json").read_text(encoding="utf-8"))
    meta = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    store.certificates.retire(((_granular(c), "certificates.json")
                               for c in certs.get("granular", [])), 0)
    with store.atomic():
        store.import_rows(readings)
        store.statements.restore(
            [StoredStatement(int(r["id"]), r["account"], _ms(r["period_start"]),
                             _ms(r["period_end"]), float(r["energy_kwh"]), r["supplier"] or None,
                             r["document"] or None,
                             int(r["replaced_by"]) if r["replaced_by"] else None)
             for r in invoices],
            [Acceptance(a["statement"], _ms(a["at"]), a["by"], a["reason"],
                        _dumps(a["finding"])) for a in acceptances])
        store.rollups.restore(
            (r["device"], _ms(r["hour"]), r["mwh"], r["source"], r["coverage"],
             r["tco2_location"], r["tco2_market"], r["ef_location"], r["ef_id"],
             _dumps(r["detail"])) for r in history)
        # what hours before the window took of each certificate, as one earlier hour
        store.allocations.restore_before(_ms(meta["window_start"]) - HOUR_MS,
                                          certs["allocated_before_window_mwh"])
    return lines


def _granular(c: Mapping[str, Any]) -> CertificateRecord:
    return CertificateRecord(c["id"], _ms(c["production_start"]), _ms(c["production_end"]),
                             float(c["wh"]), c["market"], c["device"], c["technology"],
                             c["location"], bool(c["storage_discharge"]), c["registry"],
                             c.get("backs", ""))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in _ROW_FLOATS:
                row[k] = float(r[k]) if r[k] != "" else None
            row["ef_id"] = r["ef_id"] or None
            row["detail"] = json.loads(r["detail"])
            out.append(row)
    return out


def _row_differences(a: Mapping[str, Any], b: RollupRow) -> list[str]:
    out = []
    if a["source"] != b.source:
        out.append(f"source {a['source']} in the folder, {b.source} recomputed")
    if a["ef_id"] != b.ef_id:
        out.append(f"ef_id {a['ef_id']} in the folder, {b.ef_id} recomputed")
    for k in _ROW_FLOATS:
        x, y = a[k], getattr(b, k)
        if not _same(x, y):
            out.append(f"{k} {x} in the folder, {y} recomputed")
    kwh_a, kwh_b = a["detail"].get("kwh", {}), b.detail.get("kwh", {})
    for k in sorted(set(kwh_a) | set(kwh_b)):
        if not _same(kwh_a.get(k), kwh_b.get(k), KWH_TOLERANCE):
            out.append(f"detail.kwh.{k} {kwh_a.get(k)} in the folder, {kwh_b.get(k)} "
                       "recomputed")
    return out


def _detail_notes(a: Mapping[str, Any], b: RollupRow) -> list[str]:
    """Provenance that differs where the figures agree (e.g. an estimate's basis drawn from
    other hours): worth a look, not a different figure."""
    return [f"{path} {x!r} in the folder, {y!r} recomputed"
            for path, x, y in _tree_differences(a["detail"], b.detail, "detail")
            if not path.startswith("detail.kwh.")][:3]


def _tree_differences(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _tree_differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _tree_differences(x, y, f"{path}[{i}]")]
    if isinstance(a, bool) or isinstance(b, bool) or not (
            isinstance(a, int | float) and isinstance(b, int | float)):
        return [] if a == b else [(path, a, b)]
    return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) else [(path, a, b)]


def _report_differences(expected: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    out = []
    if expected.get("status") != got.get("status"):
        out.append(f"status {expected.get('status')} in report.json, {got.get('status')} "
                   "recomputed")
    for k, v in expected.get("totals", {}).items():
        w = got.get("totals", {}).get(k)
        if isinstance(v, dict):
            for s, x in v.items():
                if not _same(x, (w or {}).get(s), KWH_TOLERANCE):
                    out.append(f"totals.{k}.{s} {x} in report.json, {(w or {}).get(s)} "
                               "recomputed")
        elif isinstance(v, list):
            if v != w:
                out.append(f"totals.{k} differs from the recomputed")
        elif not _same(v, w, KWH_TOLERANCE):
            out.append(f"totals.{k} {v} in report.json, {w} recomputed")
    mine = (got.get("scope2") or {}).get("totals", {})
    for k, v in ((expected.get("scope2") or {}).get("totals") or {}).items():
        if not _same(v, mine.get(k), KWH_TOLERANCE):
            out.append(f"scope2.totals.{k} {v} in report.json, {mine.get(k)} recomputed")
    got_devices = {d["device"]: d for d in got.get("devices", [])}
    for d in expected.get("devices", []):
        g = got_devices.get(d["device"])
        if g is None:
            out.append(f"device {d['device']}: in report.json, not recomputed")
            continue
        for k in ("mwh", "tco2_location", "tco2_market", "hours", "missing_hours"):
            if not _same(d.get(k), g.get(k), KWH_TOLERANCE):
                out.append(f"device {d['device']} {k} {d.get(k)} in report.json, {g.get(k)} "
                           "recomputed")
    return out


def _same(x: Any, y: Any, tol: float = TOLERANCE) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if isinstance(x, int | float) and isinstance(y, int | float):
        return math.isclose(float(x), float(y), rel_tol=0.0, abs_tol=tol)
    return bool(x == y)


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
