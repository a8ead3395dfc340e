"""InfluxDB 1.x `/write` over plain HTTP (the API InfluxDB 1.0-1.8 answers).

Options (a `sinks:` entry of `type: influxdb_v1`, or `influxdb:` with `api: v1`; README.md
beside this file): `url`, `database`, `retention_policy` (the database's default when
unset), `username` with `password_file`/`password_env` (sent as HTTP Basic authentication,
never in the query string, so no proxy or server log sees it), `timeout`, `gzip`. One
keep-alive connection (energyd.httpclient); on any connection error it is dropped and opened
afresh on the next write. Replies are sorted by `transport.classify`. The Date of the last
reply is kept in `server_date` (the daemon checks its own clock against it).
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import json
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit

from energyd.config.secrets import redact_url
from energyd.errors import SinkUnreachable
from energyd.httpclient import HttpClient, HttpUnreachable, Reply
from energyd.retry import retry_after
from energyd.sinks.transport import Redactor, classify

SEND_BUFFER = 8 << 20


def make(sink: Any) -> V1Transport:
    return V1Transport(sink)


class V1Transport:
    """`sink`: the sink's options (influxdb_v1/options.py, or an `influxdb:` entry)."""

    def __init__(self, sink: Any):
        parts = urlsplit(sink.url)
        self.name = sink.name
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
        # A chunk goes out in one send(): between two sends this thread must win the GIL
        # back from the thread encoding the next chunk, which can take a switch interval
        # (5 ms) each time.
        self._http = HttpClient(sink.url, timeout=sink.timeout, socket_options=[
            (socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)])
        self._closed = False
        self.server_date: str | None = None  # the Date header of the last reply

    def write(self, body: bytes) -> None:
        if self._closed:
            raise SinkUnreachable(f"{self._where}: the transport is closed")
        if self._gzip:
            body = gzip_module.compress(body, compresslevel=1)
        # a kept-alive connection the server (or a proxy) closed as it was reused fails
        # without a reply: that attempt is repeated at once on a new connection
        for last in (False, True):
            try:
                reply = self._http.post(self._path, body, self._headers)
                break
            except HttpUnreachable as exc:
                self._http.reset()
                if last or exc.timed_out or not exc.connected:
                    raise SinkUnreachable(self._redact(f"{self._where}: {exc.reason}")) \
                        from None
        self.server_date = reply.header("Date")
        if 200 <= reply.status < 300:
            return
        raise classify(reply.status, self._redact(_message(reply)), self._where,
                       retry_after(reply.header("Retry-After")))

    def close(self) -> None:
        self._closed = True
        self._http.close()


def _message(reply: Reply) -> str:
    text = reply.data.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed["error"]
    return text or reply.header("X-Influxdb-Error", "") or reply.reason
