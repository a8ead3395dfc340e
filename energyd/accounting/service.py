"""The accounting service: the one place accounting meets the store (through the repository
interfaces of repositories.py): read readings and statements, write rollups.

Everything else in `energyd.accounting` is pure; this module decides *what* to recompute and
persists the result:

- `Accountant.recompute(ranges)`: the given device-hours, widened to whole statement periods
  (a statement's residual depends on all of its period) and followed by a re-allocation of
  certificates from the first recomputed hour on (what an hour gets depends on what earlier
  hours used). A row is written only when it changed, with a fresh `seq` so sinks forward it
  again; re-running over the same data writes nothing.
- `Accountant.run(now_ms)`: the hourly job: hours completed since the last run; hours touched
  by readings that arrived late (from the sample before the earliest late one: a gap that
  was estimated becomes interpolated); and, when the factor table or the certificates
  changed, the hours those apply to. `recompute_hours` widens it at start-up.
- statements import, the monthly report and the evidence export (evidence.py).

The store is reached through the repository interfaces of `repositories.py` alone. The
reconciliation findings come back as values (`findings.ReconciliationFinding`) with the
statements they were checked for; the alert episodes they call for are the caller's to
record (energyd/daemon/reconciliation.py), not the accounting's.

Times are UTC epoch ms; the site's time zone only decides local dates (factor validity,
statement days, report months).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from operator import itemgetter
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from energyd.accounting.energy import (
    HOUR_MS,
    CounterSpec,
    HourEnergy,
    Trace,
    analyse_counter,
    hourly,
    integrate_power,
    open_tail,
)
from energyd.accounting.factors import (
    FactorTable,
    day_start_ms,
    load_factors,
    validity_ms,
)
from energyd.accounting.findings import ReconciliationFinding, find
from energyd.accounting.invoices import StatementRow, StoredPeriod, parse_statements
from energyd.accounting.report import build_report
from energyd.accounting.repositories import AccountingStore
from energyd.accounting.rollup import (
    LIKE_LOOKBACK_DAYS,
    PURCHASED_ROLES,
    Calendar,
    CertificateSpec,
    DeviceInfo,
    FactorPolicy,
    FuelSpec,
    Profile,
    RollupRow,
    Statement,
    allocate_certificates,
    apply_market,
    build_rows,
    fill_missing,
    iso,
)
from energyd.accounting.scope2_report import scope2_section
from energyd.accounting.validation import DAY_MS, LEARN_DAYS, MAX_REPAIR_MS, learn_rates
from energyd.config.schema import Config, Device
from energyd.model import Quality
from energyd.store.statements import Acceptance, NewStatement

log = logging.getLogger(__name__)

QUICK_MS = 900_000  # context read first around a recomputed range
CONTEXT_MS = 2 * MAX_REPAIR_MS + HOUR_MS  # what a validation decision can depend on
META_POSITION = "accounting.readings_position"
"""The hourly job's position among the reading ids; the store's quota must not move an id
across it (the daemon passes this key to `Store.enforce_quota`)."""
META_DONE = "accounting.done_until"
META_FINGERPRINT = "accounting.fingerprint"
META_OPEN = "accounting.open_tails"

Ranges = dict[str, tuple[int, int]]


_RECEIPT = {int(Quality.RECEIVED): "received", int(Quality.RECEIVED_BACKLOG): "received_backlog"}


def _receipt_hours(rows: list[tuple[int, float, int]], out: dict[int, str]) -> None:
    """Marks in `out` the hours holding readings whose time is their receipt's (MQTT payloads
    without a time): "received", or "received_backlog" when any came from a broker
    session's backlog, whose times only bound when they were measured, so the energy may
    belong to earlier hours."""
    if not _RECEIPT.keys() & set(map(itemgetter(2), rows)):  # the usual case: none
        return
    for t, _, quality in rows:
        kind = _RECEIPT.get(quality)
        if kind is not None:
            hour = floor_hour(t)
            if out.get(hour) != "received_backlog":
                out[hour] = kind


def floor_hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def ceil_hour(ms: int) -> int:
    return -((-ms) // HOUR_MS) * HOUR_MS


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@dataclass
class RecomputeResult:
    ranges: list[tuple[int, int]] = field(default_factory=list)  # hours (re)computed, merged
    rows: list[RollupRow] = field(default_factory=list)
    written: int = 0  # rows that changed
    findings: list[ReconciliationFinding] = field(default_factory=list)
    checked: list[Statement] = field(default_factory=list)  # the statements reconciled
    # (account, period start) of statements replaced by an import: their episodes end
    replaced: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    kind: str  # counter | power | none
    quantity: str | None
    series: int | None


class Accountant:
    """Accounting over one store and one configuration."""

    def __init__(self, store: AccountingStore, config: Config,
                 factors: FactorTable | None = None):
        self.store = store
        self.config = config
        self.tz: ZoneInfo = config.site.tz
        self.factors = factors if factors is not None else load_factors(
            config.accounting.emission_factors)
        acc = config.accounting
        self.policy = FactorPolicy(self.factors, self.tz, config.site.grid_region,
                                   acc.residual_region or config.site.grid_region,
                                   acc.max_factor_age)
        self.max_gap_ms = int(acc.max_interpolation_gap * 1000)
        self.devices = [d for d in config.devices if d.enabled
                        and not (d.role == "fuel" and d.fuel is None)]
        self.config_problems = [
            f"device {d.name} has role fuel but no `fuel:` parameters: not accounted"
            for d in config.devices if d.enabled and d.role == "fuel" and d.fuel is None]
        self.certificates, self.certificate_problems = self._certificates()
        self._series: dict[tuple[str, str], int] = {}
        self.open_tails: dict[str, int] = {}  # device -> undecided since (energy.open_tail)
        self.calendar = Calendar(self.tz, frozenset(acc.holidays), frozenset(acc.working_days))

    # --- configuration views ----------------------------------------------------------------

    def accounts(self) -> dict[str, tuple[str, ...]]:
        """account -> devices: `accounting.accounts`, and every grid_import device by name."""
        out = {d.name: (d.name,) for d in self.config.devices if d.role == "grid_import"}
        out.update({k: tuple(v) for k, v in self.config.accounting.accounts.items()})
        return out

    def _certificates(self) -> tuple[list[CertificateSpec], list[str]]:
        country = self.config.site.grid_region.split("-")[0]
        specs, problems = [], []
        for c in self.config.accounting.certificates:
            if c.market != country:
                problems.append(f"certificate {c.id} ({c.type}, market {c.market}) does not "
                                f"match the site's market {country}: not applied")
                continue
            start = (self._instant(c.valid_from) if c.valid_from
                     else day_start_ms(date(c.vintage, 1, 1), self.tz))
            end = (self._instant(c.valid_to) if c.valid_to
                   else day_start_ms(date(c.vintage + 1, 1, 1), self.tz))
            specs.append(CertificateSpec(c.id, c.type, c.mwh, c.vintage, c.market, start, end,
                                         tuple(c.devices) if c.devices else None))
        return specs, problems

    def _instant(self, when: datetime) -> int:
        if when.tzinfo is None:  # a date or a time without offset: site time
            when = when.replace(tzinfo=self.tz)
        return round(when.timestamp() * 1000)

    def source(self, device: Device) -> Source:
        """Where the device's energy is read from: a counter series, else active power
        (integrated), else nothing stored yet."""
        if device.role == "fuel" and device.fuel is not None:
            candidates = [device.fuel.quantity]
        elif device.role == "generation":
            candidates = ["active_energy_export_kwh", "active_energy_import_kwh"]
        else:
            candidates = ["active_energy_import_kwh"]
        for q in candidates:
            sid = self._series_id(device.name, q)
            if sid is not None:
                return Source("counter", q, sid)
        if device.role != "fuel":
            sid = self._series_id(device.name, "active_power_kw")
            if sid is not None:
                return Source("power", "active_power_kw", sid)
        return Source("none", None, None)

    def _series_id(self, device: str, quantity: str) -> int | None:
        sid = self._series.get((device, quantity))
        if sid is None:  # series appear when a device first reports; they never go
            sid = self.store.find_series(device, quantity)
            if sid is not None:
                self._series[(device, quantity)] = sid
        return sid

    def _info(self, device: Device) -> DeviceInfo:
        fuel = None
        if device.fuel is not None and device.role == "fuel":
            p = device.fuel
            fuel = FuelSpec(p.quantity, p.unit_factor, p.ncv_gj_per_unit,
                            p.carbon_content_tc_per_gj, p.oxidation, p.source)
        return DeviceInfo(device.name, device.role, fuel)

    def fingerprint(self) -> dict[str, Any]:
        certs = {c.id: [c.mwh, c.start_ms, c.end_ms, list(c.devices or [])]
                 for c in self.certificates}
        return {"factors": self.factors.fingerprint(),
                "certificates": {k: hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16]
                                 for k, v in certs.items()},
                "certificate_order": [c.id for c in self.certificates],
                "regions": [self.policy.region, self.policy.residual_region],
                "max_factor_age_months": self.policy.max_age_months}

    # --- reading ---------------------------------------------------------------------------

    def _samples(self, sid: int, first: int, last: int, receipt: dict[int, str] | None = None
                 ) -> tuple[list[int], list[float]]:
        """The series' samples in [first, last] and the one on either side beyond; `receipt`
        gets, per hour, the provenance of the receive-timed readings (`_receipt_hours`)."""
        lo = self.store.readings.series_time_before(sid, first)
        hi = self.store.readings.series_time_from(sid, last + 1)
        rows = self.store.readings.series_readings(sid, first if lo is None else lo,
                                                   last if hi is None else hi)
        if receipt is not None:
            _receipt_hours(rows, receipt)
        return list(map(itemgetter(0), rows)), list(map(itemgetter(1), rows))

    def _spec(self, device: Device, quantity: str) -> tuple[CounterSpec, bool]:
        """The counter's spec, and whether its rate limit must be learned."""
        if quantity.endswith("_kwh"):
            rated = device.rated_power_kw
        elif device.fuel is not None and quantity == device.fuel.quantity:
            rated = device.rated_flow
        else:
            rated = None
        return CounterSpec(self.max_gap_ms, rated, device.counter_rollover), rated is None

    def _trace(self, device: Device, src: Source, start: int, end: int,
               receipt: dict[int, str] | None = None) -> Trace:
        """The trace over [start, end); `receipt` as in `_samples`. What the validation
        decides about a sample depends on the samples around it, up to CONTEXT_MS away: the
        samples fetched reach that far beyond the range unless the quick look shows a counter
        that only rose within its limit (then nothing outside could change a thing), so every
        window gives its hours the same energy."""
        if src.series is None:
            return Trace([], [])
        sid = src.series
        if src.kind == "power":
            times, values = self._samples(sid, start, end - 1, receipt)
            if not times:
                return Trace([], [])
            return integrate_power(times, values, self.max_gap_ms,
                                   sign=-1.0 if device.role == "generation" else 1.0)
        spec, learn = self._spec(device, src.quantity or "")
        if learn:
            first_day = (start - CONTEXT_MS) - (start - CONTEXT_MS) % DAY_MS
            times, values = self._samples(sid, first_day - LEARN_DAYS * DAY_MS,
                                          end + CONTEXT_MS, receipt)
            if not times:
                return Trace([], [])
            learned = learn_rates(times, values, self.max_gap_ms,
                                  range(first_day, end + CONTEXT_MS + 1, DAY_MS))
            spec = replace(spec, learned=learned)
            i = max(0, bisect.bisect_left(times, start - CONTEXT_MS) - 1)
            return analyse_counter(times[i:], values[i:], spec)
        trace = Trace([], [])
        for margin in (QUICK_MS, CONTEXT_MS):
            times, values = self._samples(sid, start - margin, end + margin - 1, receipt)
            if not times:
                return Trace([], [])
            trace = analyse_counter(times, values, spec)
            # a value held at either edge may be a stale or dropout run whose end lies outside
            if not trace.validated and values[0] != values[min(1, len(values) - 1)] \
                    and values[-1] != values[-2 if len(values) > 1 else -1]:
                break
        return trace

    def _clean_hours(self, device: Device, src: Source, start: int, end: int,
                     ) -> dict[int, float]:
        """hour -> energy (counter units) of the hours in [start, end) metered whole, with
        nothing set aside and no event: what like-day estimates are made of."""
        if end <= start:
            return {}
        hes = hourly(self._trace(device, src, start, end), range(start, end, HOUR_MS))
        return {he.hour: he.metered for he in hes if _clean(he)}

    def validation_notes(self, start: int, end: int, device: str | None = None,
                         ) -> dict[tuple[str, str, int], str]:
        """(device, quantity, time ms) -> "kind: reason" for each counter reading in
        [start, end) that the accounting sets aside (`readings export --validation`)."""
        out: dict[tuple[str, str, int], str] = {}
        for d in self.devices:
            if device is not None and d.name != device:
                continue
            src = self.source(d)
            if src.kind != "counter" or src.quantity is None:
                continue
            for f in self._trace(d, src, start, end).findings:
                if start <= f.time_ms < end:
                    out[(d.name, src.quantity, f.time_ms)] = f"{f.kind}: {f.reason}"
        return out

    def statements(self, start: int | None = None, end: int | None = None) -> list[Statement]:
        accounts = self.accounts()
        out = []
        # a statement replaced by a corrected one is kept, but no longer used
        for s in self.store.statements.current(start, end):
            devs = accounts.get(s.account)
            if devs:
                out.append(Statement(s.id, s.account, s.start_ms, s.end_ms, s.kwh, devs,
                                     s.supplier, s.document))
        return out

    # --- recomputing -------------------------------------------------------------------------

    def recompute(self, ranges: Ranges | tuple[int, int], now_ms: int) -> RecomputeResult:
        """(Re)compute rollups for `ranges` (device -> [start, end) ms, or one range for every
        device); only complete hours (ending at or before `now_ms`) are computed."""
        if isinstance(ranges, tuple):
            ranges = {d.name: ranges for d in self.devices}
        limit = floor_hour(now_ms)
        known = {d.name: d for d in self.devices}
        want: Ranges = {}
        for name, (a, b) in ranges.items():
            if name in known:
                a, b = floor_hour(a), min(ceil_hour(b), limit)
                if b > a:
                    want[name] = (a, b)
        if not want:
            return RecomputeResult()
        statements = self.widen(want, limit)
        hour_energy: dict[str, list[HourEnergy]] = {}
        profiles = {}
        infos = {}
        traces: dict[str, Trace] = {}
        receipt: dict[str, dict[int, str]] = {}
        for name, (a, b) in list(want.items()):
            device = known[name]
            src = self.source(device)
            if src.kind == "none" and device.role not in ("grid_import", "fuel"):
                del want[name]  # nothing to say about a submeter that never reported
                continue
            receipt[name] = {}
            trace = self._trace(device, src, a, b, receipt[name])
            traces[name] = trace
            tail = open_tail(trace)
            if tail is not None:
                self.open_tails[name] = tail
            hes = hourly(trace, range(a, b, HOUR_MS))
            hour_energy[name] = hes
            if any(he.missing for he in hes):  # a profile is only needed to fill gaps
                clean = self._clean_hours(device, src, a - LIKE_LOOKBACK_DAYS * DAY_MS, a)
                clean.update((he.hour, he.metered) for he in hes if _clean(he))
                profiles[name] = Profile(clean, self.calendar)
            infos[name] = self._info(device)
        # a statement whose period has not ended cannot say what its missing hours drew
        filled = fill_missing(hour_energy, [st for st in statements if st.end_ms <= limit],
                              profiles)
        rows: list[RollupRow] = []
        for name, fs in filled.items():
            if traces[name].power_integrated:
                for f in fs:
                    f.power_integrated = True
            for row in build_rows(infos[name], fs, self.policy):
                if "validation" in row.detail or "events" in row.detail:
                    row.detail["rate_limit"] = traces[name].limit_basis
                kind = receipt.get(name, {}).get(row.hour)
                if kind is not None:
                    row.detail["times_from_receipt"] = kind
                rows.append(row)
        if not want:
            return RecomputeResult()
        result = RecomputeResult(ranges=merge(want.values()))
        with self.store.atomic():
            rows = self._market(rows)
            result.written = self.store.rollups.write_changed(map(_record, rows), want)
            result.findings, result.checked = self._reconcile(statements)
        result.rows = sorted((r for r in rows if r.device in want
                              and want[r.device][0] <= r.hour < want[r.device][1]),
                             key=lambda r: (r.hour, r.device))
        if result.written:
            log.info("rollups: %d device-hours changed in %s", result.written,
                     ", ".join(f"{iso(a)}..{iso(b)}" for a, b in result.ranges))
        return result

    def widen(self, want: Ranges, limit: int) -> list[Statement]:
        """Widen the ranges to whole statement periods, for every device of the account."""
        accounts = self.accounts()
        used: dict[int, Statement] = {}
        for _ in range(3):
            changed = False
            lo = min(a for a, _ in want.values())
            hi = max(b for _, b in want.values())
            for st in self.statements(lo, hi):
                if not any(d in want and want[d][0] < st.end_ms and st.start_ms < want[d][1]
                           for d in st.devices):
                    continue
                used[st.id] = st
                a, b = floor_hour(st.start_ms), min(ceil_hour(st.end_ms), limit)
                for d in accounts.get(st.account, ()):
                    if not any(x.name == d for x in self.devices) or b <= a:
                        continue
                    old = want.get(d)
                    new = (a, b) if old is None else (min(old[0], a), max(old[1], b))
                    if new != old:
                        want[d] = new
                        changed = True
            if not changed:
                break
        return list(used.values())

    def _market(self, rows: list[RollupRow]) -> list[RollupRow]:
        """Certificates: re-allocate from the first recomputed purchased hour onwards."""
        roles = {d.name: d.role for d in self.devices}
        purchased = [r for r in rows if roles.get(r.device) in PURCHASED_ROLES]
        if not self.certificates:
            self.store.allocations.reallocate(None, [])
            return [apply_market(r, []) if roles.get(r.device) in PURCHASED_ROLES else r
                    for r in rows]
        if not purchased:
            return rows
        start = min(r.hour for r in purchased)
        used = self.store.allocations.used_before(start)
        end = max(c.end_ms for c in self.certificates)
        fresh = {r.key(): r for r in purchased}
        names = sorted({n for n, role in roles.items() if role in PURCHASED_ROLES})
        walk: dict[tuple[str, int], RollupRow] = {}
        if end > start and names:
            for rec in self.store.rollups.rows(start, end, names):
                r = _row(rec)
                walk[r.key()] = r
        walk.update(fresh)
        allocation = allocate_certificates(self.certificates, used, list(walk.values()))
        self.store.allocations.reallocate(
            start, [(cid, d, h, mwh) for (d, h), allocs in allocation.items()
                    for cid, mwh in allocs])
        out = [apply_market(r, allocation.get(r.key(), [])) if r.key() in fresh else r
               for r in rows]
        # stored hours after the recomputed ones whose certificates moved
        for key, r in walk.items():
            if key not in fresh:
                out.append(apply_market(r, allocation.get(key, [])))
        return out

    def _reconcile(self, statements: Sequence[Statement]
                   ) -> tuple[list[ReconciliationFinding], list[Statement]]:
        """The findings of fully metered statement periods that disagree with the meter (and
        of statements below it), with the statements checked."""
        if not statements:
            return [], []
        return (find(statements, self._rows_for_statements(statements),
                     self.config.accounting.reconciliation_tolerance), list(statements))

    def reconcile(self, statement_ids: Iterable[int] | None = None) -> RecomputeResult:
        """The statements (those of `statement_ids`, or all) reconciled against the stored
        rows, recomputing nothing: after an acceptance, what its episode should say."""
        wanted = None if statement_ids is None else set(statement_ids)
        statements = [st for st in self.statements() if wanted is None or st.id in wanted]
        result = RecomputeResult()
        result.findings, result.checked = self._reconcile(statements)
        return result

    # --- the hourly job ----------------------------------------------------------------------

    def run(self, now_ms: int, *, recompute_hours: int = 0,
            not_before: int | None = None) -> RecomputeResult:
        """Everything due at `now_ms`: new complete hours, late readings, changed factors or
        certificates, and (at start-up) the last `recompute_hours` hours; nothing before
        `not_before` (ms), if given: hours a step of the wall clock jumped over."""
        end = floor_hour(now_ms)
        max_id = self.store.readings.last_reading_id()
        done = self.store.meta.get(META_DONE)
        position = self.store.meta.get(META_POSITION)
        wanted: dict[str, list[tuple[int, int]]] = {d.name: [] for d in self.devices}
        start = end - HOUR_MS if done is None or done > end else done
        if recompute_hours:
            start = min(start, end - recompute_hours * HOUR_MS)
        for name in wanted:
            wanted[name].append((start, end))
        if position is not None and max_id > position:
            for name, a in self._late(position, max_id, start).items():
                wanted[name].append((a, end))
        # hours last computed while a device's latest samples were undecided (a dropout or a
        # stale stretch not yet over) are computed again now that more samples are in
        for name, t in (self.store.meta.get(META_OPEN) or {}).items():
            if name in wanted:
                wanted[name].append((max(floor_hour(t), start - MAX_REPAIR_MS), end))
        self.open_tails = {}
        fp = self.fingerprint()
        old_fp = self.store.meta.get(META_FINGERPRINT)
        if old_fp is not None and old_fp != fp:
            for a, b in self._changed_windows(old_fp, fp, end):
                for name in wanted:
                    wanted[name].append((a, b))
        ranges: Ranges = {}
        since = self.known_since()
        for name, spans in wanted.items():
            # hours before a device's first reading or statement are not "estimated": they
            # are before energyd knew the device (a new gateway, a meter added later)
            if spans and name in since:
                a = max(min(a for a, _ in spans), floor_hour(since[name]),
                        not_before if not_before is not None else -(2**62))
                b = max(b for _, b in spans)
                if b > a:
                    ranges[name] = (a, b)
        result = self.recompute(ranges, now_ms)
        meta = self.store.meta
        meta.set(META_POSITION, max_id)
        meta.set(META_DONE, end)
        meta.set(META_FINGERPRINT, fp)
        meta.set(META_OPEN, self.open_tails)
        return result

    def known_since(self) -> dict[str, int]:
        """device -> the earliest of its first reading and its first statement (ms)."""
        out: dict[str, int] = {}
        for device in self.devices:
            src = self.source(device)
            if src.series is not None:
                t = self.store.readings.series_first_time(src.series)
                if t is not None:
                    out[device.name] = t
        for account, devices in self.accounts().items():
            t = self.store.statements.first_start(account)
            if t is not None:
                for d in devices:
                    out[d] = min(out.get(d, t), t)
        return out

    def _late(self, position: int, max_id: int, before: int) -> dict[str, int]:
        """device -> the hour from which readings stored after `position` call for a
        recompute: from the sample before the earliest of them, so a gap they close (or a
        statement period they fall in) is recomputed, if that lies before `before`."""
        first = self.store.readings.earliest_by_series(position, max_id)
        out: dict[str, int] = {}
        for device in self.devices:
            src = self.source(device)
            t = first.get(src.series) if src.series is not None else None
            if t is None:
                continue
            prev = self.store.readings.series_time_before(src.series, t)
            a = floor_hour(prev if prev is not None else t)
            if a < before:
                out[device.name] = a
        return out

    def _changed_windows(self, old: Mapping[str, Any], new: Mapping[str, Any],
                         end: int) -> list[tuple[int, int]]:
        first = self.store.rollups.first_hour()
        if first is None:
            return []
        windows = []
        of, nf = old.get("factors", {}), new.get("factors", {})
        for fid in set(of) | set(nf):
            if of.get(fid) != nf.get(fid):
                f = self.factors.by_id(fid)
                if f is None:  # removed: its hours are unknown now, recompute all
                    windows.append((first, end))
                else:
                    windows.append(validity_ms(f, self.tz, self.policy.max_age_months))
        if old.get("certificates") != new.get("certificates") \
                or old.get("certificate_order") != new.get("certificate_order"):
            windows.append((min([c.start_ms for c in self.certificates], default=first), end))
        if old.get("regions") != new.get("regions") \
                or old.get("max_factor_age_months") != new.get("max_factor_age_months"):
            windows.append((first, end))
        return [(max(a, first), min(b, end)) for a, b in merge(windows) if min(b, end) > a]

    # --- statements -------------------------------------------------------------------------

    def import_statements(self, stream: TextIO, filename: str,
                          now_ms: int) -> tuple[list[StatementRow], RecomputeResult]:
        """Store a statements file whole (or raise ImportRejected) and recompute the hours of
        its periods: estimated hours become invoice hours."""
        accounts = self.accounts()
        stored = [StoredPeriod(s.id, s.account, s.start_ms, s.end_ms, s.document, s.kwh)
                  for s in self.store.statements.current()]
        rows = parse_statements(stream, filename, self.tz, accounts.__contains__, stored,
                                lambda a: accounts.get(a, ()),
                                max_days=self.config.accounting.max_statement_days)
        spans = [(r.account, r.start_ms, r.end_ms) for r in rows]
        self.store.statements.add(
            [NewStatement(r.account, r.start_ms, r.end_ms, r.kwh, r.supplier, r.document,
                          r.replaces) for r in rows], now_ms)
        replaced = []
        for r in rows:
            if r.replaces is not None:
                old = next(s for s in stored if s.id == r.replaces)
                spans.append((old.account, old.start_ms, old.end_ms))
                # the old statement's open finding goes with it
                replaced.append((old.account, old.start_ms))
        ranges: Ranges = {}
        for account, start, end in spans:
            for d in accounts[account]:
                a, b = ranges.get(d, (start, end))
                ranges[d] = (min(a, start), max(b, end))
        result = self.recompute(ranges, now_ms)
        result.replaced = replaced
        return rows, result

    def acceptances(self, statement_ids: Iterable[int] | None = None
                    ) -> dict[int, dict[str, Any]]:
        """statement id -> its latest recorded acceptance (by, at, reason, the finding as it
        stood)."""
        wanted = None if statement_ids is None else set(statement_ids)
        out = {}
        for a in self.store.statements.acceptances():
            if wanted is None or a.statement in wanted:
                out[a.statement] = {"statement": a.statement, "at": iso(a.at_ms), "by": a.by,
                                    "reason": a.reason, "finding": json.loads(a.finding)}
        return out

    def accept_statement(self, statement_id: int, reason: str, by: str,
                         now_ms: int) -> dict[str, Any]:
        """Record that a statement below the metered energy of its period is accepted as it
        stands (its gap hours keep their estimate), so its month can be final (its
        reconciliation episode ends when the caller records `reconcile([statement_id])`).
        Raises ValueError when there is nothing to accept."""
        reason, by = reason.strip(), by.strip()
        if not reason:
            raise ValueError("an acceptance needs a reason (--reason)")
        if not by:
            raise ValueError("an acceptance needs a name (--by)")
        statements = [st for st in self.statements() if st.id == statement_id]
        if not statements:
            raise ValueError(f"no statement {statement_id} (see the report's `statements`)")
        findings = [f for f in find(statements, self._rows_for_statements(statements),
                                    self.config.accounting.reconciliation_tolerance)
                    if f.below_metered]
        if not findings:
            raise ValueError(f"statement {statement_id} is not below the metered energy of its "
                             "period: there is nothing to accept")
        self.store.statements.accept(
            Acceptance(statement_id, now_ms, by, reason, _dumps(findings[0].to_json())))
        return self.acceptances([statement_id])[statement_id]

    # --- reports -----------------------------------------------------------------------------

    def month_bounds(self, month: str) -> tuple[int, int]:
        try:
            first = datetime.strptime(month, "%Y-%m").date()
        except ValueError:
            raise ValueError(f"month {month!r} is not YYYY-MM") from None
        nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return (round(datetime.combine(first, time(0), self.tz).timestamp() * 1000),
                round(datetime.combine(nxt, time(0), self.tz).timestamp() * 1000))

    def rows(self, start: int, end: int, devices: Sequence[str] | None = None) -> list[RollupRow]:
        return [_row(r) for r in self.store.rollups.rows(start, end, devices)]

    def report(self, month: str, now_ms: int) -> dict[str, Any]:
        start, end = self.month_bounds(month)
        hours = list(range(ceil_hour(start), end, HOUR_MS))
        rows = self.rows(start, end)
        statements = self.statements(start, end)
        findings, _ = self._reconcile(statements)
        certs = []
        month_use = self.store.allocations.used_between(start, end)
        total_use = self.store.allocations.used_before(end)
        for c in self.certificates:
            used = total_use.get(c.id, 0.0)
            certs.append({"id": c.id, "type": c.type, "vintage": c.vintage, "market": c.market,
                          "mwh": c.mwh,
                          "allocated_in_month_mwh": round(month_use.get(c.id, 0.0), 6),
                          "allocated_to_date_mwh": round(used, 6),
                          "remaining_mwh": round(max(c.mwh - used, 0.0), 6)})
        accounted = [(d.name, d.role) for d in self.devices
                     if d.role in ("grid_import", "fuel")
                     or self.source(d).kind != "none"]
        report = build_report(
            site={"name": self.config.site.name, "grid_region": self.policy.region,
                  "residual_region": self.policy.residual_region},
            month=month, timezone=self.config.site.timezone, hours=hours, devices=accounted,
            rows=rows, findings=[f.to_json() for f in findings], certificates=certs,
            complete=now_ms >= end,
            acceptances=self.acceptances([st.id for st in statements]))
        report["flags"].extend(self.certificate_problems + self.config_problems)
        report["validation"] = _validation_counts(rows)
        report["scope2"] = scope2_section(self, month, rows)
        report["statements"] = [st.as_detail() for st in statements]
        report["replaced_statements"] = [
            {"id": s.id, "account": s.account, "period_start": iso(s.start_ms),
             "period_end": iso(s.end_ms), "kwh": s.kwh, "document": s.document,
             "replaced_by": s.replaced_by}
            for s in self.store.statements.replaced(start, end)]
        return report

    def _rows_for_statements(self, statements: Sequence[Statement]) -> list[RollupRow]:
        lo = floor_hour(min(st.start_ms for st in statements))
        hi = max(st.end_ms for st in statements)
        return self.rows(lo, hi, sorted({d for st in statements for d in st.devices}))

    def export_evidence(self, month: str, directory: str | Path, now_ms: int) -> dict[str, Any]:
        """The month's evidence for a verifier (`evidence.export_evidence`); refuses a
        directory that is not empty."""
        from energyd.accounting.evidence import export_evidence

        return export_evidence(self, month, directory, now_ms)


# --- helpers ---------------------------------------------------------------------------------


def _validation_counts(rows: Iterable[RollupRow]) -> dict[str, dict[str, Any]]:
    """Per device: the counter samples set aside in the rows, by kind, and the rate limit
    they were judged by."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        stretches = r.detail.get("validation")
        if not stretches:
            continue
        got = out.setdefault(r.device, {"samples_set_aside": 0, "by_kind": {},
                                        "rate_limit": r.detail.get("rate_limit")})
        for s in stretches:
            got["samples_set_aside"] += s["samples"]
            got["by_kind"][s["kind"]] = got["by_kind"].get(s["kind"], 0) + s["samples"]
    return dict(sorted(out.items()))


def _clean(he: HourEnergy) -> bool:
    return he.meter_ms == HOUR_MS and not he.missing and not he.events and not he.findings


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _row(rec: Sequence[Any]) -> RollupRow:
    """A stored rollup row (store.rollups.COLUMNS) as the accounting's."""
    d, h, mwh, src, cov, tl, tm, ef, efid, detail = rec
    return RollupRow(d, h, mwh, src, cov, tl, tm, ef, efid, json.loads(detail or "{}"))


def _record(r: RollupRow) -> tuple[Any, ...]:
    """A rollup row as the store keeps it (store.rollups.COLUMNS)."""
    return (r.device, r.hour, r.mwh, r.source, r.coverage, r.tco2_location, r.tco2_market,
            r.ef_location, r.ef_id, _dumps(r.detail))
