"""InfluxDB 1.x `/write` over plain HTTP (the API InfluxDB 1.0-1.8 answers).

Options (a `sinks:` entry of `type: influxdb_v1`, or `influxdb:` with `api: v1`; README.md
beside this file): `url`, `database`, `retention_policy` (the
database's default when unset), `username` with `password_file`/`password_env` (sent as
HTTP Basic authentication, never in the query string, so no proxy or server log sees it),
`timeout`, `gzip`. One keep-alive connection; on any connection error it is dropped and
opened afresh on the next write. Replies are sorted by `transport.classify`. The Date of the
last reply is kept in `server_date` (the daemon checks its own clock against it).
"""

from __future__ import annotations

import base64
import contextlib
import gzip as gzip_module
import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit

from energyd.config.secrets import redact_url
from energyd.errors import SinkUnreachable
from energyd.retry import retry_after
from energyd.sinks.transport import Redactor, classify
from energyd.tls import client_context

SEND_BUFFER = 8 << 20


def make(sink: Any) -> V1Transport:
    return V1Transport(sink)


class V1Transport:
    """`sink`: the sink's options (influxdb_v1/options.py, or an `influxdb:` entry)."""

    def __init__(self, sink: Any):
        parts = urlsplit(sink.url)
        self.name = sink.name
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._timeout = sink.timeout
        self._gzip = sink.gzip
        params = {"db": sink.database, "precision": "ms"}
        if sink.retention_policy:
            params["rp"] = sink.retention_policy
        self._path = parts.path.rstrip("/") + "/write?" + urlencode(params)
        self._where = (f"{sink.name} ({redact_url(f'{parts.scheme}://{parts.netloc}')}, "
                       f"database {sink.database})")
        password = sink.password.get_secret_value() if sink.password else None
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if sink.gzip:
            self._headers["Content-Encoding"] = "gzip"
        credentials = None
        if sink.username:
            credentials = base64.b64encode(f"{sink.username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {credentials}"
        self._redact = Redactor([password, credentials])
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False
        self.server_date: str | None = None  # the Date header of the last reply

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout,
                    context=client_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self._timeout)
            self._conn.connect()
            # A chunk goes out in one send(): between two sends this thread must win the GIL
            # back from the thread encoding the next chunk, which can take a switch interval
            # (5 ms) each time.
            with contextlib.suppress(OSError):
                self._conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        return self._conn

    def write(self, body: bytes) -> None:
        if self._closed:
            raise SinkUnreachable(f"{self._where}: the transport is closed")
        if self._gzip:
            body = gzip_module.compress(body, compresslevel=1)
        # a kept-alive connection the server (or a proxy) has closed while idle fails on
        # first use: that attempt is repeated at once on a new connection
        for fresh in (self._conn is None, True):
            try:
                conn = self._connection()
                conn.request("POST", self._path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
                self.server_date = resp.getheader("Date")
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if fresh or isinstance(exc, socket.timeout):
                    reason = "timed out" if isinstance(exc, socket.timeout) else (
                        exc.strerror or str(exc) if isinstance(exc, OSError) else
                        type(exc).__name__)
                    raise SinkUnreachable(self._redact(f"{self._where}: {reason}")) from None
        if 200 <= resp.status < 300:
            return
        if resp.getheader("Connection", "").lower() == "close":
            self._drop()
        raise classify(resp.status, self._redact(_message(resp, data)), self._where,
                       retry_after(resp.getheader("Retry-After")))

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._closed = True
        self._drop()


def _message(resp: http.client.HTTPResponse, data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed["error"]
    return text or resp.getheader("X-Influxdb-Error", "") or resp.reason
