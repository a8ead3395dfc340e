"""The durable local store (SQLite, WAL): readings, sink cursors, rollups, invoices, alerts."""

from energyd.store.sqlite import ALERTS, READINGS, ROLLUPS, Backlog, Store, StoredReading

__all__ = ["ALERTS", "READINGS", "ROLLUPS", "Backlog", "Store", "StoredReading"]
