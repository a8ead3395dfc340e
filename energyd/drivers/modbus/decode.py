"""Register values to numbers and back: data types, byte and word order, scale, offset.

Orders name the bytes of a 32-bit value as the meter sends them, `A` being the most
significant byte:

    ABCD  big-endian words, high word first (the Modbus convention)
    CDAB  low word first (Carlo Gavazzi, many PLCs)
    BADC  high word first, the two bytes of each register swapped
    DCBA  fully little-endian

For 64-bit values the same rule extends: the `CD..` orders reverse the order of all the
words, the `BA..` orders swap the bytes inside each register. 16-bit values only know
byte swapping (ABCD = CDAB, BADC = DCBA).

The simulators encode with `encode()`, energyd decodes with `decode()`: one table of
formats serves both, so a profile cannot be read differently from how it is served.
"""

from __future__ import annotations

import math
import struct

from energyd.config.profiles import TYPES

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def _words_from_big_endian(data: bytes, order: str) -> list[int]:
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def _big_endian_from_words(regs: list[int], order: str) -> bytes:
    words = [r.to_bytes(2, "big") for r in regs]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return b"".join(words)


def decode_raw(regs: list[int], type_: str, order: str = "ABCD") -> float:
    """The raw number held by `regs` (exactly register_count(type_) registers)."""
    count, fmt = TYPES[type_]
    if len(regs) != count:
        raise ValueError(f"{type_} needs {count} registers, got {len(regs)}")
    (value,) = struct.unpack(fmt, _big_endian_from_words(regs, order))
    if type_ == "float32":
        # float32 carries about 7 significant digits; the rest is binary noise
        return float(f"{value:.7g}") if math.isfinite(value) else float(value)
    return float(value)


def decode(regs: list[int], type_: str, order: str = "ABCD", scale: float = 1.0,
           offset: float = 0.0) -> float:
    value = decode_raw(regs, type_, order)
    if scale != 1.0 or offset != 0.0:
        value = value * scale + offset
        # 0.1 * 2301 is 230.10000000000002: keep what the meter meant
        if math.isfinite(value):
            value = round(value, 10)
    return value


def encode(value: float, type_: str, order: str = "ABCD", scale: float = 1.0,
           offset: float = 0.0) -> list[int]:
    """Registers a meter would send for `value` (rounded and clamped for integer types)."""
    count, fmt = TYPES[type_]
    raw = (value - offset) / scale
    if type_.startswith("float"):
        packed = struct.pack(fmt, raw)
    else:
        bits = 16 * count
        lo, hi = (0, 2**bits - 1) if type_.startswith("u") else (-(2 ** (bits - 1)),
                                                                  2 ** (bits - 1) - 1)
        packed = struct.pack(fmt, min(hi, max(lo, round(raw))))
    return _words_from_big_endian(packed, order)


def resolution(type_: str, scale: float) -> float:
    """The smallest step a value of this type and scale can show (for comparisons)."""
    if type_ == "float32":
        return 0.0
    return abs(scale) if not type_.startswith("float") else 0.0
