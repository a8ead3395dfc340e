"""The request planner: a device's registers merged into as few reads as allowed.

Registers of one function code are sorted by address and merged while the read stays
within `max_registers` (125, the protocol's limit for registers; 2000 for bits) and the
unused stretch between two values is at most `max_gap` registers. Where the profile states
ranges the device answers whole (`readable:`), values inside one range are merged whatever
the stretch between them, and a read never crosses a range's edge. A value is never split
across two reads, so a read never starts inside a value (meters such as the Siemens PAC
refuse that). Filling each read as far as it goes, in address order, gives the fewest reads
these rules allow (a later start never lets a read reach further).

A register the device refuses (an exception reply to the read holding it) is *isolated*:
from then on it is read alone, so it can never take its neighbours down with it again.
`single=True` reads every value alone, for devices that cannot take merged reads.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from energyd.config.profiles import RegisterSpec
from energyd.drivers.modbus.decode import TYPES

MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers (or bits) from `address` with `function`."""

    function: int
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]
    _steps: tuple[_Step, ...] = field(default=(), compare=False, repr=False)
    _whole: Callable[[bytes], tuple[Any, ...]] | None = field(default=None, compare=False,
                                                               repr=False)
    # a big-endian block without transforms (most meters): one format call makes every
    # value's text at once, float32 values shortened to 7 digits
    _text: str | None = field(default=None, compare=False, repr=False)
    _scaled: tuple[tuple[int, float, float], ...] = field(default=(), compare=False,
                                                           repr=False)
    _quantities: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # worked out once per plan, not per poll: decoding is the poller's hot path
        steps = tuple(sorted((_Step.of(spec, self.address) for spec in self.specs),
                             key=lambda st: st.start))
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_quantities", tuple(st.quantity for st in steps))
        whole = _whole_block_unpacker(steps, self.count)
        object.__setattr__(self, "_whole", whole)
        if whole is not None and all(st.transform is None for st in steps):
            object.__setattr__(self, "_text", " ".join(
                "%.7g" if st.float32 else "%r" for st in steps))
            object.__setattr__(self, "_scaled", tuple(
                (i, st.scale, st.offset) for i, st in enumerate(steps) if st.scaled))

    def __str__(self) -> str:
        last = self.address + self.count - 1
        return f"fc{self.function} {self.address}..{last}"

    def decode(self, words: bytes | Sequence[int]) -> dict[str, float]:
        """Values of the block's quantities from the registers (or bits) read
        (the same numbers as decode.decode() gives value by value)."""
        return dict(self.values(words))

    def values(self, words: bytes | Sequence[int]) -> Iterator[tuple[str, float]]:
        """(quantity, value) for each value of the block, in address order, from the bits or
        registers read (registers as words, or as the bytes they came in)."""
        return zip(self.quantities, self.numbers(words), strict=True)

    @property
    def quantities(self) -> tuple[str, ...]:
        """The block's quantities, in address order (the order of numbers())."""
        return self._quantities

    def numbers(self, words: bytes | Sequence[int]) -> list[float]:
        """The block's values, in address order (NaN where the meter sent one)."""
        if self.function in (1, 2):
            return [float(bool(words[step.start])) * step.scale + step.offset
                    for step in self._steps]
        raw = words if isinstance(words, bytes) else struct.pack(f">{len(words)}H", *words)
        if self._text is not None:
            values = list(map(float, (self._text % self._whole(raw)).split()))  # type: ignore[misc]
            for i, scale, offset in self._scaled:
                value = values[i] * scale + offset
                values[i] = round(value, 10) if math.isfinite(value) else value
            return values
        if self._whole is not None:
            raws: Iterable[Any] = self._whole(raw)
        else:
            raws = [step.unpack(_reorder(raw[2 * step.start:2 * step.start + step.size],
                                         step.order))[0] for step in self._steps]
        values = []
        for step, value in zip(self._steps, raws, strict=True):
            # float32 carries about 7 significant digits; the rest is binary noise
            value = float(f"{value:.7g}") if step.float32 else float(value)
            if step.scaled:
                value = value * step.scale + step.offset
                if math.isfinite(value):
                    value = round(value, 10)
            if step.transform is not None:
                value = _four_quadrant_pf(value)
            values.append(value)
        return values


@dataclass(frozen=True, slots=True)
class _Step:
    quantity: str
    start: int  # offset in registers from the block's address
    size: int  # bytes
    unpack: Callable[[bytes], tuple[Any, ...]]
    order: str
    float32: bool
    scale: float
    offset: float
    transform: str | None
    code: str  # struct code of the type, e.g. "f"
    scaled: bool  # scale or offset to apply

    @classmethod
    def of(cls, spec: RegisterSpec, base: int) -> _Step:
        count, fmt = TYPES[spec.type]
        return cls(spec.quantity, spec.address - base, 2 * count, struct.Struct(fmt).unpack,
                   spec.order, spec.type == "float32", spec.scale, spec.offset,
                   spec.transform, fmt[1:], spec.scale != 1.0 or spec.offset != 0.0)


def _whole_block_unpacker(steps: tuple[_Step, ...], count: int
                          ) -> Callable[[bytes], tuple[Any, ...]] | None:
    """One struct format for a whole big-endian block (gaps as pad bytes), so a poll
    unpacks all its values in one call; None when values overlap or bytes need reordering."""
    fmt = [">"]
    pos = 0
    for step in steps:
        if step.order != "ABCD" or step.start < pos:
            return None
        if step.start > pos:
            fmt.append(f"{2 * (step.start - pos)}x")
        fmt.append(step.code)
        pos = step.start + step.size // 2
    if count > pos:
        fmt.append(f"{2 * (count - pos)}x")
    return struct.Struct("".join(fmt)).unpack


def _reorder(chunk: bytes, order: str) -> bytes:
    """Bytes as the meter sent them -> big-endian (see decode.py for the orders)."""
    if order == "ABCD":
        return chunk
    if order == "DCBA":
        return chunk[::-1]
    if order == "BADC":
        b = bytearray(chunk)
        b[0::2], b[1::2] = chunk[1::2], chunk[0::2]
        return bytes(b)
    # CDAB: the words in reverse order, each word's bytes as they are
    return b"".join(chunk[i:i + 2] for i in range(len(chunk) - 2, -1, -2))


def _four_quadrant_pf(x: float) -> float:
    # Schneider codes the quadrant into the range -2..+2; see schneider_pm5xxx.yaml
    if x > 1:
        return round(2 - x, 10)
    if x < -1:
        return round(-2 - x, 10)
    return x


def key(spec: RegisterSpec) -> tuple[int, int]:
    return (spec.function, spec.address)


def _range_of(spec: RegisterSpec, ranges: tuple[tuple[int, int], ...]) -> int | None:
    """Index of the readable range holding the whole value, or None."""
    for i, (first, last) in enumerate(ranges):
        if first <= spec.address and spec.address + spec.count - 1 <= last:
            return i
    return None


def plan(specs: Iterable[RegisterSpec], *, max_registers: int = 125, max_gap: int = 10,
         single: bool = False, isolated: AbstractSet[tuple[int, int]] = frozenset(),
         readable: Mapping[int, tuple[tuple[int, int], ...]] | None = None) -> list[Block]:
    by_function: dict[int, list[RegisterSpec]] = {}
    for spec in specs:
        by_function.setdefault(spec.function, []).append(spec)
    blocks: list[Block] = []
    for function in sorted(by_function):
        limit = MAX_BITS if function in (1, 2) else max_registers
        ranges = (readable or {}).get(function, ())
        ordered = sorted(by_function[function], key=lambda s: (s.address, s.count))
        current: list[RegisterSpec] = []
        start = end = 0
        region: int | None = None
        for spec in ordered:
            alone = single or key(spec) in isolated or spec.count > limit
            where = _range_of(spec, ranges) if ranges else None
            if current and not alone and key(current[0]) not in isolated and not single:
                new_end = max(end, spec.address + spec.count)
                near = where is not None or spec.address - end <= max_gap
                if where == region and near and new_end - start <= limit:
                    current.append(spec)
                    end = new_end
                    continue
            if current:
                blocks.append(Block(function, start, end - start, tuple(current)))
            current, start, end = [spec], spec.address, spec.address + spec.count
            region = where
        if current:
            blocks.append(Block(function, start, end - start, tuple(current)))
    return blocks
