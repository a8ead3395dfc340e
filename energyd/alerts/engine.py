"""The alert engine: configured rules applied to the store's data and to live readings.

Three ways in, all synchronous and thread-safe (the daemon calls them from worker threads):

- `evaluate_hours(start_ms, end_ms)` after every rollup run, including the recomputation at
  start-up: hourly spike, off-shift load, reconciliation;
- `on_readings(batch)` with each committed batch: live spike (rolling window of power),
  threshold, and the counter/power bookkeeping of the stale rule;
- `check_stale(now_ms)` and `check_backlog(now_ms)` from periodic jobs.

Each returns the episode events (starts and ends) to dispatch; the episodes themselves are
already in the store when it returns.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from energyd.alerts import rules as R
from energyd.alerts.episodes import HOURLY, EpisodeTracker, Event, Observation
from energyd.config.schema import AlertRule, Config
from energyd.model import Quality, Reading, from_ms
from energyd.store.sqlite import READINGS, Store

log = logging.getLogger(__name__)

COUNTER = "active_energy_import_kwh"
Feed = Callable[[int, float], None]  # (time ms, value) into a rule's gathered state
# Hours filled from a statement or a profile are not measurements of that hour: a spike
# there would be an artefact of the spreading, so they neither alert nor feed baselines.
UNMEASURED = ("invoice", "estimated")


class AlertEngine:
    def __init__(self, config: Config, store: Store, *, now_ms: Callable[[], int],
                 reconciliation: Callable[[int, int], Iterable[Any]] | None = None,
                 monotonic: Callable[[], float] | None = None):
        """`monotonic` (seconds), when given, measures how long a device has been silent
        instead of the readings' times: a step of the wall clock then neither makes every
        device silent for years nor hides a silence behind a clock that went back."""
        self.config = config
        self.store = store
        self.now_ms = now_ms
        self.monotonic = monotonic
        self._heard: dict[str, int] = {}  # device -> monotonic ms it was last heard of
        self.tz = config.site.tz
        self.tracker = EpisodeTracker(store)
        self.reconciliation_source = reconciliation
        self._lock = threading.RLock()
        self._intervals = {d.name: d.interval for d in config.devices}
        self._devices: dict[str, list[str]] = {r.name: self._select(r)
                                                for r in config.alerts.rules}
        self._shifts = {r.name: R.ProductionHours.parse(r.production_hours)
                        for r in config.alerts.rules if r.type == "off_shift"}
        # live state, per (rule, device)
        self._windows: dict[tuple[str, str], R.RollingMean] = {}
        self._thresholds: dict[tuple[str, str], R.Threshold] = {}
        self._counters: dict[tuple[str, str], R.CounterWatch] = {}
        self._baselines: dict[tuple[str, str, int], float | None] = {}
        self._last_seen: dict[str, int] = {}
        self._started_ms = now_ms()
        self._started_mono_ms = self._mono_ms()
        self.live_rules = [r for r in config.alerts.rules
                            if (r.type == "spike" and r.window > 0) or r.type == "threshold"
                            or r.type == "stale"]
        self._index: dict[tuple[str, str], list[tuple[AlertRule, Feed | None]]] | None = None
        self._quantities: frozenset[str] = frozenset()  # the quantities a live rule reads
        self._load_last_seen()

    def _select(self, rule: AlertRule) -> list[str]:
        """The device names a rule watches: readings carry these names, so an MQTT template
        entry stands for the devices its topic level may name."""
        chosen = [d for d in self.config.devices if d.enabled and (
            d.name in rule.devices if rule.devices else
            d.role == rule.role if rule.role else True)]
        names: list[str] = []
        for d in chosen:
            template = d.mqtt is not None and d.mqtt.device_level is not None
            expanded = (d.mqtt.devices or []) if template and d.mqtt is not None else [d.name]
            if not expanded:
                log.warning("alert rule %s: %s is a topic template without `devices:`; its "
                            "devices cannot be watched by name", rule.name, d.name)
            for name in expanded:
                names.append(name)
                self._intervals.setdefault(name, d.interval)
        return names

    def rules(self, *types: str) -> list[AlertRule]:
        return [r for r in self.config.alerts.rules if r.type in types]

    def retire_removed_rules(self) -> list[Event]:
        return self.tracker.retire({r.name for r in self.config.alerts.rules}, self.now_ms())

    def _mono_ms(self) -> int:
        return round(self.monotonic() * 1000) if self.monotonic is not None else 0

    def _load_last_seen(self) -> None:
        wanted = {d for r in self.rules("stale") for d in self._devices[r.name]}
        for device, quantity in self.store.series():
            if device in wanted:
                latest = self.store.latest(device, quantity)
                # a time stamped under a suspect clock says nothing of how long ago it was
                if latest is not None and latest.quality != Quality.CLOCK_SUSPECT:
                    self._last_seen[device] = max(self._last_seen.get(device, 0), latest.time_ms)
        # on the monotonic clock, a device last heard of before the start was heard of as
        # long before it as the wall clock says (never a negative time: a clock that was
        # ahead then)
        for device, t in self._last_seen.items():
            self._heard[device] = self._started_mono_ms - max(0, self._started_ms - t)

    # --- hourly ----------------------------------------------------------------------

    def hourly_energy(self, devices: list[str], start_ms: int, end_ms: int
                      ) -> dict[str, dict[int, float]]:
        """kWh per device and hour from the rollups; compressor stations without an energy
        counter of their own come from air_hourly."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        if not devices:
            return out
        marks = ",".join("?" * len(devices))
        for device, hour, mwh, source in self.store.execute(
                f"SELECT device, hour, mwh, source FROM rollups WHERE device IN ({marks}) "
                "AND hour >= ? AND hour < ?", (*devices, start_ms, end_ms)):
            if source not in UNMEASURED:
                out[device][hour] = mwh * 1000.0
        missing = [d for d in devices if d not in out]
        if missing:
            marks = ",".join("?" * len(missing))
            for device, hour, kwh in self.store.execute(
                    f"SELECT device, hour, kwh FROM air_hourly WHERE device IN ({marks}) "
                    "AND hour >= ? AND hour < ?", (*missing, start_ms, end_ms)):
                out[device][hour] = kwh
        return out

    def _series(self, rule: AlertRule, start_ms: int, end_ms: int) -> dict[str, dict[int, float]]:
        per_device = self.hourly_energy(self._devices[rule.name], start_ms, end_ms)
        if not rule.aggregate:
            return per_device
        total: dict[int, float] = defaultdict(float)
        counts: dict[int, int] = defaultdict(int)
        for values in per_device.values():
            for hour, kwh in values.items():
                total[hour] += kwh
                counts[hour] += 1
        # a site total is only a total when every device has the hour
        n = len(per_device)
        return {aggregate_name(rule, self.config):
                {h: v for h, v in total.items() if counts[h] == n}}

    def evaluate_hours(self, start_ms: int, end_ms: int) -> list[Event]:
        """Apply the hourly rules to the hours in [start_ms, end_ms), oldest first."""
        with self._lock:
            observations: list[Observation] = []
            for rule in self.rules("spike"):
                history_start = start_ms - (rule.baseline_weeks + 1) * 7 * 24 * R.HOUR_MS
                for device, values in self._series(rule, history_start, end_ms).items():
                    for hour in R.hours(start_ms, end_ms):
                        if hour not in values:
                            continue
                        base, weeks = R.baseline(hour, values, rule.baseline_weeks, self.tz)
                        v = R.spike(values[hour], base, factor=rule.factor,
                                    min_delta=rule.min_delta_kwh, hysteresis=rule.hysteresis)
                        if v.level is not R.Level.HOLD:
                            v.figures["baseline_weeks"] = weeks
                        observations.append(Observation(rule.name, rule.type, device, hour, v,
                                                        HOURLY))
            for rule in self.rules("off_shift"):
                shifts = self._shifts[rule.name]
                for device, values in self._series(rule, start_ms, end_ms).items():
                    for hour in R.hours(start_ms, end_ms):
                        v = R.off_shift(values.get(hour), margin=rule.margin_kwh,
                                        off_shift_hour=shifts.hour_is_off_shift(hour, self.tz),
                                        hysteresis=rule.hysteresis)
                        observations.append(Observation(rule.name, rule.type, device, hour, v,
                                                        HOURLY))
            observations.sort(key=lambda o: o.at_ms)
            events = self.tracker.observe(observations)
            events += self.check_reconciliation(start_ms, end_ms)
            return events

    # --- reconciliation ----------------------------------------------------------------

    def check_reconciliation(self, start_ms: int, end_ms: int,
                             findings: Iterable[Any] | None = None) -> list[Event]:
        """Meter vs statement, per account: the latest billing period decides.

        `findings` are accounting's reconciliation findings (objects or mappings with an
        account, a period and both totals); by default they come from the source given at
        construction.
        """
        rules = self.rules("reconciliation")
        if not rules:
            return []
        if findings is None:
            if self.reconciliation_source is None:
                return []
            try:
                findings = list(self.reconciliation_source(start_ms, end_ms))
            except Exception:
                log.exception("reconciliation findings could not be computed")
                return []
        latest: dict[str, dict[str, Any]] = {}
        for f in findings:
            item = finding_fields(f)
            prev = latest.get(item["account"])
            if prev is None or item["period_start"] >= prev["period_start"]:
                latest[item["account"]] = item
        now = self.now_ms()
        tol_default = self.config.accounting.reconciliation_tolerance
        observations = []
        for rule in rules:
            wanted = set(self._devices[rule.name]) if (rule.devices or rule.role) else None
            tol = rule.tolerance if rule.tolerance is not None else tol_default
            for account, item in sorted(latest.items()):
                if wanted is not None and not (set(item["devices"]) & wanted
                                               or account in wanted):
                    continue
                # a statement below what the meter alone measured is wrong by any margin,
                # until a person accepts it as it stands
                v = R.reconciliation(item["meter_kwh"], item["statement_kwh"],
                                     tolerance=0.0 if item["below_metered"] else tol,
                                     hysteresis=rule.hysteresis)
                if item["accepted"]:
                    v = R.Verdict(R.Level.OFF, {**v.figures, "accepted": True})
                v.figures.update(period_start=from_ms(item["period_start"]).isoformat(),
                                 period_end=from_ms(item["period_end"]).isoformat())
                observations.append(Observation(rule.name, rule.type, account, now, v,
                                                "periodic"))
        with self._lock:
            return self.tracker.observe(observations)

    # --- live --------------------------------------------------------------------------

    def on_readings(self, batch: Iterable[Reading]) -> list[Event]:
        with self._lock:
            observations: list[Observation] = []
            last_seen = self._last_seen
            index = self._live_index
            active = self.tracker.is_active
            read = self._quantities  # made with the index
            hold, on = R.Level.HOLD, R.Level.ON
            heard, mono = self._heard, self._mono_ms()
            when, t, device = None, 0, None
            for r in batch:
                if r.time is not when:  # one poll's readings share their time
                    when, t, device = r.time, r.time_ms, None
                if r.device != device:
                    device = r.device
                    heard[device] = mono
                    if t > last_seen.get(device, -1):
                        last_seen[device] = t
                if r.quantity not in read:  # most of a meter's quantities: no rule reads them
                    continue
                rules = index.get((device, r.quantity))
                if rules is None:
                    continue
                for rule, feed in rules:
                    if feed is not None:
                        feed(t, r.value)
                        continue
                    is_active = active(rule.name, device)
                    v = self._live(rule, r, t, is_active)
                    # the common case, nothing to start or end, stays out of the tracker
                    if v is None or v.level is hold:
                        continue
                    if (v.level is on) != is_active:
                        observations.append(Observation(rule.name, rule.type, device, t, v,
                                                        "live"))
            return self.tracker.observe(observations) if observations else []

    @property
    def _live_index(self) -> dict[tuple[str, str], list[tuple[AlertRule, Feed | None]]]:
        """(device, quantity) -> the live rules that read it, each with the method its
        reading feeds when the rule only gathers (a stale rule's counter watch)."""
        if self._index is None:
            index: dict[tuple[str, str], list[tuple[AlertRule, Feed | None]]] = \
                defaultdict(list)
            for rule in self.live_rules:
                for device in self._devices[rule.name]:
                    if rule.type != "stale":
                        index[(device, rule.quantity)].append((rule, None))
                        continue
                    watch = self._counters.get((rule.name, device))
                    if watch is None:
                        watch = self._counters[(rule.name, device)] = R.CounterWatch(
                            interval_s=self._intervals.get(device, 10.0),
                            multiple=rule.multiple, stuck_kwh=rule.stuck_kwh)
                    index[(device, COUNTER)].append((rule, watch.counter))
                    index[(device, "active_power_kw")].append((rule, watch.power))
            self._index = dict(index)
            self._quantities = frozenset(q for _, q in self._index)
        return self._index

    def _live(self, rule: AlertRule, r: Reading, t: int, active: bool) -> R.Verdict | None:
        """The rule's verdict on one reading; None (or HOLD) when it changes nothing: the
        figures of a verdict are only made for one that starts or ends an episode."""
        key = (rule.name, r.device)
        if r.quantity != rule.quantity:
            return None
        if rule.type == "threshold":
            th = self._thresholds.get(key)
            if th is None:
                assert rule.limit is not None
                th = self._thresholds[key] = R.Threshold(rule.limit, rule.duration,
                                                          rule.hysteresis)
            v = th.add(t, r.value, active=active)
        else:  # live spike
            win = self._windows.get(key)
            if win is None:
                win = self._windows[key] = R.RollingMean(rule.window)
            win.add(t, r.value)
            mean = win.mean()
            if mean is None:
                return None
            base = self._live_baseline(rule, r.device, t)
            level = R.spike_level(mean, base, factor=rule.factor, min_delta=rule.min_delta_kwh,
                                  hysteresis=rule.hysteresis)
            if level is R.Level.HOLD or (level is R.Level.ON) == active:
                return None
            v = R.spike(mean, base, factor=rule.factor, min_delta=rule.min_delta_kwh,
                        hysteresis=rule.hysteresis, unit="kw")
            if v.level is not R.Level.HOLD:
                v.figures["window_s"] = rule.window
        return v

    def _live_baseline(self, rule: AlertRule, device: str, t_ms: int) -> float | None:
        """Average kW of this hour of the week: its median hourly kWh (kWh per hour = kW)."""
        hour = t_ms - t_ms % R.HOUR_MS
        key = (rule.name, device, hour)
        if key not in self._baselines:
            if len(self._baselines) > 10000:
                self._baselines.clear()
            earlier = R.same_hour_of_week(hour, rule.baseline_weeks, self.tz)
            values = self.hourly_energy([device], min(earlier), max(earlier) + 1).get(device, {})
            self._baselines[key] = R.baseline(hour, values, rule.baseline_weeks, self.tz)[0]
        return self._baselines[key]

    # --- periodic ----------------------------------------------------------------------

    def check_stale(self, now_ms: int | None = None) -> list[Event]:
        now = now_ms if now_ms is not None else self.now_ms()
        by_mono = self.monotonic is not None and now_ms is None
        mono = self._mono_ms()
        with self._lock:
            observations = []
            for rule in self.rules("stale"):
                for device in self._devices[rule.name]:
                    # never heard of since start: silent since the daemon started
                    if by_mono:
                        at, last = mono, self._heard.get(device, self._started_mono_ms)
                    else:
                        at, last = now, self._last_seen.get(device, self._started_ms)
                    quiet = R.silent(at, last, interval_s=self._intervals.get(device, 10.0),
                                     multiple=rule.multiple, hysteresis=rule.hysteresis)
                    watch = self._counters.get((rule.name, device))
                    stuck = watch.verdict(now) if watch is not None else R.HOLD
                    observations.append(Observation(rule.name, rule.type, device, now,
                                                    R.stale(quiet, stuck), "periodic"))
            return self.tracker.observe(observations)

    def check_backlog(self, now_ms: int | None = None) -> list[Event]:
        """Only the readings stream is judged: its items carry the time they were read,
        while a recomputed rollup carries the hour it is about, which may be days old."""
        now = now_ms if now_ms is not None else self.now_ms()
        with self._lock:
            observations = []
            for rule in self.rules("backlog"):
                for sink in self.config.influxdb:
                    b = self.store.backlog(sink.name, READINGS)
                    v = R.backlog(now, b.count, b.oldest_ms, max_age_s=rule.max_age,
                                  hysteresis=rule.hysteresis)
                    observations.append(Observation(rule.name, rule.type, sink.name, now, v,
                                                    "periodic"))
            return self.tracker.observe(observations)

    @property
    def stale_period(self) -> float:
        """How often (clock seconds) the stale check runs: a fraction of the shortest limit."""
        limits = [self._intervals.get(d, 10.0) * r.multiple
                  for r in self.rules("stale") for d in self._devices[r.name]]
        return max(0.2, min(60.0, min(limits) / 4)) if limits else 60.0


def aggregate_name(rule: AlertRule, config: Config) -> str:
    """The series an aggregated rule alerts on: its role (all compressors: "compressor"),
    else the site."""
    return rule.role or config.site.name


def statement_findings(config: Config, store: Store) -> Callable[[int, int], list[Any]]:
    """A reconciliation source over the store: every statement whose period overlaps the
    hours just rolled up, compared with the metered rollups by accounting's
    `reconciliation_findings` (asked with no tolerance, so agreeing statements come back
    too and can end an episode; statements not fully metered do not come back at all)."""
    from energyd.accounting.rollup import RollupRow, Statement, reconciliation_findings

    names = {d.name for d in config.devices}

    def devices_of(account: str) -> tuple[str, ...]:
        if account in config.accounting.accounts:
            return tuple(config.accounting.accounts[account])
        return (account,) if account in names else ()

    def source(start_ms: int, end_ms: int) -> list[Any]:
        statements = []
        for sid, account, p0, p1, kwh, supplier, document in store.execute(
                "SELECT id, account, period_start, period_end, energy_kwh, supplier, document "
                "FROM invoices WHERE period_start < ? AND period_end > ? "
                "AND replaced_by IS NULL", (end_ms, start_ms)):
            devs = devices_of(account)
            if devs:
                statements.append(Statement(sid, account, p0, p1, kwh, devs, supplier,
                                            document))
        if not statements:
            return []
        lo = min(st.start_ms for st in statements) - R.HOUR_MS
        hi = max(st.end_ms for st in statements)
        devs = sorted({d for st in statements for d in st.devices})
        marks = ",".join("?" * len(devs))
        # the kWh split (`detail.kwh`) gives the metered part of hours with gaps
        rows = [RollupRow(d, h, mwh, src, cov, None, None, None, None,
                          {"kwh": json.loads(kwh)} if kwh else {})
                for d, h, mwh, src, cov, kwh in store.execute(
                    f"SELECT device, hour, mwh, source, coverage, json_extract(detail, '$.kwh') "
                    f"FROM rollups WHERE device IN ({marks}) AND hour >= ? AND hour < ?",
                    (*devs, lo, hi))]
        accepted = {sid for (sid,) in store.execute(
            "SELECT DISTINCT statement FROM statement_acceptances")}
        # an accepted statement below the meter stands as it is: its episode ends
        return [{**f, "accepted": True} if f.get("kind") == "statement_below_metered"
                and f["statement"] in accepted else f
                for f in reconciliation_findings(statements, rows, tolerance=-1.0)]

    return source


def finding_fields(f: Any) -> dict[str, Any]:
    """A reconciliation finding, object or mapping, as the plain fields used here."""

    def get(*names: str, default: Any = None) -> Any:
        for n in names:
            if isinstance(f, Mapping) and n in f:
                return f[n]
            if hasattr(f, n):
                return getattr(f, n)
        return default

    account = str(get("account", "device"))
    devices = get("devices", default=None) or [account]
    return {
        "account": account,
        "devices": list(devices),
        "period_start": _ms(get("period_start", "start_ms", "start")),
        "period_end": _ms(get("period_end", "end_ms", "end")),
        "meter_kwh": float(get("metered_kwh", "meter_kwh")),
        "statement_kwh": float(get("statement_kwh", "invoice_kwh")),
        "below_metered": get("kind") == "statement_below_metered",
        "accepted": bool(get("accepted")),
    }


def _ms(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    raise ValueError(f"not a time: {value!r}")
