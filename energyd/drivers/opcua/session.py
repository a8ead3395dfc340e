"""One connection and session to an OPC UA server, read-only by construction.

`Session` is the only place that holds an asyncua client, and it keeps it private: what it
offers is `open`, `read` (the Value attribute of the profile's nodes), `subscribe` (data
changes of those nodes), `history` (the changes the server kept, HistoryRead), `check` (is
the connection alive) and `close`. There is no write,
no method call, no browse-and-act: a caller cannot reach the server's write or call
services through it, and a test holds the list of public names to these.

asyncua's errors are mapped here, at the edge, onto energyd's (errors.py):

    DeviceError
    ├── DeviceTimeout         no answer in time (a dropped network, a server gone quiet)
    ├── Unreachable           the connection could not be made or was lost
    └── DeviceRefused         the server said no
        ├── CertificateRefused      the server does not trust energyd's certificate
        ├── CertificateMismatch     the server's certificate is not the pinned one
        └── (a node the server does not know is reported per node, not raised)

asyncua has no reconnection of its own (FreeOpcUa/opcua-asyncio #70, #1034, #1072): a
session and its subscriptions die with the connection, and a server restart can leave a
client whose publish loop ended silently. So a lost connection makes this session unusable
(`check` raises); the owner (driver.py) closes it and opens a new one, which re-creates the
session and the subscriptions from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from energyd.config.secrets import read_secret, secret_path
from energyd.drivers.opcua.options import OpcuaOptions, ProfileNode
from energyd.errors import DeviceError, DeviceRefused, DeviceTimeout

__all__ = ["CertificateMismatch", "CertificateRefused", "Change", "HistoryUnavailable", "Session",
           "Unreachable"]

log = logging.getLogger(__name__)


class _SameLoss(logging.Filter):
    """asyncua logs every step of a lost connection (a traceback from its watchdog, a
    warning per close call on a closed socket); energyd says it once itself, with the
    cause, so these repeats are left out. Everything else asyncua logs passes."""

    REPEATS = ("Error in watchdog loop", "close_session was called but connection is closed",
               "close_secure_channel was called but connection is closed",
               "disconnect_socket was called but connection is closed")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.REPEATS))


for _name in ("asyncua.client.client", "asyncua.client.ua_client.UaClient"):
    logging.getLogger(_name).addFilter(_SameLoss())
# asyncua tells each step of a connection at INFO (endpoints found, sessions made, sockets
# closed): at energyd's INFO level that would bury its own lines
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)

# The most values read back per node and reconnect: a day of one change a second. An outage
# longer than that at that rate keeps its first part; the log says which nodes.
BACKFILL_LIMIT = 86_400
_CERTIFICATE_CODES = ("BadCertificate", "BadSecurityChecksFailed", "BadNoValidCertificates",
                      "BadSecurityPolicyRejected", "BadApplicationSignatureInvalid")


class Unreachable(DeviceError):
    """The connection to the server could not be made, or it was lost."""


class HistoryUnavailable(DeviceRefused):
    """The server keeps no history of a node (HistoryRead unsupported or not allowed)."""


class CertificateRefused(DeviceRefused):
    """The server refused energyd's application certificate (not in its trust list, wrong
    application URI, expired): the server's administrator has to trust it."""


class CertificateMismatch(DeviceRefused):
    """The server presents a certificate other than `server_certificate_file`: either the
    server was re-keyed or this is not the server energyd was configured for."""


class Change(NamedTuple):
    """One value of one node as the server gave it."""

    node: int  # index into Session.nodes
    value: Any
    source_time: datetime | None  # aware UTC; None when the server gives none
    status: str  # "good", "uncertain" or "bad"
    status_name: str


def _status(code: Any) -> tuple[str, str]:
    if code is None:
        return "good", "Good"
    try:
        name = code.name
    except Exception:
        name = hex(getattr(code, "value", 0))
    if code.is_good():
        return "good", name
    if code.is_uncertain():
        return "uncertain", name
    return "bad", name


def _aware(when: datetime | None) -> datetime | None:
    if when is None or when.year < 1602:  # OPC UA's "no time": DateTime 0 (1601-01-01)
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _resolve(text: str, namespace: int | None, uris: list[str]) -> str:
    """`text` with its namespace as an index of this server's namespace array."""
    if text.startswith("ns="):
        return text
    if text.startswith("nsu="):
        uri, _, rest = text[4:].partition(";")
        if uri not in uris:
            raise KeyError(uri)
        return f"ns={uris.index(uri)};{rest}"
    return f"ns={namespace};{text}" if namespace is not None else text


def _code_name(exc: Any) -> str:
    from asyncua import ua

    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return ua.StatusCode(code).name
    return type(exc).__name__


def _mapped(exc: BaseException, endpoint: str) -> DeviceError:
    """asyncua's and the socket's errors as energyd's, the original chained by the caller."""
    from asyncua import ua

    if isinstance(exc, DeviceError):
        return exc
    if type(exc) is ua.UaError and isinstance(exc.__cause__, TimeoutError):
        exc = exc.__cause__  # asyncua's "Failed to send request" around a timeout
    if isinstance(exc, ua.UaStatusCodeError):
        name = _code_name(exc)
        if name.startswith(_CERTIFICATE_CODES):
            return CertificateRefused(
                f"{endpoint}: the server refused energyd's certificate ({name}): add "
                "energyd's certificate to the server's trusted certificates, and check that "
                "its application URI matches `application_uri`", getattr(exc, "code", None))
        if name.startswith(("BadIdentityToken", "BadUserAccessDenied")):
            return DeviceRefused(f"{endpoint}: the server refused the user ({name})")
        return DeviceRefused(f"{endpoint}: {name}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DeviceTimeout(f"{endpoint}: no answer in time")
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable(f"{endpoint}: connection refused (is the server running?)")
    if isinstance(exc, ConnectionError):
        return Unreachable(f"{endpoint}: connection lost ({exc})")
    if isinstance(exc, OSError):
        return Unreachable(f"{endpoint}: {exc.strerror or exc}")
    if isinstance(exc, ua.UaError):
        return Unreachable(f"{endpoint}: {exc}")
    return Unreachable(f"{endpoint}: {type(exc).__name__}: {exc}")


class _Handler:
    """asyncua's subscription handler: data changes become Changes, handed on at once."""

    def __init__(self, session: Session, on_changes: Callable[[list[Change]], None]):
        self.session = session
        self.on_changes = on_changes

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        indexes = self.session._index.get(node.nodeid)  # noqa: SLF001
        if not indexes:
            return
        dv = data.monitored_item.Value
        status, name = _status(dv.StatusCode_)
        value = dv.Value.Value if dv.Value is not None else None
        when = _aware(dv.SourceTimestamp)
        self.on_changes([Change(i, value, when, status, name) for i in indexes])

    def status_change_notification(self, status: Any) -> None:
        # the server ends the subscription (shutdown, timeout): the session is done
        code = getattr(status, "Status", status)
        self.session._lost = f"the subscription ended ({_status(code)[1]})"  # noqa: SLF001


class Session:
    """A read-only OPC UA session over the profile's nodes.

    Keyword-only: `options` (the device's OpcuaOptions). Use as `async with Session(...)`,
    or `open()` / `close()`; close is safe twice and after a failed open.
    """

    def __init__(self, *, options: OpcuaOptions):
        self.options = options
        self.endpoint = options.endpoint
        self.nodes: list[ProfileNode] = options.node_map()
        self.unknown: dict[int, str] = {}  # node index -> why the server refused it
        self.without_history: list[str] = []  # quantities whose node keeps no history
        self.truncated: list[str] = []  # quantities whose history read hit BACKFILL_LIMIT
        self._client: Any = None
        self._ids: list[Any] = []
        self._index: dict[Any, list[int]] = {}  # subscribed node id -> node indexes
        self._lost: str | None = None
        self._broken = False  # the connection is known to be gone: no goodbye to send

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        from asyncua import Client

        o = self.options
        client = Client(self.endpoint, timeout=o.timeout, watchdog_intervall=o.watchdog)
        # a session the server keeps for a client that vanished should not outlive long
        # outages by much; the watchdog reads at `watchdog`, so this is never reached live
        client.session_timeout = int(max(30.0, 10 * o.watchdog) * 1000)
        try:
            if o.security == "Basic256Sha256":
                await self._secure(client)
            if o.username is not None:
                client.set_user(o.username)
                password = read_secret(o.password_file, o.password_env, o.base_dir)
                if password is not None:
                    client.set_password(password.get_secret_value())
            await client.connect()
            self._client = client
            uris = await client.get_namespace_array()
            uri = o.namespace_uri
            if uri is not None and uri not in uris:
                raise DeviceRefused(f"{self.endpoint}: the server has no namespace {uri!r} "
                                    f"(it has {', '.join(uris[1:]) or 'none of its own'})")
            ns = uris.index(uri) if uri is not None else None
            self._ids = []
            for n in self.nodes:
                try:
                    self._ids.append(client.get_node(_resolve(n.node, ns, uris)))
                except KeyError as exc:
                    raise DeviceRefused(f"{self.endpoint}: {n.quantity}: the server has no "
                                        f"namespace {exc.args[0]!r}") from None
        except BaseException as exc:
            self._broken = self._client is None  # not connected: no goodbye to say
            self._client = None
            await self._drop(client)
            self._broken = False
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                raise
            raise _mapped(exc, self.endpoint) from exc

    async def _secure(self, client: Any) -> None:
        from asyncua import ua
        from asyncua.crypto import uacrypto
        from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
        from cryptography import x509

        o = self.options
        assert o.certificate_file and o.private_key_file and o.server_certificate_file
        key = secret_path(o.private_key_file, o.base_dir)
        certs = []
        for path in (o.certificate_file, o.server_certificate_file):
            try:
                certs.append(await uacrypto.load_certificate(str(path)))
            except Exception as exc:
                raise DeviceRefused(f"{path}: not a certificate (DER or PEM): "
                                    f"{type(exc).__name__}") from None
        cert, pinned = certs
        uri = o.application_uri
        if uri is None:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                uri = next(iter(san.value.get_values_for_type(x509.UniformResourceIdentifier)))
            except (x509.ExtensionNotFound, StopIteration):
                raise DeviceRefused(f"{o.certificate_file}: the certificate holds no "
                                    "application URI: set `application_uri`") from None
        client.application_uri = uri
        # The server's certificate is compared before anything is encrypted with the pinned
        # one: a server with another key would only drop the connection, which says nothing.
        endpoints = await client.connect_and_get_server_endpoints()
        policy = SecurityPolicyBasic256Sha256.URI
        offered = [e for e in endpoints if e.SecurityPolicyUri == policy]
        if not offered:
            raise DeviceRefused(f"{self.endpoint}: the server offers no Basic256Sha256 "
                                "endpoint")
        pinned_der = uacrypto.der_from_x509(pinned)
        presented = offered[0].ServerCertificate or b""
        if not presented.startswith(pinned_der):
            raise CertificateMismatch(
                f"{self.endpoint}: the server's certificate is not the one in "
                f"server_certificate_file ({o.server_certificate_file}): "
                f"it presents SHA-256 {_thumbprint(presented)}, the file holds "
                f"{_thumbprint(pinned_der)}")
        mode = (ua.MessageSecurityMode.SignAndEncrypt if o.security_mode == "SignAndEncrypt"
                else ua.MessageSecurityMode.Sign)
        try:
            await client.set_security(SecurityPolicyBasic256Sha256, certificate=str(
                o.certificate_file), private_key=str(key), server_certificate=str(
                o.server_certificate_file), mode=mode)
        except (ValueError, TypeError) as exc:
            raise DeviceRefused(f"energyd's certificate or private key cannot be used: "
                                f"{type(exc).__name__}") from None

    async def read(self) -> list[Change]:
        """The current value of every node, one request."""
        client = self._usable()
        try:
            values = await client.read_attributes(self._ids)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _mapped(exc, self.endpoint) from exc
        out = []
        for i, dv in enumerate(values):
            status, name = _status(dv.StatusCode_)
            value = dv.Value.Value if dv.Value is not None else None
            out.append(Change(i, value, _aware(dv.SourceTimestamp), status, name))
        return out

    async def subscribe(self, on_changes: Callable[[list[Change]], None]) -> None:
        """Data changes of every node, sampled at `sampling_interval`, published at
        `publishing_interval`; the server sends each node's current value first. A node
        the server refuses is left out and named in `unknown`."""
        from asyncua import ua

        client = self._usable()
        o = self.options
        publishing = o.publishing_interval if o.publishing_interval is not None else max(
            o.sampling_interval, 0.05)
        # known before the first notification: the server sends every node's current value
        # right away, possibly before subscribe_data_change has returned
        self._index.clear()
        for i, node in enumerate(self._ids):
            self._index.setdefault(node.nodeid, []).append(i)
        try:
            sub = await client.create_subscription(publishing * 1000, _Handler(self, on_changes))
            handles = await sub.subscribe_data_change(
                self._ids, queuesize=o.queue_size, sampling_interval=o.sampling_interval * 1000)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _mapped(exc, self.endpoint) from exc
        self.unknown.clear()
        for i, handle in enumerate(handles):
            if isinstance(handle, ua.StatusCode):
                self.unknown[i] = _status(handle)[1]
                self._index.pop(self._ids[i].nodeid, None)
        if not self._index:
            raise DeviceRefused(f"{self.endpoint}: the server refused every node: "
                                + "; ".join(f"{self.nodes[i].node} ({why})"
                                            for i, why in self.unknown.items()))

    async def history(self, since: dict[int, datetime], until: datetime) -> list[Change]:
        """Each node's changes the server kept after `since[node]` (exclusive) up to `until`
        (HistoryRead, raw). Raises HistoryUnavailable if the server keeps none."""
        from asyncua import ua

        client = self._usable()
        # A server answers a history read of a node it does not historize with nothing at
        # all (asyncua does): the node's access level says whether there is a history.
        try:
            levels = await client.read_attributes([self._ids[i] for i in since],
                                                   ua.AttributeIds.UserAccessLevel)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _mapped(exc, self.endpoint) from exc
        kept = {}
        self.without_history = []
        self.truncated = []
        for (i, start), dv in zip(since.items(), levels, strict=True):
            bits = dv.Value.Value if dv.Value is not None else None
            if isinstance(bits, int) and bits >> ua.AccessLevel.HistoryRead & 1:
                kept[i] = start
            else:
                self.without_history.append(self.nodes[i].quantity)
        if not kept:
            raise HistoryUnavailable(f"{self.endpoint}: the server keeps no history of "
                                     "these nodes (their access level has no HistoryRead)")
        out: list[Change] = []
        for i, start in kept.items():
            try:
                values = await _raw_history(self._ids[i], start, until)
            except ua.UaStatusCodeError as exc:
                name = _code_name(exc)
                if name.startswith(("BadHistoryOperation", "BadNotReadable",
                                    "BadUserAccessDenied", "BadNotSupported",
                                    "BadServiceUnsupported")):
                    raise HistoryUnavailable(f"{self.endpoint}: {self.nodes[i].node}: the "
                                             f"server keeps no history ({name})") from None
                raise _mapped(exc, self.endpoint) from exc
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise _mapped(exc, self.endpoint) from exc
            if len(values) >= BACKFILL_LIMIT:
                self.truncated.append(self.nodes[i].quantity)
            for dv in values:
                when = _aware(dv.SourceTimestamp)
                if when is None or when <= start:
                    continue
                status, name = _status(dv.StatusCode_)
                value = dv.Value.Value if dv.Value is not None else None
                out.append(Change(i, value, when, status, name))
        return out

    async def check(self) -> None:
        """Raise Unreachable (or a timeout) if the connection or the subscription is gone."""
        client = self._usable()
        if self._lost is not None:
            # asyncua reports its own lost connection to the subscription as BadShutdown
            # before its watchdog ends with the cause: let the cause be the error
            await asyncio.sleep(0)
        try:
            await client.check_connection()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._broken = True
            raise _mapped(exc, self.endpoint) from exc
        if self._lost is not None:
            self._broken = True
            raise Unreachable(f"{self.endpoint}: {self._lost}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)

    async def _drop(self, client: Any) -> None:
        # a polite disconnect when the server is there; never wait long for one that is not
        if self._broken:
            await _settle(client)
            protocol = getattr(client.uaclient, "protocol", None)
            if protocol is not None and getattr(protocol, "state", None) != "closed":
                with contextlib.suppress(Exception):
                    client.disconnect_socket()
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.options.timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                with contextlib.suppress(Exception):
                    client.disconnect_socket()
                raise
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    def _usable(self) -> Any:
        if self._client is None:
            raise Unreachable(f"{self.endpoint}: not connected")
        return self._client


async def _raw_history(node: Any, start: datetime, end: datetime) -> list[Any]:
    """A node's raw history in [start, end], page by page up to BACKFILL_LIMIT values.
    (asyncua's read_raw_history stops after the first page when given a limit, and a
    server's page may be smaller than the limit.)"""
    from asyncua import ua

    details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=start, EndTime=end,
                                        NumValuesPerNode=0, ReturnBounds=False)
    values: list[Any] = []
    point = None
    while True:
        result = await node.history_read(details, point)
        result.StatusCode.check()
        values.extend(result.HistoryData.DataValues or [])
        point = result.ContinuationPoint
        if point is None or len(values) >= BACKFILL_LIMIT:
            return values[:BACKFILL_LIMIT]


async def _settle(client: Any) -> None:
    """End the background tasks of a client whose connection is gone and take their
    errors, which asyncua would otherwise leave to the event loop's "never retrieved"
    report (its watchdog, channel renewal and publish loops outlive a lost connection)."""
    tasks = [getattr(client, "_monitor_server_task", None),
             getattr(client, "_renew_channel_task", None),
             getattr(getattr(client, "uaclient", None), "_publish_task", None)]
    tasks = [t for t in tasks if isinstance(t, asyncio.Task)]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _thumbprint(der: bytes) -> str:
    import hashlib

    if not der:
        return "(none)"
    return hashlib.sha256(der[:_der_length(der)]).hexdigest()[:16]


def _der_length(der: bytes) -> int:
    # a chain is the DER certificates back to back: the first one's length is in its header
    if len(der) < 4 or der[1] != 0x82:
        return len(der)
    return int.from_bytes(der[2:4], "big") + 4

