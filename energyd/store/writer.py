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

When commits fail (a full disk, a locked or damaged file) the batch is held and tried again,
less often the longer it fails (up to `RETRY_MAX` seconds). The failure is reported once on
the way in and once on recovery through `on_state` ("disk_full", "store_corrupt" or
"store_failing"), not
per attempt. What is held is bounded: past `max_pending` readings the oldest instantaneous
readings (power, voltage, current: gauges) are shed first, counted in `shed`; energy
counters are never shed, and only if counters alone pass twice the bound are they thinned,
every other reading of a series, keeping its first and last (the energy between any two
kept readings stays exact), counted in `thinned`. Polls held are folded per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import accumulate, compress, pairwise
from pathlib import Path

import energyd
from energyd.errors import StoreCorrupt, StoreError, StoreFull
from energyd.model import QUANTITIES, PollValues, Reading, to_ms
from energyd.retry import backoff_delay
from energyd.store.sqlite import Store, corrupt

log = logging.getLogger(__name__)

Poll = tuple  # (device, poll time ms, error or None[, polls, errors]): see Store._record_polls

MAX_PENDING = 1_000_000
"""Readings held in memory while commits fail, by default (about 30 MB)."""
COMMIT_MAX = 200_000
"""Readings committed in one transaction at most (a slice of what a failure held)."""
RETRY_MAX = 10.0
"""Seconds between two commit attempts at most while they fail."""
SERIES_OF_MAX = 100_000  # (device, quantities) remembered by submit_values() at most
MAX_POLLS = 10_000  # polls held before they are folded per device


def _sheddable(quantity: str) -> bool:
    return quantity not in QUANTITIES or QUANTITIES[quantity].sheddable


def disk_full(exc: BaseException) -> bool:
    """Is this failure a full disk (or a file size limit), rather than another fault?"""
    if isinstance(exc, StoreFull):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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

    def drop(self, keep: Sequence[bool]) -> None:
        """Keep the column readings whose flag is set; a submit() call left empty goes."""
        # compress and accumulate run in C: a million held readings take a tenth of a
        # second under the lock that submit() waits for
        for name in ("series", "times", "values", "quality"):
            column = getattr(self, name)
            setattr(self, name, array(column.typecode, compress(column, keep)))
        kept_before = [0, *accumulate(keep)]  # readings kept before each position
        starts = array("q")
        bounds = [*self.starts, len(keep)]
        for begin, end in pairwise(bounds):
            if kept_before[end] > kept_before[begin]:
                starts.append(kept_before[begin])
        self.starts = starts

    def split(self, n: int) -> Batch:
        """Keep the first whole submit() calls holding at least `n` column readings here,
        and return the rest, which takes the callbacks (they are called once all is
        committed). An empty batch when there is nothing to split."""
        if len(self.series) <= n:
            return Batch()
        k = bisect_left(self.starts, n)
        if k >= len(self.starts):  # one call holds the end: nothing to split at
            return Batch()
        cut = self.starts[k]
        rest = Batch()
        rest.starts = array("q", (start - cut for start in self.starts[k:]))
        del self.starts[k:]
        for name in ("series", "times", "values", "quality"):
            column = getattr(self, name)
            setattr(rest, name, column[cut:])
            del column[cut:]
        rest.callbacks, self.callbacks = self.callbacks, []
        return rest

    def fold_polls(self) -> None:
        """Polls as one success and one failure entry per device, with their counts."""
        folded: dict[tuple[str, bool], list] = {}
        for device, when, error, *counts in self.polls:
            polls, errors = counts or (1, 0 if error is None else 1)
            f = folded.setdefault((device, error is None), [device, when, error, 0, 0])
            if when >= f[1]:
                f[1], f[2] = when, error
            f[3] += polls
            f[4] += errors
        self.polls = [tuple(f) for f in folded.values()]


def _thin(keys: Sequence[object], candidate: Sequence[bool]) -> list[bool]:
    """Every other candidate reading of each key dropped, its first and last kept."""
    seen: dict[object, int] = {}
    last: dict[object, int] = {}
    for i, k in enumerate(keys):
        if candidate[i]:
            last[k] = i
    keep = [True] * len(keys)
    for i, k in enumerate(keys):
        if not candidate[i]:
            continue
        n = seen.get(k, 0)
        seen[k] = n + 1
        if n % 2 == 1 and last[k] != i:
            keep[i] = False
    return keep


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
                 on_state: Callable[[str, str | None], None] | None = None,
                 max_pending: int = MAX_PENDING,
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
        # while commits fail: the state's name ("disk_full", "store_failing") and reason
        self.trouble: tuple[str, str] | None = None
        self._on_state = on_state
        self.max_pending = max_pending
        self.shed = 0  # gauge readings shed while commits failed
        self.thinned = 0  # counter readings thinned past twice the bound
        self._retry_at = 0.0  # monotonic: no attempt before, while failing
        self._failures = 0  # commits failed in a row: the retry's attempt
        self._retry_delay = 0.0
        # (device, quantities) -> their series ids, for submit_values(): a poll's columns
        # find their series in one look-up
        self._series_of: dict[tuple[str, tuple[str, ...]], array] = {}
        self._series_generation = store.series_generation

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

    def submit_values(self, polls: Sequence[PollValues]) -> None:
        """As submit(), for polls as columns (a bus owner's): each poll is a call of its own
        (committed whole), and no Reading is made unless a listener keeps them."""
        series_of = self._series_of
        if self._series_generation != self._store.series_generation:
            series_of.clear()  # a rollback: ids made inside it may be another series' now
            self._series_generation = self._store.series_generation
        ids = []
        for p in polls:
            sids = series_of.get((p.device, p.quantities))
            if sids is None:
                known = self._store.known_series
                found = [known.get((p.device, q)) for q in p.quantities]
                if None in found:  # a new series: made at the flush, as for submit()
                    for poll in polls:
                        self.submit(poll.readings())
                    return
                if len(series_of) >= SERIES_OF_MAX:
                    series_of.clear()
                sids = series_of[(p.device, p.quantities)] = array("q", found)
            ids.append(sids)
        keep = self._keep_readings()
        with self._lock:
            b = self._batch
            for p, sids in zip(polls, ids, strict=True):
                n = len(sids)
                b.starts.append(len(b.series))
                b.series.extend(sids)
                b.times.extend(array("q", (to_ms(p.time),)) * n)
                b.values.extend(p.values)
                b.quality.extend(array("b", (p.quality,)) * n)
                if keep:
                    b.kept += p.readings()

    def record_poll(self, device: str, when_ms: int, error: str | None) -> None:
        with self._lock:
            self._batch.polls.append((device, when_ms, error))

    def record_polls(self, polls: Sequence[tuple[str, int, str | None]]) -> None:
        """record_poll() for each (device, when ms, error), under the lock once."""
        with self._lock:
            self._batch.polls += polls

    @property
    def pending(self) -> int:
        return len(self._batch)

    @property
    def committer_pid(self) -> int | None:
        return self._committer.pid if self._committer is not None else None

    def flush_sync(self) -> int:
        """Commit what is pending, at most about `COMMIT_MAX` readings of it (what a
        failure held is committed in slices: a disk with a little room again takes them,
        where one transaction of all might not fit). Returns how many were committed."""
        with self._exchange:
            with self._lock:
                batch, self._batch = self._batch, Batch()
                rest = batch.split(COMMIT_MAX)
                if len(rest) or rest.callbacks:
                    self._batch = rest
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
            except Exception as exc:
                # keep them for the next flush rather than lose them (disk full, locked file)
                with self._lock:
                    batch.merge(self._batch)
                    self._batch = batch
                    self._bound(batch)
                self.failed_flushes += 1
                self._failed(exc)
                raise
        self._recovered()
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

    def _failed(self, exc: BaseException) -> None:
        name = ("disk_full" if disk_full(exc) else
                "store_corrupt" if isinstance(exc, StoreCorrupt) or corrupt(exc) else
                "store_failing")
        reason = str(exc) or type(exc).__name__
        self._retry_delay = backoff_delay(self._failures, RETRY_MAX, base=self._flush_interval,
                                          jitter=False)
        self._failures += 1
        self._retry_at = time.monotonic() + self._retry_delay
        previous, self.trouble = self.trouble, (name, reason)
        if self._on_state is not None:
            if previous is not None and previous[0] != name:
                self._on_state(previous[0], None)
            self._on_state(name, f"{reason}; {self.pending:,} readings held in memory")

    def _recovered(self) -> None:
        self._retry_delay = 0.0
        self._failures = 0
        self._retry_at = 0.0
        if self.trouble is not None:
            name, _ = self.trouble
            self.trouble = None
            if self._on_state is not None:
                self._on_state(name, None)

    def _bound(self, batch: Batch) -> None:
        """Under the lock: keep what is held within `max_pending` (see the module's doc)."""
        if len(batch.polls) > MAX_POLLS:
            batch.fold_polls()
        if len(batch) <= self.max_pending:
            return
        known = self._store.known_series
        gauges = {sid for (_, quantity), sid in known.items() if _sheddable(quantity)}
        # shed down to three quarters of the bound, so that it is not done at every attempt
        excess = len(batch) - self.max_pending * 3 // 4
        keep = [sid not in gauges for sid in batch.series]
        shed = len(keep) - sum(keep)
        if shed > excess:  # the newest gauges stay: find where the oldest `excess` end
            seen = accumulate(not k for k in keep)
            cut = next(i for i, n in enumerate(seen) if n >= excess) + 1
            keep[cut:] = [True] * (len(keep) - cut)
            shed = excess
        for call in batch.new:
            before = len(call)
            call[:] = [r for r in call if not _sheddable(r.quantity)]
            shed += before - len(call)
        batch.new = [call for call in batch.new if call]
        if batch.kept:
            batch.kept = [r for r in batch.kept if not _sheddable(r.quantity)]
        if shed:
            batch.drop(keep)
            self.shed += shed
            log.debug("shed %d gauge readings while commits fail", shed)
        if len(batch) > 2 * self.max_pending:
            before = len(batch)
            batch.drop(_thin(batch.series, [True] * len(batch.series)))
            for call in batch.new:
                call[:] = [r for r, k in zip(call, _thin(
                    [(r.device, r.quantity) for r in call], [True] * len(call)),
                    strict=True) if k]
            if batch.kept:
                batch.kept = [r for r, k in zip(batch.kept, _thin(
                    [(r.device, r.quantity) for r in batch.kept], [True] * len(batch.kept)),
                    strict=True) if k]
            self.thinned += before - len(batch)
            log.debug("thinned %d counter readings while commits fail", before - len(batch))

    def close(self) -> None:
        """Commit what is pending, then stop the committer. Idempotent."""
        try:
            while self.flush_sync() and self.pending:
                pass
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

    def _start_committer(self) -> None:
        with self._exchange:
            if self._committer is None:
                self._committer = Committer(self._store.path)

    async def run(self) -> None:
        """Flush every `flush_interval` wall seconds until cancelled; then close."""
        try:
            # the committer starts now rather than at the first flush, which then commits
            # at once (a session's backlog after a restart) instead of waiting for it
            try:
                await asyncio.to_thread(self._start_committer)
            except OSError as exc:  # the first flush tries again, and reports
                log.warning("the store's committer process could not be started: %s", exc)
            while True:
                # what a failure held goes in slices, one after the other
                behind = self.pending >= COMMIT_MAX and self.trouble is None
                await asyncio.sleep(0 if behind else self._flush_interval)
                if time.monotonic() < self._retry_at:
                    # failing: the next attempt waits out its delay, and what is held
                    # meanwhile stays within its bound
                    if self.pending > self.max_pending:
                        with self._lock:
                            self._bound(self._batch)
                    continue
                try:
                    await self.flush()
                except Exception:
                    # reported through on_state, once on the way in and once on recovery
                    if self._on_state is None:
                        log.warning("store flush failed; the readings are kept for the "
                                    "next one", exc_info=True)
        finally:
            try:
                self.close()
            except Exception as exc:
                # nowhere left to keep them: say how many, and why
                log.error("%d readings read could not be committed at the end: %s",
                          self.pending, exc,
                          exc_info=not isinstance(exc, StoreError | sqlite3.Error | OSError))

    def hand_over(self) -> Batch | None:
        """What is held uncommitted (after `close()` failed), for the writer of a reloaded
        configuration on the same store to `take_over`; None when nothing is."""
        with self._lock:
            batch, self._batch = self._batch, Batch()
        # the submitters waiting for these commits (an MQTT client's acknowledgements) ended
        # with their configuration; what they did not acknowledge the broker sends again
        batch.callbacks = []
        return batch if len(batch) or batch.polls else None

    def take_over(self, batch: Batch, trouble: tuple[str, str] | None = None) -> None:
        """Hold `batch` (from `hand_over` of the previous writer on this store) ahead of
        what this writer has read; it goes with the next commit. `trouble`, the previous
        writer's, is this one's until a commit succeeds (which then reports the recovery)."""
        with self._lock:
            batch.merge(self._batch)
            self._batch = batch
        self.trouble = trouble


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
        if status == "full":
            raise StoreFull(value)
        if status == "corrupt":
            raise StoreCorrupt(value)
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
