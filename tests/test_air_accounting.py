"""Hourly specific power: kWh per m3 of free air, as kW per m3/min, per compressor and station."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from energyd.accounting.air import AirHour, compressor_hour, specific_power, station_hour
from energyd.model import to_ms

H = to_ms(datetime(2026, 3, 2, 10, tzinfo=UTC))  # the hour under test
MIN = 60_000


def ramp(start_min: int, end_min: int, step_min: int, v0: float, per_min: float):
    """Samples every step_min from H+start_min to H+end_min of a line v0 + per_min * t."""
    return [(H + m * MIN, v0 + per_min * (m - start_min))
            for m in range(start_min, end_min + 1, step_min)]


def test_counter_and_flow_give_specific_power():
    # 1 kWh per minute (60 kW) and 10 m3/min all hour: 60 kWh, 600 m3, 6 kW per m3/min.
    # Samples at 5 past every 10 minutes: both boundaries are interpolated.
    row = compressor_hour("c1", H, energy=ramp(-5, 65, 10, 1000.0, 1.0),
                          flow=ramp(-5, 65, 10, 10.0, 0.0),
                          state=[(H + m * MIN, 2 if m < 45 else 1) for m in range(-5, 66, 5)])
    assert row is not None
    assert row.kwh == pytest.approx(60.0)
    assert row.m3 == pytest.approx(600.0)
    assert row.specific_power == pytest.approx(6.0)
    assert row.loaded_share == pytest.approx(0.75)
    assert row.detail["energy"] == "counter"
    assert row.detail["coverage"] == {"energy": 1.0, "flow": 1.0, "state": 1.0}


def test_flow_is_integrated_between_samples():
    # flow rising 0 -> 12 m3/min over the hour: 360 m3; 30 kWh -> 60 * 30 / 360 = 5.0
    row = compressor_hour("c1", H, energy=ramp(0, 60, 5, 0.0, 0.5),
                          flow=ramp(0, 60, 1, 0.0, 0.2), max_gap_ms=15 * MIN)
    assert (row.kwh, row.m3) == (pytest.approx(30.0), pytest.approx(360.0))
    assert row.specific_power == pytest.approx(5.0)
    assert row.loaded_share is None


def test_power_is_integrated_when_there_is_no_counter():
    row = compressor_hour("c1", H, power=ramp(0, 60, 5, 45.0, 0.0),
                          flow=ramp(0, 60, 5, 7.5, 0.0))
    assert row.detail["energy"] == "power"
    assert row.kwh == pytest.approx(45.0)
    assert row.specific_power == pytest.approx(6.0)  # 45 kW / 7.5 m3/min


def test_no_air_means_no_specific_power():
    row = compressor_hour("c1", H, energy=ramp(0, 60, 5, 10.0, 0.25),
                          flow=ramp(0, 60, 5, 0.0, 0.0), state=[(H, 1)])
    assert row.kwh == pytest.approx(15.0) and row.m3 == 0.0
    assert row.specific_power is None and row.loaded_share == 0.0
    assert specific_power(5.0, 0.0) is None


def test_a_gap_leaves_the_hour_incomplete_and_without_a_ratio():
    flow = [p for p in ramp(0, 60, 5, 10.0, 0.0) if not 20 * MIN < p[0] - H < 50 * MIN]
    row = compressor_hour("c1", H, energy=ramp(0, 60, 5, 0.0, 1.0), flow=flow,
                          max_gap_ms=15 * MIN)
    assert row.detail["coverage"]["flow"] == pytest.approx(0.5)
    assert row.m3 == pytest.approx(300.0)
    assert row.specific_power is None
    assert row.detail["specific_power"] == "incomplete hour"


def test_a_counter_reset_adds_nothing_and_is_flagged():
    energy = [(H, 500.0), (H + 20 * MIN, 520.0), (H + 30 * MIN, 2.0), (H + 60 * MIN, 32.0)]
    row = compressor_hour("c1", H, energy=energy, flow=ramp(0, 60, 10, 10.0, 0.0),
                          max_gap_ms=30 * MIN)
    assert row.kwh == pytest.approx(50.0)
    assert row.detail["counter_resets"] == 1


def test_nothing_measured_gives_no_row():
    assert compressor_hour("c1", H, energy=[(H - 120 * MIN, 1.0)]) is None


def test_station_takes_the_ratio_of_sums_not_the_mean_of_ratios():
    full = {"coverage": {"energy": 1.0, "flow": 1.0, "state": 1.0}}
    a = AirHour("c1", H, 60.0, 600.0, 6.0, 1.0, full)
    b = AirHour("c2", H, 20.0, 100.0, 12.0, 0.5, full)
    row = station_hour("air1", H, ["c1", "c2"], [a, b])
    assert (row.device, row.kwh, row.m3) == ("air1", 80.0, 700.0)
    assert row.specific_power == pytest.approx(60 * 80 / 700)
    assert row.loaded_share == pytest.approx(0.75)
    assert row.detail == {"compressors": ["c1", "c2"]}
    partial = station_hour("air1", H, ["c1", "c2", "c3"], [a, b])
    assert partial.specific_power is None and partial.detail["missing"] == ["c3"]
    assert station_hour("air1", H, ["c1"], []) is None
