"""Payload mapping: topics onto devices, payloads onto the quantity vocabulary, bad input out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from energyd.config.loader import parse_config
from energyd.drivers.mqtt.client import PayloadMapper, Rejected
from energyd.errors import ConfigError
from energyd.model import Quality, Reading

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


def _map(mapper: PayloadMapper, topic: str, doc: object, problems=None,
         at: datetime = NOW) -> list[Reading]:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return mapper.map(topic, payload, at, problems)


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
    assert {(r.time, r.quality) for r in got} == {(NOW, Quality.RECEIVED)}
    assert mapper.map("plant/hall/power", b" 42.5\n", NOW) == [
        Reading(NOW, "hall", "active_power_kw", 42.5, Quality.RECEIVED)]
    # a time of its own is the device's: good
    got = _map(mapper, "plant/air/c1/telemetry", {"flow": 3, "state": 1, "ts": 1772445590})
    assert {r.quality for r in got} == {Quality.GOOD}


def test_receive_times_are_strictly_increasing_per_device_in_arrival_order(mapper):
    # 5 messages of each of two devices in one millisecond, then one a little later
    got = []
    for i in range(5):
        for device in ("c1", "c2"):
            got += _map(mapper, f"plant/air/{device}/telemetry", {"flow": i, "state": 1})
    got += mapper.map("plant/hall/power", b"1", NOW)
    later = NOW + timedelta(milliseconds=2)
    got += _map(mapper, "plant/air/c1/telemetry", {"flow": 5, "state": 1}, at=later)
    got += _map(mapper, "plant/air/c1/telemetry", {"flow": 6, "state": 1},
                at=NOW + timedelta(seconds=1))
    for device in ("c1", "c2"):
        flows = [(r.time, r.value) for r in got
                 if r.device == device and r.quantity == "flow_m3_min"]
        times = [t for t, _ in flows]
        assert times == sorted(set(times))  # distinct, in arrival order
        assert [v for _, v in flows] == sorted(v for _, v in flows)
        # the readings of one message share its time
        states = [r.time for r in got if r.device == device and r.quantity == "compressor_state"]
        assert states == times
    c1 = [r.time for r in got if r.device == "c1" and r.quantity == "flow_m3_min"]
    assert c1[:5] == [NOW + timedelta(milliseconds=i) for i in range(5)]
    assert c1[5] == NOW + timedelta(milliseconds=5)  # 2 ms later, but after the 5th
    assert c1[6] == NOW + timedelta(seconds=1)  # the clock again once it is ahead
    assert [r.time for r in got if r.device == "hall"] == [NOW]  # its own device
    assert all(r.quality == Quality.RECEIVED for r in got)


def test_backlog_messages_are_flagged_when_receive_timed(mapper):
    got = mapper.map("plant/air/c1/telemetry", b'{"flow": 1, "state": 2}', NOW, backlog=True)
    assert {r.quality for r in got} == {Quality.RECEIVED_BACKLOG}
    got = mapper.map("plant/air/c1/telemetry", b'{"flow": 1, "state": 2, "ts": 1772445590}',
                     NOW, backlog=True)
    assert {r.quality for r in got} == {Quality.GOOD}


def test_a_retained_message_is_taken_only_with_a_time_of_its_own(mapper):
    for topic, payload in (("plant/air/c1/telemetry", b'{"flow": 1, "state": 2}'),
                           ("plant/hall/power", b"42")):
        with pytest.raises(Rejected) as caught:
            mapper.map(topic, payload, NOW, [], retained=True)
        assert caught.value.reason == "retained_without_time"
    got = mapper.map("plant/air/c1/telemetry", b'{"flow": 1, "state": 2, "ts": 1772445590}',
                     NOW, retained=True)  # the same message again at its own time: a replay
    assert [(r.time, r.quality) for r in got] == [
        (datetime(2026, 3, 2, 9, 59, 50, tzinfo=UTC), Quality.GOOD)] * 2


def test_old_timestamps_are_taken_up_to_the_message_age_and_counted_beyond():
    mapper = PayloadMapper(parse_config(CONFIG.replace("max_clock_skew: 1h",
                                                       "max_clock_skew: 1h, "
                                                       "max_message_age: 10d")))
    nine_days = NOW - timedelta(days=9)  # older than the skew: taken
    got = _map(mapper, "plant/air/c1/telemetry", {"flow": 1, "state": 2,
                                                   "ts": nine_days.isoformat()})
    assert {r.time for r in got} == {nine_days}
    with pytest.raises(Rejected) as caught:
        _map(mapper, "plant/air/c1/telemetry", {"flow": 1, "state": 2,
                                                 "ts": (NOW - timedelta(days=11)).isoformat()})
    assert caught.value.reason == "too_old"
    with pytest.raises(Rejected) as caught:
        _map(mapper, "plant/air/c1/telemetry", {"flow": 1, "state": 2,
                                                 "ts": (NOW + timedelta(hours=2)).isoformat()})
    assert caught.value.reason == "clock_skew"
    assert PayloadMapper(parse_config(CONFIG)).max_age == timedelta(days=30)  # the default


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
    assert got == [Reading(NOW, "meter1", "active_power_kw", 5.0, Quality.RECEIVED)]
    assert sorted(p.reason for p in problems) == ["missing_field", "not_finite"]
    assert "data.u.0" in str([p for p in problems if p.reason == "missing_field"][0])


@pytest.mark.parametrize("flow, state, kept", [
    (1e308, 1e308, [("flow_m3_min", 1e308), ("compressor_state", 1e308)]),  # a sum is not
    (2.5, 2, [("flow_m3_min", 2.5), ("compressor_state", 2.0)]),  # an integer is a float
    (-0.0, 0, [("flow_m3_min", -0.0), ("compressor_state", 0.0)]),
    (2.5, "2", [("flow_m3_min", 2.5), ("compressor_state", 2.0)]),  # a number in text
    (2.5, 10 ** 400, [("flow_m3_min", 2.5)]),  # too large for a float: left out
    (1, 10 ** 400, [("flow_m3_min", 1.0)]),  # so also beside an integer alone
    (2.5, True, [("flow_m3_min", 2.5)]),  # not a number
    (None, 1, [("compressor_state", 1.0)]),
])
def test_a_flat_message_is_read_at_once_as_field_by_field(mapper, flow, state, kept):
    # the usual message is read in one step; one with anything unusual, field by field: the
    # readings are the same either way
    payload = json.dumps({"ts": 1772445600, "flow": flow, "state": state}).encode()
    problems: list[Rejected] = []
    got = mapper.map("plant/air/c1/telemetry", payload, NOW, problems)
    assert [(r.quantity, r.value) for r in got] == kept
    assert all(type(r.value) is float for r in got)
    assert {r.time for r in got} == {NOW} and {r.device for r in got} == {"c1"}
    assert len(problems) == 2 - len(kept)


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


def test_routes_follow_mqtt_filter_rules_in_the_order_of_the_config():
    config = parse_config(
        "mqtt: {host: 127.0.0.1}\n"
        "devices:\n"
        "  - {name: all, driver: mqtt, mqtt: {topic: 'site/#', format: value,"
        " quantity: frequency_hz}}\n"
        "  - {name: any-hall, driver: mqtt, mqtt: {topic: 'site/+/power', format: value,"
        " quantity: active_power_kw}}\n"
        "  - {name: exact, driver: mqtt, mqtt: {topic: site/hall/power, format: value,"
        " quantity: active_power_kw}}\n"
        "  - {name: root, driver: mqtt, mqtt: {topic: '+/x', format: value,"
        " quantity: active_power_kw}}\n")
    mapper = PayloadMapper(config)

    def entries(topic: str) -> list[str]:
        return [r.entry for r in mapper.routes_for(topic)]

    # exact routes first, then the patterns in the config's order
    assert entries("site/hall/power") == ["exact", "all", "any-hall"]
    assert entries("site") == ["all"]  # `#` takes its parent level too
    assert entries("site/a/b/c") == ["all"]
    assert entries("site/hall/power/x") == ["all"]  # `+` is one level only
    assert entries("$SYS/x") == []  # a leading wildcard never takes a `$` topic
    assert entries("a/x") == ["root"]
    assert entries("other/hall/power") == []
