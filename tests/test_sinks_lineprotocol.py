"""The InfluxDB schema as line protocol: one point per device per poll, floats only, tags."""

from __future__ import annotations

import json

from energyd.config.schema import Config
from energyd.sinks import encoder_for
from energyd.sinks.lineprotocol import Encoder, body, escape_key, series_key, string_field

NAMES = {1: ("inc1", "active_power_kw"), 2: ("inc1", "active_energy_import_kwh"),
         3: ("pv1", "active_power_kw"), 4: ("old meter", "frequency_hz")}


def test_one_point_per_device_and_poll_with_float_fields():
    enc = Encoder("plant a", {"inc1": "grid_import", "pv1": "generation"}, gateway="gw-1")
    rows = [(1, 1_700_000_000_123, 1500.0), (2, 1_700_000_000_123, 12345.5),
            (3, 1_700_000_000_123, -0.25), (1, 1_700_000_010_123, 0.1)]
    points = enc.readings(rows, NAMES)
    assert [p.line for p in points] == [
        "energy_reading,device=inc1,gateway=gw-1,role=grid_import,site=plant\\ a "
        "active_power_kw=1500.0,active_energy_import_kwh=12345.5 1700000000123",
        "energy_reading,device=pv1,gateway=gw-1,role=generation,site=plant\\ a "
        "active_power_kw=-0.25 1700000000123",
        "energy_reading,device=inc1,gateway=gw-1,role=grid_import,site=plant\\ a "
        "active_power_kw=0.1 1700000010123",
    ]
    assert [(p.count, p.poll) for p in points] == [
        (2, ("inc1", 1_700_000_000_123)), (1, ("pv1", 1_700_000_000_123)),
        (1, ("inc1", 1_700_000_010_123))]
    assert body(points).count(b"\n") == 2
    # the store's REAL column gives floats; a bare integer would still be a float in line
    # protocol (only a trailing `i` makes an integer field)
    [point] = enc.readings([(1, 1, 1500)], NAMES)
    assert point.line.endswith(" active_power_kw=1500 1")


def test_interleaved_polls_group_and_unknown_device_has_no_role():
    enc = Encoder("s", {"inc1": "grid_import"})
    rows = [(1, 5, 1.0), (4, 5, 50.0), (2, 5, 2.0), (4, 6, 49.9)]
    lines = [p.line for p in enc.readings(rows, NAMES)]
    assert lines == [
        "energy_reading,device=inc1,role=grid_import,site=s "
        "active_power_kw=1.0,active_energy_import_kwh=2.0 5",
        "energy_reading,device=old\\ meter,site=s frequency_hz=50.0 5",
        "energy_reading,device=old\\ meter,site=s frequency_hz=49.9 6",
    ]


def test_values_keep_every_digit_and_non_finite_values_are_left_out():
    enc = Encoder("s", {})
    values = [0.1 + 0.2, 1e-300, 123456789.123456789, 2.0**60, 1e-7, 1e16, 5e-324, -0.0,
              1.7976931348623157e308, 0.00001, float("inf")]
    points = enc.readings([(1, i, v) for i, v in enumerate(values)], NAMES)
    texts = [p.line.split("=")[-1].split(" ")[0] for p in points]
    assert [float(t) for t in texts] == values[:-1]
    assert texts[7] == "-0.0"  # the sign of a zero is kept too
    assert "i " not in body(points).decode()  # never an integer field


def test_escaping():
    assert escape_key("a b,c=d") == "a\\ b\\,c\\=d"
    assert series_key("m x", {"b": "1", "a": "", "c": None}) == "m\\ x,b=1"
    assert string_field('say "hi"\\\nnow') == '"say \\"hi\\"\\\\ now"'


def test_rollups_and_air_skip_nulls():
    enc = Encoder("s", {"inc1": "grid_import"})
    rollups = enc.rollups([(7, "inc1", 3_600_000, 1.25, "meter", 1.0, 0.76, None, 0.6101)])
    assert [(p.line, p.items) for p in rollups] == [("\n".join([
        "energy_hourly,device=inc1,role=grid_import,site=s,source=meter "
        "mwh=1.25,coverage=1.0,tco2_location=0.76,ef_location=0.6101 3600000",
        *(f"energy_hourly,device=inc1,role=grid_import,site=s,source={other} "
          "mwh=0.0,tco2_location=0.0,tco2_market=0.0 3600000"
          for other in ("meter_interpolated", "invoice", "estimated"))]), (7,))]
    air = enc.air_hourly([(8, "c1", 7_200_000, 40, 300.5, None, 0.8)])
    assert [p.line for p in air] == [
        "energy_air_hourly,device=c1,site=s kwh=40.0,m3=300.5,loaded_share=0.8 7200000"]


def test_alert_gives_a_start_point_and_an_end_point():
    enc = Encoder("s", {})
    detail = json.dumps({"value": 120, "threshold": 100.5, "flag": True, "unit": "kW"})
    active = enc.alerts([(3, "peak", "inc1", "active", 1000, None, detail)])
    assert [p.line for p in active] == [
        'energy_alert,device=inc1,rule=peak,site=s,state=active threshold=100.5,value=120.0,'
        'text="peak active on inc1: threshold=100.5, unit=kW, value=120" 1000']
    resolved = enc.alerts([(9, "peak", "inc1", "resolved", 1000, 5000,
                            json.dumps({"message": 'over "limit"'}))])
    assert [p.line for p in resolved] == [
        'energy_alert,device=inc1,rule=peak,site=s,state=active '
        'text="peak active on inc1: over \\"limit\\"" 1000',
        'energy_alert,device=inc1,rule=peak,site=s,state=resolved '
        'text="peak resolved on inc1: over \\"limit\\"" 5000']
    assert all(p.items == (9,) for p in resolved)


def test_encoder_takes_roles_and_gateway_from_the_config():
    config = Config.model_validate({
        "site": {"name": "plant", "gateway": "gw1"},
        "devices": [{"name": "inc1", "role": "grid_import", "driver": "modbus",
                     "modbus": {"host": "127.0.0.1"},
                     "registers": [{"quantity": "active_power_kw", "address": 0}]}],
    })
    enc = encoder_for(config)
    [point] = enc.readings([(1, 1, 2.5)], NAMES)
    assert point.line == ("energy_reading,device=inc1,gateway=gw1,role=grid_import,site=plant "
                          "active_power_kw=2.5 1")
