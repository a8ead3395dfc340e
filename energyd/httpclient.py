"""energyd's one HTTP client: urllib3, the library under influxdb-client (so the v2 sink
already speaks through it), here for the InfluxDB 1.x sink, webhooks and `energyd status`.

Why urllib3: it is installed with influxdb-client anyway; it keeps connections alive and
notices one the server dropped while idle before reusing it; it takes an ssl.SSLContext
(energyd.tls) and socket options; and with `retries=False` it leaves retrying to energyd's
own policy (energyd.retry), which knows what a retry may cost. httpx would be a fourth
stack beside influxdb-client's; http.client and urllib.request each need by hand what
urllib3 does (stale keep-alive connections, pools, timeouts for connect and read apart).

    client = HttpClient("http://127.0.0.1:8086", timeout=10.0)
    reply = client.post("/write?db=energy", body, {"Content-Type": "text/plain"})
    reply.status, reply.header("Retry-After"), reply.data
    client.close()

Any reply, whatever its status, is a Reply: what a status means is the caller's to say.
No reply at all (refused, reset, timed out, TLS failure) raises HttpUnreachable, whose
message never holds the URL's userinfo or query.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from energyd.tls import client_context

__all__ = ["HttpClient", "HttpUnreachable", "Reply", "split_url"]


class HttpUnreachable(Exception):
    """No reply: the connection was refused, reset, timed out or failed its TLS check."""

    def __init__(self, reason: str, *, timed_out: bool = False, connected: bool = False):
        self.reason = reason
        self.timed_out = timed_out
        # the connection was up (a kept-alive one the server dropped, or a reply cut short)
        self.connected = connected
        super().__init__(reason)


class Reply(NamedTuple):
    status: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive
    data: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def split_url(url: str) -> tuple[str, str]:
    """("scheme://host:port", "/path?query") of an http(s) URL without userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return origin, target


class HttpClient:
    """Requests to one origin (scheme, host, port) over one kept-alive connection.

    Arguments (keyword-only after the first):
      origin       "http(s)://host[:port]" (a path after it is ignored: give it per request)
      timeout      seconds for connecting and, apart, for each read of the reply
      tls          the context for https (default: energyd.tls.client_context())
      socket_options  extra (level, option, value) set on each new connection
    """

    def __init__(self, origin: str, *, timeout: float, tls: ssl.SSLContext | None = None,
                 socket_options: list[tuple[int, int, int]] | None = None):
        origin, _ = split_url(origin)
        options: dict[str, Any] = {
            "maxsize": 1, "block": False, "retries": False,
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        }
        if socket_options:
            options["socket_options"] = [
                *urllib3.connection.HTTPConnection.default_socket_options, *socket_options]
        if origin.startswith("https:"):
            options["ssl_context"] = tls or client_context()
        self.origin = origin
        self._options = options
        self._pool: urllib3.HTTPConnectionPool | None = urllib3.connection_from_url(
            origin, **options)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        if self._pool is None:
            raise HttpUnreachable(f"{self.origin}: the client is closed")
        try:
            resp = self._pool.urlopen(method, target, body=body, headers=dict(headers or {}),
                                      redirect=False, preload_content=True)
        except HTTPError as exc:
            raise HttpUnreachable(_reason(exc), timed_out=_timed_out(exc), connected=not
                                  isinstance(exc, NewConnectionError | ConnectTimeoutError)
                                  ) from None
        except OSError as exc:
            raise HttpUnreachable(exc.strerror or str(exc) or type(exc).__name__) from None
        return Reply(resp.status, resp.reason or "", resp.headers, resp.data or b"")

    def post(self, target: str, body: bytes, headers: Mapping[str, str] | None = None
             ) -> Reply:
        return self.request("POST", target, body, headers)

    def get(self, target: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", target, None, headers)

    def reset(self) -> None:
        """Drop the kept-alive connection: the next request opens a fresh one."""
        if self._pool is not None:
            self._pool.close()
            self._pool = urllib3.connection_from_url(self.origin, **self._options)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _reason(exc: BaseException) -> str:
    """The innermost cause ("Connection refused", "timed out"), without urllib3's
    "HTTPConnection(host=..., port=...): " prefix."""
    seen: BaseException = exc
    while True:
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            # ProtocolError("Connection aborted.", ConnectionResetError(...))
            inner = next((a for a in seen.args if isinstance(a, BaseException)),
                         seen.__cause__)
        if inner is None or inner is seen:
            break
        seen = inner
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    if _timed_out(seen):
        return "timed out"
    text = str(seen)
    return text.split("): ", 1)[-1].split(">: ", 1)[-1] or type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    # urllib3 makes NewConnectionError (a refused connection) a ConnectTimeoutError too
    return isinstance(exc, Urllib3Timeout | TimeoutError) and \
        not isinstance(exc, NewConnectionError)
