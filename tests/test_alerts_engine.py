"""The alert engine over a real store: hourly spikes against a weekly pattern, episodes that
survive a restart, off-shift load from the compressor model, stale devices, reconciliation
and sink backlog.

Hourly energy is written into the store's rollups table as the accounting job writes it;
the weekly pattern is the meter simulator's load shape with noise, the night leak comes from
the compressor station's air model with a leak injected.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import stored

from energyd.alerts.engine import AlertEngine
from energyd.alerts.episodes import EpisodeTracker, load_episodes
from energyd.alerts.statements import statement_findings
from energyd.config.loader import parse_config
from energyd.daemon.alerting import sink_backlogs
from energyd.model import Reading, to_ms
from energyd.simulators.air import AirSystem
from energyd.simulators.loadshape import load_factor
from energyd.store.sqlite import Store
from energyd.store.statements import Acceptance, NewStatement

H = 3_600_000
TZ = "Asia/Shanghai"
BASE_KW = 120.0


def make_config(tmp_path: Path, rules: str, devices: str | None = None, extra: str = "",
                tz: str = TZ):
    devices = devices or """
  - {name: incomer-1, role: grid_import, driver: modbus, interval: 10s, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1, port: 1502}}
"""
    text = f"""
site: {{name: plant-a, timezone: {tz}}}
storage: {{path: {tmp_path / 'energyd.db'}}}
devices:{devices}
alerts:
  rules:
{rules}
  channels: [{{type: log}}]
{extra}
"""
    return parse_config(text, "test.yaml")


def put_hours(store: Store, device: str, kwh: dict[int, float], source: str = "meter",
              coverage: float = 1.0, detail: str = "{}") -> None:
    if kwh:
        store.rollups.write_changed(
            [(device, hour, value / 1000.0, source, coverage, None, None, None, None, detail)
             for hour, value in sorted(kwh.items())], {device: (min(kwh), max(kwh) + H)})


def put_statement(store: Store, start_ms: int, end_ms: int, kwh: float, document: str,
                  replaces: int | None = None) -> int:
    (sid,) = store.statements.add([NewStatement("incomer-1", start_ms, end_ms, kwh, "grid",
                                                document, replaces)], imported_ms=0)
    return sid


def weekly_pattern(start: datetime, weeks: int, seed: int = 7) -> dict[int, float]:
    """Hourly kWh of a plant following the simulator's load shape, +-8% noise."""
    rng = random.Random(seed)
    tz = ZoneInfo(TZ)
    out = {}
    t = start
    while t < start + timedelta(weeks=weeks):
        mid = t + timedelta(minutes=30)
        out[to_ms(t)] = BASE_KW * load_factor(mid, seed, tz) * rng.uniform(0.92, 1.08)
        t += timedelta(hours=1)
    return out


SPIKE_RULE = """
    - {name: incomer-spike, type: spike, devices: [incomer-1], factor: 1.5, min_delta_kwh: 20,
       baseline_weeks: 4, window: 0}
"""
# Monday 2026-05-04 00:00 Shanghai: six weeks of history from here
START = datetime(2026, 5, 4, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "energyd.db") as s:
        yield s


def engine_for(config, store, now: datetime | None = None) -> AlertEngine:
    when = to_ms(now or START + timedelta(weeks=6))
    return AlertEngine(config, store, now_ms=lambda: when)


def test_four_weeks_of_a_normal_weekly_pattern_raise_no_spike(tmp_path, store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    put_hours(store, "incomer-1", history)
    # the pattern is not flat: Monday 07:00 against Sunday 07:00 would look like a spike
    monday7 = to_ms(START + timedelta(weeks=5, hours=7))
    sunday7 = monday7 - 24 * H
    assert history[monday7] > 1.5 * history[sunday7] and history[monday7] - history[sunday7] > 20
    engine = engine_for(config, store)
    four_weeks = (to_ms(START + timedelta(weeks=2)), to_ms(START + timedelta(weeks=6)))
    assert engine.evaluate_hours(*four_weeks) == []
    assert load_episodes(store) == []


def test_an_hourly_spike_fires_once_and_resolves_once_even_across_restarts(tmp_path, store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    spike_at = to_ms(START + timedelta(weeks=5, days=2, hours=10))  # Wednesday 10:00 local
    normal = history[spike_at]
    history[spike_at] *= 2.2
    history[spike_at + H] *= 2.4
    put_hours(store, "incomer-1", history)
    span = (to_ms(START + timedelta(weeks=2)), to_ms(START + timedelta(weeks=6)))

    # the hourly job sees the hours one by one
    engine = engine_for(config, store)
    events = []
    for hour in range(span[0], span[1], H):
        events += engine.evaluate_hours(hour, hour + H)
    assert [(e.kind, e.episode.started, e.episode.ended) for e in events] == [
        ("start", spike_at, None), ("end", spike_at, spike_at + 2 * H)]
    start = events[0].episode
    assert start.detail["start"]["kwh"] == pytest.approx(normal * 2.2, rel=1e-6)
    assert start.detail["start"]["baseline_kwh"] > 0
    assert start.detail["start"]["baseline_weeks"] == 4

    # a restarted daemon recomputes recent hours (and again after a late invoice): no repeat
    for _ in range(2):
        again = engine_for(config, store)
        assert again.evaluate_hours(*span) == []
    rows = stored(store, "SELECT rule, device, state, started, ended FROM alerts")
    assert rows == [("incomer-spike", "incomer-1", "resolved", spike_at, spike_at + 2 * H)]


def test_a_spike_while_the_daemon_was_down_is_reported_once_by_the_recomputation(tmp_path,
                                                                                    store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    spike_at = to_ms(START + timedelta(weeks=5, days=5, hours=3))  # Saturday 03:00
    history[spike_at] += 60.0  # e.g. a heater left on for an hour
    put_hours(store, "incomer-1", history)
    recent = (to_ms(START + timedelta(weeks=6)) - 48 * H, to_ms(START + timedelta(weeks=6)))
    assert recent[0] < spike_at < recent[1]
    first = engine_for(config, store).evaluate_hours(*recent)
    assert [(e.kind, e.episode.started) for e in first] == [("start", spike_at),
                                                            ("end", spike_at)]
    assert first[1].episode.ended == spike_at + H
    assert engine_for(config, store).evaluate_hours(*recent) == []
    assert len(load_episodes(store)) == 1


def test_an_active_episode_survives_a_restart_and_ends_once(tmp_path, store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    spike_at = to_ms(START + timedelta(weeks=5, days=1, hours=14))
    for k in range(3):
        history[spike_at + k * H] *= 2.5
    put_hours(store, "incomer-1", history)
    e1 = engine_for(config, store)
    assert [e.kind for e in e1.evaluate_hours(spike_at, spike_at + 2 * H)] == ["start"]
    seq_after_start = store.meta.get("seq")
    # restart in the middle of it: the episode is loaded, not started again
    e2 = engine_for(config, store)
    assert [ep.started for ep in e2.tracker.active] == [spike_at]
    assert e2.evaluate_hours(spike_at, spike_at + 3 * H) == []
    ends = e2.evaluate_hours(spike_at + 3 * H, spike_at + 5 * H)
    assert [(e.kind, e.episode.ended) for e in ends] == [("end", spike_at + 3 * H)]
    assert store.meta.get("seq") > seq_after_start  # the sinks see the change


def test_invoice_filled_and_estimated_hours_never_alert(tmp_path, store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    put_hours(store, "incomer-1", history)
    odd = to_ms(START + timedelta(weeks=5, days=3, hours=11))
    put_hours(store, "incomer-1", {odd: history[odd] * 4}, source="estimated")
    put_hours(store, "incomer-1", {odd + H: history[odd + H] * 4}, source="invoice")
    assert engine_for(config, store).evaluate_hours(odd - 2 * H, odd + 4 * H) == []


def night_of_compressors(leak_from: datetime | None) -> dict[str, dict[int, float]]:
    """Hourly kWh per compressor of the station simulator's air model, Tuesday 18:00 to
    Wednesday 09:00 UTC; a leak of 8 m3/min opens at `leak_from`."""
    system = AirSystem.build(4, prefix="air1-c", seed=3)
    t = datetime(2026, 6, 2, 18, tzinfo=UTC)
    before = {c.name: c.energy_kwh for c in system.compressors}
    out: dict[str, dict[int, float]] = {c.name: {} for c in system.compressors}
    while t < datetime(2026, 6, 3, 9, tzinfo=UTC):
        if leak_from is not None and t >= leak_from:
            system.inject_leak(8.0)
        t += timedelta(seconds=60)
        system.step(t, 60)
        if t.minute == 0:
            for c in system.compressors:
                out[c.name][to_ms(t) - H] = c.energy_kwh - before[c.name]
                before[c.name] = c.energy_kwh
    return out


AIR_DEVICES = "".join(f"""
  - {{name: air1-c{i}, role: compressor, driver: mqtt,
     mqtt: {{topic: plant/air/air1-c{i}/telemetry, fields: {{active_power_kw: power_kw}}}}}}"""
                      for i in range(1, 5))
OFF_SHIFT_RULE = """
    - {name: air-leak, type: off_shift, role: compressor, aggregate: true, margin_kwh: 55,
       production_hours: ["Mon-Fri 06:00-22:00"]}
"""


@pytest.mark.parametrize("leak", [False, True])
def test_a_night_leak_on_the_compressor_station_fires_off_shift_load(tmp_path, store, leak):
    config = make_config(tmp_path, OFF_SHIFT_RULE, AIR_DEVICES,
                         "mqtt: {host: 127.0.0.1, port: 1883}", tz="UTC")
    night = night_of_compressors(datetime(2026, 6, 2, 23, tzinfo=UTC) if leak else None)
    for device, hours in night.items():
        put_hours(store, device, hours)
    engine = AlertEngine(config, store, now_ms=lambda: to_ms(datetime(2026, 6, 3, 9,
                                                                      tzinfo=UTC)))
    span = (to_ms(datetime(2026, 6, 2, 18, tzinfo=UTC)), to_ms(datetime(2026, 6, 3, 9,
                                                                          tzinfo=UTC)))
    events = []
    for hour in range(*span, H):
        events += engine.evaluate_hours(hour, hour + H)
    if not leak:
        assert events == []
        return
    assert [(e.kind, e.episode.device) for e in events] == [("start", "compressor"),
                                                           ("end", "compressor")]
    start, end = events
    assert start.episode.started == to_ms(datetime(2026, 6, 2, 23, tzinfo=UTC))
    assert start.episode.detail["start"]["kwh"] > 55
    # the morning shift ends the night's episode
    assert end.episode.ended == to_ms(datetime(2026, 6, 3, 6, tzinfo=UTC))


def test_stale_silent_device_and_stuck_counter(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: stale, type: stale, multiple: 3}
""", """
  - {name: m1, role: grid_import, driver: modbus, interval: 10s, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1, port: 1502}}
  - {name: m2, role: submeter, driver: modbus, interval: 10s, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1, port: 1502, unit: 2}}
""")
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    now = [to_ms(t0)]
    engine = AlertEngine(config, store, now_ms=lambda: now[0])
    events = []
    for i in range(10):  # m1 polls well; m2's counter stands while 300 kW flow
        t = t0 + timedelta(seconds=10 * i)
        now[0] = to_ms(t)
        events += engine.on_readings([
            Reading(t, "m1", "active_power_kw", 50.0),
            Reading(t, "m1", "active_energy_import_kwh", 1000 + i * 0.14),
            Reading(t, "m2", "active_power_kw", 300.0),
            Reading(t, "m2", "active_energy_import_kwh", 2000.0)])
        events += engine.check_stale()
    assert [(e.kind, e.episode.device, e.episode.detail["start"]["reason"]) for e in events] \
        == [("start", "m2", "counter_stuck")]
    # then m1 goes silent: 31 s after its last reading it is stale
    last = t0 + timedelta(seconds=90)
    assert engine.check_stale(to_ms(last + timedelta(seconds=29))) == []
    silent = engine.check_stale(to_ms(last + timedelta(seconds=31)))
    assert [(e.kind, e.episode.device, e.episode.detail["start"]["reason"]) for e in silent] \
        == [("start", "m1", "silent")]
    assert engine.check_stale(to_ms(last + timedelta(seconds=60))) == []  # not repeated
    back = last + timedelta(seconds=70)
    engine.on_readings([Reading(back, "m1", "active_power_kw", 50.0)])
    ended = engine.check_stale(to_ms(back))
    assert [(e.kind, e.episode.device) for e in ended] == [("end", "m1")]


def test_reconciliation_episode_from_accounting_findings(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: statement-check, type: reconciliation}
""", extra="accounting: {reconciliation_tolerance: 0.02}")
    day = datetime(2026, 6, 1, tzinfo=ZoneInfo(TZ)).astimezone(UTC)
    hours = {to_ms(day) + k * H: 100.0 for k in range(24)}  # 2400 kWh metered
    put_hours(store, "incomer-1", hours)
    wrong = put_statement(store, to_ms(day), to_ms(day) + 24 * H, 2600.0, "B-1")
    now = [to_ms(day) + 30 * H]
    engine = AlertEngine(config, store, now_ms=lambda: now[0],
                         reconciliation=statement_findings(config, store))
    events = engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H)
    assert [(e.kind, e.episode.rule, e.episode.device) for e in events] == [
        ("start", "statement-check", "incomer-1")]
    figures = events[0].episode.detail["start"]
    assert figures["meter_kwh"] == pytest.approx(2400) and figures["statement_kwh"] == 2600
    assert figures["difference"] == pytest.approx(200 / 2600, rel=1e-4)
    assert engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H) == []
    # a corrected statement replaces the wrong one: the episode ends
    put_statement(store, to_ms(day), to_ms(day) + 24 * H, 2410.0, "B-1a", replaces=wrong)
    now[0] += H
    ends = engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H)
    assert [e.kind for e in ends] == ["end"]


def test_a_statement_below_the_meter_alerts_within_tolerance_until_accepted(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: statement-check, type: reconciliation}
""", extra="accounting: {reconciliation_tolerance: 0.02}")
    day = datetime(2026, 6, 1, tzinfo=ZoneInfo(TZ)).astimezone(UTC)
    put_hours(store, "incomer-1", {to_ms(day) + k * H: 100.0 for k in range(18)})  # 1800 kWh
    put_hours(store, "incomer-1", {to_ms(day) + k * H: 100.0 for k in range(18, 24)},
              source="estimated")
    sid = put_statement(store, to_ms(day), to_ms(day) + 24 * H, 1790.0, "B-2")
    now = [to_ms(day) + 30 * H]
    engine = AlertEngine(config, store, now_ms=lambda: now[0],
                         reconciliation=statement_findings(config, store))
    # 10 kWh below the 1800 the meter alone measured: 0.6%, inside the 2% tolerance, but a
    # statement cannot be below what was metered
    events = engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H)
    assert [(e.kind, e.episode.device) for e in events] == [("start", "incomer-1")]
    assert events[0].episode.detail["start"]["meter_kwh"] == pytest.approx(1800)
    store.statements.accept(Acceptance(sid, 0, "auditor", "bill confirmed", "{}"))
    now[0] += H
    ends = engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H)
    assert [e.kind for e in ends] == ["end"]


def test_backlog_of_a_dead_sink(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: sink-backlog, type: backlog, max_age: 1h}
""", extra="influxdb: {name: central, api: v1, url: 'http://127.0.0.1:9', database: energy}")
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    store.insert_readings([Reading(t0 + timedelta(minutes=m), "incomer-1", "active_power_kw", 1.0)
                           for m in range(120)])
    # as the daemon does: the alerts may not import the sinks, so it hands the backlogs over

    engine = AlertEngine(config, store, now_ms=lambda: to_ms(t0),
                         sink_backlogs=lambda: sink_backlogs(config, store))
    assert engine.check_backlog(to_ms(t0 + timedelta(minutes=50))) == []
    fired = engine.check_backlog(to_ms(t0 + timedelta(minutes=61)))
    assert [(e.kind, e.episode.device) for e in fired] == [("start", "central")]
    assert fired[0].episode.detail["start"]["backlog"] == 120
    last_id = store.readings.last_reading_id()
    store.cursors.move("central", "readings", last_id)  # the sink caught up
    assert [e.kind for e in engine.check_backlog(to_ms(t0 + timedelta(minutes=130)))] == ["end"]


def test_removed_rules_end_their_active_episodes(tmp_path, store):
    config = make_config(tmp_path, SPIKE_RULE)
    history = weekly_pattern(START, 6)
    spike_at = to_ms(START + timedelta(weeks=5, hours=12))
    history[spike_at] *= 3
    put_hours(store, "incomer-1", history)
    assert [e.kind for e in engine_for(config, store).evaluate_hours(spike_at,
                                                                     spike_at + H)] == ["start"]
    other = make_config(tmp_path, """
    - {name: incomer-limit, type: threshold, limit: 500}
""")
    ended = engine_for(other, store).retire_removed_rules()
    assert [(e.kind, e.episode.rule) for e in ended] == [("end", "incomer-spike")]
    row = stored(store, "SELECT state, detail FROM alerts")[0]
    assert row[0] == "resolved" and "rule removed" in json.loads(row[1])["end"]["reason"]


def test_threshold_fires_after_its_duration_from_live_readings(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: demand-limit, type: threshold, devices: [incomer-1], limit: 500, duration: 30s}
""")
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    engine = AlertEngine(config, store, now_ms=lambda: to_ms(t0))
    kw = [400, 520, 540, 560, 530, 510, 480, 460, 440]  # above from 10 s to 50 s
    events = []
    for i, v in enumerate(kw):
        t = t0 + timedelta(seconds=10 * i)
        events += engine.on_readings([Reading(t, "incomer-1", "active_power_kw", v),
                                      Reading(t, "incomer-1", "voltage_l1_v", 231.0)])
    at = [to_ms(t0 + timedelta(seconds=s)) for s in (40, 80)]
    # fires once it has held 30 s; ends only below the band (450 kW), not at 480 or 460
    assert [(e.kind, e.episode.started, e.episode.ended) for e in events] == [
        ("start", at[0], None), ("end", at[0], at[1])]
    assert events[0].episode.detail["start"]["peak"] == 560
    assert events[0].episode.detail["message"].startswith("threshold: value=530")


def test_a_topic_template_is_watched_as_the_devices_it_names(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: stale, type: stale, multiple: 3}
""", """
  - {name: air1, role: compressor, driver: mqtt, interval: 5s,
     mqtt: {topic: plant/air/+/telemetry, device_level: 2, devices: [air1-c1, air1-c2],
            fields: {active_power_kw: power_kw}}}
  - {name: spare, role: submeter, driver: modbus, enabled: false, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1}}
""", "mqtt: {host: 127.0.0.1}")
    t0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
    engine = AlertEngine(config, store, now_ms=lambda: to_ms(t0))
    engine.on_readings([Reading(t0, "air1-c1", "active_power_kw", 40.0),
                        Reading(t0, "air1-c2", "active_power_kw", 0.0)])
    engine.on_readings([Reading(t0 + timedelta(seconds=14), "air1-c1", "active_power_kw", 41)])
    fired = engine.check_stale(to_ms(t0 + timedelta(seconds=16)))
    # c2 has been silent 16 s > 3 x 5 s; the template's own name and the disabled meter
    # are no devices that could fall silent
    assert [(e.kind, e.episode.device) for e in fired] == [("start", "air1-c2")]


def test_the_metered_part_of_gap_hours_counts_against_the_statement(tmp_path, store):
    config = make_config(tmp_path, """
    - {name: statement-check, type: reconciliation}
""")
    day = datetime(2026, 6, 1, tzinfo=ZoneInfo(TZ)).astimezone(UTC)
    put_hours(store, "incomer-1", {to_ms(day) + k * H: 100.0 for k in range(18)})  # 1800 kWh
    # six hours metered 20 kWh each, estimated the rest
    put_hours(store, "incomer-1", {to_ms(day) + k * H: 100.0 for k in range(18, 24)},
              source="estimated", coverage=0.2,
              detail=json.dumps({"kwh": {"meter": 20.0, "estimated": 80.0}}))
    put_statement(store, to_ms(day), to_ms(day) + 24 * H, 1900.0, "B-3")
    engine = AlertEngine(config, store, now_ms=lambda: to_ms(day) + 30 * H,
                         reconciliation=statement_findings(config, store))
    # 1,800 + 6 x 20 = 1,920 kWh metered: a statement of 1,900 is below the meter
    events = engine.evaluate_hours(to_ms(day) + 23 * H, to_ms(day) + 24 * H)
    assert [(e.kind, e.episode.device) for e in events] == [("start", "incomer-1")]
    assert events[0].episode.detail["start"]["meter_kwh"] == pytest.approx(1920)


def test_a_sinks_rejections_make_one_episode_that_ends_after_a_quiet_hour(store):
    """The forwarder reports rejected points; the one tracker keeps them as an episode."""
    tracker = EpisodeTracker(store)
    t0 = to_ms(datetime(2026, 6, 1, tzinfo=UTC))
    (start,) = tracker.sink_rejected("influx-main", stream="readings", points=2, items=3,
                                     message="HTTP 400: field type conflict", at_ms=t0)
    assert (start.kind, start.episode.rule, start.episode.device) == (
        "start", "sink_rejected", "influx-main")
    # a second rejection is counted into the same episode, not a new one
    assert tracker.sink_rejected("influx-main", stream="rollups", points=1, items=1,
                                 message="HTTP 400: bad timestamp", at_ms=t0 + 60_000) == []
    (ep,) = load_episodes(store)
    assert ep.state == "active" and ep.started == t0
    assert (ep.detail["points"], ep.detail["items"]) == (3, 4)
    assert ep.detail["message"] == "HTTP 400: bad timestamp"
    assert tracker.sink_quiet("influx-main", t0 + 60_000 + H - 1) == []  # not an hour yet
    (end,) = tracker.sink_quiet("influx-main", t0 + 60_000 + H)
    assert end.kind == "end" and end.episode.ended == t0 + 60_000 + H
    assert [e.state for e in load_episodes(store)] == ["resolved"]
    # the rules' episodes are not the sinks': a restart neither loads nor retires them
    tracker.sink_rejected("influx-main", stream="readings", points=1, items=1, message="x",
                          at_ms=t0 + 3 * H)
    assert EpisodeTracker(store).retire(set(), t0 + 4 * H) == []
    assert load_episodes(store, state="active")[0].rule == "sink_rejected"


def test_accountings_finding_is_read_through_one_adapter():
    from dataclasses import replace

    from energyd.accounting.findings import ReconciliationFinding
    from energyd.alerts.statements import statement_check

    finding = ReconciliationFinding(
        kind="statement_below_metered", statement=7, account="acct-1",
        devices=("incomer-1", "incomer-2"), period_start="2026-06-01T00:00:00Z",
        period_end="2026-07-01T00:00:00Z", statement_kwh=900.0, metered_kwh=1000.0,
        difference_kwh=100.0, difference_share=0.1, tolerance=0.02, document=None,
        supplier=None, estimated_kwh=100.0, gap_hours=3)
    check = statement_check(finding, accepted={7})
    assert check.account == "acct-1" and check.devices == ("incomer-1", "incomer-2")
    assert check.period_start_ms == to_ms(datetime(2026, 6, 1, tzinfo=UTC))
    assert check.period_end_ms == to_ms(datetime(2026, 7, 1, tzinfo=UTC))
    assert (check.metered_kwh, check.statement_kwh) == (1000.0, 900.0)
    assert check.below_metered and check.accepted
    assert not statement_check(replace(finding, kind="meter_difference"), {7}).accepted
    assert not statement_check(finding, accepted=set()).accepted
    assert statement_check(replace(finding, devices=()), set()).devices == ("acct-1",)


def test_statements_that_disagree_with_the_meter_are_episodes_of_the_one_tracker(store):
    from dataclasses import replace

    from energyd.accounting.findings import ReconciliationFinding
    from energyd.accounting.rollup import Statement

    tracker = EpisodeTracker(store)
    acc = Statement(1, "acc", 0, 10 * H, 900.0, ("incomer-1",), "SG", "SG-1")
    other = Statement(2, "b", H, 10 * H, 500.0, ("incomer-2",))
    finding = ReconciliationFinding(
        "meter_difference", 1, "acc", ("incomer-1",), "1970-01-01T00:00:00Z",
        "1970-01-01T10:00:00Z", 900.0, 1000.0, 100.0, 0.1, 0.02, "SG-1", "SG")

    def stored() -> list[tuple]:
        return [(e.device, e.state, e.started, e.ended, e.detail.get("metered_kwh"))
                for e in reversed(load_episodes(store))]

    (start,) = tracker.statements_checked([acc, other], [finding], set(), 10)
    assert (start.kind, start.episode.rule, start.episode.device) == (
        "start", "reconciliation", "acc")
    assert "900 kWh billed, 1000 kWh metered (10.0% apart" in start.episode.detail["message"]
    assert stored() == [("acc", "active", 0, None, 1000.0)]
    seq = store.meta.get("seq")
    # the same finding again (every rollup run): nothing is written, nothing forwarded again
    assert tracker.statements_checked([acc], [finding], set(), 11) == []
    assert store.meta.get("seq") == seq
    # the finding changed: the episode carries it, and is forwarded again
    assert tracker.statements_checked([acc], [replace(finding, metered_kwh=1100.0)], set(),
                                      12) == []
    assert stored() == [("acc", "active", 0, None, 1100.0)] and store.meta.get("seq") != seq
    # the statement agrees now: its episode ends
    (end,) = tracker.statements_checked([acc], [], set(), 13)
    assert (end.kind, end.episode.ended) == ("end", 13)
    # a disagreement again is a new episode; a replaced statement's ends
    tracker.statements_checked([acc], [finding], set(), 14)
    (end,) = tracker.statements_replaced([("acc", 0)], 15)
    assert [e[1:4] for e in stored()] == [("resolved", 0, 13), ("resolved", 0, 15)]
    assert tracker.statements_replaced([("acc", 0)], 16) == []
    # below the meter and accepted: no episode; not accepted: one
    below = replace(finding, kind="statement_below_metered", estimated_kwh=100.0, gap_hours=3)
    assert tracker.statements_checked([acc], [below], {1}, 17) == []
    assert [e.kind for e in tracker.statements_checked([acc], [below], set(), 18)] == ["start"]
    # the rules' episodes are not these: a restart neither loads nor retires them
    assert EpisodeTracker(store).active == []
    assert EpisodeTracker(store).retire(set(), 19) == []
    assert load_episodes(store, state="active")[0].started == 0


def test_only_the_episodes_repository_writes_the_alerts_table():
    """The tracker decides every episode (rules, sinks' refused points, statements), so one
    repository writes them: a second writer would be a second owner of the episodes."""
    import re

    import energyd

    writes = re.compile(r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE(\s+OR\s+\w+)?|DELETE\s+FROM)"
                        r"\s+alerts\b", re.IGNORECASE)
    package = Path(energyd.__file__).parent
    writers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if writes.search(p.read_text(encoding="utf-8")))
    assert writers == ["store/episodes.py"]


def test_hourly_energy_of_a_station_without_a_counter_comes_from_its_air_hours(tmp_path, store):
    config = make_config(tmp_path, "    - {name: stale, type: stale, multiple: 3}")
    put_hours(store, "incomer-1", {0: 100.0, H: 110.0})
    put_hours(store, "incomer-1", {2 * H: 90.0}, source="estimated")  # not measured: left out
    store.air.write_changed([("air1", 0, 50.0, 400.0, 7.5, 0.8, "{}"),
                             ("incomer-1", 0, 1.0, 8.0, 7.5, 0.1, "{}")])
    engine = AlertEngine(config, store, now_ms=lambda: 3 * H)
    assert engine.hourly_energy(["incomer-1", "air1"], 0, 3 * H) == {
        "incomer-1": {0: pytest.approx(100.0), H: pytest.approx(110.0)}, "air1": {0: 50.0}}
    assert engine.hourly_energy([], 0, 3 * H) == {}
