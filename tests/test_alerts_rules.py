"""The alert conditions as pure functions: baselines, bands, production hours, stale counters."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from energyd.alerts.rules import conditions as R
from energyd.alerts.rules.conditions import Level
from energyd.model import to_ms

H = R.HOUR_MS
BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args: int, tz=UTC) -> int:
    return to_ms(datetime(*args, tzinfo=tz))


def test_same_hour_of_week_follows_the_site_wall_clock_across_dst():
    # Monday 2026-03-30 07:00 Berlin (CEST, UTC+2); a week earlier it was CET (UTC+1)
    hour = ms(2026, 3, 30, 7, tz=BERLIN)
    earlier = R.same_hour_of_week(hour, 2, BERLIN)
    assert [datetime.fromtimestamp(t / 1000, BERLIN).strftime("%a %H:%M %Z") for t in earlier] \
        == ["Mon 07:00 CET", "Mon 07:00 CET"]
    # in UTC the gap is one week plus the hour the clocks moved
    assert hour - earlier[0] == 7 * 24 * H - H


def test_baseline_is_the_median_and_needs_half_the_weeks():
    hour = ms(2026, 6, 1, 8)
    prev = R.same_hour_of_week(hour, 4, UTC)
    history = {prev[0]: 100.0, prev[1]: 110.0, prev[2]: 400.0}  # one odd week
    base, weeks = R.baseline(hour, history, 4, UTC)
    assert (base, weeks) == (110.0, 3)
    assert R.baseline(hour, {prev[0]: 100.0}, 4, UTC) == (None, 1)


def test_spike_needs_the_factor_and_the_absolute_margin():
    kw = {"factor": 1.5, "min_delta": 20.0, "hysteresis": 0.1}
    assert R.spike(160, 100, **kw).level is Level.ON
    assert R.spike(149, 100, **kw).level is Level.HOLD  # inside the band: no change
    assert R.spike(130, 100, **kw).level is Level.OFF
    # a quiet hour: 3x the baseline but only 8 kWh more is no spike
    assert R.spike(12, 4, **kw).level is Level.OFF
    assert R.spike(30, 4, **kw).level is Level.ON
    assert R.spike(500, None, **kw).level is Level.HOLD  # no baseline yet
    v = R.spike(160, 100, **kw)
    assert v.figures["kwh"] == 160 and v.figures["baseline_kwh"] == 100
    assert v.figures["factor"] == 1.6


def test_threshold_fires_only_after_the_duration_and_clears_below_the_band():
    th = R.Threshold(limit=100.0, duration_s=30, hysteresis=0.1)
    t0 = ms(2026, 6, 1, 8)
    assert th.add(t0, 120).level is Level.HOLD
    assert th.add(t0 + 20_000, 130).level is Level.HOLD
    v = th.add(t0 + 30_000, 125)
    assert v.level is Level.ON and v.figures["peak"] == 130 and v.figures["above_s"] == 30
    assert th.add(t0 + 40_000, 95).level is Level.HOLD  # below the limit, inside the band
    assert th.add(t0 + 50_000, 89).level is Level.OFF
    # a dip resets the timer
    th.add(t0 + 60_000, 120)
    th.add(t0 + 70_000, 80)
    assert th.add(t0 + 95_000, 120).level is Level.HOLD


def test_rolling_mean_keeps_only_the_window():
    win = R.RollingMean(30)
    t0 = ms(2026, 6, 1, 8)
    for i, v in enumerate([10, 10, 10, 40]):
        win.add(t0 + i * 10_000, v)
    assert win.mean() == pytest.approx(20.0)  # 10, 10, 40: samples of the last 30 s
    one = R.RollingMean(10)
    one.add(t0, 10)
    one.add(t0 + 10_000, 40)
    assert one.mean() == 40  # window = poll interval: the latest poll


@pytest.mark.parametrize(("spec", "local", "inside"), [
    (["Mon-Fri 06:00-22:00"], datetime(2026, 6, 1, 6, 0), True),   # Monday
    (["Mon-Fri 06:00-22:00"], datetime(2026, 6, 1, 5, 59), False),
    (["Mon-Fri 06:00-22:00"], datetime(2026, 6, 1, 22, 0), False),
    (["Mon-Fri 06:00-22:00"], datetime(2026, 6, 6, 10, 0), False),  # Saturday
    (["Sat 22:00-06:00"], datetime(2026, 6, 7, 3, 0), True),       # Sunday night, from Sat
    (["Sat 22:00-06:00"], datetime(2026, 6, 8, 3, 0), False),
    (["Fri-Mon 08:00-24:00"], datetime(2026, 6, 7, 23, 30), True),  # a range across Sunday
    (["Mon,Wed 08:00-12:00"], datetime(2026, 6, 2, 9, 0), False),   # Tuesday
])
def test_production_hours(spec, local, inside):
    assert R.ProductionHours.parse(spec).contains(local) is inside


@pytest.mark.parametrize(("spec", "message"), [
    ("Mon-Fry 06:00-22:00", "unknown day"),
    ("Mon-Fri 6-22", "is not like"),
    ("Mon 25:00-26:00", "not a time of day"),
])
def test_production_hours_refuse_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        R.ProductionHours.parse([spec])


def test_an_hour_is_off_shift_only_when_all_of_it_is():
    shifts = R.ProductionHours.parse(["Mon-Fri 06:30-22:00"])
    shanghai = ZoneInfo("Asia/Shanghai")
    assert shifts.hour_is_off_shift(ms(2026, 6, 2, 3, tz=shanghai), shanghai)
    assert not shifts.hour_is_off_shift(ms(2026, 6, 2, 6, tz=shanghai), shanghai)  # 06:30 starts
    assert shifts.hour_is_off_shift(ms(2026, 6, 2, 5, tz=shanghai), shanghai)
    v = R.off_shift(30.0, off_shift_hour=False, margin=5, hysteresis=0.1)
    assert v.level is Level.OFF  # production ends an off-shift episode
    assert R.off_shift(30.0, off_shift_hour=True, margin=5, hysteresis=0.1).level is Level.ON
    assert R.off_shift(4.0, off_shift_hour=True, margin=5, hysteresis=0.1).level is Level.OFF


def test_silent_device():
    t0 = ms(2026, 6, 1, 8)
    kw = {"interval_s": 10, "multiple": 3, "hysteresis": 0.1}
    assert R.silent(t0 + 31_000, t0, **kw).level is Level.ON
    assert R.silent(t0 + 29_000, t0, **kw).level is Level.HOLD
    assert R.silent(t0 + 5_000, t0, **kw).level is Level.OFF
    assert R.silent(t0, None, **kw).level is Level.HOLD


def test_counter_stuck_while_power_runs():
    w = R.CounterWatch(interval_s=10, multiple=3, stuck_kwh=1.0)
    t0 = ms(2026, 6, 1, 8)
    for i in range(0, 8):  # 360 kW for 70 s = 7 kWh, counter frozen
        t = t0 + i * 10_000
        w.counter(t, 5000.0)
        w.power(t, 360.0)
    v = w.verdict(t0 + 70_000)
    assert v.level is Level.ON and v.figures["reason"] == "counter_stuck"
    assert v.figures["kwh_by_power"] == pytest.approx(7.0)
    w.counter(t0 + 80_000, 5008.0)
    assert w.verdict(t0 + 80_000).level is Level.OFF
    # no load, no alarm: a standing counter is right when nothing runs
    idle = R.CounterWatch(interval_s=10, multiple=3, stuck_kwh=1.0)
    for i in range(0, 30):
        idle.counter(t0 + i * 10_000, 5000.0)
        idle.power(t0 + i * 10_000, 0.0)
    assert idle.verdict(t0 + 300_000).level is not Level.ON


def test_reconciliation_and_backlog_bands():
    assert R.reconciliation(1050, 1000, tolerance=0.02, hysteresis=0.1).level is Level.ON
    assert R.reconciliation(1010, 1000, tolerance=0.02, hysteresis=0.1).level is Level.OFF
    now = ms(2026, 6, 1, 8)
    assert R.backlog(now, 500, now - 7200_000, max_age_s=3600, hysteresis=0.1).level \
        is Level.ON
    assert R.backlog(now, 0, None, max_age_s=3600, hysteresis=0.1).level is Level.OFF
    assert R.backlog(now, 10, now - 1000, max_age_s=3600, hysteresis=0.1).level is Level.OFF
