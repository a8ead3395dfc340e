"""The request planner: a device's registers merged into as few reads as allowed.

Registers of one function code are sorted by address and merged while the read stays
within `max_registers` (125, the protocol's limit for registers; 2000 for bits) and the
unused stretch between two values is at most `max_gap` registers. A value is never split
across two reads, so a read never starts inside a value (meters such as the Siemens PAC
refuse that).

A register the device refuses (an exception reply to the read holding it) is *isolated*:
from then on it is read alone, so it can never take its neighbours down with it again.
`single=True` reads every value alone, for devices that cannot take merged reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from energyd.config.profiles import RegisterSpec
from energyd.drivers.decode import decode

MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers (or bits) from `address` with `function`."""

    function: int
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]

    def __str__(self) -> str:
        last = self.address + self.count - 1
        return f"fc{self.function} {self.address}..{last}"

    def decode(self, words: list[int]) -> dict[str, float]:
        """Values of the block's quantities from the registers (or bits) read."""
        out: dict[str, float] = {}
        for spec in self.specs:
            start = spec.address - self.address
            if self.function in (1, 2):
                value = float(bool(words[start])) * spec.scale + spec.offset
            else:
                value = decode(words[start:start + spec.count], spec.type, spec.order,
                               spec.scale, spec.offset)
            if spec.transform == "four_quadrant_pf":
                value = _four_quadrant_pf(value)
            out[spec.quantity] = value
        return out


def _four_quadrant_pf(x: float) -> float:
    # Schneider codes the quadrant into the range -2..+2; see schneider_pm5xxx.yaml
    if x > 1:
        return round(2 - x, 10)
    if x < -1:
        return round(-2 - x, 10)
    return x


def key(spec: RegisterSpec) -> tuple[int, int]:
    return (spec.function, spec.address)


def plan(specs: Iterable[RegisterSpec], *, max_registers: int = 125, max_gap: int = 10,
         single: bool = False, isolated: AbstractSet[tuple[int, int]] = frozenset()
         ) -> list[Block]:
    by_function: dict[int, list[RegisterSpec]] = {}
    for spec in specs:
        by_function.setdefault(spec.function, []).append(spec)
    blocks: list[Block] = []
    for function in sorted(by_function):
        limit = MAX_BITS if function in (1, 2) else max_registers
        ordered = sorted(by_function[function], key=lambda s: (s.address, s.count))
        current: list[RegisterSpec] = []
        start = end = 0
        for spec in ordered:
            alone = single or key(spec) in isolated or spec.count > limit
            if current and not alone and key(current[0]) not in isolated and not single:
                new_end = max(end, spec.address + spec.count)
                if spec.address - end <= max_gap and new_end - start <= limit:
                    current.append(spec)
                    end = new_end
                    continue
            if current:
                blocks.append(Block(function, start, end - start, tuple(current)))
            current, start, end = [spec], spec.address, spec.address + spec.count
        if current:
            blocks.append(Block(function, start, end - start, tuple(current)))
    return blocks
