"""The I/O under a forwarder: a transport writes one body of line protocol, or says why not.

    class Transport(Protocol):
        def write(self, body: bytes) -> None   # ms precision; returns on a 2xx
        def close(self) -> None                # idempotent

Replies are sorted by what the forwarder should do next (`classify`):

    2xx                      accepted: the forwarder advances its cursor
    connection error, 5xx,   SinkRetryable: the chunk is tried again after a jittered backoff,
    429, 408                 or after Retry-After when the server sends one
    401, 403, 404            SinkRetryable too: a wrong token or a missing database is a
                             configuration to fix, not a reason to throw data away
    413, 400, 422, other 4xx SinkRejected: the forwarder bisects the chunk to find the points
                             that will never be taken and goes on with the rest

Messages never hold secrets: `Redactor` masks every configured secret and the URL's
userinfo before a message leaves this package (in an exception or a log line).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from typing import Protocol

from energyd.config.secrets import redact_urls
from energyd.errors import SinkError, SinkRejected, SinkRetryable

# a server may echo a whole chunk back: keep what goes to logs and the store short
MESSAGE_MAX = 500

# Retrying these will not help until someone fixes the configuration, but neither does
# dropping the data: the stream waits (and logs why) instead.
_BLOCKING = {401: "unauthorized", 403: "forbidden", 404: "not found"}


class Transport(Protocol):
    name: str

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


class Redactor:
    def __init__(self, secrets: Iterable[str | None]):
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = redact_urls(text)
        if len(text) > MESSAGE_MAX:
            text = text[:MESSAGE_MAX] + "..."
        return text


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(status: int, message: str, where: str, retry_after_s: float | None) -> SinkError:
    """The exception for a non-2xx reply."""
    text = f"{where}: HTTP {status}: {message}" if message else f"{where}: HTTP {status}"
    if status in (408, 429) or status >= 500:
        return SinkRetryable(text, retry_after_s)
    if status in _BLOCKING:
        return SinkRetryable(f"{text} (check the sink's {_blocking_hint(status)})",
                             retry_after_s)
    return SinkRejected(text, status)


def _blocking_hint(status: int) -> str:
    return "credentials" if status in (401, 403) else "url, database/bucket and org"
