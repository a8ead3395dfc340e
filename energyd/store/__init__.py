"""The durable local store (SQLite, WAL): readings, sink cursors, rollups, invoices, alerts."""

from energyd.store.cursors import AIR, ALERTS, READINGS, ROLLUPS, STREAMS, Backlog
from energyd.store.readings import StoredReading
from energyd.store.sqlite import Store

__all__ = ["AIR", "ALERTS", "STREAMS", "READINGS", "ROLLUPS", "Backlog", "Store", "StoredReading"]
