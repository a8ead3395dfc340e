"""DL/T 645-2007 frames: the three read requests energyd can build, and replies parsed.

    [FE FE FE FE] 68 A0 A1 A2 A3 A4 A5 68 C L DATA.. CS 16

A0..A5 is the meter's address, 12 BCD digits with the last two digits first on the wire;
every DATA byte is sent with 0x33 added; CS is the sum of the bytes from the first 68 to the
end of DATA, modulo 256. A reply's C is the request's code with bit 7 set; bit 6 set means
an abnormal reply, whose one data byte is the error word (ERROR_BITS); bit 5 set means more
data follows, asked for with a read follow-up.

Read-only by construction: `request()` takes a `ReadCode`, and ReadCode holds read data
(0x11), read follow-up (0x12) and read address (0x13), nothing else. There is no other way
in this package to put a control code on the wire; the simulator checks every code it got.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PREAMBLE = b"\xfe\xfe\xfe\xfe"
START, END = 0x68, 0x16
OFFSET = 0x33
BROADCAST = "AAAAAAAAAAAA"  # the wildcard address a read-address request goes to
MAX_DATA = 200  # longer is not a DL/T 645-2007 frame

# ERR byte of an abnormal reply (DL/T 645-2007, 7.2)
ERROR_BITS = {
    0x01: "other error",
    0x02: "no such data (identifier not supported)",
    0x04: "password error / unauthorised",
    0x08: "baud rate cannot be changed",
    0x10: "annual time zones exceed",
    0x20: "daily time slots exceed",
    0x40: "tariffs exceed",
}


# the 0x33 offset on and off, as byte translation tables
_ADD = bytes((b + OFFSET) & 0xFF for b in range(256))
_TAKE = bytes((b - OFFSET) & 0xFF for b in range(256))


def add_offset(data: bytes) -> bytes:
    return data.translate(_ADD)


class ReadCode(enum.IntEnum):
    """The only control codes energyd can send."""

    READ_DATA = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13


class FrameError(ValueError):
    """Bytes that are not a well-formed DL/T 645 frame."""


def address_bytes(address: str) -> bytes:
    """'000012345678' -> the six wire bytes, last two digits first."""
    pairs = [address[i:i + 2].upper() for i in range(0, 12, 2)]
    if len(address) != 12 or not all(p == "AA" or p.isdigit() for p in pairs):
        raise ValueError(f"meter address {address!r} is not 12 BCD digits (AA: any)")
    return bytes.fromhex("".join(pairs))[::-1]


def address_text(wire: bytes) -> str:
    return wire[::-1].hex().upper()


def selects(pattern: str, address: str) -> bool:
    """Whether a request to `pattern` is for the meter at `address`: the same digits, or AA
    (any) in the bytes not given (the standard's shortened addressing: the low bytes given,
    the high ones AA)."""
    return pattern == address or all(
        pattern[i:i + 2] in ("AA", address[i:i + 2]) for i in range(0, 12, 2))


def identifier_bytes(di: str) -> bytes:
    """'0201FF00' -> DI0 DI1 DI2 DI3 (lowest byte first), before the 0x33 offset."""
    if len(di) != 8:
        raise ValueError(f"data identifier {di!r} is not 8 hex digits")
    return bytes.fromhex(di)[::-1]


def request(address: str, code: ReadCode, payload: bytes = b"", *,
            preamble: bool = True) -> bytes:
    """A request frame. Only a ReadCode gets through: anything else is refused here."""
    if not isinstance(code, ReadCode):
        raise ValueError(f"control code {code!r} is not a read (energyd sends 0x11, 0x12 "
                         "and 0x13 only)")
    body = bytes([START]) + address_bytes(address) + bytes([START, code, len(payload)])
    body += payload.translate(_ADD)
    frame = body + bytes([sum(body) & 0xFF, END])
    return PREAMBLE + frame if preamble else frame


def read_data(address: str, di: str, *, preamble: bool = True) -> bytes:
    return request(address, ReadCode.READ_DATA, identifier_bytes(di), preamble=preamble)


def read_follow_up(address: str, di: str, seq: int, *, preamble: bool = True) -> bytes:
    return request(address, ReadCode.READ_FOLLOW_UP, identifier_bytes(di) + bytes([seq & 0xFF]),
                   preamble=preamble)


def read_address(*, preamble: bool = True) -> bytes:
    return request(BROADCAST, ReadCode.READ_ADDRESS, preamble=preamble)


@dataclass(frozen=True, slots=True)
class Frame:
    address: str  # 12 digits as printed on the meter
    control: int
    data: bytes  # with the 0x33 offset taken off

    @property
    def function(self) -> int:
        return self.control & 0x1F

    @property
    def is_reply(self) -> bool:
        return bool(self.control & 0x80)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & 0x40)

    @property
    def follows(self) -> bool:
        return bool(self.control & 0x20)


def take_frame(buffer: bytearray) -> Frame | None:
    """Take the first whole frame out of `buffer` (preamble and line noise before it are
    dropped); None while more bytes are needed. A frame with a bad checksum or end byte
    raises FrameError and is consumed, so the caller can go on reading."""
    while True:
        start = buffer.find(START)
        if start < 0:
            buffer.clear()
            return None
        if start:
            del buffer[:start]
        if len(buffer) < 10:
            return None
        if buffer[7] != START:  # a stray 0x68 that does not open a frame
            del buffer[:1]
            continue
        length = buffer[9]
        total = 12 + length
        if length > MAX_DATA:
            del buffer[:1]
            continue
        if len(buffer) < total:
            return None
        raw = bytes(buffer[:total])
        del buffer[:total]
        if raw[-1] != END:
            raise FrameError(f"frame ends with {raw[-1]:02X}, not 16")
        if sum(raw[:-2]) & 0xFF != raw[-2]:
            raise FrameError(f"checksum {raw[-2]:02X} where the bytes sum to "
                             f"{sum(raw[:-2]) & 0xFF:02X}")
        data = raw[10:10 + length].translate(_TAKE)
        return Frame(address_text(raw[1:7]), raw[8], data)


def describe_error(err: int) -> str:
    names = [text for bit, text in ERROR_BITS.items() if err & bit]
    return ", ".join(names) or "error byte 00"


def decode_bcd(raw: bytes, decimals: int, signed: bool) -> float:
    """BCD bytes, lowest first, into a number; with `signed` the top bit of the last byte
    is the sign. A nibble above 9 is a FrameError (the caller decides what that means)."""
    top = raw[-1]
    negative = signed and bool(top & 0x80)
    if signed:
        raw = raw[:-1] + bytes([top & 0x7F])
    digits = raw[::-1].hex()
    if not digits.isdigit():
        raise FrameError(f"{raw[::-1].hex().upper()} is not BCD")
    value = int(digits) / 10**decimals
    return -value if negative else value


def encode_bcd(value: float, size: int, decimals: int, signed: bool) -> bytes:
    """For the simulator: `value` in `size` BCD bytes, lowest first (rounded; clipped to
    what the digits hold)."""
    scaled = round(abs(value) * 10**decimals)
    # signed: the sign takes the top bit, so the top digit goes up to 7 only
    limit = 8 * 10 ** (size * 2 - 1) - 1 if signed else 10 ** (size * 2) - 1
    scaled = min(scaled, limit)
    raw = bytearray(bytes.fromhex(f"{scaled:0{size * 2}d}")[::-1])
    if signed and value < 0 and scaled:
        raw[-1] |= 0x80
    return bytes(raw)


__all__ = ["BROADCAST", "ERROR_BITS", "Frame", "FrameError", "ReadCode", "address_bytes",
           "address_text", "decode_bcd", "describe_error", "encode_bcd", "identifier_bytes",
           "read_address", "read_data", "read_follow_up", "request", "selects", "take_frame"]
