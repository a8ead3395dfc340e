"""Hourly rows: energy with its source, tCO2 by location and market, and the provenance.

Pure functions over plain data (the storage module reads the store and writes the rows):

    energy.hourly -> fill_missing (statements, profile estimates)
                  -> build_rows (factors, fuel) -> allocate_certificates, apply_market

Sources, strongest first, and what an hour is called when parts of it differ:
`meter` (all of the hour from links no longer than the max gap), `meter_interpolated`
(some of it spread over a polling gap with a continuous counter), `invoice` (some of it is a
statement's residual), `estimated` (some of it is a profile estimate: provisional). The hour
takes the weakest source present; `detail.kwh` keeps the split.

Purchased electricity is the `grid_import` devices only; submeters, compressors and on-site
generation are rolled up too but carry no Scope 2 tCO2 (their tCO2 fields are 0 and
`detail.scope` says why), so summing tCO2 over every row never double counts. Fuel devices
carry Scope 1 tCO2 = quantity x NCV x carbon content x oxidation x 44/12, and their `mwh` is
the fuel's energy content (GJ / 3.6).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from energyd.accounting.energy import HOUR_MS, HourEnergy
from energyd.accounting.factors import DEFAULT_MAX_AGE_MONTHS, Choice, FactorTable, local_day
from energyd.accounting.validation import Finding

SOURCES = ("meter", "meter_interpolated", "invoice", "estimated")
PURCHASED_ROLES = ("grid_import",)
CO2_PER_C = 44.0 / 12.0
ROUND = 9  # MWh and tCO2 to the milli-kWh: floating noise must not look like a change
EPSILON_MWH = 1e-9  # what is left of a certificate or an hour below this is rounding


@dataclass(frozen=True, slots=True)
class Statement:
    """A supplier's billing statement: `kwh` for `devices` over [start_ms, end_ms)."""

    id: int
    account: str
    start_ms: int
    end_ms: int
    kwh: float
    devices: tuple[str, ...]
    supplier: str | None = None
    document: str | None = None

    def as_detail(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account, "document": self.document,
                "supplier": self.supplier, "kwh": self.kwh,
                "period_start": iso(self.start_ms), "period_end": iso(self.end_ms)}


@dataclass(frozen=True, slots=True)
class FuelSpec:
    quantity: str
    unit_factor: float
    ncv_gj_per_unit: float
    carbon_content_tc_per_gj: float
    oxidation: float
    source: str

    @property
    def tco2_per_unit(self) -> float:
        return (self.unit_factor * self.ncv_gj_per_unit * self.carbon_content_tc_per_gj
                * self.oxidation * CO2_PER_C)

    @property
    def mwh_per_unit(self) -> float:
        return self.unit_factor * self.ncv_gj_per_unit / 3.6


def fuel_tco2(quantity: float, spec: FuelSpec) -> float:
    """tCO2 = quantity x unit factor x NCV x carbon content x oxidation x 44/12."""
    return quantity * spec.tco2_per_unit


@dataclass(slots=True)
class Filled:
    """One device-hour after the missing time got its energy (counter units, kWh or fuel)."""

    device: str
    he: HourEnergy
    invoice: float = 0.0
    estimated: float = 0.0
    statements: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    power_integrated: bool = False

    estimated_ms: int = 0
    basis: dict[str, Any] | None = None  # the like days an estimate came from

    @property
    def total(self) -> float:
        return self.he.measured + self.invoice + self.estimated

    @property
    def source(self) -> str:
        if self.he.missing_ms and self.estimated_ms:
            return "estimated"
        if self.he.missing_ms:
            return "invoice"
        if self.he.interp_ms:
            return "meter_interpolated"
        return "meter"


@dataclass(slots=True)
class RollupRow:
    device: str
    hour: int  # UTC start, epoch ms
    mwh: float
    source: str
    coverage: float
    tco2_location: float | None
    tco2_market: float | None
    ef_location: float | None
    ef_id: str | None
    detail: dict[str, Any]

    def key(self) -> tuple[str, int]:
        return (self.device, self.hour)

    def as_json(self) -> dict[str, Any]:
        return {"hour": iso(self.hour), "device": self.device, "mwh": self.mwh,
                "source": self.source, "coverage": self.coverage,
                "power_integrated": bool(self.detail.get("power_integrated", False)),
                "tco2_location": self.tco2_location, "tco2_market": self.tco2_market,
                "ef_location": self.ef_location, "ef_id": self.ef_id, "detail": self.detail}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def hour_of_day(hour_ms: int, tz: ZoneInfo) -> int:
    return datetime.fromtimestamp(hour_ms / 1000, tz).hour


def validation_detail(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """Samples set aside in an hour, as stretches of one kind: first and last time, how many,
    the first one's value and the reason (`readings export --validation` lists each)."""
    out: list[dict[str, Any]] = []
    for f in findings:
        if out and out[-1]["kind"] == f.kind and out[-1]["reason"] == f.reason:
            out[-1]["last"] = iso(f.time_ms)
            out[-1]["samples"] += 1
        else:
            out.append({"kind": f.kind, "first": iso(f.time_ms), "last": iso(f.time_ms),
                        "samples": 1, "value": f.value, "reason": f.reason})
    return out


# --- filling the missing time ---------------------------------------------------------------


LIKE_DAYS = 5  # like days averaged, the most recent first
LIKE_LOOKBACK_DAYS = 35  # how far back like days are looked for


@dataclass(frozen=True, slots=True)
class Calendar:
    """The plant's kinds of day, on local dates: Monday to Friday are working days, Saturday
    and Sunday are not, `holidays` are not, `working_days` are (make-up days)."""

    tz: ZoneInfo
    holidays: frozenset[date] = frozenset()
    working_days: frozenset[date] = frozenset()

    def kind(self, day: date) -> str:
        if day in self.holidays:
            return "non-working day"
        if day in self.working_days or day.weekday() < 5:
            return "working day"
        return "non-working day"


class Profile:
    """Typical energy of an hour from like days: the mean of the same local hour on the
    `LIKE_DAYS` most recent earlier days of the same kind (calendar) within
    `LIKE_LOOKBACK_DAYS` that have a clean metered value there (`clean`: hour start ms ->
    counter units). Only earlier days count, so an hour's estimate is the same whenever it
    is computed. With no like day, the same local hour of any earlier day in the lookback;
    with none of those, the mean of the metered hours in the 24 hours before; else zero.
    `basis(hour)` says which days were used."""

    def __init__(self, clean: Mapping[int, float], calendar: Calendar) -> None:
        self.calendar = calendar
        tz = calendar.tz
        self._clean = dict(clean)
        self._by_day_hour: dict[tuple[date, int], float] = {}
        for hour, value in clean.items():
            local = datetime.fromtimestamp(hour / 1000, tz)
            self._by_day_hour[(local.date(), local.hour)] = value
        self._memo: dict[int, tuple[float, dict[str, Any]]] = {}

    def _estimate(self, hour_ms: int) -> tuple[float, dict[str, Any]]:
        got = self._memo.get(hour_ms)
        if got is not None:
            return got
        local = datetime.fromtimestamp(hour_ms / 1000, self.calendar.tz)
        day, hod = local.date(), local.hour
        kind = self.calendar.kind(day)
        like: list[tuple[date, float]] = []
        other: list[tuple[date, float]] = []
        for back in range(1, LIKE_LOOKBACK_DAYS + 1):
            d = day - timedelta(days=back)
            value = self._by_day_hour.get((d, hod))
            if value is None:
                continue
            if self.calendar.kind(d) == kind and len(like) < LIKE_DAYS:
                like.append((d, value))
            elif len(other) < LIKE_DAYS:
                other.append((d, value))
        used, method = like, f"mean of the same local hour on {kind}s"
        if not used:
            used, method = other, (f"no earlier {kind} in {LIKE_LOOKBACK_DAYS} days: mean of "
                                   f"the same local hour on other days")
        recent = [self._clean[h] for h in range(hour_ms - 24 * HOUR_MS, hour_ms, HOUR_MS)
                  if h in self._clean]
        if not used and recent:
            got = sum(recent) / len(recent), {
                "method": f"no earlier day with a metered {hod:02d}:00: mean of the "
                          f"{len(recent)} metered hours in the 24 hours before",
                "kind": kind, "local_hour": hod, "days": []}
        elif not used:
            got = 0.0, {"method": f"none: no metered hour in the {LIKE_LOOKBACK_DAYS} days "
                                  f"before", "kind": kind, "local_hour": hod, "days": []}
        else:
            got = sum(v for _, v in used) / len(used), {
                "method": method, "kind": kind, "local_hour": hod,
                "days": [d.isoformat() for d, _ in sorted(used)]}
        self._memo[hour_ms] = got
        return got

    def __call__(self, hour_ms: int) -> float:
        return self._estimate(hour_ms)[0]

    def basis(self, hour_ms: int) -> dict[str, Any]:
        return self._estimate(hour_ms)[1]


def _no_profile() -> Profile:
    return Profile({}, Calendar(ZoneInfo("UTC")))


def fill_missing(
    hours: Mapping[str, Sequence[HourEnergy]],
    statements: Sequence[Statement],
    profiles: Mapping[str, Profile],
) -> dict[str, list[Filled]]:
    """Give missing time its energy: a statement's residual where one covers it, spread by
    the profile so that the period's hours sum to the statement; a profile estimate
    elsewhere. A fully metered period leaves the meter standing (see reconciliation)."""
    filled = {d: [Filled(d, he) for he in hes] for d, hes in hours.items()}
    claimed: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for st in sorted(statements, key=lambda s: s.start_ms):
        pieces: list[tuple[Filled, int, float]] = []  # (hour, missing ms in period, weight)
        measured = 0.0
        for device in st.devices:
            prof = profiles.get(device) or _no_profile()
            for f in filled.get(device, []):
                h0, h1 = f.he.hour, f.he.hour + HOUR_MS
                if h1 <= st.start_ms or h0 >= st.end_ms:
                    continue
                a, z = max(h0, st.start_ms), min(h1, st.end_ms)
                measured += f.he.measured * (z - a) / HOUR_MS
                miss = sum(max(0, min(z, m1) - max(a, m0)) for m0, m1 in f.he.missing)
                if miss:
                    pieces.append((f, miss, prof(h0) * miss / HOUR_MS))
        if not pieces:
            continue
        residual = st.kwh - measured
        if residual < 0:
            # The statement cannot be right and the gap cannot have drawn nothing: the gap
            # hours keep their estimate and the conflict is a reconciliation finding (see
            # reconciliation_findings) until the data or the statement is corrected or the
            # difference is accepted.
            note = (f"statement {st.id} ({st.kwh:g} kWh) is below the metered "
                    f"{measured:.3f} kWh of its period: the gap keeps an estimate")
            for f, _, _ in pieces:
                f.notes.append(note)
                f.statements.append({**st.as_detail(), "residual_kwh": residual,
                                     "share_kwh": 0.0, "conflict": "below_metered"})
            continue
        for f, _, _ in pieces:
            h0 = f.he.hour
            claimed.setdefault((f.device, h0), []).append(
                (max(h0, st.start_ms), min(h0 + HOUR_MS, st.end_ms)))
        weight = sum(w for _, _, w in pieces)
        span = sum(ms for _, ms, _ in pieces)
        for f, miss, w in pieces:
            share = residual * (w / weight if weight > 0 else miss / span)
            f.invoice += share
            prof = profiles.get(f.device) or _no_profile()
            f.statements.append({**st.as_detail(), "residual_kwh": residual,
                                 "share_kwh": share,
                                 "spread": "profile" if weight > 0 else "time",
                                 "profile": prof.basis(f.he.hour)})
    for device, fs in filled.items():
        prof = profiles.get(device) or _no_profile()
        for f in fs:
            if not f.he.missing:
                continue
            cover = claimed.get((device, f.he.hour), [])
            rest = 0
            for m0, m1 in f.he.missing:
                rest += (m1 - m0) - sum(max(0, min(m1, c1) - max(m0, c0)) for c0, c1 in cover)
            if rest > 0:
                f.estimated_ms = rest
                f.estimated = prof(f.he.hour) * rest / HOUR_MS
                f.basis = prof.basis(f.he.hour)
    return filled


# --- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    name: str
    role: str
    fuel: FuelSpec | None = None


@dataclass(frozen=True, slots=True)
class FactorPolicy:
    factors: FactorTable
    tz: ZoneInfo
    region: str  # location-based
    residual_region: str  # market-based, for what certificates do not cover
    max_age_months: int = DEFAULT_MAX_AGE_MONTHS  # how far a factor is carried forward

    def location(self, day: date) -> Choice | None:
        return self.factors.lookup(self.region, "location", day, self.max_age_months)

    def residual(self, day: date) -> tuple[Choice | None, bool]:
        """The residual factor; when none is published, the location factor (GHG Protocol
        Scope 2 guidance) and True to say so."""
        c = self.factors.lookup(self.residual_region, "residual", day, self.max_age_months)
        if c is not None:
            return c, False
        return self.location(day), True


def build_rows(device: DeviceInfo, filled: Sequence[Filled],
               policy: FactorPolicy) -> list[RollupRow]:
    rows = []
    for f in filled:
        he = f.he
        kwh = {"meter": he.metered, "meter_interpolated": he.interpolated,
               "invoice": f.invoice, "estimated": f.estimated}
        detail: dict[str, Any] = {
            "role": device.role,
            "kwh": {k: round(max(v, 0.0), 6) for k, v in kwh.items()},
            "seconds": {"meter": he.meter_ms // 1000, "meter_interpolated": he.interp_ms // 1000,
                        "missing": he.missing_ms // 1000},
        }
        if f.power_integrated:
            detail["power_integrated"] = True
        if he.events:
            detail["events"] = [{"time": iso(e.time_ms), "kind": e.kind, "before": e.before,
                                 "after": e.after} for e in he.events]
        if f.statements:
            detail["statements"] = f.statements
        if f.estimated_ms:
            detail["estimate"] = {"seconds": f.estimated_ms // 1000, "basis": f.basis}
        if he.findings:
            detail["validation"] = validation_detail(he.findings)
        if f.notes:
            detail["notes"] = f.notes
        total = max(f.total, 0.0)
        coverage = round(he.meter_ms / HOUR_MS, 6)
        source = f.source
        provisional = source == "estimated"
        day = local_day(he.hour, policy.tz)
        if device.fuel is not None:
            spec = device.fuel
            tco2 = round(fuel_tco2(total, spec), ROUND)
            mwh = round(total * spec.mwh_per_unit, ROUND)
            detail["scope"] = 1
            detail["fuel"] = {"quantity": spec.quantity, "amount": round(total, 9),
                              "unit_factor": spec.unit_factor,
                              "ncv_gj_per_unit": spec.ncv_gj_per_unit,
                              "carbon_content_tc_per_gj": spec.carbon_content_tc_per_gj,
                              "oxidation": spec.oxidation, "source": spec.source}
            ef = spec.tco2_per_unit / spec.mwh_per_unit
            row = RollupRow(device.name, he.hour, mwh, source, coverage, tco2, tco2,
                            round(ef, 9), f"fuel:{device.name}", detail)
        elif device.role in PURCHASED_ROLES:
            mwh = round(total / 1000.0, ROUND)
            detail["scope"] = 2
            loc = policy.location(day)
            res, fallback = policy.residual(day)
            if loc is None:
                detail["factor"] = None
                detail["no_factor"] = (
                    f"no location factor for {policy.region}: none published for the "
                    f"hour's date, or the latest is older than accounting.max_factor_age "
                    f"({policy.max_age_months} months)")
                detail.setdefault("notes", []).append(f"{day}: {detail['no_factor']}")
                provisional = True
                tco2_loc = ef = None
                ef_id = None
            else:
                detail["factor"] = loc.as_detail()
                provisional = provisional or loc.provisional
                ef, ef_id = loc.value, loc.factor.id
                tco2_loc = round(mwh * ef, ROUND)
            if res is None:
                detail["market"] = {"residual": None, "certificates": [],
                                    "no_factor": f"no residual or location factor for "
                                                 f"{policy.residual_region} within "
                                                 f"accounting.max_factor_age "
                                                 f"({policy.max_age_months} months)"}
                tco2_mkt = None
                provisional = True
            else:
                detail["market"] = {"residual": {**res.as_detail(),
                                                 "location_fallback": fallback},
                                    "certificates": []}
                provisional = provisional or res.provisional
                tco2_mkt = round(mwh * res.value, ROUND)
            row = RollupRow(device.name, he.hour, mwh, source, coverage, tco2_loc, tco2_mkt,
                            ef, ef_id, detail)
        else:
            mwh = round(total / 1000.0, ROUND)
            detail["scope"] = None
            detail["not_purchased"] = {"submeter": "inside the plant, already in the incomers",
                                       "generation": "on-site generation is not purchased",
                                       "compressor": "inside the plant, already in the incomers",
                                       }.get(device.role, "not purchased electricity")
            row = RollupRow(device.name, he.hour, mwh, source, coverage, 0.0, 0.0, None, None,
                            detail)
        row.detail["provisional"] = provisional
        rows.append(row)
    return rows


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateSpec:
    """A contractual instrument, MWh for MWh, usable on hours in [start_ms, end_ms)."""

    id: str
    type: str
    mwh: float
    vintage: int
    market: str
    start_ms: int
    end_ms: int
    devices: tuple[str, ...] | None = None

    def applies(self, device: str, hour: int) -> bool:
        return self.start_ms <= hour < self.end_ms and (
            self.devices is None or device in self.devices)


def allocate_certificates(
    certificates: Sequence[CertificateSpec],
    used_before: Mapping[str, float],
    rows: Sequence[RollupRow],
) -> dict[tuple[str, int], list[tuple[str, float]]]:
    """Allocate certificate MWh to purchased rows in time order (devices by name within an
    hour), certificates in the order given, each until used up. Returns (device, hour) ->
    [(certificate id, MWh)]."""
    remaining = {c.id: max(0.0, c.mwh - used_before.get(c.id, 0.0)) for c in certificates}
    out: dict[tuple[str, int], list[tuple[str, float]]] = {}
    for row in sorted(rows, key=lambda r: (r.hour, r.device)):
        need = row.mwh
        for c in certificates:
            if need <= EPSILON_MWH:
                break
            left = remaining[c.id]
            if left <= EPSILON_MWH or not c.applies(row.device, row.hour):
                continue
            take = min(need, left)
            remaining[c.id] = left - take
            need -= take
            out.setdefault(row.key(), []).append((c.id, round(take, ROUND)))
    return out


def apply_market(row: RollupRow, allocations: Sequence[tuple[str, float]]) -> RollupRow:
    """tCO2 market = (MWh not covered by certificates) x residual factor."""
    market = dict(row.detail.get("market") or {})
    market["certificates"] = [{"id": cid, "mwh": mwh} for cid, mwh in allocations]
    covered = sum(mwh for _, mwh in allocations)
    residual = market.get("residual")
    detail = {**row.detail, "market": market}
    tco2 = None if residual is None else round(max(row.mwh - covered, 0.0) * residual["value"],
                                               ROUND)
    return RollupRow(row.device, row.hour, row.mwh, row.source, row.coverage, row.tco2_location,
                     tco2, row.ef_location, row.ef_id, detail)


# --- reconciliation --------------------------------------------------------------------------


METERED_SOURCES = ("meter", "meter_interpolated")


def reconciliation_findings(
    statements: Iterable[Statement],
    rows: Iterable[RollupRow],
    tolerance: float = 0.02,
) -> list[dict[str, Any]]:
    """Statements that disagree with the meter, of two kinds (`kind`):

    - `meter_difference`: the period is fully metered (every hour of every device of the
      account has a row with source `meter` or `meter_interpolated`) and the meter differs
      from the statement by more than `tolerance` (a share of the statement, default 2%;
      negative: every fully metered statement). The meter stands.
    - `statement_below_metered`: the period has gaps, and the statement is below what the
      meter alone measured in it, so it cannot say what the gaps drew. The gap hours keep
      their estimate; whatever the tolerance, the month is not final until the data or the
      statement is corrected or the difference is accepted.

    `rows` are the rollup rows of the statements' devices over their periods (any superset
    will do); a row's `detail.kwh` gives its metered part (without it, a metered row counts
    whole and another not at all). Each finding is a plain dict: kind, statement id,
    account, devices, period_start/period_end (ISO, UTC), statement_kwh, metered_kwh,
    difference_kwh (metered - statement), difference_share, tolerance, document, supplier;
    `statement_below_metered` adds estimated_kwh and gap_hours. Hours cut by a period
    boundary count pro rata. Other statements with gaps filled them and agree by
    construction.
    """
    by_device: dict[str, dict[int, RollupRow]] = {}
    for r in rows:
        by_device.setdefault(r.device, {})[r.hour] = r
    findings = []
    for st in statements:
        metered = 0.0  # the rows' energy where complete, else their metered parts
        measured = 0.0
        estimated = 0.0
        complete = True
        gap_hours = 0
        first = st.start_ms - st.start_ms % HOUR_MS
        for device in st.devices:
            got = by_device.get(device, {})
            for h in range(first, st.end_ms, HOUR_MS):
                r = got.get(h)
                share = (min(h + HOUR_MS, st.end_ms) - max(h, st.start_ms)) / HOUR_MS
                if r is None or r.source not in METERED_SOURCES:
                    complete = False
                    gap_hours += 1
                if r is None:
                    continue
                kwh = r.detail.get("kwh")
                if kwh is not None:
                    measured += (kwh.get("meter", 0.0) + kwh.get("meter_interpolated", 0.0)) \
                        * share
                    estimated += kwh.get("estimated", 0.0) * share
                elif r.source in METERED_SOURCES:
                    measured += r.mwh * 1000.0 * share
                metered += r.mwh * 1000.0 * share
        base = {"statement": st.id, "account": st.account, "devices": list(st.devices),
                "period_start": iso(st.start_ms), "period_end": iso(st.end_ms),
                "statement_kwh": st.kwh, "tolerance": tolerance, "document": st.document,
                "supplier": st.supplier}
        if not complete:
            diff = measured - st.kwh
            if diff > 1e-6:
                share = diff / st.kwh if st.kwh > 0 else 1.0
                findings.append({"kind": "statement_below_metered", **base,
                                 "metered_kwh": round(measured, 3),
                                 "difference_kwh": round(diff, 3),
                                 "difference_share": round(share, 6),
                                 "estimated_kwh": round(estimated, 3),
                                 "gap_hours": gap_hours})
            continue
        diff = metered - st.kwh
        share = abs(diff) / st.kwh if st.kwh > 0 else (0.0 if metered == 0 else 1.0)
        if share > tolerance:
            findings.append({"kind": "meter_difference", **base,
                             "metered_kwh": round(metered, 3),
                             "difference_kwh": round(diff, 3),
                             "difference_share": round(share, 6)})
    return findings
