"""The durable local store (SQLite, WAL): readings, sink cursors, rollups, invoices, alerts."""

from energyd.store.sqlite import (
    AIR,
    ALERTS,
    READINGS,
    ROLLUPS,
    STREAMS,
    Backlog,
    Store,
    StoredReading,
)

__all__ = ["AIR", "ALERTS", "STREAMS", "READINGS", "ROLLUPS", "Backlog", "Store", "StoredReading"]
