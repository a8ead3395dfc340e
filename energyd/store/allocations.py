"""What each certificate (GEC, I-REC, green power contract) gave to which device-hour."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from energyd.store.sqlite import Store


class CertificateAllocations:
    def __init__(self, store: Store):
        self._store = store

    def used_before(self, hour: int) -> dict[str, float]:
        """certificate -> MWh allocated to hours before `hour`."""
        return dict(self._store._read(
            "SELECT certificate, sum(mwh) FROM certificate_allocations WHERE hour < ? "
            "GROUP BY certificate", (hour,)))

    def used_between(self, start: int, end: int) -> dict[str, float]:
        """certificate -> MWh allocated to hours in [start, end)."""
        return dict(self._store._read(
            "SELECT certificate, sum(mwh) FROM certificate_allocations WHERE hour >= ? "
            "AND hour < ? GROUP BY certificate", (start, end)))

    def reallocate(self, start: int | None,
                   allocations: Iterable[tuple[str, str, int, float]]) -> None:
        """Replace what hours from `start` on were given (every hour's, when None) with
        `allocations` (certificate, device, hour, MWh)."""
        with self._store._writing() as conn:
            if start is None:
                conn.execute("DELETE FROM certificate_allocations")
            else:
                conn.execute("DELETE FROM certificate_allocations WHERE hour >= ?", (start,))
            conn.executemany(
                "INSERT INTO certificate_allocations (certificate, device, hour, mwh) "
                "VALUES (?, ?, ?, ?)", list(allocations))

    def restore_before(self, hour: int, used: Mapping[str, float]) -> None:
        """What hours before a verifier's window took, as one earlier hour of no device."""
        with self._store._writing() as conn:
            conn.executemany(
                "INSERT INTO certificate_allocations (certificate, device, hour, mwh) "
                "VALUES (?, '', ?, ?)", [(cid, hour, mwh) for cid, mwh in used.items()])
