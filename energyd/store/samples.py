"""How readings are packed on disk: one row ("sample") per instant and set of series.

A poll reads a block of a meter's registers at one instant: its readings share their time and
always come in the same set of series. The store keeps them as one row of `samples`: the
instant, the set of series (a `layout`, stored once), the values as float64s in one blob and
the qualities as bytes in another (NULL when all are good, the usual case). A row per reading
with an index on (series, time) cost SQLite 3-5 CPU microseconds and 45 bytes on disk per
reading; a sample of nine readings costs about what one of those rows did (12.8 bytes per
reading). A reading that comes alone still takes a row of its own.

A reading still has an id of its own, so sinks and the hourly job keep following readings:
`sample id * SLOTS + position in the layout`. Ids only grow with insertion, but they are not
dense: count readings, never subtract ids.

These functions only turn columns into samples and back; the store does the I/O.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence

SLOTS = 128
"""Readings per sample at most: a sample's readings take ids `id * SLOTS + position`."""

_BIG_ENDIAN = sys.byteorder == "big"

Sample = tuple[bytes, int, bytes, bytes | None]
"""(layout key: the series ids, time ms, values blob, qualities blob or None if all good)."""


def pack_ids(series: Sequence[int]) -> bytes:
    """A layout's key: its series ids as little-endian int64s (stores move between machines)."""
    a = series if isinstance(series, array) and series.typecode == "q" else array("q", series)
    if _BIG_ENDIAN:
        a = array("q", a)
        a.byteswap()
    return a.tobytes()


def unpack_ids(key: bytes) -> tuple[int, ...]:
    a = array("q", key)
    if _BIG_ENDIAN:
        a.byteswap()
    return tuple(a)


def pack_values(values: array) -> bytes:
    if _BIG_ENDIAN:
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def unpack_values(blob: bytes) -> array:
    a = array("d", blob)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def pack_quality(quality: array) -> bytes | None:
    return quality.tobytes() if any(quality) else None


_DOUBLE = struct.Struct("<d")
pack_value = _DOUBLE.pack  # `pack_values` for a single value


def value_at(blob: bytes, position: int) -> float:
    """One value of a values blob (or the blob of that value alone, at position 0)."""
    return _DOUBLE.unpack_from(blob, 8 * position)[0]


def quality_at(blob: bytes | None, position: int) -> int:
    return blob[position] if blob else 0


def count(blob: bytes) -> int:
    """Readings in a sample, from its values blob."""
    return len(blob) // 8


def group(series: array, times: array, values: array, quality: array,
          starts: Iterable[int] = (0,)) -> list[Sample]:
    """Columns of readings (series id, time ms, value, quality) as samples.

    `starts` are the offsets where the readings of one submitter's call begin: a sample never
    spans two calls. Within a call, consecutive readings with the same time form a sample,
    split where a series comes again or SLOTS are full. The grouping depends only on a call's
    own readings, so a call sent twice (a batch resent after a failed flush, an MQTT message
    delivered again) makes the same samples, which the store then ignores as known.
    """
    out: list[Sample] = []
    bounds = sorted(set(starts) | {0})
    bounds = [b for b in bounds if b < len(series)] + [len(series)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        # the usual call: one block of one poll, all at one time, no series twice
        t = times[a]
        if b - a <= SLOTS and times[a:b].count(t) == b - a and \
                len(set(series[a:b])) == b - a:
            out.append((pack_ids(series[a:b]), t, pack_values(values[a:b]),
                        pack_quality(quality[a:b])))
            continue
        _group_slow(series, times, values, quality, a, b, out)
    return out


def _group_slow(series: array, times: array, values: array, quality: array,
                a: int, b: int, out: list[Sample]) -> None:
    i = a
    while i < b:
        t = times[i]
        seen = {series[i]}
        j = i + 1
        while j < b and j - i < SLOTS and times[j] == t and series[j] not in seen:
            seen.add(series[j])
            j += 1
        out.append((pack_ids(series[i:j]), t, pack_values(values[i:j]),
                    pack_quality(quality[i:j])))
        i = j


def group_rows(rows: Sequence[tuple[int, int, float, int]]) -> list[Sample]:
    """`group` for (series id, time ms, value, quality) rows, all from one call."""
    if not rows:
        return []
    series, times, values, quality = zip(*rows, strict=True)
    return group(array("q", series), array("q", times), array("d", values),
                 array("b", quality))
