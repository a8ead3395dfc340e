"""An OPC UA compressor controller: the air model of simulators/air.py, served over OPC UA.

    async with OpcuaController(station="air3", compressors=2, rate=10) as controller:
        controller.url                       # opc.tcp://127.0.0.1:<port>/energyd
        await controller.restart(down=0.5)   # the controller reboots; the plant runs on
        controller.published["air3-c1"]["active_power_kw"]   # [(time_ms, value), ...]

Keyword arguments: `host` (loopback only) and `port` (0: a free one, kept across restarts),
`station` (name, also the prefix of the compressor names `<station>-c1`..), `compressors`,
`clock` (an energyd clock; default RealClock), `rate` (updates per clock second), `seed`,
`system` (an AirSystem to serve instead of a fresh one), `security` ("None" or
"Basic256Sha256": then the controller makes its own key and certificate in `pki_dir` and
serves only Basic256Sha256 endpoints), `trusted` (client certificate files the controller
trusts; with none, any well-formed client certificate is taken), `source_timestamps` (False:
the controller stamps no source time, as some PLCs do), `history` (the server keeps the
last hour of every variable's changes for HistoryRead: True), `history_file` (keep that
history in an SQLite file, so it outlives a restart as a controller's historian does;
default in memory, lost with the server), `users` (user name -> password: only these may
open a session; default anyone, anonymously).

Each compressor is an object named after it in the namespace `NAMESPACE`, its variables
`<name>.Power` (kW), `.Energy` (kWh), `.Pressure` (bar), `.Flow` (m3/min), `.State` (0 off,
1 unloaded, 2 loaded), `.RunningHours`, `.LoadedHours` (h): the built-in profile
`energyd_compressor` (energyd/drivers/opcua/profiles/) reads them. A variable is written
only when its value changed (the server notifies subscribers of changes), stamped with the
clock's time to the millisecond; every such write is remembered in `published`, which is
what a subscriber should end up with.

A restart stops the server (its sessions and subscriptions die with it, as on a real
controller) and starts a new one on the same port after `down` seconds; the plant keeps
running in the meantime, and what changed while the server was down is not published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

from energyd.clock import Clock, RealClock
from energyd.model import from_ms, to_ms
from energyd.simulators.air import AirSystem
from energyd.simulators.loopback import check_loopback

log = logging.getLogger(__name__)
# asyncua's server tells its address space's construction at INFO, thousands of lines
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)

NAMESPACE = "urn:energyd:simulator:compressor-controller"
APPLICATION_URI = "urn:energyd:simulator:opcua"
PROFILE = "energyd_compressor"
# quantity -> (variable name, rounding): the profile's nodes
VARIABLES = {
    "active_power_kw": ("Power", 3),
    "active_energy_import_kwh": ("Energy", 4),
    "pressure_bar": ("Pressure", 3),
    "flow_m3_min": ("Flow", 3),
    "compressor_state": ("State", 0),
    "running_hours_h": ("RunningHours", 5),
    "loaded_hours_h": ("LoadedHours", 5),
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpcuaController:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, station: str = "air1",
                 compressors: int = 2, clock: Clock | None = None, rate: float = 1.0,
                 seed: int = 0, system: AirSystem | None = None, security: str = "None",
                 pki_dir: Path | None = None, trusted: list[Path] | None = None,
                 source_timestamps: bool = True, history: bool = True,
                 history_file: Path | None = None, users: dict[str, str] | None = None):
        check_loopback(host, "OPC UA server")
        if compressors < 1:
            raise ValueError("a controller needs at least one compressor")
        if rate <= 0:
            raise ValueError("rate must be positive")
        if security not in ("None", "Basic256Sha256"):
            raise ValueError("security is None or Basic256Sha256")
        if security != "None" and pki_dir is None:
            raise ValueError("security Basic256Sha256 needs `pki_dir` for its key and certificate")
        self.host = host
        self.port = port or free_port(host)
        self.station = station
        self.clock = clock or RealClock()
        self.rate = rate
        self.security = security
        self.pki_dir = pki_dir
        self.trusted = list(trusted or [])
        self.source_timestamps = source_timestamps
        self.history = history and source_timestamps  # asyncua historizes by source time
        self.history_file = history_file
        self.users = dict(users or {})
        self.system = system or AirSystem.build(compressors, prefix=f"{station}-c", seed=seed)
        self.published: dict[str, dict[str, list[tuple[int, float]]]] = {
            c.name: {q: [] for q in VARIABLES} for c in self.system.compressors}
        self.starts = 0  # how many times the server was started
        self.served_from: list[int] = []  # when each start began to serve (ms)
        self._server: Any = None
        self._vars: dict[tuple[str, str], Any] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._serving = False

    # --- description ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/energyd"

    @property
    def devices(self) -> list[str]:
        return [c.name for c in self.system.compressors]

    @property
    def certificate_file(self) -> Path:
        assert self.pki_dir is not None
        return self.pki_dir / "controller-cert.der"

    @property
    def key_file(self) -> Path:
        assert self.pki_dir is not None
        return self.pki_dir / "controller-key.pem"

    def device_entries(self, role: str = "compressor", **opcua: Any) -> list[dict[str, Any]]:
        """Config `devices:` entries, one per compressor, read with the built-in profile."""
        return [{"name": c.name, "role": role, "driver": "opcua", "rated_power_kw": c.rated_kw,
                 "opcua": {"endpoint": self.url, "profile": PROFILE, "object": c.name,
                           **opcua}}
                for c in self.system.compressors]

    # --- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the server, and the plant if it is not running yet."""
        await self._serve()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"simulator[{self.station}]")

    async def stop_server(self) -> None:
        """The controller shuts down (the plant keeps running): it stops writing, lets its
        history take the last changes, then closes its sessions."""
        self._serving = False
        server, self._server = self._server, None
        if server is not None:
            if self.history:
                await asyncio.sleep(0.05)  # asyncua's historian saves every 10 ms
            await server.stop()
        self._vars.clear()

    async def pause(self) -> None:
        """The plant stops changing (the server stays): what was published is final."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self, down: float = 0.0) -> None:
        await self.stop_server()
        if down > 0:
            await asyncio.sleep(down)
        await self._serve()

    async def close(self) -> None:
        await self.pause()
        await self.stop_server()

    async def _serve(self) -> None:
        from asyncua import Server, ua

        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        server.set_endpoint(self.url)
        server.set_server_name(f"energyd compressor controller {self.station}")
        await server.set_application_uri(APPLICATION_URI)
        if self.security == "Basic256Sha256":
            await self._pki(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        now = self.clock.now()
        for c in self.system.compressors:
            obj = await objects.add_object(ua.NodeId(c.name, ns), ua.QualifiedName(c.name, ns))
            for quantity, (var, _) in VARIABLES.items():
                name = f"{c.name}.{var}"
                node = await obj.add_variable(ua.NodeId(name, ns), ua.QualifiedName(var, ns),
                                              ua.Variant(0.0, ua.VariantType.Double))
                self._vars[(c.name, quantity)] = node
        self._last.clear()  # a fresh address space: every value is written anew
        # the values first (no client ever sees the zeros the variables are made with),
        # then the history, which starts from them
        await self._publish(now)
        if self.history:
            if self.history_file is not None:
                from asyncua.server.history_sql import HistorySQLite

                storage = HistorySQLite(str(self.history_file))
                await storage.init()
                server.iserver.history_manager.set_storage(storage)
            await server.historize_node_data_change(list(self._vars.values()),
                                                    period=timedelta(hours=1))
        await server.start()
        self._server = server
        self.starts += 1
        self.served_from.append(to_ms(now))
        self._serving = True

    async def _pki(self, server: Any) -> None:
        from asyncua import ua
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
        from cryptography.x509.oid import ExtendedKeyUsageOID

        assert self.pki_dir is not None
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        await setup_self_signed_certificate(
            self.key_file, self.certificate_file, APPLICATION_URI, self.host,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"commonName": f"energyd controller {self.station}"})
        await server.load_certificate(str(self.certificate_file))
        await server.load_private_key(str(self.key_file))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                    ua.SecurityPolicyType.Basic256Sha256_Sign])
        options = (CertificateValidatorOptions.BASIC_VALIDATION
                   | CertificateValidatorOptions.PEER_CLIENT)
        store = None
        if self.trusted:
            trust_dir = self.pki_dir / "trusted"
            trust_dir.mkdir(exist_ok=True)
            for old in trust_dir.iterdir():
                old.unlink()
            for i, path in enumerate(self.trusted):
                (trust_dir / f"client{i}.der").write_bytes(_der(path.read_bytes()))
            store = TrustStore([trust_dir], [])
            await store.load()
            options |= CertificateValidatorOptions.TRUSTED
        server.set_certificate_validator(CertificateValidator(options, store))

    async def _run(self) -> None:
        interval = 1.0 / self.rate
        last = self.clock.now()
        while True:
            await self.clock.sleep(interval)
            now = self.clock.now()
            self.system.step(now, (now - last).total_seconds())
            last = now
            if self._serving:
                try:
                    await self._publish(now)
                except Exception as exc:  # a server stopped under the write
                    log.debug("opcua simulator: write failed: %s", exc)

    async def _publish(self, now: Any) -> None:
        from asyncua import ua

        ms = to_ms(now)
        stamp = from_ms(ms) if self.source_timestamps else None
        s = self.system
        for c in s.compressors:
            values = {"active_power_kw": c.power_kw, "active_energy_import_kwh": c.energy_kwh,
                      "pressure_bar": s.pressure_bar, "flow_m3_min": c.flow_m3_min,
                      "compressor_state": c.state, "running_hours_h": c.running_h,
                      "loaded_hours_h": c.loaded_h}
            for quantity, (_, digits) in VARIABLES.items():
                value = float(round(values[quantity], digits))
                key = (c.name, quantity)
                node = self._vars.get(key)
                if node is None or self._last.get(key) == value:
                    continue
                dv = ua.DataValue(ua.Variant(value, ua.VariantType.Double),
                                  SourceTimestamp=stamp, ServerTimestamp=stamp)
                await node.write_value(dv)
                self._last[key] = value
                self.published[c.name][quantity].append((ms, value))


class _Users:
    """Only these user names, with these passwords, may open a session."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _der(data: bytes) -> bytes:
    if not data.startswith(b"-----"):
        return data
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)


async def run_cli(host: str, port: int, *, station: str, compressors: int, rate: float,
                  speed: float, security: str, pki_dir: Path | None, trusted: list[Path],
                  duration: float | None) -> None:
    """`energyd simulate opcua`: serve a controller and print the config that reads it."""
    from energyd.clock import AcceleratedClock

    clock: Clock = RealClock() if speed == 1.0 else AcceleratedClock(speed)
    sim = OpcuaController(host=host, port=port, station=station, compressors=compressors,
                          clock=clock, rate=rate, security=security, pki_dir=pki_dir,
                          trusted=trusted)
    extra: dict[str, Any] = {}
    if security != "None":
        extra = {"security": security, "server_certificate_file": str(sim.certificate_file),
                 "certificate_file": "<energyd's certificate>",
                 "private_key_file": "<energyd's private key file>"}
    async with sim:
        print(json.dumps({"devices": sim.device_entries(**extra)}, indent=2), flush=True)
        started = time.monotonic()
        while duration is None or time.monotonic() - started < duration:
            await asyncio.sleep(min(5.0, duration or 5.0))
            s = sim.system
            log.info("%s: demand %.1f m3/min, pressure %.2f bar, %s", station,
                     s.demand_m3_min, s.pressure_bar,
                     " ".join(f"{c.name}={'-UL'[c.state]}" for c in s.compressors))
