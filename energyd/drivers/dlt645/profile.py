"""DL/T 645 profiles: which data identifiers a meter is asked for, and how each reply's
bytes become quantities. Data, as YAML (profiles/*.yaml here, or a file of the same shape):

    name: dlt645_2007
    identifiers:
      "0201FF00":                       # one request; its reply holds these, in order
        - {quantity: voltage_l1_v, format: XXX.X}
        - {quantity: voltage_l2_v, format: XXX.X}
      "0206FF00":
        - {quantity: power_factor, format: X.XXX, signed: true}
        - {quantity: null, format: X.XXX, signed: true}    # in the reply, not kept

`format` is the standard's picture of the value (X one BCD digit, the point where the
decimals start): its digits give the bytes (two digits a byte), its decimals the divisor.
`signed` means the top bit of the value's last byte is its sign. `scale` multiplies the
decoded value into the quantity's unit (default 1: the standard's kWh, kvarh, V, A, kW,
kvar, kVA are energyd's units).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from energyd.config.types import check_quantity
from energyd.drivers.dlt645.codec import FrameError, decode_bcd
from energyd.errors import ConfigError, Problem

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT = "dlt645_2007"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _format(text: str) -> str:
    whole, _, decimals = text.partition(".")
    if not whole or set(whole + decimals) != {"X"} or (len(whole) + len(decimals)) % 2:
        raise ValueError(f"format {text!r} is not an even number of X digits (e.g. XXX.X)")
    return text


def _nonzero(v: float) -> float:
    if v == 0:
        raise ValueError("scale 0 would make every value 0")
    return v


class _Value(_Strict):
    quantity: Annotated[str, AfterValidator(check_quantity)] | None
    format: Annotated[str, AfterValidator(_format)]
    signed: bool = False
    scale: Annotated[float, AfterValidator(_nonzero)] = 1.0


def _di(text: str) -> str:
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"data identifier {text!r} is not hex") from None
    if len(text) != 8:
        raise ValueError(f"data identifier {text!r} is not 8 hex digits (4 bytes)")
    return text.upper()


class _ProfileFile(_Strict):
    name: str | None = None
    source: str | None = None
    identifiers: dict[Annotated[str, AfterValidator(_di)],
                      Annotated[list[_Value], Field(min_length=1)]]


@dataclass(frozen=True, slots=True)
class ValueSpec:
    quantity: str | None  # None: in the reply, not kept
    size: int  # bytes
    decimals: int
    signed: bool
    scale: float
    format: str

    def decode(self, raw: bytes) -> float:
        return decode_bcd(raw, self.decimals, self.signed) * self.scale


@dataclass(frozen=True, slots=True)
class Identifier:
    di: str
    values: tuple[ValueSpec, ...]

    @property
    def size(self) -> int:
        return sum(v.size for v in self.values)

    def decode(self, data: bytes) -> list[tuple[str, float]]:
        """The reply's value bytes (identifier taken off) into (quantity, value)."""
        if len(data) != self.size:
            raise FrameError(f"{self.di}: {len(data)} value bytes where the profile has "
                             f"{self.size}")
        out, at = [], 0
        for spec in self.values:
            value = spec.decode(data[at:at + spec.size])
            at += spec.size
            if spec.quantity is not None:
                out.append((spec.quantity, value))
        return out


@dataclass(frozen=True)
class Dlt645Profile:
    name: str
    identifiers: tuple[Identifier, ...]
    source: str | None = None

    @property
    def quantities(self) -> list[str]:
        return [v.quantity for i in self.identifiers for v in i.values if v.quantity]

    def identifier(self, quantity: str) -> Identifier:
        for ident in self.identifiers:
            if any(v.quantity == quantity for v in ident.values):
                return ident
        raise KeyError(quantity)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_profile(ref: str = DEFAULT, base_dir: Path | None = None) -> Dlt645Profile:
    """A built-in profile by name, or a profile file by path; ConfigError on bad data."""
    if ref in builtin_names():
        path = BUILTIN_DIR / f"{ref}.yaml"
    else:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read the DL/T 645 profile: "
                                                       f"{exc.strerror}")]) from None
    return _load(str(path), stamp)


@functools.lru_cache(maxsize=32)
def _load(path_text: str, _stamp: int) -> Dlt645Profile:
    from energyd.config.loader import _locate, _plain_checked, parse_yaml, read_text

    path = Path(path_text)
    tree = parse_yaml(read_text(path), path_text)
    if not isinstance(tree, dict):
        raise ConfigError([Problem(path_text, 1, "", "a profile must be a mapping")])
    try:
        data = _ProfileFile.model_validate(_plain_checked(tree, path_text))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(part for part in err["loc"] if part != "[key]")
            line, where = _locate(tree, loc)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check its spelling)"
            problems.append(Problem(path_text, line, where, message))
        raise ConfigError(problems) from None
    idents = []
    for di, values in data.identifiers.items():
        specs = []
        for v in values:
            whole, _, decimals = v.format.partition(".")
            specs.append(ValueSpec(v.quantity, (len(whole) + len(decimals)) // 2,
                                   len(decimals), v.signed, v.scale, v.format))
        idents.append(Identifier(di, tuple(specs)))
    return Dlt645Profile(data.name or path.stem, tuple(idents), data.source)


def check_profile_ref(ref: str, base_dir: Path | None) -> str:
    """For the options model: load `ref` now, so a broken profile stops the start-up."""
    try:
        load_profile(ref, base_dir)
    except ConfigError as exc:
        raise ValueError("DL/T 645 profile has errors: " + "; ".join(map(str, exc.problems))) \
            from None
    if ref in builtin_names():
        return ref
    path = Path(ref)
    return str(path if path.is_absolute() or base_dir is None else base_dir / path)
