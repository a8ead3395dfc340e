"""Batching in front of the store: readings are collected and committed once per flush.

`submit()` is safe from any thread (the MQTT driver calls it from paho's network thread) and
never blocks on the database: it appends to the batch's columns under a short lock.

A flush hands the batch to the committer, a process of its own (`energyd.store.committer`)
that packs it into samples (`energyd.store.samples`), writes them to SQLite and syncs them to
disk. SQLite's work is the largest CPU cost of a busy gateway; in the daemon's process it would
hold up the bus owners and the MQTT thread, in its own it runs on another core. The writer
keeps what it sent until the committer answers that it is on disk, so a committer that dies
loses nothing: the batch goes again to a new one, which packs it into the same samples, and the
store ignores a sample it already has. Series ids are resolved here, in the daemon's store, so
its series cache stays right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable
from pathlib import Path

import energyd
from energyd.errors import StoreError
from energyd.model import Reading, to_ms
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)

Poll = tuple[str, int, str | None]  # device, poll time ms, error or None


class Batch:
    """What one flush commits: readings as columns of plain numbers (nothing for Python's
    garbage collector to walk through while they wait, and a copy of memory to pickle),
    readings of series the store has not seen yet, and the polls."""

    __slots__ = ("series", "times", "values", "quality", "starts", "new", "polls", "kept",
                 "callbacks")

    def __init__(self) -> None:
        self.starts = array("q")  # where each submit() call's readings begin: see samples.group
        self.series = array("q")
        self.times = array("q")
        self.values = array("d")
        self.quality = array("b")
        # calls with a series the store has not seen: resolved at flush (creating one is a
        # write), each call packed on its own
        self.new: list[list[Reading]] = []
        self.polls: list[Poll] = []
        self.kept: list[Reading] = []  # for the reading listeners, when there are any
        self.callbacks: list[Callable[[], None]] = []  # given with submit()

    def __len__(self) -> int:
        return len(self.series) + sum(map(len, self.new))

    def merge(self, later: Batch) -> None:
        offset = len(self.series)
        self.starts.extend(start + offset for start in later.starts)
        for mine, theirs in ((self.series, later.series), (self.times, later.times),
                             (self.values, later.values), (self.quality, later.quality)):
            mine.extend(theirs)
        self.new += later.new
        self.polls += later.polls
        self.kept += later.kept
        self.callbacks += later.callbacks


class StoreWriter:
    """Lifetime: `async with`/`with`, or `run()` as a task; either way the last batch is
    committed and the committer stopped at the end.

    `on_commit(count, readings)` is called after each commit; `readings` holds the committed
    Reading objects when `keep_readings()` said so at submit time (live alert rules need
    them), else it is empty. A submitter that only needs to know when its readings are on
    disk (the MQTT acknowledgements) gives a callback to `submit()`.

    `on_conflicts({device: count})` is called after a commit that found readings with
    another value than the store holds for their series and time (kept in the store's
    conflicts table; the stored values stand).
    """

    def __init__(self, store: Store, *, flush_interval: float = 1.0,
                 on_commit: Callable[[int, list[Reading]], None] | None = None,
                 keep_readings: Callable[[], bool] = lambda: False,
                 on_conflicts: Callable[[dict[str, int]], None] | None = None):
        self._store = store
        self._flush_interval = flush_interval
        self._batch = Batch()
        self._lock = threading.Lock()
        # one flush at a time speaks to the committer, and batches reach it in order
        self._exchange = threading.Lock()
        self._committer: Committer | None = None
        self._on_commit = on_commit
        self._keep_readings = keep_readings
        self._on_conflicts = on_conflicts
        self.conflicts: dict[str, int] = {}  # per device, since this writer started
        self.committed = 0
        self.failed_flushes = 0

    def submit(self, readings: list[Reading],
                 committed: Callable[[], None] | None = None) -> None:
        """Queue `readings` for the next commit; `committed` is called after it (from the
        flushing thread), or after a later one if that commit fails. The readings of one
        call are always committed together."""
        known = self._store.known_series
        keep = self._keep_readings()
        with self._lock:
            b = self._batch
            start = len(b.series)
            b.starts.append(start)
            last_time, last_ms = None, 0
            for r in readings:
                sid = known.get((r.device, r.quantity))
                if sid is None:
                    # the call waits whole for its new series, so that it is packed as it
                    # will be when sent again (an MQTT message delivered twice)
                    for column in (b.series, b.times, b.values, b.quality):
                        del column[start:]
                    b.starts.pop()
                    b.new.append(list(readings))
                    break
                if r.time is not last_time:  # a poll's readings share their time
                    last_time, last_ms = r.time, to_ms(r.time)
                b.series.append(sid)
                b.times.append(last_ms)
                b.values.append(r.value)
                b.quality.append(r.quality)
            if keep:
                b.kept.extend(readings)
            if committed is not None:
                b.callbacks.append(committed)

    def record_poll(self, device: str, when_ms: int, error: str | None) -> None:
        with self._lock:
            self._batch.polls.append((device, when_ms, error))

    @property
    def pending(self) -> int:
        return len(self._batch)

    @property
    def committer_pid(self) -> int | None:
        return self._committer.pid if self._committer is not None else None

    def flush_sync(self) -> int:
        with self._exchange:
            with self._lock:
                batch, self._batch = self._batch, Batch()
            if not len(batch) and not batch.polls:
                return 0
            try:
                columns = (batch.series, batch.times, batch.values, batch.quality, batch.starts)
                new = [self._store.series_rows(call) for call in batch.new]
                if self._committer is None:
                    self._committer = Committer(self._store.path)
                try:
                    _, conflicts = self._committer.commit(columns, new, batch.polls)
                except CommitterGone:
                    self._committer = None
                    raise
            except Exception:
                # keep them for the next flush rather than lose them (disk full, locked file)
                with self._lock:
                    batch.merge(self._batch)
                    self._batch = batch
                self.failed_flushes += 1
                raise
        count = len(batch)
        self.committed += count
        if conflicts:
            for device, n in conflicts.items():
                self.conflicts[device] = self.conflicts.get(device, 0) + n
            if self._on_conflicts is not None:
                try:
                    self._on_conflicts(conflicts)
                except Exception:
                    log.exception("a conflict listener failed")
        for callback in batch.callbacks:
            try:
                callback()
            except Exception:
                log.exception("a commit callback failed")
        if count and self._on_commit is not None:
            self._on_commit(count, batch.kept)
        return count

    async def flush(self) -> int:
        return await asyncio.to_thread(self.flush_sync)

    def close(self) -> None:
        """Commit what is pending, then stop the committer. Idempotent."""
        try:
            self.flush_sync()
        finally:
            with self._exchange:
                if self._committer is not None:
                    self._committer.close()
                    self._committer = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> StoreWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    async def run(self) -> None:
        """Flush every `flush_interval` wall seconds until cancelled; then close."""
        try:
            while True:
                await asyncio.sleep(self._flush_interval)
                try:
                    await self.flush()
                except Exception:
                    log.exception("store flush failed; the readings are kept for the next one")
        finally:
            try:
                self.close()
            except Exception:
                log.exception("final store flush failed")


_COMMITTER_ENV = ("PATH", "LANG", "TZ", "TMPDIR", "SQLITE_TMPDIR", "PYTHONPATH")


class CommitterGone(StoreError):
    """The committer process ended or stopped answering; a new one is started next flush."""


class Committer:
    """The committer process and the pipe to it: pickled batches go in, one
    ("ok", inserted) or ("error", message) comes back for each."""

    def __init__(self, path: Path):
        # Only what a Python process and SQLite need: none of the daemon's secrets (tokens
        # given as `*_env`, $CREDENTIALS_DIRECTORY) reaches the committer.
        env = {k: v for k, v in os.environ.items() if k in _COMMITTER_ENV or k.startswith("LC_")}
        # the committer imports this very energyd, however the daemon found it
        root = str(Path(energyd.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "energyd.store.committer", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.pid = self._proc.pid

    def commit(self, columns: tuple[array, array, array, array, array],
               calls: list[list[tuple[int, int, float, int]]], polls: list[Poll]
               ) -> tuple[int, dict[str, int]]:
        """Columns (series ids, times ms, values, qualities, where each submit() call
        begins) and calls as rows (series id, time ms, value, quality): the first for the
        bulk, the second for the calls with series created this flush. Returns how many
        samples were new, and the conflicts newly kept, per device."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            pickle.dump((columns, calls, polls), self._proc.stdin,
                        protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
            status, value = pickle.load(self._proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            code = self._stop(timeout=5)
            raise CommitterGone(f"the store's committer process ended (exit status {code}): "
                                f"{type(exc).__name__}; the batch is kept") from None
        if status != "ok":
            raise StoreError(value)
        inserted, conflicts = value
        return int(inserted), conflicts

    def _stop(self, timeout: float) -> int | None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the store's committer did not end within %.0f s; killing it", timeout)
            self._proc.kill()
            return self._proc.wait()

    def close(self) -> None:
        # end of input: the committer finishes the batch it holds (none: every commit is
        # answered before the next is sent) and exits
        self._stop(timeout=30)
