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

from dataclasses import dataclass
from pathlib import Path

from energyd.config.types import load_data_file
from energyd.drivers.dlt645.codec import FrameError, decode_bcd
from energyd.drivers.dlt645.options import BUILTIN_PROFILES as BUILTIN_DIR
from energyd.drivers.dlt645.options import ProfileFile

DEFAULT = "dlt645_2007"


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
    data = load_data_file(path, ProfileFile)  # ConfigError at the line of each problem
    idents = []
    for di, values in data.identifiers.items():
        specs = []
        for v in values:
            whole, _, decimals = v.format.partition(".")
            specs.append(ValueSpec(v.quantity, (len(whole) + len(decimals)) // 2,
                                   len(decimals), v.signed, v.scale, v.format))
        idents.append(Identifier(di, tuple(specs)))
    return Dlt645Profile(data.name or path.stem, tuple(idents), data.source)

