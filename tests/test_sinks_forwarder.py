"""The forwarder's policy on its own: reply classes, backoff, Retry-After, the split backlog.

The server side is a transport function here (the policy sits above the I/O); what the
real servers do is in test_sinks_v1.py and test_sinks_v2.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from conftest import stored

from energyd.config.schema import InfluxDB
from energyd.daemon.forwarding import rejection_reporter
from energyd.errors import (
    ConfigError,
    SinkRefused,
    SinkRejected,
    SinkRetryable,
    SinkServerError,
    SinkThrottled,
)
from energyd.model import Reading, from_ms
from energyd.sinks import Encoder, Forwarder, backoff_delay
from energyd.sinks.forwarder import GAP, LIVE, Outcome
from energyd.sinks.forwarder import backlog as sink_backlog
from energyd.sinks.transport import Redactor, classify, retry_after
from energyd.store.sqlite import READINGS, Store


class Scripted:
    """A transport that answers from a script and records what it was sent."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.bodies: list[bytes] = []
        self.times: list[float] = []

    def write(self, body: bytes) -> None:
        self.times.append(time.monotonic())
        reply = self.replies.pop(0) if self.replies else None
        if reply is not None:
            raise reply
        self.bodies.append(body)

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "energyd.db") as s:
        yield s


def readings(n: int, start: int = 1_700_000_000_000) -> list[Reading]:
    return [Reading(from_ms(start + k * 1000), "m1", "active_power_kw", float(k))
            for k in range(n)]


@pytest.mark.parametrize(("status", "kind", "reason"), [
    (400, SinkRejected, None), (413, SinkRejected, None), (422, SinkRejected, None),
    (429, SinkThrottled, "throttled"), (500, SinkServerError, "server"),
    (503, SinkServerError, "server"), (408, SinkRefused, "refused"),
    (401, SinkRefused, "refused"), (403, SinkRefused, "refused"), (404, SinkRefused, "refused"),
])
def test_each_reply_class_maps_to_what_happens_next(status, kind, reason):
    exc = classify(status, "server says no", "sink1 (http://127.0.0.1:1)", 7.0)
    assert type(exc) is kind
    assert "sink1" in str(exc) and f"HTTP {status}" in str(exc) and "server says no" in str(exc)
    if issubclass(kind, SinkRetryable):
        # told apart by type: the metric's reason label is the class's, not parsed text
        assert exc.retryable and exc.retry_after == 7.0 and exc.reason == reason
    else:
        assert not exc.retryable


def test_retry_after_header_forms():
    assert retry_after("120") == 120.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 < retry_after(format_datetime(later, usegmt=True)) <= 30


def test_backoff_grows_with_jitter_and_stays_under_its_cap():
    for attempt in range(12):
        ceiling = min(60.0, 2.0 ** attempt)
        delays = [backoff_delay(attempt, 60.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        if attempt > 2:
            assert len(set(delays)) > 1  # jittered


def test_redactor_masks_secrets_and_bounds_length():
    redact = Redactor(["s3cret", None, ""])
    assert redact("token s3cret refused s3cret") == "token *** refused ***"
    assert len(redact("x" * 5000)) < 600


def test_url_with_credentials_is_refused():
    with pytest.raises(ValueError, match="credentials do not belong in the URL"):
        InfluxDB(api="v1", url="http://user:pw@127.0.0.1:8086", database="x")
    with pytest.raises(ValueError, match="not an http"):
        InfluxDB(api="v1", url="127.0.0.1:8086", database="x")
    assert not issubclass(ConfigError, SinkRejected)


def test_retry_after_is_honoured_and_the_cursor_waits_for_the_ack(store):
    store.insert_readings(readings(5))
    transport = Scripted([SinkRetryable("busy", retry_after=0.4), None])
    fwd = Forwarder("s", store, transport, encoder=Encoder("site", {}), interval=0.05,
                    backoff_max=0.01)
    thread = threading.Thread(target=fwd.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while store.cursors.position("s", READINGS) == 0 and time.monotonic() < deadline:
        assert sink_backlog(store, "s").count in (0, 5)
        time.sleep(0.02)
    fwd.stop()
    thread.join(5)
    assert len(transport.times) >= 2
    assert transport.times[1] - transport.times[0] >= 0.4  # not the 0.01 s backoff
    assert sink_backlog(store, "s").count == 0 and len(transport.bodies) == 1


def test_bisection_finds_the_refused_points_and_keeps_the_rest(store):
    store.insert_readings(readings(13))

    class RefusesSeven(Scripted):
        def write(self, body: bytes) -> None:
            self.times.append(time.monotonic())
            if b"active_power_kw=7.0 " in body:
                raise SinkRejected("HTTP 400: bad point", 400)
            self.bodies.append(body)

    transport = RefusesSeven([])
    outcomes: list[Outcome] = []
    episodes = rejection_reporter("s", store)

    def report(out: Outcome) -> None:
        outcomes.append(out)
        episodes(out)

    fwd = Forwarder("s", store, transport, encoder=Encoder("site", {}), chunk_size=100,
                    report=report)
    fwd.drain(timeout=5)
    # the forwarder reports what was refused; it writes no alert itself
    [rejection] = [r for out in outcomes for r in out.rejections]
    assert (rejection.stream, rejection.points, rejection.items) == (READINGS, 1, 1)
    assert "bad point" in rejection.message
    lines = b"\n".join(transport.bodies).decode().splitlines()
    sent = [line for line in lines if line.startswith("energy_reading,")]
    assert len(sent) == 12 and not any("=7.0 " in line for line in sent)
    # ... and the rejection went out as an alert episode of the sink
    [alert] = [line for line in lines if line.startswith("energy_alert,")]
    assert "device=s,rule=sink_rejected" in alert and "bad point" in alert
    [(item, message)] = stored(store, "SELECT item, message FROM rejected")
    assert [r.value for r in store.readings.readings_after(item - 1, 1)] == [7.0]
    assert "bad point" in message
    # the chunk, 2 per level of halving (13 -> 7 -> 4 -> 2 -> 1), and the alert
    assert len(transport.times) <= 1 + 2 * 4 + 1


def test_backlog_counts_both_unsent_ranges_while_the_live_tail_goes_first(store):
    store.insert_readings(readings(100))
    ids = [r.id for r in store.readings.readings_after(0, 100)]
    assert sink_backlog(store, "s").count == 100
    # sent: ids <= 10 and (60, 80]; unsent: (10, 60] and after 80
    store.cursors.commit("s", {READINGS: ids[9], GAP: ids[59], LIVE: ids[79]})
    backlog = sink_backlog(store, "s")
    assert backlog.count == 50 + 20
    assert backlog.oldest_ms == 1_700_000_000_000 + 10 * 1000
    store.cursors.commit("s", {READINGS: ids[79], GAP: None, LIVE: None})
    assert sink_backlog(store, "s").count == 20


def test_a_backlog_opens_a_gap_and_every_reading_is_sent_exactly_once(store):
    store.insert_readings(readings(400))
    transport = Scripted([])
    fwd = Forwarder("s", store, transport, encoder=Encoder("site", {}), chunk_size=10,
                    max_points_per_second=1000)
    first = fwd.step()
    assert fwd.gap is not None and first.sent > 0
    assert b"active_power_kw=399.0 " in transport.bodies[0]  # the live tail went first
    while len(transport.bodies) < 2:  # the backlog waits its turn at the rate
        time.sleep(0.005)
        fwd.step()
    assert b"active_power_kw=0.0 " in transport.bodies[1]  # then the head of the backlog
    store.insert_readings(readings(5, start=1_800_000_000_000))
    fwd.step()
    assert b"active_power_kw=4.0 1800000004000" in transport.bodies[2]  # live again
    fwd.drain(timeout=10)
    assert fwd.gap is None
    lines = b"\n".join(transport.bodies).decode().splitlines()
    assert len(lines) == len(set(lines)) == 405
    assert sink_backlog(store, "s").count == 0


def test_packed_polls_with_sparse_ids_are_each_sent_once_across_gap_and_tail(store):
    """A poll of nine quantities is one sample: its readings' ids leave holes up to the next
    sample. The forwarder counts readings, never subtracts ids."""
    quantities = ["active_power_kw", "reactive_power_kvar", "voltage_l1_v", "voltage_l2_v",
                  "voltage_l3_v", "current_l1_a", "current_l2_a", "current_l3_a",
                  "active_energy_import_kwh"]

    def polls(n: int, start: int) -> None:
        for k in range(n):
            for device in ("m1", "m2", "m3"):
                store.insert_readings([Reading(from_ms(start + k * 1000), device, q,
                                               float(k * 10 + i))
                                       for i, q in enumerate(quantities)])

    polls(120, 1_700_000_000_000)
    # ids are far from dense
    assert store.readings.last_reading_id() > 10 * store.readings.count_readings()
    transport = Scripted([])
    fwd = Forwarder("s", store, transport, encoder=Encoder("site", {}), chunk_size=20,
                    max_points_per_second=200)
    fwd.step()
    assert fwd.gap is not None  # 3,240 readings unsent: more than two chunks' worth
    polls(3, 1_800_000_000_000)
    fwd.drain(timeout=10)
    assert fwd.gap is None and sink_backlog(store, "s").count == 0
    lines = b"\n".join(transport.bodies).decode().splitlines()
    assert len(lines) == len(set(lines)) == 3 * 123  # a point per device and poll
    fields = [f for line in lines for f in line.split(" ")[1].split(",")]
    assert len(fields) == store.readings.count_readings() == 9 * 3 * 123


def test_the_backlogs_oldest_time_counts_only_unsent_readings(store):
    store.insert_readings(readings(20, start=1_700_000_100_000))
    store.insert_readings(readings(20, start=1_700_000_000_000))  # older, stored later
    ids = [r.id for r in store.readings.readings_after(0, 40)]
    # sent: up to the 5th and the 11th to 30th (among them the older ones' first ten)
    store.cursors.commit("s", {READINGS: ids[4], GAP: ids[9], LIVE: ids[29]})
    backlog = sink_backlog(store, "s")
    assert backlog.count == 5 + 10
    assert backlog.oldest_ms == 1_700_000_000_000 + 10 * 1000
