"""Health and Prometheus metrics over HTTP, on 127.0.0.1 by default.

GET /health  -> 200 JSON while the daemon runs, "status" ok or degraded (the degraded
               states named, each with its reason); 503 while stopping
GET /metrics -> Prometheus text format
A deliberately small HTTP/1.0 server on asyncio streams: two read-only endpoints do not
justify a web framework in a gateway daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, host: str, port: int, health: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes]):
        self._host, self._port = host, port
        self._health, self._metrics = health, metrics
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health and metrics on http://%s:%d/", self._host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, target, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"read-only\n"
            elif path == "/health":
                payload = self._health()
                # degraded still runs (and keeps what it reads): a restart would not help
                ok = payload.get("status") in ("ok", "degraded")
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(payload).encode() + b"\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = await asyncio.to_thread(self._metrics)
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except Exception:
            log.exception("health endpoint failed")
        finally:
            writer.close()
