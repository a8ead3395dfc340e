"""The options of an OPC UA device (`driver: opcua`, section `opcua:`), and its profile.

README.md beside this file documents every option; sample.yaml is parsed by a test. This
module imports only the config's base types and the model, so the config can assemble it
without importing the driver (asyncua is loaded only when a device is read).

A profile is YAML data, like the Modbus profiles: the node ids of a kind of controller,
each mapped to a quantity of the vocabulary::

    name: energyd_compressor
    namespace: urn:energyd:simulator:compressor-controller
    nodes:
      active_power_kw: "s={object}.Power"
      active_energy_import_kwh: {node: "s={object}.Energy", scale: 1.0}

A node id without `ns=`/`nsu=` lives in the profile's (or the device's) `namespace`, a URI
that is looked up in the server's namespace array at every connection: the index of a
namespace may change when the server restarts, its URI does not. `{object}` stands for the
device's `object:` option (the controller's name on a server that holds several).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from energyd.config.types import (
    Device,
    Duration,
    ProblemsAt,
    Strict,
    base_dir,
    check_quantity,
    path_value,
    secret_file,
    within,
)

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
# i= numeric, s= string, g= GUID, b= opaque (OPC 10000-6, 5.3.1.10)
_NODE_ID = re.compile(r"^(?:(?:ns=\d+|nsu=[^;]+);)?[isgb]=.+$", re.DOTALL)
_ENDPOINT = re.compile(r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})(/.*)?$")


@dataclass(frozen=True, slots=True)
class ProfileNode:
    quantity: str
    node: str  # as written, `{object}` not yet replaced
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class OpcuaProfile:
    name: str
    namespace: str | None
    nodes: tuple[ProfileNode, ...]


def _check_node(text: str, where: str) -> str:
    if not isinstance(text, str) or not _NODE_ID.match(text):
        raise ValueError(f"{where}: {text!r} is not an OPC UA node id such as "
                         "`ns=2;s=Compressor.Power`, `nsu=urn:x;i=1001` or `s=Power`")
    return text


def _nodes(raw: Any, where: str) -> tuple[ProfileNode, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: `nodes:` must map quantities to node ids")
    out = []
    for quantity, spec in raw.items():
        check_quantity(str(quantity))
        scale = 1.0
        if isinstance(spec, dict):
            unknown = set(spec) - {"node", "scale"}
            if unknown or "node" not in spec:
                raise ValueError(f"{where}: {quantity}: takes `node:` and optionally `scale:`")
            scale = spec.get("scale", 1.0)
            if not isinstance(scale, int | float) or isinstance(scale, bool) or not (
                    scale == scale and abs(scale) != float("inf")) or scale == 0:
                raise ValueError(f"{where}: {quantity}: scale must be a finite non-zero number")
            spec = spec["node"]
        out.append(ProfileNode(str(quantity), _check_node(spec, f"{where}: {quantity}"),
                               float(scale)))
    return tuple(out)


def load_profile(ref: str, base: Path | None = None) -> OpcuaProfile:
    """A built-in profile by name (energyd/drivers/opcua/profiles/<name>.yaml) or a file."""
    from ruamel.yaml import YAML, YAMLError

    path = PROFILES_DIR / f"{ref}.yaml"
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
    elif not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ValueError(f"unknown OPC UA profile {ref!r} (built in: {known}; or a path to "
                         "a profile file)")
    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"OPC UA profile {str(path)!r} cannot be read: {exc.strerror}") from None
    except YAMLError as exc:
        raise ValueError(f"OPC UA profile {str(path)!r} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"OPC UA profile {str(path)!r}: expected a mapping")
    unknown = set(doc) - {"name", "description", "namespace", "nodes"}
    if unknown:
        raise ValueError(f"OPC UA profile {str(path)!r}: unknown keys {sorted(unknown)}")
    namespace = doc.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise ValueError(f"OPC UA profile {str(path)!r}: namespace must be a URI")
    return OpcuaProfile(str(doc.get("name") or path.stem), namespace,
                        _nodes(doc.get("nodes"), f"OPC UA profile {str(path)!r}"))


class OpcuaOptions(Strict):
    """How one device is read over OPC UA (energyd/drivers/opcua/README.md)."""

    endpoint: str  # opc.tcp://host:port[/path]
    profile: str | None = None  # built-in profile name, or a path to a profile YAML file
    nodes: dict[str, Any] = Field(default_factory=dict)  # quantity -> node id, over the profile
    namespace: str | None = None  # namespace URI of node ids without ns=; over the profile's
    object: str | None = None  # replaces `{object}` in the profile's node ids
    mode: Literal["subscription", "poll"] = "subscription"
    # subscription: how often the server samples each node, and sends what changed
    sampling_interval: Annotated[Duration, within(0, 3600)] = 1.0
    publishing_interval: Annotated[Duration, within(0.01, 3600)] | None = None
    # changes the server may queue per node between two publishes
    queue_size: int = Field(10, ge=1, le=10000)
    # after a reconnect, read what changed while energyd was away from the server's history
    backfill: bool = True
    security: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate_file: Path | None = None  # energyd's application certificate (DER or PEM)
    private_key_file: str | None = None  # its private key: a secret file, never in YAML
    server_certificate_file: Path | None = None  # the server's certificate, pinned
    application_uri: str | None = None  # default: the URI in energyd's certificate
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    timeout: Annotated[Duration, within(0.1, 300)] = 4.0  # per request
    # how often the connection is checked (a read of the server's state)
    watchdog: Annotated[Duration, within(0.05, 600)] = 1.0
    reconnect_delay_min: Annotated[Duration, within(0.01, 600)] = 1.0
    reconnect_delay_max: Annotated[Duration, within(0.01, 3600)] = 60.0
    _profile: OpcuaProfile | None = PrivateAttr(None)
    _base: Path | None = PrivateAttr(None)  # where relative secret files are found

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        m = _ENDPOINT.match(v)
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise ValueError(f"{v!r} is not an OPC UA endpoint such as "
                             "`opc.tcp://192.168.1.20:4840`")
        if "@" in v:
            raise ValueError("an endpoint carries no user or password: use `username:` and "
                             "`password_file:`")
        return v

    @field_validator("certificate_file", "server_certificate_file")
    @classmethod
    def _cert(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        path = Path(path_value(v)).expanduser()
        base = base_dir(info)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise ValueError(f"certificate file {str(path)!r} does not exist")
        return path

    @field_validator("private_key_file", "password_file")
    @classmethod
    def _secret_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        return secret_file(cls, v, info)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> OpcuaOptions:
        base = base_dir(info)
        if self.profile is not None:
            self._profile = load_profile(self.profile, base)
        if self.nodes:
            _nodes(self.nodes, "nodes")
        elif self._profile is None:
            raise ValueError("an opcua device needs a `profile:` or `nodes:` (quantity: node id)")
        written = list(self._profile.nodes) if self._profile is not None else []
        written += list(_nodes(self.nodes, "nodes")) if self.nodes else []
        if any("{object}" in n.node for n in written) and not self.object:
            raise ValueError("the profile's node ids name `{object}`: set `object:`")
        if self.security == "None":
            given = [k for k in ("certificate_file", "private_key_file",
                                 "server_certificate_file") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"security None takes no certificates ({', '.join(given)}): "
                                 "set `security: Basic256Sha256`")
        else:
            missing = [k for k in ("certificate_file", "private_key_file",
                                   "server_certificate_file") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"security Basic256Sha256 needs {', '.join(missing)} "
                                 "(the server's certificate is pinned: energyd does not "
                                 "trust whatever certificate a server presents)")
        if self.reconnect_delay_min > self.reconnect_delay_max:
            raise ValueError("reconnect_delay_min is longer than reconnect_delay_max")
        if (self.password_file or self.password_env) and self.username is None:
            raise ValueError("a password needs a `username:`")
        if self.password_file and self.password_env:
            raise ValueError("password_file and password_env: set one")
        self._base = base
        return self

    @property
    def base_dir(self) -> Path | None:
        """The config file's folder: relative secret files are read from there."""
        return self._base

    @property
    def namespace_uri(self) -> str | None:
        if self.namespace is not None:
            return self.namespace
        return self._profile.namespace if self._profile is not None else None

    def node_map(self) -> list[ProfileNode]:
        """The quantities read and their node ids (`{object}` replaced), the inline
        `nodes:` over the profile's."""
        merged: dict[str, ProfileNode] = {}
        if self._profile is not None:
            merged.update((n.quantity, n) for n in self._profile.nodes)
        if self.nodes:
            merged.update((n.quantity, n) for n in _nodes(self.nodes, "nodes"))
        obj = self.object or ""
        return [ProfileNode(n.quantity, n.node.replace("{object}", obj), n.scale)
                for n in merged.values()]


class OpcuaDevice(Device):
    driver: Literal["opcua"]
    opcua: OpcuaOptions | None = None  # energyd/drivers/opcua/README.md

    @model_validator(mode="before")
    @classmethod
    def _no_register_map(cls, data: Any) -> Any:
        # a Modbus habit: the node map lives in the section, not beside it
        if isinstance(data, dict):
            found = [((key,), "an opcua device's profile goes in its section: `opcua: "
                      "{profile: ...}` (device-level `profile:` and `registers:` are Modbus "
                      "register maps)") for key in ("profile", "registers") if key in data]
            if found:
                raise ProblemsAt(found)
        return data

    def summary(self) -> str:
        """The device's line in `energyd check-config`."""
        o = self.opcua
        assert o is not None
        return (f"opcua {o.endpoint} ({o.mode}, security {o.security}), "
                f"{o.profile or 'inline nodes'}, {len(o.node_map())} nodes")
