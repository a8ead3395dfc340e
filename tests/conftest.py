from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# servers.py sits next to this file and is no package; keep it importable under any import mode
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from servers import InfluxDBServer, MosquittoServer, VictoriaMetricsServer  # noqa: E402

# --- real servers ---
# Real InfluxDB 1.x, Mosquitto and VictoriaMetrics on free loopback ports (tests/servers.py).
# `influxdb`, `mosquitto` and `victoria_metrics` are shared by the whole session: never stop
# them; take a fresh name from `influxdb_database`, `mqtt_topic_prefix` or
# `victoria_metrics_db` instead. A test that needs an outage uses the `*_private` variant,
# its own server for that test alone, and calls stop()/start()/restart() on it.
# Server directories (config, data, <name>.log) live under pytest's basetemp for post-mortems.


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    with InfluxDBServer(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture
def influxdb_database(influxdb: InfluxDBServer) -> Iterator[str]:
    """A database created for this test on the shared server, dropped afterwards."""
    influxdb.start()  # no-op unless a test stopped the shared server by mistake
    name = _unique("test_")
    influxdb.create_database(name)
    yield name
    if influxdb.running:
        influxdb.drop_database(name)


@pytest.fixture
def influxdb_private(tmp_path: Path) -> Iterator[InfluxDBServer]:
    with InfluxDBServer(tmp_path / "influxdb") as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    with MosquittoServer(tmp_path_factory.mktemp("mosquitto")) as server:
        yield server


@pytest.fixture
def mqtt_topic_prefix() -> str:
    """A topic prefix no other test uses, e.g. "energyd-test/3f2a9c..." (no trailing slash);
    also a handy stem for client ids."""
    return _unique("energyd-test/")


@pytest.fixture
def mosquitto_private(tmp_path: Path) -> Iterator[MosquittoServer]:
    with MosquittoServer(tmp_path / "mosquitto") as server:
        yield server


@pytest.fixture(scope="session")
def victoria_metrics(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VictoriaMetricsServer]:
    with VictoriaMetricsServer(tmp_path_factory.mktemp("victoria-metrics")) as server:
        yield server


@pytest.fixture
def victoria_metrics_db() -> str:
    """A value for the `db` label no other test uses: pass it as `?db=` on /write or
    /api/v2/write and select on `{db="..."}` (a v2 bucket name does not become a label)."""
    return _unique("test_")


@pytest.fixture
def victoria_metrics_private(tmp_path: Path) -> Iterator[VictoriaMetricsServer]:
    with VictoriaMetricsServer(tmp_path / "victoria-metrics") as server:
        yield server


# --- the store ---
# One fresh store per test, in the test's own directory; the store and accounting tests take
# it rather than each opening their own.

from energyd.store import Store  # noqa: E402


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where the `store` fixture keeps its file (for a test that reopens it)."""
    return tmp_path / "energyd.db"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    """A new, empty store, closed after the test (closing twice is harmless)."""
    with Store.open(store_path) as opened:
        yield opened


def stored(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    """A table as the store holds it, read on a connection of the test's own (as another
    process would): for what no repository gives back, e.g. change numbers."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return conn.execute(sql, params).fetchall()


def altered(store: Store, sql: str, rows: list[tuple] | None = None, *,
            numbered: bool = False) -> None:
    """Rows written on a connection of the test's own, in one transaction (as another
    process, or a hand edit in the sqlite3 shell, would): for what no repository of the
    test's own area writes, e.g. an alert row or a statement corrected in place.
    `numbered`: each row gets the store's next change number as its last parameter, as the
    store gives a changed rollup or alert, so the sinks see it."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.path, timeout=30)) as conn, conn:
        for params in rows if rows is not None else [()]:
            if numbered:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                             "WHERE key = 'seq'")
                params = (*params, int(conn.execute(
                    "SELECT value FROM meta WHERE key = 'seq'").fetchone()[0]))
            conn.execute(sql, params)


# --- `energyd demo`, run once for tests/test_demo.py and tests/test_grafana.py ---

import subprocess  # noqa: E402


class DemoRun:
    """What one `energyd demo --duration` run left: its output, directory and database."""

    def __init__(self, proc: subprocess.CompletedProcess[str], workdir: Path, database: str,
                 influx: InfluxDBServer, duration: float):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.workdir = workdir
        self.database = database
        self.influx = influx
        self.duration = duration


DEMO_SECONDS = 45.0  # at 360x: 4.5 simulated hours, the spike and the leak alert included


@pytest.fixture(scope="session")
def demo_run(influxdb: InfluxDBServer, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`energyd demo` as `make demo` runs it (the console script, in a subprocess), for a
    bounded time, also forwarding to the shared InfluxDB through the v1 sink."""
    workdir = tmp_path_factory.mktemp("demo") / "demo-data"
    database = _unique("demo_")
    influxdb.create_database(database)
    energyd = Path(sys.executable).parent / "energyd"
    proc = subprocess.run(
        [str(energyd), "demo", "--dir", str(workdir), "--duration", str(DEMO_SECONDS),
         "--influx", influxdb.url, "--influx-database", database],
        capture_output=True, text=True, timeout=DEMO_SECONDS + 60,
        cwd=Path(__file__).resolve().parent.parent)
    return DemoRun(proc, workdir, database, influxdb, DEMO_SECONDS)
