"""The InfluxDB v2 write API through influxdb-client's synchronous write API.

Serves InfluxDB 2.x, 3.x and Cloud (`org`, `bucket`, a token), InfluxDB 1.8+ (token
`user:password`, org `-`, bucket `database/retention_policy`) and servers that take the v2
write API (VictoriaMetrics). Options (a `sinks:` entry of `type: influxdb_v2`, or `influxdb:`
with `api: v2`; README.md beside this file): `url`, `org`, `bucket`, `token_file`/`token_env`,
`timeout`, `gzip`.

The client's batching mode is not used: it drops a batch after its retries and holds data
in memory only. Each chunk is one synchronous write; the client's own retries are off
(`retries=False`), because the forwarder does the backoff and moves its cursor only after a
2xx. Errors are mapped here: `ApiException` by status (`transport.classify`), urllib3's
connection errors to SinkRetryable.
"""

from __future__ import annotations

from typing import Any

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from energyd.config.secrets import redact_url
from energyd.errors import SinkUnreachable
from energyd.retry import retry_after
from energyd.sinks.transport import Redactor, classify


def make(sink: Any) -> V2Transport:
    return V2Transport(sink)


class V2Transport:
    """`sink`: the sink's options (influxdb_v2/options.py, or an `influxdb:` entry)."""

    def __init__(self, sink: Any):
        token = sink.token.get_secret_value() if sink.token else None
        self.name = sink.name
        self._bucket = sink.bucket
        self._org = sink.org or "-"
        self._where = f"{sink.name} ({redact_url(sink.url)}, bucket {sink.bucket})"
        self._redact = Redactor([token])
        self._client: InfluxDBClient | None = InfluxDBClient(
            url=sink.url, token=token, org=self._org, timeout=int(sink.timeout * 1000),
            enable_gzip=sink.gzip, retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        if self._client is None:
            raise SinkUnreachable(f"{self._where}: the transport is closed")
        try:
            self._write_api.write(bucket=self._bucket, org=self._org, record=body,
                                  write_precision=WritePrecision.MS)
        except ApiException as exc:
            status = exc.status or 0
            if status == 0:
                raise SinkUnreachable(self._redact(f"{self._where}: {exc.reason}")) from None
            message = self._redact(_message(exc))
            headers = exc.headers or {}
            raise classify(status, message, self._where,
                           retry_after(headers.get("Retry-After"))) from None
        except (Urllib3Error, InfluxDBError, OSError) as exc:
            raise SinkUnreachable(self._redact(f"{self._where}: {_reason(exc)}")) from None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._write_api.close()
            client.close()


def _message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        import json

        try:
            parsed = json.loads(body)
        except ValueError:
            return str(body).strip()
        if isinstance(parsed, dict):
            return str(parsed.get("message") or parsed.get("error") or body)
        return str(body).strip()
    return str(exc.reason or "")


def _reason(exc: BaseException) -> str:
    # urllib3 nests the cause (MaxRetryError -> NewConnectionError -> ConnectionRefusedError)
    seen = exc
    while getattr(seen, "reason", None) is not None and isinstance(seen.reason, BaseException):
        seen = seen.reason
    text = str(seen)
    # "<urllib3.connection.HTTPConnection object at 0x...>: Failed to establish..." -> the tail
    return text.split(">: ", 1)[-1] or type(exc).__name__
