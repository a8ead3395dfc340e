"""The alert engine: configured rules applied to the store's data and to live readings.

Each rule is a plugin (energyd/alerts/rules/) with only the hooks it needs; the engine
gives them their inputs and hands their observations to the one episode tracker. Three
ways in, all synchronous and thread-safe (the daemon calls them from worker threads):

- `evaluate_hours(start_ms, end_ms)` after every rollup run, including the recomputation at
  start-up: the rules that judge hours (spike, off-shift load, reconciliation);
- `on_readings(batch)` with each committed batch: the rules that read live readings (live
  spike, threshold, and the counter/power bookkeeping of the stale rule);
- `periodic_jobs()`: what the daemon runs on its scheduler (stale devices, sink backlogs).

Each returns the episode events (starts and ends) to dispatch; the episodes themselves are
already in the store when it returns.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from energyd.alerts.episodes import EpisodeTracker, Event
from energyd.alerts.rules import conditions as R
from energyd.alerts.rules.base import (
    LIVE,
    Feed,
    HourlyRule,
    LiveRule,
    Observation,
    PeriodicRule,
    Rule,
    StatementCheck,
)
from energyd.alerts.rules.reconciliation import Reconciliation
from energyd.alerts.rules.registry import build
from energyd.config.schema import AlertRule, Config
from energyd.model import Quality, Reading
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)

# Hours filled from a statement or a profile are not measurements of that hour: a spike
# there would be an artefact of the spreading, so they neither alert nor feed baselines.
UNMEASURED = ("invoice", "estimated")

Live = tuple[Any, Feed | None]  # a LiveRule, and the feed its reading goes to, if any


class AlertEngine:
    def __init__(self, config: Config, store: Store, *, now_ms: Callable[[], int],
                 reconciliation: Callable[[int, int], Iterable[StatementCheck]] | None = None,
                 sink_backlogs: Callable[[], list[tuple[str, int, int | None]]] | None = None,
                 monotonic: Callable[[], float] | None = None,
                 tracker: EpisodeTracker | None = None):
        """`reconciliation` gives the statement checks of the hours just rolled up;
        `sink_backlogs` each sink's name, unsent readings and the oldest one's time (by
        default, the store's cursors of the configured InfluxDB sinks).

        `monotonic` (seconds), when given, measures how long a device has been silent
        instead of the readings' times: a step of the wall clock then neither makes every
        device silent for years nor hides a silence behind a clock that went back.

        `tracker`: the daemon's one episode tracker, which the statements' reconciliation
        and the sinks' rejected points feed too (by default one of the engine's own)."""
        self.config = config
        self.store = store
        self.now_ms = now_ms
        self.monotonic = monotonic
        self._heard: dict[str, int] = {}  # device -> monotonic ms it was last heard of
        self.tz = config.site.tz
        self.site = config.site.name
        self.reconciliation_tolerance = config.accounting.reconciliation_tolerance
        self.tracker = tracker if tracker is not None else EpisodeTracker(store)
        self.reconciliation_source = reconciliation
        self._sink_backlogs = sink_backlogs
        self._lock = threading.RLock()
        self._intervals = {d.name: d.interval for d in config.devices}
        self._rules: list[Rule] = [build(r) for r in config.alerts.rules]
        self._devices: dict[str, list[str]] = {r.name: self._select(r.options)
                                                for r in self._rules}
        self._last_seen: dict[str, int] = {}
        self._started_ms = now_ms()
        self._started_mono_ms = self._mono_ms()
        self.live_rules = [r for r in self._rules
                           if isinstance(r, LiveRule) and list(r.live_inputs(self))]
        self._index: dict[tuple[str, str], list[Live]] | None = None
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
        """The configured rules of these types."""
        return [r.options for r in self._rules if r.type in types]

    def retire_removed_rules(self) -> list[Event]:
        return self.tracker.retire({r.name for r in self._rules}, self.now_ms())

    def _mono_ms(self) -> int:
        return round(self.monotonic() * 1000) if self.monotonic is not None else 0

    def _load_last_seen(self) -> None:
        wanted = {d for r in self._rules if r.reads_silence for d in self._devices[r.name]}
        for device, quantity in self.store.series():
            if device in wanted:
                latest = self.store.readings.latest(device, quantity)
                # a time stamped under a suspect clock says nothing of how long ago it was
                if latest is not None and latest.quality != Quality.CLOCK_SUSPECT:
                    self._last_seen[device] = max(self._last_seen.get(device, 0), latest.time_ms)
        # on the monotonic clock, a device last heard of before the start was heard of as
        # long before it as the wall clock says (never a negative time: a clock that was
        # ahead then)
        for device, t in self._last_seen.items():
            self._heard[device] = self._started_mono_ms - max(0, self._started_ms - t)

    # --- what the rules are given (RuleContext) ------------------------------------------

    def devices(self, rule: str) -> list[str]:
        return self._devices[rule]

    def interval(self, device: str) -> float:
        return self._intervals.get(device, 10.0)

    def hourly_energy(self, devices: list[str], start_ms: int, end_ms: int
                      ) -> dict[str, dict[int, float]]:
        """kWh per device and measured hour from the rollups; compressor stations without an
        energy counter of their own come from air_hourly."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        if not devices:
            return out
        for device, hour, mwh, source in self.store.rollups.energy(start_ms, end_ms, devices):
            if source not in UNMEASURED:
                out[device][hour] = mwh * 1000.0
        # a device with no rollup at all there is a station without a counter of its own
        for device, hour, kwh in self.store.air.kwh([d for d in devices if d not in out],
                                                    start_ms, end_ms):
            out[device][hour] = kwh
        return out

    def silence(self, device: str, now_ms: int | None) -> tuple[int, int]:
        """(now, last heard of): on the monotonic clock when there is one and no time is
        given; a device never heard of since the start has been silent since the start."""
        if self.monotonic is not None and now_ms is None:
            return self._mono_ms(), self._heard.get(device, self._started_mono_ms)
        now = now_ms if now_ms is not None else self.now_ms()
        return now, self._last_seen.get(device, self._started_ms)

    def backlogs(self) -> list[tuple[str, int, int | None]]:
        return self._sink_backlogs() if self._sink_backlogs is not None else []

    def statement_checks(self, start_ms: int, end_ms: int) -> list[StatementCheck]:
        if self.reconciliation_source is None:
            return []
        try:
            return list(self.reconciliation_source(start_ms, end_ms))
        except Exception:
            log.exception("reconciliation findings could not be computed")
            return []

    # --- hourly ----------------------------------------------------------------------

    def evaluate_hours(self, start_ms: int, end_ms: int) -> list[Event]:
        """Apply the hourly rules to the hours in [start_ms, end_ms), oldest first."""
        with self._lock:
            observations = [o for r in self._rules if isinstance(r, HourlyRule)
                            for o in r.on_hour(self, start_ms, end_ms)]
            observations.sort(key=lambda o: o.at_ms)
            return self.tracker.observe(observations)

    def check_reconciliation(self, start_ms: int, end_ms: int,
                             findings: Iterable[StatementCheck] | None = None) -> list[Event]:
        """Meter vs statement, per account: the latest billing period decides. `findings`
        default to those of the source given at construction."""
        rules = [r for r in self._rules if isinstance(r, Reconciliation)]
        if not rules:
            return []
        checks = list(findings) if findings is not None else \
            self.statement_checks(start_ms, end_ms)
        with self._lock:
            return self.tracker.observe([o for r in rules for o in r.judge(self, checks)])

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
                    v = rule.on_reading(self, device, t, r.value, is_active)
                    # the common case, nothing to start or end, stays out of the tracker
                    if v is None or v.level is hold:
                        continue
                    if (v.level is on) != is_active:
                        observations.append(Observation(rule.name, rule.type, device, t, v,
                                                        LIVE))
            return self.tracker.observe(observations) if observations else []

    @property
    def _live_index(self) -> dict[tuple[str, str], list[Live]]:
        """(device, quantity) -> the live rules that read it, each with the method its
        reading feeds when the rule only gathers (a stale rule's counter watch)."""
        if self._index is None:
            index: dict[tuple[str, str], list[Live]] = defaultdict(list)
            for rule in self.live_rules:
                assert isinstance(rule, LiveRule)
                for device, quantity, feed in rule.live_inputs(self):
                    index[(device, quantity)].append((rule, feed))
            self._index = dict(index)
            self._quantities = frozenset(q for _, q in self._index)
        return self._index

    # --- periodic ----------------------------------------------------------------------

    def _periodic_rules(self, rule_type: str | None = None) -> list[Any]:
        return [r for r in self._rules if isinstance(r, PeriodicRule)
                and (rule_type is None or r.type == rule_type)]

    def check_periodic(self, rule_type: str, now_ms: int | None = None) -> list[Event]:
        """Run the periodic rules of one type (`now_ms`: the wall-clock instant judged)."""
        with self._lock:
            return self.tracker.observe([o for r in self._periodic_rules(rule_type)
                                         for o in r.periodic(self, now_ms)])

    def periodic_jobs(self) -> list[tuple[str, float, Callable[[], list[Event]]]]:
        """(job name, period in clock seconds, check) per rule type that runs periodically:
        each type runs as often as its most demanding rule asks."""
        periods: dict[str, float] = {}
        for r in self._periodic_rules():
            p = r.period_s(self)
            kind = r.type
            if p is not None:
                periods[kind] = min(p, periods.get(kind, p))
        return [(f"alerts.{kind}", p, lambda kind=kind: self.check_periodic(kind))
                for kind, p in periods.items()]

    def check_stale(self, now_ms: int | None = None) -> list[Event]:
        return self.check_periodic("stale", now_ms)

    def check_backlog(self, now_ms: int | None = None) -> list[Event]:
        return self.check_periodic("backlog", now_ms)

    @property
    def stale_period(self) -> float:
        """How often (clock seconds) the stale check runs."""
        return dict((n, p) for n, p, _ in self.periodic_jobs()).get("alerts.stale", 60.0)
