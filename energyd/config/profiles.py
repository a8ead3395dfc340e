"""Modbus meter profiles: register maps as YAML data.

A profile maps a meter's registers onto the quantity vocabulary (energyd/model.py). The
built-in ones live in `energyd/config/profiles/<name>.yaml`; a user adds a meter by writing
such a file and giving its path as the device's `profile:`, no code involved.

    name: eastron_sdm630                 # optional; defaults to the file's stem
    manufacturer: Eastron
    model: SDM630 Modbus V2
    source: "Eastron SDM630 Modbus Protocol V1.x, input registers 30001.."   # required
    function: 4                          # default read function code (1, 2, 3 or 4)
    base: 0                              # 0: addresses are wire addresses; 1: register
                                         #    numbers as printed in a 1-based manual (wire = n - 1)
    type: float32                        # default data type of the registers below
    order: ABCD                          # default byte/word order (ABCD CDAB BADC DCBA)
    registers:
      voltage_l1_v: {address: 0}
      active_power_kw: {address: 52, scale: 0.001}     # the meter says W, energyd keeps kW
      power_factor: {address: 3083, decode: four_quadrant_pf}
    readable:                            # optional: ranges the meter answers whole
      - {from: 0, to: 75}                # first and last register, numbered like `address`;
                                         # `function:` defaults to the profile's
    notes: |
      what is unknown or disputed about this map

Per register: `address` (required), `function`, `type`, `order`, `scale`, `offset` (value =
raw x scale + offset), `decode` (`four_quadrant_pf`: Schneider's -2..+2 power factor code).
A device's inline `registers:` (the generic profile) are wire addresses; given together with
a `profile:` they add to it and win for the same quantity.

`readable:` states the register ranges a device answers in one read whatever lies between its
values (its register list has no holes there, or it answers holes with filler). The planner
then reads such a range in as few requests as the protocol's 125 registers allow, however far
apart the values are, and never merges across a range's edge. Without `readable:` for a
function code the planner only reads across gaps of `max_gap` registers (the device option).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from energyd.errors import ConfigError, Problem
from energyd.model import QUANTITIES

# type -> (registers, struct format of the big-endian value)
TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "int64": (4, ">q"),
    "uint64": (4, ">Q"),
    "float32": (2, ">f"),
    "float64": (4, ">d"),
}


def register_count(type_: str) -> int:
    return TYPES[type_][0]

BUILTIN_DIR = Path(__file__).parent / "profiles"

TypeName = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
ReadFunction = Literal[1, 2, 3, 4]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(name: str) -> str:
    if name not in QUANTITIES:
        raise ValueError(f"unknown quantity {name!r} (see the quantity vocabulary)")
    return name


class _RegisterEntry(_Strict):
    address: int = Field(ge=0, le=65536)
    function: ReadFunction | None = None
    type: TypeName | None = None
    order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    decode: Literal["four_quadrant_pf"] | None = None


class _Readable(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    first: int = Field(alias="from", ge=0, le=65535)
    last: int = Field(alias="to", ge=0, le=65535)
    function: ReadFunction | None = None


class _ProfileFile(_Strict):
    name: str | None = None
    manufacturer: str = ""
    model: str = ""
    source: str = Field(min_length=1)
    function: ReadFunction = 3
    base: Literal[0, 1] = 0
    type: TypeName = "float32"
    order: Order = "ABCD"
    registers: dict[Annotated[str, AfterValidator(_quantity)], _RegisterEntry] = \
        Field(min_length=1)
    readable: list[_Readable] = Field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value to read: where it is on the wire and how to turn it into the quantity."""

    quantity: str
    function: int
    address: int  # wire address (0-based, as sent in the request)
    type: str
    order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    transform: str | None = None

    @property
    def count(self) -> int:
        """Registers (or, for function codes 1 and 2, bits) the value spans."""
        return 1 if self.function in (1, 2) else register_count(self.type)

    @property
    def unit(self) -> str:
        return QUANTITIES[self.quantity].unit


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    registers: tuple[RegisterSpec, ...]
    manufacturer: str = ""
    model: str = ""
    function: int = 3
    base: int = 0
    notes: str = ""
    path: Path | None = None
    # function code -> (first, last) wire addresses of the ranges the device answers whole
    readable: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict,
                                                                 hash=False)

    def register(self, quantity: str) -> RegisterSpec:
        for spec in self.registers:
            if spec.quantity == quantity:
                return spec
        raise KeyError(quantity)

    def with_registers(self, extra: list[RegisterSpec], name: str | None = None) -> Profile:
        """This profile with `extra` added; an extra register replaces one of the same
        quantity."""
        mine = {s.quantity: s for s in self.registers}
        mine.update({s.quantity: s for s in extra})
        return Profile(name or self.name, self.source, tuple(mine.values()), self.manufacturer,
                       self.model, self.function, self.base, self.notes, self.path,
                       self.readable)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def is_builtin(ref: str) -> bool:
    return "/" not in ref and not ref.endswith((".yaml", ".yml")) and \
        (BUILTIN_DIR / f"{ref}.yaml").is_file()


def resolve_ref(ref: str, base_dir: Path | None = None) -> str:
    """A built-in name as is, or the absolute path of a profile file.

    Raises ValueError naming the built-in profiles when `ref` is neither."""
    if is_builtin(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_file():
        return str(path.resolve())
    raise ValueError(
        f"profile {ref!r} is neither a built-in profile ({', '.join(builtin_names())}) "
        f"nor an existing file" + (f" (looked for {path})" if "/" in ref or
                                   ref.endswith((".yaml", ".yml")) else ""))


def load_profile(ref: str, base_dir: Path | None = None) -> Profile:
    """Load a built-in profile by name, or a profile file by path; ConfigError on bad data."""
    resolved = resolve_ref(ref, base_dir)
    path = BUILTIN_DIR / f"{resolved}.yaml" if is_builtin(resolved) else Path(resolved)
    try:
        stamp = path.stat().st_mtime_ns  # an edited file is read afresh (e.g. on reload)
    except OSError:
        stamp = 0
    return _load_file(str(path), stamp)


@functools.lru_cache(maxsize=64)
def _load_file(path_text: str, _stamp: int = 0) -> Profile:
    from energyd.config.loader import _locate
    from energyd.config.types import validated_data_file

    path = Path(path_text)
    tree, checked = validated_data_file(path_text, _ProfileFile)
    data = cast(_ProfileFile, checked)
    specs = []
    problems = []
    for quantity, entry in data.registers.items():
        spec = RegisterSpec(
            quantity=quantity,
            function=entry.function or data.function,
            address=entry.address - data.base,
            type=entry.type or data.type,
            order=entry.order or data.order,
            scale=entry.scale,
            offset=entry.offset,
            transform=entry.decode,
        )
        if spec.address < 0 or spec.address + spec.count > 65536:
            line, where = _locate(tree, ("registers", quantity, "address"))
            problems.append(Problem(path_text, line, where,
                                    f"address {entry.address} with base {data.base} is "
                                    f"outside the register space"))
        specs.append(spec)
    readable: dict[int, list[tuple[int, int]]] = {}
    for i, entry in enumerate(data.readable):
        first, last = entry.first - data.base, entry.last - data.base
        if first < 0 or last < first:
            line, where = _locate(tree, ("readable", i))
            problems.append(Problem(path_text, line, where,
                                    f"readable range from {entry.first} to {entry.last} with "
                                    f"base {data.base} is empty or outside the register space"))
            continue
        readable.setdefault(entry.function or data.function, []).append((first, last))
    for function, ranges in readable.items():
        ranges.sort()
        for (_, last), (first, _) in itertools.pairwise(ranges):
            if first <= last:
                line, where = _locate(tree, ("readable",))
                problems.append(Problem(path_text, line, where,
                                        f"readable ranges of function {function} overlap at "
                                        f"wire address {first}"))
    if problems:
        raise ConfigError(problems)
    return Profile(name=data.name or path.stem, source=data.source, registers=tuple(specs),
                   manufacturer=data.manufacturer, model=data.model, function=data.function,
                   base=data.base, notes=data.notes, path=path,
                   readable={f: tuple(r) for f, r in readable.items()})


def check_profile_ref(ref: str, base_dir: Path | None) -> str:
    """For the config schema: resolve `ref` and load it, so a broken profile file is
    refused with the configuration. Returns the resolved reference."""
    try:
        resolved = resolve_ref(ref, base_dir)
        load_profile(resolved)
    except OSError as exc:
        raise ValueError(f"profile {ref[:60]!r}: {exc.strerror}") from None
    except ConfigError as exc:
        raise ValueError("profile file has errors: " + "; ".join(map(str, exc.problems))) \
            from None
    return resolved


def device_profile(device: object) -> Profile:
    """The register map of a configured Modbus device: its profile plus inline registers."""
    ref = getattr(device, "profile", None)
    inline = [
        RegisterSpec(quantity=r.quantity, function=r.function, address=r.address, type=r.type,
                     order=r.order, scale=r.scale, offset=r.offset)
        for r in getattr(device, "registers", [])
    ]
    if ref is None:
        return Profile(name="generic", source="inline registers in the configuration",
                       registers=tuple(inline))
    profile = load_profile(ref)
    return profile.with_registers(inline) if inline else profile
