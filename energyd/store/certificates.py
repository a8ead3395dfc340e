"""Granular certificates in the store: each kept once under its registry id.

A certificate is retired once: `retire` stores the certificates it is given that the store
does not hold yet and says which it already held, so importing a file again, or a file that
overlaps an earlier one, adds nothing twice. What a stored certificate says is never changed;
one that comes again with other figures is for the importer to refuse (`held` tells it what
the store has).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store

_COLUMNS = ("id, production_start, production_end, wh, market, device, technology, location, "
            "storage_discharge, registry, backs")


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    id: str
    production_start: int  # UTC epoch ms
    production_end: int
    wh: float
    market: str
    device: str
    technology: str
    location: str = ""
    storage_discharge: bool = False
    registry: str = ""
    backs: str = ""  # an annual instrument's id: this is its hourly production


def _record(row: Sequence[object]) -> CertificateRecord:
    i, a, b, wh, market, device, tech, loc, discharge, registry, backs = row
    return CertificateRecord(str(i), int(a), int(b), float(wh), str(market),  # type: ignore[arg-type]
                             str(device), str(tech), str(loc), bool(discharge), str(registry),
                             str(backs))


class Certificates:
    """The store's granular certificates (table `granular_certificates`, migration 8)."""

    def __init__(self, store: Store):
        self._store = store

    def held(self, ids: Iterable[str]) -> dict[str, CertificateRecord]:
        """The stored certificates among `ids`."""
        wanted = sorted(set(ids))
        out: dict[str, CertificateRecord] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            for row in self._store._read(
                    f"SELECT {_COLUMNS} FROM granular_certificates "
                    f"WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                rec = _record(row)
                out[rec.id] = rec
        return out

    def retire(self, records: Iterable[tuple[CertificateRecord, str]],
               imported_ms: int) -> tuple[list[str], list[str]]:
        """Store each (certificate, origin) the store does not hold yet, in one transaction.
        Returns the ids added and the ids already held (left as they were)."""
        added, already = [], []
        with self._store._writing() as conn:
            for rec, origin in records:
                cur = conn.execute(
                    f"INSERT INTO granular_certificates ({_COLUMNS}, imported, origin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (rec.id, rec.production_start, rec.production_end, rec.wh, rec.market,
                     rec.device, rec.technology, rec.location, int(rec.storage_discharge),
                     rec.registry, rec.backs, imported_ms, origin))
                (added if cur.rowcount == 1 else already).append(rec.id)
        return added, already

    def produced_between(self, start_ms: int, end_ms: int) -> list[CertificateRecord]:
        """Certificates whose production starts in [start_ms, end_ms), by start and id."""
        return [_record(r) for r in self._store._read(
            f"SELECT {_COLUMNS} FROM granular_certificates WHERE production_start >= ? "
            "AND production_start < ? ORDER BY production_start, id", (start_ms, end_ms))]

    def backing_wh(self, instrument: str) -> float:
        """The Wh of the stored certificates that detail an annual instrument's production."""
        return float(self._store._read(
            "SELECT coalesce(sum(wh), 0) FROM granular_certificates WHERE backs = ?",
            (instrument,))[0][0])

    def count(self) -> int:
        return int(self._store._read("SELECT count(*) FROM granular_certificates")[0][0])
