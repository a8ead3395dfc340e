"""OPC UA acquisition against the project's compressor-controller simulator (an asyncua
server on a loopback port): restarts mid-stream lose nothing and store nothing twice,
Basic256Sha256 with generated certificates, wrong certificates refused clearly, and a
session that cannot write."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID
from ruamel.yaml import YAML

from energyd.config.schema import Config
from energyd.daemon.app import Daemon
from energyd.drivers.opcua.driver import readings_of
from energyd.drivers.opcua.options import OpcuaOptions
from energyd.drivers.opcua.plugin import OpcuaSession
from energyd.drivers.opcua.session import (
    CertificateMismatch,
    CertificateRefused,
    Change,
    Session,
)
from energyd.model import Quality, to_ms
from energyd.simulators.air import AirSystem
from energyd.simulators.opcua import VARIABLES, OpcuaController
from energyd.store.sqlite import Store

DRIVER = Path(__file__).resolve().parent.parent / "energyd" / "drivers" / "opcua"
# short enough that a restart is noticed and repaired within a second
FAST = {"sampling_interval": 0.02, "publishing_interval": 0.05, "watchdog": 0.2,
        "timeout": 2, "reconnect_delay_min": 0.1, "reconnect_delay_max": 0.5}


def _plant(station: str = "air3") -> AirSystem:
    # below the load pressure: the compressor loads at once, so every variable moves
    return AirSystem.build(1, prefix=f"{station}-c", seed=3, pressure_bar=6.0)


def _config(tmp_path: Path, devices: list[dict[str, Any]]) -> Config:
    return Config.model_validate({
        "storage": {"path": str(tmp_path / "energyd.db"), "flush_interval": 0.2},
        "http": {"enabled": False}, "devices": devices})


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    """An in-process energyd on a real clock, reading OPC UA devices."""

    def __init__(self, config: Config):
        self.daemon = Daemon(config)
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.daemon.run(handle_signals=False))
        await asyncio.wait_for(self.daemon.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.daemon.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)

    def component(self, device: str) -> OpcuaSession:
        ctx = self.daemon.context
        assert ctx is not None
        return ctx.health[f"{device}.opcua"].__self__  # type: ignore[attr-defined]

    def metric(self, name: str, device: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, {"device": device})
        return value or 0.0


def _stored(path: Path, device: str) -> dict[str, list[tuple[int, float, int]]]:
    """Per quantity, every (time, value, quality) as an export reads them."""
    out: dict[str, list[tuple[int, float, int]]] = {}
    with Store.open(path) as store:
        assert store.readings.conflict_counts() == {}, "a value came again with another value"
        for t, _, q, v, quality in store.readings.readings_in(0, 2**62, device=device,
                                                              by_series=True):
            out.setdefault(q, []).append((t, v, quality))
    return out


def _check_published_stored(sim: OpcuaController, device: str, path: Path,
                            since_ms: int) -> int:
    """Every change the simulator published from `since_ms` on is stored with its value and
    source time, once; nothing is stored that was never published. Returns how many."""
    stored = _stored(path, device)
    checked = 0
    for quantity in VARIABLES:
        published = dict(sim.published[device][quantity])
        rows = stored.get(quantity, [])
        times = Counter(t for t, _, _ in rows)
        assert not [t for t, n in times.items() if n > 1], f"{quantity}: stored twice"
        invented = [(t, v) for t, v, _ in rows if published.get(t) != v]
        assert not invented, f"{quantity}: stored but never published: {invented[:5]}"
        assert all(quality == Quality.GOOD for _, _, quality in rows)
        have = {t for t, _, _ in rows}
        wanted = [(t, v) for t, v in sim.published[device][quantity] if t >= since_ms]
        missing = [(t, v) for t, v in wanted if t not in have]
        assert not missing, (f"{quantity}: {len(missing)} of {len(wanted)} changes published "
                             f"since the restart are not stored, first {missing[:3]}; "
                             f"served from {sim.served_from}, near: "
                             f"{[r for r in rows if abs(r[0] - missing[0][0]) < 300]}")
        checked += len(wanted)
    return checked


async def test_three_restarts_in_a_row_lose_nothing_and_store_nothing_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="energyd.drivers.opcua")
    # the controller's history outlives its restarts, as a historian's does: the changes
    # of its last moments before each restart are read back from it
    sim = OpcuaController(station="air3", system=_plant(), rate=20,
                          history_file=tmp_path / "controller-history.db")
    device = "air3-c1"
    async with sim:
        config = _config(tmp_path, sim.device_entries(**FAST))
        async with Running(config) as energyd:
            source = energyd.component(device).source
            await asyncio.wait_for(source.wait_subscribed(), 10)
            await _until(lambda: source.changes > 30, 5, "data changes")
            for i in range(1, 4):
                await sim.restart(down=0.3)
                await _until(lambda i=i: source.recoveries == i, 10, f"recovery {i}")
                seen = source.changes
                await _until(lambda seen=seen: source.changes > seen + 20, 5,
                             f"data changes after restart {i}")
            assert source.losses == 3 and source.connects == 4
            assert source.backfilled > 0, "nothing was read back from the server's history"
            await sim.pause()  # nothing is published after this
            await asyncio.sleep(0.5)
            assert energyd.metric("energyd_opcua_reconnects_total", device) == 3
            assert energyd.metric("energyd_opcua_connection_losses_total", device) == 3
    assert sim.starts == 4
    checked = _check_published_stored(sim, device, tmp_path / "energyd.db", sim.served_from[1])
    assert checked > 100
    lost = [r for r in caplog.records if "reconnecting" in r.getMessage()]
    back = [r for r in caplog.records if "connected again" in r.getMessage()]
    assert len(lost) == 3 and len(back) == 3, [r.getMessage() for r in caplog.records]


class Link:
    """A TCP relay between energyd and the controller, on loopback, that the network can
    drop: `drop(silent=False)` resets every connection; `drop(silent=True)` lets them hang
    (nothing passes, nothing closes, as when a cable is pulled); new connections are
    refused until `restore()`."""

    def __init__(self, target: int):
        self.target = target
        self.port = 0
        self.down = False
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        assert self._server is not None
        self._server.close()

    def endpoint(self, url: str) -> str:
        return url.replace(f":{self.target}/", f":{self.port}/")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    while self.down and not dst.is_closing():  # a hung link holds it back
                        await asyncio.sleep(0.05)
                    if dst.is_closing():
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if not self.down:
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop(self, silent: bool = False) -> None:
        self.down = True
        if not silent:
            self.cut()

    def cut(self) -> None:
        for a, b in self._pairs:
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    def restore(self) -> None:
        self.cut()  # what hung stays dead; the next connection goes through
        self.down = False


async def test_a_hung_network_is_noticed_and_the_gap_read_back_from_history(
        tmp_path: Path) -> None:
    sim = OpcuaController(station="air4", system=_plant("air4"), rate=20)
    device = "air4-c1"
    async with sim, Link(sim.port) as link:
        entries = sim.device_entries(**dict(FAST, timeout=0.5))
        entries[0]["opcua"]["endpoint"] = link.endpoint(sim.url)
        async with Running(_config(tmp_path, entries)) as energyd:
            source = energyd.component(device).source
            await asyncio.wait_for(source.wait_subscribed(), 10)
            await _until(lambda: source.changes > 30, 5, "data changes")
            first = to_ms(datetime.now(UTC))
            link.drop(silent=True)
            await _until(lambda: source.losses == 1, 5, "the loss noticed")
            assert "no answer in time" in (source.last_error or "")
            await asyncio.sleep(0.5)  # the plant goes on changing meanwhile
            link.restore()
            await _until(lambda: source.recoveries == 1, 10, "the recovery")
            await _until(lambda: source.backfilled > 0, 5, "the gap read back")
            seen = source.changes
            await _until(lambda: source.changes > seen + 20, 5, "data changes after")
            await sim.pause()
            await asyncio.sleep(1.5)  # the second history read
    _check_published_stored(sim, device, tmp_path / "energyd.db", first)
    with Store.open(tmp_path / "energyd.db") as store:
        status = store.device_status()[device]  # what `energyd status` shows
    assert "no answer in time" in status["last_error"]
    assert status["last_success"] > status["last_error_time"]


async def test_without_server_history_every_change_after_resubscribing_is_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="energyd.drivers.opcua")
    sim = OpcuaController(station="air5", system=_plant("air5"), rate=20, history=False)
    device = "air5-c1"
    async with sim, Link(sim.port) as link:
        # and one node the controller does not have: left out, named, the others read
        entries = sim.device_entries(nodes={"current_l1_a": "s=air5-c1.Current"}, **FAST)
        entries[0]["opcua"]["endpoint"] = link.endpoint(sim.url)
        async with Running(_config(tmp_path, entries)) as energyd:
            source = energyd.component(device).source
            await asyncio.wait_for(source.wait_subscribed(), 10)
            await _until(lambda: source.changes > 30, 5, "data changes")
            assert list(source.unknown_nodes) == ["current_l1_a"]
            link.drop()
            await _until(lambda: source.losses == 1, 5, "the loss noticed")
            await asyncio.sleep(0.3)
            link.restore()
            await _until(lambda: source.recoveries == 1, 10, "the recovery")
            resubscribed = to_ms(datetime.now(UTC))
            seen = source.changes
            await _until(lambda: source.changes > seen + 30, 5, "data changes after")
            await sim.pause()
            await asyncio.sleep(0.5)
    # OPC UA sends only the current value on subscribing: what changed while the link was
    # down is gone without the server's history (said once)
    _check_published_stored(sim, device, tmp_path / "energyd.db", resubscribed)
    said = [r.getMessage() for r in caplog.records if "keeps no history" in r.getMessage()]
    assert len(said) == 1, said


# --- security ------------------------------------------------------------------------------


async def _client_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.der"
    await setup_self_signed_certificate(key, cert, f"urn:energyd:test:{name}", "localhost",
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": name})
    return cert, key


async def test_basic256sha256_with_generated_certificates(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    cert, key = await _client_certificate(pki, "energyd")
    stranger_cert, stranger_key = await _client_certificate(pki, "stranger")
    sim = OpcuaController(station="air5", system=_plant("air5"), rate=20,
                          security="Basic256Sha256", pki_dir=tmp_path / "controller",
                          trusted=[cert])
    async with sim:
        def options(**over: Any) -> OpcuaOptions:
            entry = sim.device_entries(security="Basic256Sha256", certificate_file=str(cert),
                                       private_key_file=str(key),
                                       server_certificate_file=str(sim.certificate_file),
                                       **FAST)[0]
            entry["opcua"].update(over)
            return OpcuaOptions.model_validate(entry["opcua"])

        async with Session(options=options()) as session:
            values = await session.read()
        assert {c.status for c in values} == {"good"} and len(values) == len(VARIABLES)
        assert values[0].source_time is not None

        with pytest.raises(CertificateRefused) as refused:
            await Session(options=options(certificate_file=str(stranger_cert),
                                          private_key_file=str(stranger_key))).open()
        assert "refused energyd's certificate" in str(refused.value)
        assert "BadCertificateUntrusted" in str(refused.value) or "Bad" in str(refused.value)

        # pinned: a certificate other than the server's (here the stranger's)
        with pytest.raises(CertificateMismatch) as mismatch:
            await Session(options=options(server_certificate_file=str(stranger_cert))).open()
        assert "not the one in server_certificate_file" in str(mismatch.value)
        assert str(stranger_cert) in str(mismatch.value)

        # the daemon reads over the secured session too
        async with Running(_config(tmp_path, [{**sim.device_entries()[0],
                                               "opcua": options().model_dump(
                                                   mode="json", exclude_defaults=True)}])
                           ) as energyd:
            source = energyd.component("air5-c1").source
            await asyncio.wait_for(source.wait_subscribed(), 10)
            await _until(lambda: source.changes > 10, 5, "data changes")
        assert source.last_error is None


# --- read-only by construction -------------------------------------------------------------


def test_the_session_exposes_no_write_and_no_method_call() -> None:
    public = {n for n, _ in inspect.getmembers(Session) if not n.startswith("_")}
    assert public == {"open", "close", "read", "subscribe", "history", "check"}
    # and nothing in the driver's folder calls asyncua's write or call services
    words = ("write_value", "write_attribute", "set_value", "call_method", ".call(",
             "add_nodes", "delete_nodes", "write(")
    for path in DRIVER.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not [w for w in words if w in text], path.name


# --- time and quality ----------------------------------------------------------------------


def test_source_time_kept_receipt_time_without_it_bad_values_counted() -> None:
    options = OpcuaOptions.model_validate({"endpoint": "opc.tcp://127.0.0.1:4840",
                                           "nodes": {"active_power_kw": "ns=2;s=P",
                                                     "pressure_bar": "ns=2;s=B"}})
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    received = t0 + timedelta(seconds=5)
    receipts: dict[str, int] = {}
    refused: dict[str, int] = {}
    changes = [Change(0, 51.5, t0, "good", "Good"),
               Change(1, 7.1, t0, "uncertain", "UncertainLastUsableValue"),
               Change(0, 52.0, None, "good", "Good"),
               Change(1, 7.2, None, "good", "Good"),  # same receipt: a millisecond later
               Change(0, 9.0, t0, "bad", "BadSensorFailure"),
               Change(1, "7.3", t0, "good", "Good")]
    got = readings_of("c1", options, changes, received, receipts, refused)
    assert [(r.time, r.quantity, r.value, r.quality) for r in got] == [
        (t0, "active_power_kw", 51.5, Quality.GOOD),
        (t0, "pressure_bar", 7.1, Quality.UNCERTAIN),
        (received, "active_power_kw", 52.0, Quality.RECEIVED),
        (received + timedelta(milliseconds=1), "pressure_bar", 7.2, Quality.RECEIVED)]
    assert refused == {"bad_status": 1, "not_numeric": 1}


async def test_a_controller_without_source_times_is_stored_on_receipt(tmp_path: Path) -> None:
    sim = OpcuaController(station="air6", system=_plant("air6"), rate=20,
                          source_timestamps=False)
    async with sim:
        entry = sim.device_entries(mode="poll", **FAST)[0]
        entry["interval"] = 0.1
        async with Running(_config(tmp_path, [entry])) as energyd:
            source = energyd.component("air6-c1").source
            await _until(lambda: source.changes >= 5 * len(VARIABLES), 10, "five polls")
            # then the gateway's clock becomes implausible: receipt times are held
            watch = energyd.daemon.clock_watch
            assert watch is not None
            suspect_from = to_ms(datetime.now(UTC))
            watch.earliest_s = time.time() + 86400
            await _until(lambda: source.changes >= 10 * len(VARIABLES), 10, "five more polls")
    stored = _stored(tmp_path / "energyd.db", "air6-c1")
    rows = stored["active_energy_import_kwh"]
    assert [t for t, _, _ in rows] == sorted({t for t, _, _ in rows})
    before = {q for t, _, q in rows if t < suspect_from - 200}
    after = {q for t, _, q in rows if t > suspect_from + 200}
    assert before == {Quality.RECEIVED} and after == {Quality.CLOCK_SUSPECT}


# --- configuration -------------------------------------------------------------------------


def test_sample_config_parses(tmp_path: Path) -> None:
    doc = YAML(typ="safe").load((DRIVER / "sample.yaml").read_text(encoding="utf-8"))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("energyd-key.pem", "opcua-password"):
        (secrets / name).write_text("not a real secret\n")
    for name in ("energyd-cert.der", "controller-cert.der"):
        (secrets / name).write_bytes(b"0")
    config = Config.model_validate(doc, context={"base_dir": tmp_path})
    opcua = [d for d in config.devices if d.driver == "opcua"]
    assert len(opcua) == len(doc["devices"]) >= 2
    for d in opcua:
        assert d.opcua is not None and d.opcua.node_map()


def test_readme_documents_every_option() -> None:
    readme = (DRIVER / "README.md").read_text(encoding="utf-8")
    missing = [name for name in OpcuaOptions.model_fields if f"`{name}`" not in readme]
    assert not missing


@pytest.mark.parametrize(("opcua", "message"), [
    ({"endpoint": "http://127.0.0.1:4840", "profile": "energyd_compressor", "object": "c1"},
     "is not an OPC UA endpoint"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "profile": "energyd_compressor"},
     "set `object:`"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "profile": "no_such"}, "unknown OPC UA profile"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": {"power_kw": "ns=2;s=P"}},
     "unknown quantity"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": {"active_power_kw": "Power"}},
     "is not an OPC UA node id"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": {"active_power_kw": "ns=2;s=P"},
      "security": "Basic256Sha256"}, "needs certificate_file, private_key_file, "
                                     "server_certificate_file"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840", "nodes": {"active_power_kw": "ns=2;s=P"},
      "private_key_file": "/nonexistent/key.pem"}, "does not exist"),
])
def test_bad_options_are_refused_with_a_clear_error(opcua: dict[str, Any], message: str) -> None:
    import json

    from energyd.config import parse_config
    from energyd.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse_config(json.dumps({"devices": [{"name": "c1", "driver": "opcua",
                                              "opcua": opcua}]}), "plant.yaml")
    assert "devices[0].opcua" in str(exc.value) and message in str(exc.value), str(exc.value)


def test_statuses_are_named() -> None:
    # asyncua's StatusCode names are what the errors and the refusals show
    assert ua.StatusCode(ua.StatusCodes.BadCertificateUntrusted).name == "BadCertificateUntrusted"


# --- command line --------------------------------------------------------------------------


def test_simulate_opcua_and_read_it(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    energyd = [sys.executable, "-m", "energyd.cli"]
    sim = subprocess.Popen([*energyd, "simulate", "opcua", "--port", "0", "--station", "air7",
                            "--compressors", "1", "--rate", "5", "--duration", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        lines = []
        for line in sim.stdout:  # the config that reads it, printed once serving
            lines.append(line)
            if line.rstrip() == "}":
                break
        devices = json.loads("".join(lines))["devices"]
        assert [d["name"] for d in devices] == ["air7-c1"]
        config = tmp_path / "energyd.yaml"
        config.write_text(json.dumps({"storage": {"path": str(tmp_path / "e.db")},
                                      "devices": devices}))
        from click.testing import CliRunner

        from energyd.cli import cli

        out = CliRunner().invoke(cli, ["read", "-c", str(config), "air7-c1", "--json"])
        assert out.exit_code == 0, out.output
        summary = json.loads(out.stdout)
        assert set(summary["values"]) == set(VARIABLES)
        assert {v["quality"] for v in summary["values"].values()} == {"good"}
        assert summary["values"]["pressure_bar"]["unit"] == "bar"
        assert summary["endpoint"] == devices[0]["opcua"]["endpoint"] and summary["bad"] == {}

        # a node the controller does not have: shown with the status the server gave it
        devices[0]["opcua"]["nodes"] = {"current_l1_a": "s=air7-c1.Current"}
        config.write_text(json.dumps({"storage": {"path": str(tmp_path / "e.db")},
                                      "devices": devices}))
        out = CliRunner().invoke(cli, ["read", "-c", str(config), "air7-c1", "--json"])
        assert out.exit_code == 0, out.output
        summary = json.loads(out.stdout)
        assert summary["bad"] == {"current_l1_a": "BadNodeIdUnknown"}
        assert summary["unavailable"] == ["current_l1_a"]
        assert set(summary["values"]) == set(VARIABLES)
        table = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["read", "-c", str(config),
                                                               "air7-c1"])
        assert table.exit_code == 0, table.output
        row = next(line for line in table.stdout.splitlines() if "current_l1_a" in line)
        assert "n/a (BadNodeIdUnknown)" in row and "A" in row
        assert all(q in table.stdout for q in VARIABLES)
    finally:
        sim.terminate()
        sim.wait(15)


def _sample_config(tmp_path: Path, text: str | None = None) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in ("energyd-key.pem", "opcua-password"):
        (secrets / name).write_text("not a real secret\n")
    for name in ("energyd-cert.der", "controller-cert.der"):
        (secrets / name).write_bytes(b"0")
    path = tmp_path / "energyd.yaml"
    sample = text if text is not None else (DRIVER / "sample.yaml").read_text(encoding="utf-8")
    path.write_text(f"storage: {{path: {tmp_path / 'e.db'}}}\n" + sample, encoding="utf-8")
    return path


def test_check_config_summarises_an_opcua_device_and_points_at_a_bad_line(
        tmp_path: Path) -> None:
    from click.testing import CliRunner

    from energyd.cli import cli

    good = CliRunner().invoke(cli, ["check-config", "-c", str(_sample_config(tmp_path))])
    assert good.exit_code == 0, good.output
    assert "opcua" in good.output
    from energyd.config.loader import load_config

    device = load_config(tmp_path / "energyd.yaml").device("air3-c1")
    assert device.summary() == ("opcua opc.tcp://192.168.10.40:4840 (subscription, security "
                               "None), energyd_compressor, 7 nodes")
    assert "not a real secret" not in good.output
    sample = (DRIVER / "sample.yaml").read_text(encoding="utf-8")
    bad = sample.replace("opc.tcp://192.168.10.41:4840/plc", "opc.tcp://192.168.10.41/plc")
    line = 1 + bad.splitlines().index(next(x for x in bad.splitlines()
                                          if "192.168.10.41/plc" in x)) + 1
    out = CliRunner().invoke(cli, ["check-config", "-c", str(_sample_config(tmp_path, bad))])
    assert out.exit_code == 2
    assert f"energyd.yaml:{line}" in out.output and "devices[1].opcua.endpoint" in out.output


def test_read_says_clearly_when_the_controller_cannot_be_reached(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from energyd.cli import cli
    from energyd.simulators.opcua import free_port

    config = tmp_path / "energyd.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'e.db'}}}\ndevices:\n"
                      f"  - name: c1\n    driver: opcua\n    opcua:\n"
                      f"      endpoint: opc.tcp://127.0.0.1:{free_port()}\n"
                      f"      nodes: {{active_power_kw: 'ns=2;s=P'}}\n      timeout: 1s\n")
    out = CliRunner().invoke(cli, ["read", "-c", str(config), "c1"])
    assert out.exit_code == 1
    assert "c1: opc.tcp://127.0.0.1:" in out.output and "connection refused" in out.output


async def test_a_user_and_password_from_a_file_and_a_refused_one_named_without_it(
        tmp_path: Path) -> None:
    from energyd.errors import DeviceRefused

    password = "s3cret-not-in-messages"
    (tmp_path / "pw").write_text(password + "\n")
    (tmp_path / "wrong").write_text("guess\n")
    sim = OpcuaController(station="air8", rate=5, users={"energyd": password}, history=False)
    async with sim:
        def options(pw: str) -> OpcuaOptions:
            entry = sim.device_entries(username="energyd", password_file=pw)[0]["opcua"]
            return OpcuaOptions.model_validate(entry, context={"base_dir": tmp_path})

        async with Session(options=options("pw")) as session:
            assert len(await session.read()) == len(VARIABLES)
        with pytest.raises(DeviceRefused) as refused:
            await Session(options=options("wrong")).open()
        assert "refused the user" in str(refused.value)
        assert password not in str(refused.value) and "guess" not in str(refused.value)


async def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    from energyd.errors import DeviceRefused
    from energyd.simulators.opcua import free_port

    cert, key = await _client_certificate(tmp_path, "energyd")
    (tmp_path / "server.der").write_bytes(b"not a certificate")
    options = OpcuaOptions.model_validate({
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "nodes": {"active_power_kw": "i=1"},
        "security": "Basic256Sha256", "certificate_file": str(cert),
        "private_key_file": str(key), "server_certificate_file": str(tmp_path / "server.der")})
    with pytest.raises(DeviceRefused, match="server.der: not a certificate"):
        await Session(options=options).open()


def test_a_device_level_register_map_is_refused_at_its_line(tmp_path: Path) -> None:
    from energyd.config import parse_config
    from energyd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config("devices:\n  - name: c1\n    driver: opcua\n"
                     "    profile: energyd_compressor\n"
                     "    opcua: {endpoint: 'opc.tcp://127.0.0.1:4840', nodes: "
                     "{active_power_kw: 'ns=2;s=P'}}\n", "plant.yaml")
    assert ("plant.yaml:4: devices[0].profile: an opcua device's profile goes in its "
            "section") in str(info.value), str(info.value)
