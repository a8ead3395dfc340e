"""Batching in front of the store: readings are collected and committed once per flush.

`submit()` is safe from any thread (the MQTT driver calls it from paho's network thread) and
never blocks on the database: it appends to a list under a short lock. The flush runs the
commit in a worker thread so the event loop keeps polling while SQLite syncs to disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

from energyd.model import Reading
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self, store: Store, *, flush_interval: float = 1.0,
                 on_commit: Callable[[list[Reading]], None] | None = None):
        self._store = store
        self._flush_interval = flush_interval
        self._pending: list[Reading] = []
        self._polls: list[tuple[str, int, str | None]] = []
        self._lock = threading.Lock()
        self._on_commit = on_commit
        self.committed = 0
        self.failed_flushes = 0

    def submit(self, readings: Iterable[Reading]) -> None:
        with self._lock:
            self._pending.extend(readings)

    def record_poll(self, device: str, when_ms: int, error: str | None) -> None:
        with self._lock:
            self._polls.append((device, when_ms, error))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _take(self) -> tuple[list[Reading], list[tuple[str, int, str | None]]]:
        with self._lock:
            batch, self._pending = self._pending, []
            polls, self._polls = self._polls, []
        return batch, polls

    def flush_sync(self) -> int:
        batch, polls = self._take()
        try:
            if batch:
                self._store.insert_readings(batch)
            if polls:
                self._store.record_polls(polls)
        except Exception:
            # keep them for the next flush rather than lose them (disk full, locked file)
            with self._lock:
                self._pending[:0] = batch
                self._polls[:0] = polls
            self.failed_flushes += 1
            raise
        self.committed += len(batch)
        if batch and self._on_commit is not None:
            self._on_commit(batch)
        return len(batch)

    async def flush(self) -> int:
        return await asyncio.to_thread(self.flush_sync)

    async def run(self) -> None:
        """Flush every `flush_interval` wall seconds until cancelled; then flush once more."""
        try:
            while True:
                await asyncio.sleep(self._flush_interval)
                try:
                    await self.flush()
                except Exception:
                    log.exception("store flush failed; the readings are kept for the next one")
        finally:
            try:
                self.flush_sync()
            except Exception:
                log.exception("final store flush failed")
