"""Real test servers (InfluxDB 1.x, Mosquitto, VictoriaMetrics) run as subprocesses.

Each server listens on free loopback ports and keeps its config, data and log in one
directory. ``stop()``/``start()``/``restart()`` keep the port and the data directory, so a
test can simulate an outage and the clients it configured still point at the same place.

Standard library only: this module must import before the project's virtualenv is complete.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

__all__ = [
    "InfluxDBServer",
    "MosquittoServer",
    "ServerProcess",
    "VictoriaMetricsServer",
    "free_port",
    "free_ports",
]

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

# An http_proxy in the environment must never see test traffic, and only loopback is used.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)  # held open until all are picked, so the ports are distinct
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


# --- process lifetime safety nets --------------------------------------------------------

_live: set[ServerProcess] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.close(timeout=3.0)


def _with_death_signal(command: list[str]) -> list[str]:
    """Have Linux SIGTERM the server if this Python process dies without running atexit
    (SIGKILL, a CI timeout). setpriv sets the flag and execs the server in place, so the pid
    is the server's; a preexec_fn would do the same but is unsafe once threads exist.
    The kernel ties the flag to the thread that started the server."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


# --- generic server process ----------------------------------------------------------------


class ServerProcess:
    """One server subprocess with its own directory, port(s) and log file.

    Subclasses set ``name``, ``package`` and ``default_binary`` and implement
    ``_write_config()``, ``_command()`` and ``_ready()``.
    """

    name = "server"
    package = ""
    default_binary = ""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.binary = binary or self._find_binary()
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(
                f"{self.name}: {self.binary} not found or not executable. The tests need "
                f"the Debian package '{self.package}'; run `make test`, which installs it."
            )
        if directory is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"energyd-{self.name}-"))
            self._owns_dir = True
        else:
            self.dir = Path(directory)
            self.dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.log_path = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _find_binary(self) -> str:
        if os.access(self.default_binary, os.X_OK):
            return self.default_binary
        return shutil.which(os.path.basename(self.default_binary)) or self.default_binary

    # subclass hooks
    def _write_config(self) -> None:
        pass

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Start the server (no-op if running) and wait until it answers."""
        if self._closed:
            raise RuntimeError(f"{self.name}: already closed")
        if self.running:
            return self
        self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Appending keeps the log of earlier runs, which is what one wants after a restart.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                _with_death_signal(self._command()),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's to handle
            )
        with _live_lock:
            _live.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise RuntimeError(
                    f"{self.name} exited with code {code} during startup "
                    f"({' '.join(self._command())})\n{self._log_tail(log_offset)}"
                )
            try:
                if self._ready():
                    # Something else may have answered on the port; make sure it was us.
                    if self.proc.poll() is None:
                        return self
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f} s\n{self._log_tail(log_offset)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (so the server persists its state), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        with _live_lock:
            _live.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to persist anything."""
        proc, self.proc = self.proc, None
        with _live_lock:
            _live.discard(self)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = STOP_TIMEOUT) -> Self:
        self.stop(timeout)
        return self.start()

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop(timeout)
        self._closed = True
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} dir={self.dir}>"

    # helpers
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"
        return f"--- last lines of {self.log_path} ---\n{tail}"

    def _http_get_status(self, url: str) -> tuple[int, bytes]:
        try:
            with _http.open(url, timeout=1.0) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def _request(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _http.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        raise RuntimeError(
            f"{method} {url} -> HTTP {e.code}: {body.decode(errors='replace')}"
        ) from None


def _line_protocol(lines: str | bytes | Iterable[str]) -> bytes:
    if isinstance(lines, bytes):
        return lines
    if isinstance(lines, str):
        return lines.encode()
    return "\n".join(lines).encode()


# --- InfluxDB 1.x ----------------------------------------------------------------------------


class InfluxDBServer(ServerProcess):
    """``influxd`` 1.x with auth off. ``port`` is the HTTP API; ``rpc_port`` the backup/RPC one."""

    name = "influxdb"
    package = "influxdb"
    default_binary = "/usr/bin/influxd"

    def __init__(self, *args: Any, rpc_port: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rpc_port = rpc_port or free_port()
        while self.rpc_port == self.port:
            self.rpc_port = free_port()
        self.config_path = self.dir / "influxdb.conf"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> None:
        meta, data, wal = self.dir / "meta", self.dir / "data", self.dir / "wal"
        # Debian's build reads "reporting-enabled"; upstream 1.x reads "reporting-disabled".
        # Unknown keys are ignored, so both are set and nothing ever phones home.
        self.config_path.write_text(
            f"""\
reporting-disabled = true
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{meta}"
  logging-enabled = false

[data]
  dir = "{data}"
  wal-dir = "{wal}"
  query-log-enabled = false

[monitor]
  # no _internal database: SHOW DATABASES stays exactly what the test created
  store-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[ifql]
  enabled = false
"""
        )

    def _command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def _ready(self) -> bool:
        status, _ = self._http_get_status(f"{self.url}/ping")
        return status == 204

    def query(
        self,
        q: str,
        db: str | None = None,
        *,
        epoch: str | None = None,
        method: str | None = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """Run InfluxQL through /query and return the decoded JSON.

        Read-only statements go as GET, anything else as POST (InfluxDB 1.x refuses
        writes over GET). With ``check`` an ``error`` in the answer raises RuntimeError.
        """
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        if method is None:
            words = q.strip().upper()
            read_only = words.startswith(("SELECT", "SHOW")) and " INTO " not in words
            method = "GET" if read_only else "POST"
        encoded = urllib.parse.urlencode(params)
        if method == "GET":
            _, body = _request("GET", f"{self.url}/query?{encoded}")
        else:
            _, body = _request(
                "POST",
                f"{self.url}/query",
                data=encoded.encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        result = json.loads(body)
        if check:
            errors = [result["error"]] if "error" in result else []
            errors += [r["error"] for r in result.get("results", []) if "error" in r]
            if errors:
                raise RuntimeError(f"InfluxDB query {q!r} failed: {'; '.join(errors)}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def write(self, db: str, lines: str | bytes | Iterable[str], precision: str = "ns") -> None:
        """POST line protocol to /write."""
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        _request("POST", f"{self.url}/write?{qs}", data=_line_protocol(lines))


# --- Mosquitto ---------------------------------------------------------------------------------


class MosquittoServer(ServerProcess):
    """Mosquitto 2 with anonymous access and on-disk persistence in its directory.

    A SIGTERM (``stop``/``restart``) writes the persistence file, so persistent sessions
    and their queued QoS 1/2 messages survive a restart; ``kill()`` loses them.
    """

    name = "mosquitto"
    package = "mosquitto"
    default_binary = "/usr/sbin/mosquitto"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_path = self.dir / "mosquitto.conf"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            # mosquitto concatenates this with the file name, hence the trailing slash
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            "log_dest stderr",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # otherwise it drops to user "mosquitto", who cannot write our 0700 directory
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    # MQTT 3.1.1 CONNECT (clean session, keepalive 10 s, client id "energyd-test-probe")
    _PROBE_CONNECT = b"\x10\x1e\x00\x04MQTT\x04\x02\x00\x0a\x00\x12energyd-test-probe"
    _CONNACK_OK = b"\x20\x02\x00\x00"
    _DISCONNECT = b"\xe0\x00"

    def _ready(self) -> bool:
        # A bare TCP connect would also succeed against whatever else holds the port;
        # only a broker answers CONNECT with CONNACK.
        with socket.create_connection((self.host, self.port), timeout=1.0) as s:
            s.sendall(self._PROBE_CONNECT)
            answer = b""
            while len(answer) < len(self._CONNACK_OK):
                chunk = s.recv(len(self._CONNACK_OK) - len(answer))
                if not chunk:
                    return False
                answer += chunk
            if answer != self._CONNACK_OK:
                return False
            s.sendall(self._DISCONNECT)
            return True


# --- VictoriaMetrics ---------------------------------------------------------------------------


class VictoriaMetricsServer(ServerProcess):
    """Single-node VictoriaMetrics; accepts InfluxDB line protocol on /write and /api/v2/write.

    ``?db=NAME`` on either write endpoint becomes the label ``db="NAME"``; a v2 ``bucket``
    does not. Metric names are ``<measurement>_<field>``.
    """

    name = "victoria-metrics"
    package = "victoria-metrics"
    default_binary = "/usr/bin/victoria-metrics"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_dir = self.dir / "data"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            # tests use fixed historical timestamps; the default retention (1 month) drops them
            "-retentionPeriod=100y",
            # queries must see what was just written and flushed, not a cached or delayed view
            "-search.disableCache",
            "-search.latencyOffset=0s",
            "-loggerLevel=WARN",
        ]

    def _ready(self) -> bool:
        status, body = self._http_get_status(f"{self.url}/health")
        return status == 200 and body.strip() == b"OK"

    def write(
        self,
        lines: str | bytes | Iterable[str],
        *,
        db: str | None = None,
        precision: str = "ns",
    ) -> None:
        """POST InfluxDB line protocol to /write."""
        params = {"precision": precision}
        if db:
            params["db"] = db
        qs = urllib.parse.urlencode(params)
        _request("POST", f"{self.url}/write?{qs}", data=_line_protocol(lines))

    def force_flush(self) -> None:
        """Make everything ingested so far visible to queries and exports."""
        _request("GET", f"{self.url}/internal/force_flush")

    def export(
        self, match: str, *, start: str | None = None, end: str | None = None
    ) -> list[dict[str, Any]]:
        """GET /api/v1/export for a series selector, one dict per series:
        ``{"metric": {labels}, "values": [...], "timestamps": [ms, ...]}``."""
        params: list[tuple[str, str]] = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        _, body = _request("GET", f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}")
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]
