"""energyd.retry and energyd.tls: the one backoff, Retry-After parser and TLS context every
retrying or TLS-speaking part of energyd uses."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from energyd.retry import Backoff, backoff_delay, retry_after
from energyd.tls import client_context


def test_backoff_doubles_up_to_its_cap_honours_retry_after_and_starts_afresh():
    plain = Backoff(base=0.5, cap=4.0, jitter=False)
    assert [plain.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert plain.next(at_least=30.0) == 30.0  # a server's Retry-After wins when longer
    plain.reset()
    assert plain.next() == 0.5 and plain.attempt == 1
    jittered = Backoff(base=1.0, cap=60.0, rng=lambda lo, hi: lo)
    assert [jittered.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]  # half the ceiling
    delays = [backoff_delay(3, 10.0) for _ in range(50)]  # ceiling min(10, 2**3) = 8
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1
    assert backoff_delay(3, 10.0, jitter=False) == 8.0
    assert backoff_delay(10, 10.0, jitter=False) == 10.0


def test_retry_after_reads_seconds_and_http_dates_and_nothing_else():
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert retry_after("120", now=lambda: now) == 120.0
    assert retry_after(" 1.5 ", now=lambda: now) == 1.5
    assert retry_after("-3", now=lambda: now) == 0.0
    assert retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now=lambda: now) == 30.0
    assert retry_after("Wed, 21 Oct 2026 07:27:00 GMT", now=lambda: now) == 0.0  # past
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(later) <= 30
    for bad in (None, "", "soon", "nan", "inf", "Wed, 99 Foo"):
        assert retry_after(bad, now=lambda: now) is None, bad


def test_tls_context_verifies_and_insecure_skips_only_the_host_name():
    strict = client_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    lab = client_context(insecure=True)
    assert lab.verify_mode == ssl.CERT_REQUIRED and not lab.check_hostname
