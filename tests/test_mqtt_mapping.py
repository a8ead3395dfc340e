"""Payload mapping: topics onto devices, payloads onto the quantity vocabulary, bad input out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from energyd.config.loader import parse_config
from energyd.drivers.mqtt import PayloadMapper, Rejected
from energyd.errors import ConfigError
from energyd.model import Reading

NOW = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)

CONFIG = """
mqtt: {host: 127.0.0.1, port: 1883, max_payload: 1KB, max_clock_skew: 1h}
devices:
  - name: meter1
    driver: mqtt
    mqtt:
      topic: plant/meters/meter1
      timestamp: meta.time
      fields:
        active_power_kw: data.p
        active_energy_import_kwh: data.e
        voltage_l1_v: data.u.0
  - name: air1
    role: compressor
    driver: mqtt
    mqtt:
      topic: plant/air/+/telemetry
      device_level: 2
      devices: [c1, c2]
      timestamp: ts
      fields: {flow_m3_min: flow, compressor_state: state}
  - name: hall
    driver: mqtt
    mqtt: {topic: plant/hall/power, format: value, quantity: active_power_kw}
"""


@pytest.fixture
def mapper() -> PayloadMapper:
    return PayloadMapper(parse_config(CONFIG))


def _map(mapper: PayloadMapper, topic: str, doc: object, problems=None) -> list[Reading]:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return mapper.map(topic, payload, NOW, problems)


def test_json_fields_by_dotted_path_with_iso_timestamp(mapper):
    got = _map(mapper, "plant/meters/meter1", {
        "meta": {"time": "2026-03-02T09:59:58.250+00:30"},
        "data": {"p": 12.5, "e": "1000.25", "u": [231.0, 229.5]}})
    when = datetime(2026, 3, 2, 9, 29, 58, 250000, tzinfo=UTC)
    assert got == [Reading(when, "meter1", "active_power_kw", 12.5),
                   Reading(when, "meter1", "active_energy_import_kwh", 1000.25),
                   Reading(when, "meter1", "voltage_l1_v", 231.0)]


@pytest.mark.parametrize("ts, expected", [
    (1772445600, datetime(2026, 3, 2, 10, 0, tzinfo=UTC)),  # epoch seconds
    (1772445600.5, datetime(2026, 3, 2, 10, 0, 0, 500000, tzinfo=UTC)),
    (1772445599123, datetime(2026, 3, 2, 9, 59, 59, 123000, tzinfo=UTC)),  # epoch ms
    ("2026-03-02T09:30:00Z", datetime(2026, 3, 2, 9, 30, tzinfo=UTC)),
])
def test_template_topic_names_the_device_and_epoch_times(mapper, ts, expected):
    got = _map(mapper, "plant/air/c2/telemetry", {"ts": ts, "flow": 9.5, "state": 2})
    assert got == [Reading(expected, "c2", "flow_m3_min", 9.5),
                   Reading(expected, "c2", "compressor_state", 2.0)]


def test_receive_time_when_the_payload_has_none(mapper):
    got = _map(mapper, "plant/air/c1/telemetry", {"flow": 3, "state": 1})
    assert {r.time for r in got} == {NOW}
    assert mapper.map("plant/hall/power", b" 42.5\n", NOW) == [
        Reading(NOW, "hall", "active_power_kw", 42.5)]


def test_subscriptions_are_each_filter_once(mapper):
    assert mapper.filters() == ["plant/meters/meter1", "plant/air/+/telemetry",
                                "plant/hall/power"]


@pytest.mark.parametrize("topic, payload, reason", [
    ("plant/meters/meter1", b"{not json", "not_json"),
    ("plant/meters/meter1", b"\xff\xfe\x00", "not_utf8"),
    ("plant/meters/meter1", b"[1, 2]", "missing_field"),
    ("plant/meters/meter1", b'"text"', "not_json"),
    ("plant/meters/meter1", json.dumps({"other": 1}).encode(), "missing_field"),
    ("plant/meters/meter1", b'{"data": {"p": NaN, "e": Infinity, "u": [-Infinity]}}',
     "not_finite"),
    ("plant/meters/meter1", b'{"data": {"p": "n/a", "e": true, "u": [null]}}', "not_numeric"),
    ("plant/meters/meter1", b'{"data": {"p": 1' + b"0" * 400 + b'}}', "not_finite"),
    ("plant/meters/meter1", b'{"data": {"p": 1}, "pad": "' + b"x" * 1100 + b'"}', "too_large"),
    ("plant/meters/meter1", b'{"meta": {"time": "yesterday"}, "data": {"p": 1}}',
     "bad_timestamp"),
    ("plant/meters/meter1", b'{"meta": {"time": "2026-03-02T10:00:00"}, "data": {"p": 1}}',
     "bad_timestamp"),
    ("plant/meters/meter1", b'{"meta": {"time": "2026-03-02T12:00:01Z"}, "data": {"p": 1}}',
     "clock_skew"),
    ("plant/meters/meter1", b'{"meta": {"time": 1e300}, "data": {"p": 1}}', "bad_timestamp"),
    ("plant/air/c9/telemetry", b'{"flow": 1, "state": 2}', "unknown_device"),
    ("plant/hall/power", b"nan", "not_finite"),
    ("plant/hall/power", b"on", "not_numeric"),
    ("plant/other", b"1", "no_route"),
])
def test_each_kind_of_bad_payload_is_refused(mapper, topic, payload, reason):
    with pytest.raises(Rejected) as caught:
        mapper.map(topic, payload, NOW, [])
    assert caught.value.reason == reason
    assert topic.split("/")[1] in str(caught.value) or caught.value.detail


def test_a_bad_field_is_left_out_and_the_good_ones_kept(mapper):
    problems: list[Rejected] = []
    got = _map(mapper, "plant/meters/meter1", b'{"data": {"p": 5, "e": NaN}}', problems)
    assert got == [Reading(NOW, "meter1", "active_power_kw", 5.0)]
    assert sorted(p.reason for p in problems) == ["missing_field", "not_finite"]
    assert "data.u.0" in str([p for p in problems if p.reason == "missing_field"][0])


@pytest.mark.parametrize("entry, message", [
    ("{topic: a/b, format: value}", "format value needs `quantity:`"),
    ("{topic: a/b}", "format json needs `fields:`"),
    ("{topic: a/+/b, device_level: 0, devices: [x], fields: {flow_m3_min: f}}",
     "must point at a `+` level"),
    ("{topic: a/+/b, device_level: 1, fields: {flow_m3_min: f}}", "device_level needs"),
    ("{topic: a/b, devices: [x], fields: {flow_m3_min: f}}", "only goes with a topic pattern"),
    ("{topic: 'a/#/b', fields: {flow_m3_min: f}}", "not a valid topic"),
    ("{topic: a/b, fields: {flow_m3_min: 'x..y'}}", "not a dotted path"),
    ("{topic: a/b, format: sparkplug, fields: {flow_m3_min: f}}", "format"),
    ("{topic: a/b, fields: {air_m3: f}}", "unknown quantity"),
])
def test_bad_device_options_are_refused_with_the_line(entry, message):
    text = f"mqtt: {{}}\ndevices:\n  - name: d1\n    driver: mqtt\n    mqtt: {entry}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "plant.yaml")
    assert message in str(caught.value)
    assert "plant.yaml:" in str(caught.value)


def test_password_needs_a_username_and_never_shows(tmp_path):
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret-value\n")
    config = parse_config("mqtt: {username: energyd, password_file: mqtt.pw}\n",
                          "x.yaml", base_dir=tmp_path)
    assert config.mqtt.password.get_secret_value() == "s3cret-value"
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()
    with pytest.raises(ConfigError, match="needs a `username:`"):
        parse_config("mqtt: {password_file: mqtt.pw}\n", "x.yaml", base_dir=tmp_path)
