"""The I/O under a forwarder: a transport writes one body of line protocol, or says why not.

    class Transport(Protocol):
        def write(self, body: bytes) -> None   # ms precision; returns on a 2xx
        def close(self) -> None                # idempotent

Replies are sorted by what the forwarder should do next (`classify`):

    2xx                      accepted: the forwarder advances its cursor
    connection error         SinkUnreachable  \
    5xx                      SinkServerError   } SinkRetryable: the chunk is tried again after
    429                      SinkThrottled    /  a jittered backoff, at least Retry-After
    408, 401, 403, 404       SinkRefused: retryable too: a wrong token or a missing database
                             is a configuration to fix, not a reason to throw data away
    413, 400, 422, other 4xx SinkRejected: the forwarder bisects the chunk to find the points
                             that will never be taken and goes on with the rest

Messages never hold secrets: `Redactor` masks every configured secret and the URL's
userinfo before a message leaves this package (in an exception or a log line).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from energyd.config.secrets import redact_urls
from energyd.errors import SinkError, SinkRefused, SinkRejected, SinkServerError, SinkThrottled
from energyd.retry import retry_after

__all__ = ["MESSAGE_MAX", "Redactor", "Transport", "classify", "retry_after"]

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


def classify(status: int, message: str, where: str, retry_after_s: float | None) -> SinkError:
    """The exception for a non-2xx reply."""
    text = f"{where}: HTTP {status}: {message}" if message else f"{where}: HTTP {status}"
    if status == 429:
        return SinkThrottled(text, retry_after_s)
    if status >= 500:
        return SinkServerError(text, retry_after_s)
    if status == 408:
        return SinkRefused(text, retry_after_s)
    if status in _BLOCKING:
        return SinkRefused(f"{text} (check the sink's {_blocking_hint(status)})",
                             retry_after_s)
    return SinkRejected(text, status)


def _blocking_hint(status: int) -> str:
    return "credentials" if status in (401, 403) else "url, database/bucket and org"
